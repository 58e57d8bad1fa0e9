"""Issue 8, item 2: atomic outputs. A checkpoint save cut short at any point is detected on resume
and the previous checkpoint used; a write that fails leaves neither a half-written output nor a
temporary file."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from segbench.io import sha256_file

from .helpers import last_lines, limit_file_size, partial_files, segbench, train_args


def truncate_last(checkpoints):
    last = checkpoints / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])


def lose_last_hash(checkpoints):
    (checkpoints / "last.pt.sha256").unlink()
    (checkpoints / ".last.pt.sha256.k1ll3d.tmp").write_text("")


def lose_last(checkpoints):
    last = checkpoints / "last.pt"
    (checkpoints / ".last.pt.k1ll3d.tmp").write_bytes(last.read_bytes()[:1000])
    last.unlink()
    (checkpoints / "last.pt.sha256").unlink()


@pytest.mark.parametrize("cut", [
    pytest.param(truncate_last, id="truncated", marks=pytest.mark.fault(
        "checkpoints/last.pt is truncated (machine lost power or the file was copied half-way)",
        expected="resume detects the sha256 mismatch, says so, continues from last.pt.prev and ends with the "
                 "same model.pt as an uninterrupted run")),
    pytest.param(lose_last_hash, id="no-hash", marks=pytest.mark.fault(
        "the save is killed after last.pt was renamed into place but before its sha256 sidecar was",
        expected="resume reports last.pt as not completely saved, continues from last.pt.prev, same final "
                 "model.pt; the killed writer's temporary file is cleaned up")),
    pytest.param(lose_last, id="no-last", marks=pytest.mark.fault(
        "the save is killed after the old checkpoint became last.pt.prev but before the new last.pt existed",
        expected="resume continues from last.pt.prev (not from scratch), same final model.pt; the killed "
                 "writer's temporary file is cleaned up")),
])
def test_checkpoint_save_cut_short_resumes_from_the_previous_one(tmp_path, two_epoch_run, cut):
    config, reference = two_epoch_run
    run = tmp_path / "run"
    shutil.copytree(reference / "checkpoints", run / "checkpoints")
    cut(run / "checkpoints")

    result = segbench(*train_args(config, run), cwd=tmp_path)

    assert result.returncode == 0, last_lines(result.stderr)
    assert "using the previous checkpoint" in result.stdout and "after epoch 1" in result.stdout, result.stdout
    assert sha256_file(run / "model.pt") == sha256_file(reference / "model.pt"), "model.pt differs from the reference"
    assert partial_files(run) == []


def score_into(tmp_path):
    for folder in ("pred", "gt"):
        (tmp_path / folder).mkdir()
        for index in range(2):
            mask = np.zeros((16, 16), np.uint8)
            mask[4:12, 4 + index : 10 + index] = 255
            Image.fromarray(mask).save(tmp_path / folder / f"{index}.png")
    out = tmp_path / "out" / "score.json"
    return ["score", tmp_path / "pred", tmp_path / "gt", "--out", out], out, str(out)


def prepare_into(tmp_path):
    out = tmp_path / "data" / "processed" / "kvasir"
    return ["data", "prepare", "kvasir", "--source", "synthetic", "--n-test", 4, "--root", tmp_path / "data",
            "--no-progress"], out, "kvasir"


@pytest.mark.parametrize("command", [
    pytest.param(score_into, id="score", marks=pytest.mark.fault(
        "the disk fills up while `segbench score --out` writes its JSON",
        expected="exit non-zero naming the output and the OS error; no output file and no temporary file")),
    pytest.param(prepare_into, id="prepare", marks=pytest.mark.fault(
        "the disk fills up while `segbench data prepare` writes the images of a dataset",
        expected="exit non-zero naming the OS error; no dataset folder (no integrity.json) and no partial folder")),
])
def test_disk_full_while_writing_leaves_no_partial_output(tmp_path, command):
    args, out, named = command(tmp_path)

    result = segbench(*args, cwd=tmp_path, preexec_fn=limit_file_size(64))

    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, last_lines(result.stderr)
    assert "File too large" in result.stderr and named in result.stderr, last_lines(result.stderr)
    assert not out.exists()
    assert partial_files(tmp_path) == []
