"""`segbench score` through the real command line: soft probability maps, new metric blocks, bad files."""
import json
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_tool
from segbench.cli import main
from test_metrics import SOFT_MAP, _brute_force_boundary, _normalised, _soft_gt, _toolbox_dice_iou


def _score(tmp_path, pred_dir, gt_dir):
    return run_tool([sys.executable, "-m", "segbench.cli", "score", str(pred_dir), str(gt_dir),
                     "--out", str(tmp_path / "score.json")], REPO, check=False)


def _folders(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    return pred_dir, gt_dir


def test_score_reads_soft_maps_and_reports_the_toolbox_and_boundary_blocks(tmp_path):
    pred_dir, gt_dir = _folders(tmp_path)
    soft_gt = _soft_gt()
    binary_gt = np.zeros((10, 12), bool)
    binary_gt[2:7, 3:9] = True
    binary_pred = np.zeros_like(binary_gt)
    binary_pred[3:8, 3:10] = True
    pairs = {"soft": (SOFT_MAP, soft_gt), "binary": (binary_pred.astype(np.uint8) * 255, binary_gt)}
    for stem, (levels, gt) in pairs.items():
        Image.fromarray(levels).save(pred_dir / f"{stem}.png")
        Image.fromarray(gt.astype(np.uint8) * 255).save(gt_dir / f"{stem}.png")
    result = _score(tmp_path, pred_dir, gt_dir)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed == json.loads((tmp_path / "score.json").read_text())
    assert set(printed) == {"n_images", "pooled", "per_image", "toolbox", "boundary"}
    assert printed["n_images"] == 2

    # the soft map is thresholded at value/255 >= 0.5 for the existing blocks and the boundary block
    thresholded = {stem: (levels >= 128, gt) for stem, (levels, gt) in pairs.items()}
    tp = sum(np.count_nonzero(pred & gt) for pred, gt in thresholded.values())
    fp = sum(np.count_nonzero(pred & ~gt) for pred, gt in thresholded.values())
    fn = sum(np.count_nonzero(~pred & gt) for pred, gt in thresholded.values())
    assert printed["pooled"]["dsc"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    dices = [2 * np.count_nonzero(p & g) / (p.sum() + g.sum()) for p, g in thresholded.values()]
    ious = [np.count_nonzero(p & g) / np.count_nonzero(p | g) for p, g in thresholded.values()]
    assert printed["per_image"] == pytest.approx({"dice_mean": np.mean(dices), "iou_mean": np.mean(ious)})

    # the toolbox block reads the soft map itself
    curves = [_toolbox_dice_iou(_normalised(levels), gt)[0] for levels, gt in pairs.values()]
    assert printed["toolbox"]["mean_dice"] == pytest.approx(np.mean(curves))
    maes = [np.abs(_normalised(levels) - gt).mean() for levels, gt in pairs.values()]
    assert printed["toolbox"]["mae"] == pytest.approx(np.mean(maes))
    boundary = [_brute_force_boundary(pred, gt, 2) for pred, gt in thresholded.values()]
    assert printed["boundary"] == pytest.approx({"hd95": np.mean([b[0] for b in boundary]),
                                                 "nsd": np.mean([b[1] for b in boundary]),
                                                 "nsd_tolerance_px": 2, "n_boundary_undefined": 0})


def test_a_400_megapixel_png_is_one_line_naming_the_file_its_size_and_the_limit(tmp_path):
    pred_dir, gt_dir = _folders(tmp_path)
    Image.new("1", (20000, 20000)).save(pred_dir / "huge.png")  # 48 KB on disk, 400 megapixels decoded
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(gt_dir / "huge.png")
    result = _score(tmp_path, pred_dir, gt_dir)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(pred_dir / "huge.png") in lines[0]
    assert "400000000 pixels" in lines[0] and f"{2 * Image.MAX_IMAGE_PIXELS} pixels" in lines[0]
    assert "downscale" in lines[0]
    assert not (tmp_path / "score.json").exists()


@pytest.mark.parametrize("write, expected", [
    (lambda path: path.write_bytes(b"not an image at all"), "cannot identify image file"),
    (lambda path: path.write_bytes(_png_bytes()[:60]), "cannot read prediction"),
    (lambda path: Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(path), "expected 8 bits per pixel"),
])
def test_unreadable_or_16_bit_predictions_are_one_line(tmp_path, capsys, write, expected):
    pred_dir, gt_dir = _folders(tmp_path)
    write(pred_dir / "a.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(gt_dir / "a.png")
    assert main(["score", str(pred_dir), str(gt_dir)]) == 2  # in-process: an unexpected exception would raise
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and str(pred_dir / "a.png") in lines[0], lines


def _png_bytes():
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()
