"""The independent attack on the suite, item 4: checkpoints. A save killed at every step of its sequence keeps
the progress (the real `segbench train` resumes from the newest checkpoint that verifies, never from
scratch); a crafted last.pt.prev is refused like a crafted last.pt; a damaged checkpoint is a one-line
message, never a traceback."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import tool_env
from segbench.io import sha256_file

from .helpers import error_line, last_lines, partial_files, segbench, train_args

# Runs save_checkpoint(target, the state saved at source) with os.replace, the one call by which each step
# of the save takes effect, made to stop the process just before its KILL_AT-th call.
KILLED_SAVE = '''
import os, sys
from segbench.checkpoint import load_checkpoint, save_checkpoint

source, target, kill_at, how = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
state = load_checkpoint(source)
real_replace, calls = os.replace, []


def replace(*args, **kwargs):
    calls.append(args)
    if len(calls) == kill_at:
        if how == "sigterm":
            raise SystemExit(143)  # what segbench's SIGTERM handler raises: the stack unwinds
        os._exit(137)  # SIGKILL, power loss: nothing runs after this point
    return real_replace(*args, **kwargs)


os.replace = replace
save_checkpoint(target, state)
print(f"completed after {len(calls)} replace calls")
'''
SAVE_STEPS = {
    1: "before last.pt is rotated to last.pt.prev",
    2: "between the rotation's two renames (last.pt.prev has no sidecar of its own yet)",
    3: "after the rotation, before the new last.pt is renamed into place",
    4: "after the new last.pt is in place, before its sha256 sidecar is",
}


def resumable_run(tmp_path, reference):
    """A run folder whose last.pt is the reference's epoch-1 checkpoint (the state before epoch 2 is saved)."""
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for suffix in ("", ".sha256"):
        shutil.copy(reference / "checkpoints" / f"last.pt.prev{suffix}", checkpoints / f"last.pt{suffix}")
    return tmp_path / "run"


@pytest.mark.parametrize("kill_at, how", [
    pytest.param(step, "sigkill", id=f"sigkill-step{step}", marks=pytest.mark.fault(
        f"the process saving the epoch-2 checkpoint is killed outright {when}",
        expected="`segbench train` resumes after epoch 1 (never from scratch), ends with the uninterrupted run's "
                 "model.pt (sha256), and no temporary file is left")) for step, when in SAVE_STEPS.items()
] + [
    pytest.param(step, "sigterm", id=f"sigterm-step{step}", marks=pytest.mark.fault(
        f"the save is stopped by SIGTERM (the stack unwinds) {SAVE_STEPS[step]}",
        expected="`segbench train` resumes after epoch 1, same model.pt; no temporary file is left"))
    for step in (2, 4)
])
def test_checkpoint_save_killed_at_any_step_keeps_the_progress(tmp_path, two_epoch_run, kill_at, how):
    config, reference = two_epoch_run
    run = resumable_run(tmp_path, reference)
    killed = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(reference / "checkpoints" / "last.pt"),
                             str(run / "checkpoints" / "last.pt"), str(kill_at), how],
                            env=tool_env(), capture_output=True, text=True)
    assert killed.returncode in (137, 143) and "completed" not in killed.stdout, killed.stdout + killed.stderr

    result = segbench(*train_args(config, run), cwd=tmp_path)

    assert result.returncode == 0, last_lines(result.stderr)
    assert "from scratch" not in result.stdout and "after epoch 1" in result.stdout, last_lines(result.stdout)
    assert sha256_file(run / "model.pt") == sha256_file(reference / "model.pt"), "model.pt differs from the reference"
    assert partial_files(run) == []


class RunsCode:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def with_sidecar(path):
    path.with_name(path.name + ".sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")


@pytest.mark.parametrize("last", [
    pytest.param("truncated", id="last-truncated", marks=pytest.mark.fault(
        "a crafted checkpoints/last.pt.prev (valid sidecar) that would run code, beside a truncated last.pt",
        expected="`segbench train` refuses last.pt.prev with the same one-line error as an unsafe last.pt (exit 2, "
                 "'refusing to unpickle'); it does not fall back past it or start from scratch; the code never runs")),
    pytest.param("missing", id="last-missing", marks=pytest.mark.fault(
        "a crafted checkpoints/last.pt.prev that would run code, and no last.pt (a save cut after the rotation)",
        expected="`segbench train` refuses last.pt.prev on one line (exit 2); no model.pt; the code never runs")),
])
def test_crafted_previous_checkpoint_is_refused(tmp_path, two_epoch_run, last):
    config, reference = two_epoch_run
    run = tmp_path / "run"
    shutil.copytree(reference / "checkpoints", run / "checkpoints")
    checkpoint = run / "checkpoints" / "last.pt"
    previous = checkpoint.with_name("last.pt.prev")
    marker = tmp_path / "marker"
    torch.save({"model": {}, "epoch": 1, "log": [RunsCode(f"open({str(marker)!r}, 'w')")]}, previous)
    with_sidecar(previous)
    if last == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    else:
        checkpoint.unlink()
        checkpoint.with_name("last.pt.sha256").unlink()

    result = segbench(*train_args(config, run), cwd=tmp_path)

    message = error_line(result, "train")
    assert not marker.exists(), "unpickling ran code from the crafted file"
    assert message.startswith(f"{previous}: ") and "refusing to unpickle" in message, message
    assert "from scratch" not in result.stdout
    assert not (run / "model.pt").exists()


@pytest.mark.fault(
    "checkpoints/last.pt cut short with a sidecar that matches the cut file (both copied half-way by a sync tool)",
    expected="`segbench train` prints one warning line naming last.pt as not loadable, resumes from last.pt.prev "
             "and ends with the uninterrupted run's model.pt; no traceback",
)
def test_damaged_checkpoint_with_a_matching_hash_is_one_line(tmp_path, two_epoch_run):
    config, reference = two_epoch_run
    run = tmp_path / "run"
    shutil.copytree(reference / "checkpoints", run / "checkpoints")
    checkpoint = run / "checkpoints" / "last.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    with_sidecar(checkpoint)

    result = segbench(*train_args(config, run), cwd=tmp_path)

    assert result.returncode == 0, last_lines(result.stderr)
    assert "Traceback" not in result.stderr, last_lines(result.stderr)
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {checkpoint}: not a loadable checkpoint"), \
        last_lines(result.stdout)
    assert "after epoch 1" in result.stdout
    assert sha256_file(run / "model.pt") == sha256_file(reference / "model.pt")
