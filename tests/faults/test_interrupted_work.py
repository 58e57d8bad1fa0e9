"""Issue 8, item 3: interrupted work. A training killed at a random step resumes to the same weights;
a NaN loss stops with the step named; a full disk while saving keeps the previous checkpoint."""
from __future__ import annotations

import csv
import json
import math
import random
import re
import shutil
import signal
import time

import pytest

from conftest import run_tool
from segbench.checkpoint import load_checkpoint
from segbench.data import load_cache
from segbench.io import sha256_file

from .helpers import (FAULT_SEED, TRAIN_SET, kill_group, last_lines, limit_file_size, partial_files, segbench,
                      snakemake_command, start, tiny_config, train_args, train_config, wait_until, write_yaml)

GOES_NAN = '''
from torch import nn
from segbench.registry import ModelCard, register_model


class GoesNaN(nn.Module):
    """A one-layer net whose output turns NaN from the (after+1)-th training forward pass on."""

    def __init__(self, after: int):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        self.after = after
        self.calls = 0

    def forward(self, x):
        out = self.conv(x)
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                return out * float("nan")
        return out


@register_model(card=ModelCard(paper="fault injection", origin="tests/faults", input_divisor=1))
def goes_nan(after: int = 4, **kwargs) -> nn.Module:
    return GoesNaN(after)
'''


# The columns of train_log.csv that an interrupted run must reproduce exactly (not its measured speed).
LEARNING_COLUMNS = ("epoch", "steps", "lr", "train_loss", "val_loss", "val_dsc")


def log_without_timing(path) -> list[dict]:
    with open(path, newline="") as handle:
        return [{key: row[key] for key in LEARNING_COLUMNS} for row in csv.DictReader(handle)]


@pytest.mark.slow
@pytest.mark.fault(
    "`segbench train` under Snakemake is SIGKILLed (with Snakemake itself) at a random moment mid-training",
    expected="`snakemake --unlock` then `snakemake --rerun-incomplete` resumes from the last checkpoint and ends "
             "with bit-identical model.pt (sha256), the same train log and the same metrics.json as an "
             "uninterrupted run",
)
def test_sigkill_mid_training_then_rerun_incomplete_gives_identical_results(project_copy):
    rng = random.Random(FAULT_SEED)
    epochs = 16
    config = write_yaml(project_copy / "tiny.yaml", tiny_config(train={"epochs": epochs, "batch_size": 2}))
    target = "results/polyp/unet/seed0/eval/kvasir/metrics.json"
    run_dir = project_copy / "results/polyp/unet/seed0"
    metrics = project_copy / target
    train_log = project_copy / "logs/train/polyp/unet/seed0.log"

    run_tool(snakemake_command(config, target), project_copy)
    reference = {"model": sha256_file(run_dir / "model.pt"), "log": log_without_timing(run_dir / "train_log.csv"),
                 "metrics": json.loads(metrics.read_text())}
    shutil.rmtree(project_copy / "results" / "polyp")
    train_log.unlink()

    # A random moment: a random delay after a random epoch ended, so the kill lands mid-epoch or mid-save.
    after_epoch, delay = rng.randint(1, epochs // 3), rng.uniform(0.0, 0.25)
    process = start(snakemake_command(config, target), project_copy, project_copy / "killed.log")
    epoch_done = re.compile(rf"epoch {after_epoch}[:/]")
    wait_until(lambda: train_log.exists() and epoch_done.search(train_log.read_text()), process,
               what=f"epoch {after_epoch} of the training")
    time.sleep(delay)
    kill_group(process, signal.SIGKILL)
    assert not (run_dir / "model.pt").exists(), f"training finished within {delay:.2f} s; raise epochs"
    killed_at = load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"]
    assert killed_at < epochs

    locked = run_tool(snakemake_command(config, target), project_copy, check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    run_tool(snakemake_command(config, "--unlock"), project_copy)
    run_tool(snakemake_command(config, target, "--rerun-incomplete"), project_copy)

    assert f"after epoch {killed_at}" in train_log.read_text(), last_lines(train_log.read_text())
    assert sha256_file(run_dir / "model.pt") == reference["model"], "model.pt differs from the uninterrupted run's"
    assert log_without_timing(run_dir / "train_log.csv") == reference["log"]
    assert json.loads(metrics.read_text()) == reference["metrics"]
    assert partial_files(project_copy / "results") == []


@pytest.mark.fault(
    "the loss becomes NaN in the middle of an epoch (a model whose output turns NaN)",
    expected="`segbench train` exits 2 with an error naming the epoch and step; the last good checkpoint "
             "(previous epoch) is kept and loads; no model.pt, no temporary files",
)
def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, data_root):
    models = tmp_path / "models"
    models.mkdir()
    (models / "goes_nan.py").write_text(GOES_NAN)
    _, train_images, _ = load_cache(data_root / "cache" / f"{TRAIN_SET}_32.npz", "train")
    batch_size = 4
    steps_per_epoch = math.ceil(len(train_images) / batch_size)
    config = train_config(tmp_path / "nan.yaml", data_root, models=["goes_nan"],
                          model_args={"goes_nan": {"after": steps_per_epoch + 1}},
                          train={"epochs": 3, "batch_size": batch_size})
    out = tmp_path / "run"

    result = segbench(*train_args(config, out, "goes_nan"), cwd=tmp_path, SEGBENCH_MODELS_DIR=str(models))

    assert result.returncode == 2, last_lines(result.stderr)
    assert "Traceback" not in result.stderr, last_lines(result.stderr)
    assert "loss is nan at epoch 2, step 2" in result.stderr
    assert str(out / "checkpoints" / "last.pt") in result.stderr
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1
    assert not (out / "model.pt").exists() and not (out / "manifest.json").exists()
    assert partial_files(out) == []


@pytest.mark.fault(
    "the disk fills up while a checkpoint is saved (RLIMIT_FSIZE: writes fail with EFBIG)",
    expected="`segbench train` exits 2 naming the checkpoint and the OS error; the previous checkpoint stays "
             "intact and loadable, no temporary file is left, and a rerun resumes from it",
)
def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, two_epoch_run):
    config, reference = two_epoch_run
    run = tmp_path / "run"
    checkpoint = run / "checkpoints" / "last.pt"
    checkpoint.parent.mkdir(parents=True)
    for suffix in ("", ".sha256"):  # the state after epoch 1, as if the run had stopped there
        shutil.copy(reference / "checkpoints" / f"last.pt.prev{suffix}", checkpoint.with_name(f"last.pt{suffix}"))
    saved = checkpoint.read_bytes()

    full = segbench(*train_args(config, run), cwd=tmp_path, preexec_fn=limit_file_size(len(saved) // 2))

    assert full.returncode == 2, last_lines(full.stderr)
    assert "Traceback" not in full.stderr, last_lines(full.stderr)
    assert "File too large" in full.stderr and "last.pt" in full.stderr
    assert not (run / "model.pt").exists()
    assert partial_files(run) == []
    assert load_checkpoint(checkpoint)["epoch"] == 1
    previous = checkpoint if checkpoint.exists() else checkpoint.with_name("last.pt.prev")
    assert previous.read_bytes() == saved

    rerun = segbench(*train_args(config, run), cwd=tmp_path)
    assert rerun.returncode == 0, last_lines(rerun.stderr)
    assert "after epoch 1" in rerun.stdout, last_lines(rerun.stdout)
    assert (run / "model.pt").exists()
