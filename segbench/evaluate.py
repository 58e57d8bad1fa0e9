"""Evaluation of a trained run on one test set, and scoring of mask folders.

Both aggregations are computed and named (see segbench.metrics): ``pooled`` over every pixel of
the test set at the model's input size (the paper's way), and ``per_image`` at each mask's
original resolution (the prediction is resized bilinearly to the mask's size, then thresholded).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from segbench.data import cache_file, load_cache
from segbench.io import atomic_path, atomic_write, write_json
from segbench.metrics import PooledConfusion, confusion, image_scores
from segbench.registry import to_probabilities
from segbench.transforms import scale_input

PER_IMAGE_COLUMNS = ["id", "dice", "iou", "tp", "fp", "fn", "tn", "height", "width", "mask_empty"]


def read_mask(path: Path) -> np.ndarray:
    """A mask file as a boolean array: foreground where value/255 >= 0.5 (value >= 128)."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("L"))
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read mask {path}: {error}") from None
    return array >= 128


def _per_image_row(image_id: str, pred: np.ndarray, gt: np.ndarray) -> dict:
    tp, fp, fn, tn = confusion(pred, gt)
    dice, iou = image_scores(tp, fp, fn)
    return {"id": image_id, "dice": dice, "iou": iou, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "height": gt.shape[0], "width": gt.shape[1], "mask_empty": int(tp + fn == 0)}


def _summary(rows: list[dict], pooled: PooledConfusion) -> dict:
    return {
        "n_images": len(rows),
        "pooled": pooled.ratios(),
        "per_image": {
            "dice_mean": float(np.mean([row["dice"] for row in rows])) if rows else 0.0,
            "iou_mean": float(np.mean([row["iou"] for row in rows])) if rows else 0.0,
            "n_empty_masks": sum(row["mask_empty"] for row in rows),
        },
    }


@torch.no_grad()
def evaluate_run(model, card, cfg: dict, test_set: str, out_dir: str | Path, meta: dict,
                 device: torch.device) -> dict:
    """Write metrics.json, per_image.csv and predictions.npz for one (run, test set)."""
    out_dir = Path(out_dir)
    data_root = Path(cfg["data"]["root"])
    size, threshold = cfg["image_size"], cfg["evaluate"]["threshold"]
    ids, images, masks = load_cache(cache_file(data_root, test_set, size), "test")
    mask_dir = data_root / "processed" / test_set / "masks"
    batch_size = cfg["evaluate"]["batch_size"]
    pooled, rows, kept = PooledConfusion(), [], []
    for start in tqdm(range(0, len(ids), batch_size), desc=f"evaluate {meta['variant']} on {test_set}",
                      leave=False, mininterval=2.0):
        batch = torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2).to(device)
        probabilities = to_probabilities(model(scale_input(batch, cfg["train"]["input_scaling"])).float(), card)
        for offset, probability in enumerate(probabilities[:, 0]):
            index = start + offset
            pooled.add((probability >= threshold).cpu().numpy(), masks[index] >= 128)
            gt = read_mask(mask_dir / f"{ids[index]}.png")
            original = F.interpolate(probability[None, None], size=gt.shape, mode="bilinear", align_corners=False)
            rows.append(_per_image_row(ids[index], (original[0, 0] >= threshold).cpu().numpy(), gt))
            if index < cfg["evaluate"]["save_predictions"]:
                kept.append((probability.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())
    metrics = {**meta, "test_set": test_set, "threshold": threshold, "size": size, **_summary(rows, pooled)}
    with atomic_write(out_dir / "per_image.csv", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=PER_IMAGE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with atomic_path(out_dir / "predictions.npz") as temporary:
        with open(temporary, "wb") as handle:
            np.savez_compressed(handle, ids=np.array(ids[: len(kept)]),
                                probabilities=np.stack(kept) if kept else np.zeros((0, size, size), np.uint8))
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def score_folders(pred_dir: str | Path, gt_dir: str | Path) -> dict:
    """Score 8-bit PNG predictions against ground-truth masks paired by file stem, at their own size."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for folder in (pred_dir, gt_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder")
    predictions = {path.stem: path for path in sorted(pred_dir.iterdir()) if path.is_file()}
    truths = {path.stem: path for path in sorted(gt_dir.iterdir()) if path.is_file()}
    missing, extra = sorted(set(truths) - set(predictions)), sorted(set(predictions) - set(truths))
    if missing or extra:
        raise ValueError(
            f"prediction and ground-truth names differ: no prediction in {pred_dir} for {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}; no ground truth in {gt_dir} for {extra[:5]}"
            f"{'...' if len(extra) > 5 else ''}"
        )
    if not truths:
        raise ValueError(f"{gt_dir} holds no mask files")
    pooled, rows = PooledConfusion(), []
    for stem in sorted(truths):
        pred, gt = read_mask(predictions[stem]), read_mask(truths[stem])
        if pred.shape != gt.shape:
            raise ValueError(f"{predictions[stem]} is {pred.shape[1]}x{pred.shape[0]} but "
                             f"{truths[stem]} is {gt.shape[1]}x{gt.shape[0]}; predictions must have the mask's size")
        pooled.add(pred, gt)
        rows.append(_per_image_row(stem, pred, gt))
    summary = _summary(rows, pooled)
    summary["per_image"].pop("n_empty_masks")
    return summary


def format_score(summary: dict) -> str:
    return json.dumps(summary, indent=2, sort_keys=True)
