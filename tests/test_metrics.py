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


# PraNet-toolbox metrics (pysodmetrics) and boundary metrics (MONAI): segbench.field_metrics


def _square_mask(height=12, width=16, top=4, left=5, side=4):
    """A centred square far enough from the border (3 px) that the 7x7 wFm kernel sees only it."""
    gt = np.zeros((height, width), bool)
    gt[top : top + side, left : left + side] = True
    return gt


def _one_image(probability, gt, prediction=None):
    from segbench.field_metrics import FieldMetrics

    field = FieldMetrics()
    row = field.add(probability, probability >= 128 if prediction is None else prediction, gt)
    return row, field


def test_perfect_prediction_gives_each_metrics_known_extreme():
    gt = _square_mask()
    n, g = gt.size, int(gt.sum())
    row, field = _one_image(gt.astype(np.uint8) * 255, gt)
    # 255 of the 256 thresholds (>= 255/255 ... >= 1/255) reproduce the mask; >= 0 marks every pixel
    assert row["mean_dice"] == pytest.approx((255 + 2 * g / (g + n)) / 256)
    assert row["mean_iou"] == pytest.approx((255 + g / n) / 256)
    # E-measure divides by N - 1 (as the MATLAB code), so a perfect map scores N / (N - 1); the
    # all-foreground map of threshold 0 aligns with nothing and scores N / 4 / (N - 1)
    assert row["max_em"] == pytest.approx(n / (n - 1))
    assert row["mean_em"] == pytest.approx((255 * n / (n - 1) + n / 4 / (n - 1)) / 256)
    assert row["wfm"] == pytest.approx(1.0)
    assert row["s_measure"] == pytest.approx(1.0)
    assert row["mae"] == 0.0
    assert (row["hd95"], row["nsd"]) == (0.0, 1.0)
    assert field.n_boundary_undefined == 0


def test_empty_prediction_gives_each_metrics_known_extreme():
    gt = _square_mask()
    n, g = gt.size, int(gt.sum())
    row, field = _one_image(np.zeros(gt.shape, np.uint8), gt)
    assert row["mean_dice"] == pytest.approx(2 * g / (g + n) / 256)  # only threshold 0 finds anything
    assert row["mean_iou"] == pytest.approx(g / n / 256)
    assert (row["max_em"], row["mean_em"]) == pytest.approx((n / 4 / (n - 1), n / 4 / (n - 1)))
    assert row["wfm"] == pytest.approx(0.0)
    # object score: the background is perfect (1 - y), the lesion 0; all four quadrants mix lesion and
    # background, where a constant map has no structure: region score 0
    assert row["s_measure"] == pytest.approx((1 - g / n) / 2)
    assert row["mae"] == pytest.approx(g / n)
    assert row["hd95"] == pytest.approx(np.hypot(*gt.shape))  # the diagonal: no predicted boundary
    assert row["nsd"] == 0.0
    assert field.n_boundary_undefined == 1


def test_both_empty_is_a_perfect_boundary_and_not_counted():
    empty = np.zeros((8, 8), bool)
    row, field = _one_image(np.zeros((8, 8), np.uint8), empty)
    assert (row["hd95"], row["nsd"]) == (0.0, 1.0)
    assert field.n_boundary_undefined == 0
    assert field.summary()["boundary"] == {"hd95": 0.0, "nsd": 1.0, "nsd_tolerance_px": 2, "n_boundary_undefined": 0}


SOFT_MAP = np.array([
    [20, 20, 40, 60, 40, 20, 20],
    [20, 90, 150, 200, 140, 60, 20],
    [30, 140, 220, 220, 210, 100, 20],
    [30, 130, 210, 220, 180, 90, 25],
    [20, 60, 120, 160, 100, 40, 20],
    [20, 20, 30, 50, 30, 20, 20],
], np.uint8)  # min 20, max 220: the toolbox's min-max normalisation matters


def _soft_gt():
    gt = np.zeros(SOFT_MAP.shape, bool)
    gt[1:4, 2:5] = True
    gt[4, 3] = True
    return gt


def _normalised(levels):
    """MATLAB's mapminmax(im2double(map)) of the toolbox."""
    p = levels / 255
    return (p - p.min()) / (p.max() - p.min())


def _toolbox_dice_iou(p, gt):
    """Fmeasure_calu.m at each threshold 1:-1/255:0: 0 when nothing is hit, else the usual ratios."""
    dices, ious = [], []
    for t in range(255, -1, -1):
        binary = p >= t / 255
        tp = np.count_nonzero(binary & gt)
        dices.append(0.0 if tp == 0 else 2 * tp / (gt.sum() + binary.sum()))
        ious.append(0.0 if tp == 0 else tp / np.count_nonzero(binary | gt))
    return np.array(dices), np.array(ious)


def _edges(mask):
    """Pixels of the mask with a 4-neighbour outside it (the image border counts as outside)."""
    padded = np.pad(mask, 1)
    interior = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return np.argwhere(mask & ~interior)


def _brute_force_boundary(pred, gt, tolerance):
    a, b = _edges(pred), _edges(gt)
    distances = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2))
    a_to_b, b_to_a = distances.min(axis=1), distances.min(axis=0)
    hd95 = max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95))
    nsd = (np.count_nonzero(a_to_b <= tolerance) + np.count_nonzero(b_to_a <= tolerance)) / (len(a) + len(b))
    return hd95, nsd


def test_toolbox_columns_equal_a_direct_computation():
    gt = _soft_gt()
    row, _ = _one_image(SOFT_MAP, gt)
    p = _normalised(SOFT_MAP)
    dices, ious = _toolbox_dice_iou(p, gt)
    assert row["mean_dice"] == pytest.approx(dices.mean())
    assert row["mean_iou"] == pytest.approx(ious.mean())
    assert row["mae"] == pytest.approx(np.abs(p - gt).mean())


def test_boundary_columns_equal_brute_force_distances():
    from segbench.field_metrics import NSD_TOLERANCE_PX

    gt = np.zeros((20, 24), bool)
    gt[0:9, 0:10] = True  # touches the image border: the border is part of its outline
    gt[14:18, 18:22] = True  # a second component
    pred = np.zeros_like(gt)
    pred[1:11, 0:12] = True
    pred[15:18, 16:21] = True
    pred[3, 20] = True  # an isolated false positive far from both
    row, field = _one_image(pred.astype(np.uint8) * 255, gt)
    hd95, nsd = _brute_force_boundary(pred, gt, NSD_TOLERANCE_PX)
    assert 0 < nsd < 1 and hd95 > 1
    assert row["hd95"] == pytest.approx(hd95, rel=1e-6)
    assert row["nsd"] == pytest.approx(nsd)
    assert field.n_boundary_undefined == 0


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")  # MONAI's own internal call
def test_columns_agree_with_the_libraries_called_directly():
    import py_sod_metrics
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    gt = _soft_gt()
    row, _ = _one_image(SOFT_MAP, gt)
    gt_levels = gt.astype(np.uint8) * 255
    evaluators = {"wfm": py_sod_metrics.WeightedFmeasure(beta=1), "s_measure": py_sod_metrics.Smeasure(alpha=0.5),
                  "em": py_sod_metrics.Emeasure(), "mae": py_sod_metrics.MAE()}
    for evaluator in evaluators.values():
        evaluator.step(SOFT_MAP, gt_levels)
    curve = evaluators["em"].get_results()["em"]["curve"]
    assert len(curve) == 256
    assert row["wfm"] == pytest.approx(evaluators["wfm"].get_results()["wfm"])
    assert row["s_measure"] == pytest.approx(evaluators["s_measure"].get_results()["sm"])
    assert (row["mean_em"], row["max_em"]) == pytest.approx((curve.mean(), curve.max()))
    assert row["mae"] == pytest.approx(evaluators["mae"].get_results()["mae"])
    # MONAI's own way in: one-hot (background, foreground), background channel left out
    pred = SOFT_MAP >= 128
    one_hot = [torch.from_numpy(np.stack([~mask, mask]))[None] for mask in (pred, gt)]
    assert row["hd95"] == pytest.approx(float(compute_hausdorff_distance(*one_hot, percentile=95)))
    assert row["nsd"] == pytest.approx(float(compute_surface_dice(*one_hot, class_thresholds=[2])))


def test_test_set_blocks_aggregate_as_the_toolbox():
    import py_sod_metrics

    from segbench.field_metrics import FieldMetrics

    first_gt, second_gt = _soft_gt(), np.zeros(SOFT_MAP.shape, bool)
    second_gt[3:, :3] = True
    second_map = np.rot90(SOFT_MAP, 2).copy()  # its peak sits far from its lesion
    field, rows, curves = FieldMetrics(), [], []
    for levels, gt in ((SOFT_MAP, first_gt), (second_map, second_gt)):
        rows.append(field.add(levels, levels >= 128, gt))
        direct = py_sod_metrics.Emeasure()
        direct.step(levels, gt.astype(np.uint8) * 255)
        curves.append(direct.get_results()["em"]["curve"])
    summary = field.summary()
    toolbox, boundary = summary["toolbox"], summary["boundary"]
    mean_curve = np.mean(curves, axis=0)
    assert toolbox["max_em"] == pytest.approx(mean_curve.max())  # the max of the mean curve ...
    assert toolbox["max_em"] < np.mean([row["max_em"] for row in rows]) - 1e-3  # ... not the mean of maxima
    assert toolbox["mean_em"] == pytest.approx(mean_curve.mean())
    dice_curves = [_toolbox_dice_iou(_normalised(levels), gt)[0] for levels, gt in ((SOFT_MAP, first_gt),
                                                                                     (second_map, second_gt))]
    assert toolbox["mean_dice"] == pytest.approx(np.mean(dice_curves, axis=0).mean())
    for key in ("mean_dice", "mean_iou", "wfm", "s_measure", "mae"):
        assert toolbox[key] == pytest.approx(np.mean([row[key] for row in rows])), key
    assert boundary["hd95"] == pytest.approx(np.mean([row["hd95"] for row in rows]))
    assert boundary["nsd"] == pytest.approx(np.mean([row["nsd"] for row in rows]))
    assert set(toolbox) == {"mean_dice", "mean_iou", "wfm", "s_measure", "mean_em", "max_em", "mae"}
    assert all(0.0 <= value <= 1.0 for value in toolbox.values())
