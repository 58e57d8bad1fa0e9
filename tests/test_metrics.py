import json

import numpy as np
import pytest
from PIL import Image

from segbench.cli import main
from segbench.evaluate import score_folders
from segbench.metrics import PooledConfusion, confusion, image_scores, ratios


def test_confusion_counts_each_cell():
    pred = np.array([[1, 1, 0, 0]], dtype=bool)
    gt = np.array([[1, 0, 1, 0]], dtype=bool)
    assert confusion(pred, gt) == (1, 1, 1, 1)


def test_ratios_match_hand_computed_values():
    # tp=6, fp=2, fn=4, tn=88 -> IoU 6/12, DSC 12/18, Acc 94/100, Sen 6/10, Spe 88/90
    got = ratios(6, 2, 4, 88)
    assert got == pytest.approx({"miou": 0.5, "dsc": 2 / 3, "acc": 0.94, "sen": 0.6, "spe": 88 / 90})


def test_ratios_with_zero_denominators_are_zero():
    assert ratios(0, 0, 0, 10) == {"miou": 0.0, "dsc": 0.0, "acc": 1.0, "sen": 0.0, "spe": 1.0}


def test_pooled_differs_from_mean_of_images():
    pooled = PooledConfusion()
    big_gt = np.ones((10, 10), bool)
    big_pred = big_gt.copy()
    big_pred[0] = False  # dice 180/190
    small_gt = np.zeros((10, 10), bool)
    small_gt[0, 0] = True
    small_pred = np.zeros((10, 10), bool)  # dice 0
    pooled.add(big_pred, big_gt)
    pooled.add(small_pred, small_gt)
    assert pooled.ratios()["dsc"] == pytest.approx(180 / 191)
    per_image = [image_scores(*confusion(big_pred, big_gt)[:3])[0], image_scores(*confusion(small_pred, small_gt)[:3])[0]]
    assert np.mean(per_image) == pytest.approx((180 / 190) / 2)


@pytest.mark.parametrize("fp, expected", [(0, (1.0, 1.0)), (3, (0.0, 0.0))])
def test_empty_mask_rule(fp, expected):
    assert image_scores(0, fp, 0) == expected


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        confusion(np.zeros((2, 2), bool), np.zeros((2, 3), bool))


def _write_mask(path, array):
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def test_score_cli_on_folders(tmp_path, capsys):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    gt = np.zeros((4, 6), np.uint8)
    gt[:2] = 255  # 12 foreground pixels
    pred = np.zeros((4, 6), np.uint8)
    pred[:3] = 200  # value/255 >= 0.5 -> 18 predicted, 12 of them right
    _write_mask(gt_dir / "a.png", gt)
    _write_mask(pred_dir / "a.png", pred)
    _write_mask(gt_dir / "b.png", gt)
    _write_mask(pred_dir / "b.png", np.full((4, 6), 100, np.uint8))  # below 0.5: empty prediction
    assert main(["score", str(pred_dir), str(gt_dir), "--out", str(tmp_path / "s.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "s.json").read_text())
    assert printed["n_images"] == 2
    # pooled: tp 12, fp 6, fn 12, tn 18
    assert printed["pooled"]["dsc"] == pytest.approx(24 / 42)
    assert printed["pooled"]["miou"] == pytest.approx(12 / 30)
    assert printed["per_image"]["dice_mean"] == pytest.approx((24 / 30 + 0) / 2)
    assert set(printed["per_image"]) == {"dice_mean", "iou_mean"}


def test_score_reports_mismatched_names_and_sizes(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    _write_mask(gt_dir / "a.png", np.zeros((4, 4)))
    _write_mask(pred_dir / "b.png", np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"no prediction .* \['a'\]"):
        score_folders(pred_dir, gt_dir)
    (pred_dir / "b.png").rename(pred_dir / "a.png")
    _write_mask(pred_dir / "a.png", np.zeros((5, 4)))
    with pytest.raises(ValueError, match="must have the mask's size"):
        score_folders(pred_dir, gt_dir)
