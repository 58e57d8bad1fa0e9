"""Issue 8, item 5: concurrency. A second Snakemake on the same results is refused by Snakemake's lock;
a second `segbench train` into a run folder that a running training owns is refused. (The GPU slot
allocator surviving a SIGKILLed job is proven by tests/test_gpu_slots.py, listed in the report.)"""
from __future__ import annotations

import signal

import pytest

from conftest import run_tool
from segbench.checkpoint import load_checkpoint

from .helpers import (SEGBENCH, kill_group, last_lines, partial_files, segbench, snakemake_command, start,
                      tiny_config, train_args, train_config, wait_until, write_yaml)


@pytest.mark.slow
@pytest.mark.fault(
    "a second `snakemake` is started on the same results folder while the first one runs",
    expected="the second is refused by Snakemake's lock (non-zero exit, 'cannot be locked') before running "
             "any job; the first run keeps running and its checkpoint stays valid",
)
def test_second_snakemake_on_the_same_results_is_refused(project_copy):
    config = write_yaml(project_copy / "tiny.yaml", tiny_config(train={"epochs": 500}))
    target = "results/polyp/unet/seed0/model.pt"
    checkpoint = project_copy / "results/polyp/unet/seed0/checkpoints/last.pt"
    first = start(snakemake_command(config, target), project_copy, project_copy / "first.log")
    try:
        wait_until(lambda: checkpoint.with_name("last.pt.sha256").exists(), first, what="the first run's training")

        second = run_tool(snakemake_command(config, target), project_copy, check=False)

        assert second.returncode != 0, last_lines(second.stdout)
        assert "cannot be locked" in second.stdout + second.stderr, last_lines(second.stderr)
        assert first.poll() is None, "the first run died: " + last_lines((project_copy / "first.log").read_text())
        assert "rule train" not in second.stdout + second.stderr
    finally:
        kill_group(first, signal.SIGINT)
    assert load_checkpoint(checkpoint)["epoch"] >= 1
    assert partial_files(project_copy / "results") == []


@pytest.mark.fault(
    "a second `segbench train --out DIR` is started while a first training writes DIR",
    expected="the second exits 2 at once, naming DIR and saying another training holds it; the first trains on, "
             "its checkpoint stays valid, no temporary files",
)
def test_second_training_into_the_same_run_folder_is_refused(tmp_path, data_root):
    config = train_config(tmp_path / "long.yaml", data_root, train={"epochs": 500})
    run = tmp_path / "run"
    first = start([SEGBENCH, *map(str, train_args(config, run))], tmp_path, tmp_path / "first.log")
    try:
        wait_until(lambda: (run / "checkpoints" / "last.pt.sha256").exists(), first, what="the first training")

        second = segbench(*train_args(config, run), cwd=tmp_path, timeout=120)

        assert first.poll() is None, "the first training died: " + last_lines((tmp_path / "first.log").read_text())
        assert second.returncode == 2, last_lines(second.stdout + second.stderr)
        assert str(run) in second.stderr and "another" in second.stderr, last_lines(second.stderr)
        assert "epoch 1:" not in second.stdout, "the second training trained into the same folder"
    finally:
        kill_group(first, signal.SIGTERM)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] >= 1
    assert not (run / "model.pt").exists()
    assert partial_files(run) == []
