"""evaluate_run on a real prepared, split and cached test set: the new columns and blocks, the output-kind guard."""
import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import TINY_CONFIG, write_config
from segbench.config import load_config
from segbench.data import cache_file
from segbench.data.cache import build_cache
from segbench.data.prepare import prepare_synthetic
from segbench.data.splits import write_split
from segbench.data.synthetic import SyntheticSettings
from segbench.evaluate import PER_IMAGE_COLUMNS, evaluate_run, read_mask
from segbench.registry import OutputKindError, create_model, get_card
from segbench.transforms import scale_input

SIZE = 32
EXISTING_COLUMNS = ["id", "dice", "iou", "tp", "fp", "fn", "tn", "height", "width", "mask_empty"]
NEW_COLUMNS = ["mean_dice", "mean_iou", "wfm", "s_measure", "mean_em", "max_em", "mae", "hd95", "nsd"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    processed = root / "processed" / "kvasir"
    prepare_synthetic("kvasir", SyntheticSettings(seed=0, n_test=5, min_side=40, max_side=72), processed,
                      progress=False)
    write_split("kvasir", processed, root / "splits" / "kvasir.csv")
    build_cache("kvasir", processed, root / "splits" / "kvasir.csv", SIZE, cache_file(root, "kvasir", SIZE),
                progress=False)
    return root


def _config(tmp_path, data_root):
    return load_config(write_config(tmp_path / "cfg.yaml", image_size=SIZE,
                                    data={**TINY_CONFIG["data"], "root": str(data_root)},
                                    evaluate={"batch_size": 2, "save_predictions": 2}))


def _meta(model_name):
    return {"protocol": "polyp", "variant": model_name, "model": model_name, "seed": 0}


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")  # MONAI's own internal call
def test_new_columns_and_blocks_match_the_libraries_on_the_models_own_maps(tmp_path, data_root):
    import py_sod_metrics
    from monai.metrics import compute_hausdorff_distance

    torch.manual_seed(0)
    model = create_model("unet", **get_card("unet").test_kwargs).eval()
    cfg = _config(tmp_path, data_root)
    out = tmp_path / "eval"
    metrics = evaluate_run(model, get_card("unet"), cfg, "kvasir", out, _meta("unet"), torch.device("cpu"))

    with open(out / "per_image.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == PER_IMAGE_COLUMNS == EXISTING_COLUMNS + NEW_COLUMNS
        rows = list(reader)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert set(metrics) >= {"pooled", "per_image", "toolbox", "boundary"}
    assert set(metrics["per_image"]) == {"dice_mean", "iou_mean", "n_empty_masks"}
    assert set(metrics["toolbox"]) == {"mean_dice", "mean_iou", "wfm", "s_measure", "mean_em", "max_em", "mae"}
    assert metrics["boundary"]["nsd_tolerance_px"] == 2
    assert metrics["boundary"]["n_boundary_undefined"] == sum(
        (float(row["tp"]) + float(row["fp"]) == 0) != (row["mask_empty"] == "1") for row in rows)
    for key in ("mean_dice", "mean_iou", "wfm", "s_measure", "mean_em", "mae"):
        assert metrics["toolbox"][key] == pytest.approx(np.mean([float(row[key]) for row in rows])), key
    assert metrics["boundary"]["hd95"] == pytest.approx(np.mean([float(row["hd95"]) for row in rows]))

    # the same image, recomputed here from the model's map resized to the mask, through the libraries
    from segbench.data import load_cache

    ids, images, _ = load_cache(cache_file(data_root, "kvasir", SIZE), "test")
    gt = read_mask(data_root / "processed" / "kvasir" / "masks" / f"{ids[0]}.png")
    with torch.no_grad():
        batch = torch.from_numpy(images[:1]).permute(0, 3, 1, 2)
        probability = torch.sigmoid(model(scale_input(batch, cfg["train"]["input_scaling"])))
        resized = F.interpolate(probability, size=gt.shape, mode="bilinear", align_corners=False)[0, 0]
    levels = (resized * 255).round().to(torch.uint8).numpy()
    wfm, em = py_sod_metrics.WeightedFmeasure(beta=1), py_sod_metrics.Emeasure()
    for evaluator in (wfm, em):
        evaluator.step(levels, gt.astype(np.uint8) * 255)
    first = rows[0]
    assert first["id"] == ids[0]
    assert float(first["wfm"]) == pytest.approx(wfm.get_results()["wfm"])
    assert float(first["max_em"]) == pytest.approx(em.get_results()["em"]["curve"].max())
    pred = (resized >= cfg["evaluate"]["threshold"]).numpy()
    assert pred.any() and gt.any(), "this seed's untrained model must predict some foreground on the first image"
    expected = compute_hausdorff_distance(torch.from_numpy(pred)[None, None], torch.from_numpy(gt)[None, None],
                                          include_background=True, percentile=95)
    assert float(first["hd95"]) == pytest.approx(float(expected))


def test_a_probabilities_card_whose_model_returns_logits_stops_before_any_file(tmp_path, data_root):
    logits_model = nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        logits_model.weight.fill_(0.01)
        logits_model.bias.fill_(-3.0)  # values around -3: a logit map, not probabilities
    out = tmp_path / "eval"
    with pytest.raises(OutputKindError, match=r"vmunet.*output='probabilities'"):
        evaluate_run(logits_model, get_card("vmunet"), _config(tmp_path, data_root), "kvasir", out,
                     _meta("vmunet"), torch.device("cpu"))
    assert not out.exists()


def test_a_logits_card_whose_model_returns_probabilities_warns(tmp_path, data_root):
    probability_model = nn.Sequential(nn.Conv2d(3, 1, 1), nn.Sigmoid())
    with pytest.warns(UserWarning, match=r"only values in \[0, 1\].*output='logits'"):
        metrics = evaluate_run(probability_model, get_card("unet"), _config(tmp_path, data_root), "kvasir",
                               tmp_path / "eval", _meta("unet"), torch.device("cpu"))
    assert metrics["n_images"] == 5
