"""Evaluation of a trained run on one test set, and scoring of prediction folders.

Three families are computed and named (see segbench.metrics, segbench.field_metrics and
docs/metrics.md): ``pooled`` over every pixel of the test set at the model's input size (the
paper's way); ``per_image`` Dice and IoU at each mask's original resolution (the probability map
is resized bilinearly to the mask's size, then thresholded); and, from the same resized map, the
PraNet toolbox's ``toolbox`` block and the ``boundary`` block (HD95, NSD).
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
from segbench.field_metrics import FIELD_COLUMNS, FieldMetrics
from segbench.io import atomic_path, atomic_write, write_json
from segbench.metrics import PooledConfusion, confusion, image_scores
from segbench.registry import check_output_kind, to_probabilities
from segbench.transforms import scale_input

PER_IMAGE_COLUMNS = ["id", "dice", "iou", "tp", "fp", "fn", "tn", "height", "width", "mask_empty", *FIELD_COLUMNS]
# value/255 >= 0.5: the level from which a stored 8-bit map counts as foreground
FOREGROUND_LEVEL = 128
# PIL modes whose convert("L") keeps value/255 as the probability; 16-bit and float images would be
# clipped or truncated into wrong probabilities without a word.
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")


def read_gray(path: Path, what: str) -> np.ndarray:
    """An 8-bit image file as one uint8 channel (colour images by their luminance).

    Any failure is one ValueError line naming the file. Images over PIL's decompression-bomb limit
    (2 x Image.MAX_IMAGE_PIXELS = 178,956,970 pixels by default) are refused as PIL refuses them:
    real dermoscopy and endoscopy images are far smaller, and scoring one that large would need
    more than 10 GB of memory (docs/metrics.md).
    """
    try:
        with Image.open(path) as image:
            mode = image.mode
            levels = np.asarray(image.convert("L")) if mode in EIGHT_BIT_MODES else None
    except Image.DecompressionBombError as error:
        raise ValueError(
            f"cannot read {what} {path}: {error} segbench keeps PIL's limit; downscale the prediction and its "
            f"mask to the same size under it (every metric is computed at the mask's size)") from None
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {what} {path}: {error}; re-save it as an 8-bit PNG") from None
    if levels is None:
        raise ValueError(f"{what} {path} is a {mode} image, expected 8 bits per pixel; save it as an 8-bit "
                         f"grayscale PNG (value = round(255 x probability); masks 0/255)")
    return levels


def read_mask(path: Path) -> np.ndarray:
    """A mask file as a boolean array: foreground where value/255 >= 0.5 (value >= 128)."""
    return read_gray(path, "mask") >= FOREGROUND_LEVEL


def _per_image_row(image_id: str, probability: np.ndarray, pred: np.ndarray, gt: np.ndarray,
                   field: FieldMetrics) -> dict:
    tp, fp, fn, tn = confusion(pred, gt)
    dice, iou = image_scores(tp, fp, fn)
    return {"id": image_id, "dice": dice, "iou": iou, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "height": gt.shape[0], "width": gt.shape[1], "mask_empty": int(tp + fn == 0),
            **field.add(probability, pred, gt)}


def _summary(rows: list[dict], pooled: PooledConfusion, field: FieldMetrics) -> dict:
    return {
        "n_images": len(rows),
        "pooled": pooled.ratios(),
        "per_image": {
            "dice_mean": float(np.mean([row["dice"] for row in rows])) if rows else 0.0,
            "iou_mean": float(np.mean([row["iou"] for row in rows])) if rows else 0.0,
            "n_empty_masks": sum(row["mask_empty"] for row in rows),
        },
        **field.summary(),
    }


def _levels(probability: torch.Tensor) -> np.ndarray:
    """A probability map as the 8-bit levels a saved prediction has (value = round(255 x p))."""
    return (probability.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


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
    pooled, rows, kept, field = PooledConfusion(), [], [], FieldMetrics()
    for start in tqdm(range(0, len(ids), batch_size), desc=f"evaluate {meta['variant']} on {test_set}",
                      leave=False, mininterval=2.0):
        batch = torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2).to(device)
        output = model(scale_input(batch, cfg["train"]["input_scaling"])).float()
        if start == 0:
            check_output_kind(meta["model"], output)
        probabilities = to_probabilities(output, card)
        for offset, probability in enumerate(probabilities[:, 0]):
            index = start + offset
            pooled.add((probability >= threshold).cpu().numpy(), masks[index] >= FOREGROUND_LEVEL)
            gt = read_mask(mask_dir / f"{ids[index]}.png")
            original = F.interpolate(probability[None, None], size=gt.shape, mode="bilinear", align_corners=False)[0, 0]
            rows.append(_per_image_row(ids[index], _levels(original), (original >= threshold).cpu().numpy(), gt, field))
            if index < cfg["evaluate"]["save_predictions"]:
                kept.append(_levels(probability))
    metrics = {**meta, "test_set": test_set, "threshold": threshold, "size": size, **_summary(rows, pooled, field)}
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
    """Score 8-bit predictions against ground-truth masks paired by file stem, at the mask's size.

    A prediction is a soft probability map (value/255 is the probability; a 0/255 mask is the
    special case): the toolbox metrics read it as it is, the others threshold it at 0.5.
    """
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
    pooled, rows, field = PooledConfusion(), [], FieldMetrics()
    for stem in sorted(truths):
        probability, gt = read_gray(predictions[stem], "prediction"), read_mask(truths[stem])
        if probability.shape != gt.shape:
            raise ValueError(f"{predictions[stem]} is {probability.shape[1]}x{probability.shape[0]} but "
                             f"{truths[stem]} is {gt.shape[1]}x{gt.shape[0]}; predictions must have the mask's size")
        pred = probability >= FOREGROUND_LEVEL
        pooled.add(pred, gt)
        rows.append(_per_image_row(stem, probability, pred, gt, field))
    summary = _summary(rows, pooled, field)
    summary["per_image"].pop("n_empty_masks")
    return summary


def format_score(summary: dict) -> str:
    return json.dumps(summary, indent=2, sort_keys=True)
