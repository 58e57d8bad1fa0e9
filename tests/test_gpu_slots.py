"""The GPU slot allocator with fake device ids, across real processes (flock is per open file)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segbench.gpu_slots import gpu_slot, visible_gpu_ids

# Holds a slot until the file `release` appears (or until it is killed), after reporting which
# slot it got in `ready`. Intervals are recorded so overlapping use of one id can be detected.
HOLDER = r"""
import json, os, sys, time
from pathlib import Path
from segbench.gpu_slots import gpu_slot
lock_dir, ready, release, hold_s, *devices = sys.argv[1:]
with gpu_slot(lock_dir, devices=devices or None, timeout_s=60, poll_s=0.02) as device:
    start, visible = time.time(), os.environ.get("CUDA_VISIBLE_DEVICES")
    Path(ready + ".tmp").write_text(json.dumps({"device": device, "visible": visible, "start": start}))
    os.replace(ready + ".tmp", ready)
    while not Path(release).exists() and time.time() - start < float(hold_s):
        time.sleep(0.01)
    end = time.time()
Path(ready + ".tmp").write_text(json.dumps({"device": device, "visible": visible, "start": start, "end": end}))
os.replace(ready + ".tmp", ready)
"""


def start_holder(tmp_path: Path, name: str, devices: list[str], hold_s: float = 60.0, env=None):
    ready, release = tmp_path / f"{name}.json", tmp_path / f"{name}.release"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "locks"), str(ready), str(release), str(hold_s), *devices],
        env={**os.environ, **(env or {})},
    )
    return process, ready, release


def wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, f"holder exited with {process.returncode} before taking a slot"
        assert time.monotonic() < deadline, f"holder did not take a slot within {timeout_s} s"
        time.sleep(0.02)
    return json.loads(path.read_text())


def test_concurrent_processes_never_share_a_slot(tmp_path):
    workers = [start_holder(tmp_path, f"worker{i}", ["0", "1"], hold_s=0.3) for i in range(6)]
    for process, _, _ in workers:
        assert process.wait(timeout=60) == 0
    records = [json.loads(ready.read_text()) for _, ready, _ in workers]

    assert {record["device"] for record in records} == {"0", "1"}
    for record in records:
        assert record["visible"] == record["device"]
    for device in ("0", "1"):
        intervals = sorted((r["start"], r["end"]) for r in records if r["device"] == device)
        for (_, earlier_end), (later_start, _) in zip(intervals, intervals[1:]):
            assert later_start >= earlier_end, f"two processes held slot {device} at once: {intervals}"


def test_second_process_gets_the_other_slot_and_a_third_waits(tmp_path):
    first, first_ready, first_release = start_holder(tmp_path, "first", ["0", "1"])
    second, second_ready, second_release = start_holder(tmp_path, "second", ["0", "1"])
    try:
        got = {wait_for(first_ready, first)["device"], wait_for(second_ready, second)["device"]}
        assert got == {"0", "1"}
        with pytest.raises(TimeoutError, match=r"No free GPU slot .*slot-0\.lock: pid \d+"):
            with gpu_slot(tmp_path / "locks", devices=["0", "1"], timeout_s=0.3, poll_s=0.05):
                pass
    finally:
        first_release.touch()
        second_release.touch()
        assert first.wait(timeout=30) == 0 and second.wait(timeout=30) == 0


def test_sigkilled_holder_releases_its_slot(tmp_path):
    holder, ready, _ = start_holder(tmp_path, "victim", ["0"])
    assert wait_for(ready, holder)["device"] == "0"
    with pytest.raises(TimeoutError):
        with gpu_slot(tmp_path / "locks", devices=["0"], timeout_s=0.3, poll_s=0.05):
            pass

    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    started = time.monotonic()
    with gpu_slot(tmp_path / "locks", devices=["0"], timeout_s=10, poll_s=0.05) as device:
        assert device == "0"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert time.monotonic() - started < 5


def test_existing_cuda_visible_devices_are_the_slots(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    holder, ready, release = start_holder(tmp_path, "holder", [])
    try:
        assert wait_for(ready, holder) == {**json.loads(ready.read_text()), "device": "3", "visible": "3"}
        with gpu_slot(tmp_path / "locks", timeout_s=10, poll_s=0.05) as device:
            assert device == "5"
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"
    finally:
        release.touch()
        assert holder.wait(timeout=30) == 0


@pytest.mark.parametrize("listed", ["", "-1", "-1,0"])
def test_no_visible_gpu_is_a_no_op(tmp_path, monkeypatch, listed):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
    with gpu_slot(tmp_path / "locks") as device:
        assert device is None
        assert os.environ["CUDA_VISIBLE_DEVICES"] == listed
    assert not (tmp_path / "locks").exists()


def test_cuda_visible_devices_is_read_up_to_the_first_negative_index(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, GPU-8f6c1a2e,-1,0")
    assert visible_gpu_ids() == ["2", "GPU-8f6c1a2e"]
    assert visible_gpu_ids(devices=[0, 1]) == ["0", "1"]


def test_unset_variable_is_restored_after_the_block(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with gpu_slot(tmp_path / "locks", devices=["7"]) as device:
        assert device == "7" and os.environ["CUDA_VISIBLE_DEVICES"] == "7"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_separate_slurm_jobs_do_not_compete_but_one_job_does(tmp_path, monkeypatch):
    other_job, other_ready, other_release = start_holder(tmp_path, "other_job", ["0", "1"], env={"SLURM_JOB_ID": "101"})
    try:
        assert wait_for(other_ready, other_job)["device"] == "0"
        monkeypatch.setenv("SLURM_JOB_ID", "102")
        with gpu_slot(tmp_path / "locks", devices=["0", "1"], timeout_s=5) as device:
            assert device == "0", "SLURM job 102 owns its own device 0; job 101's lock must not block it"
        monkeypatch.setenv("SLURM_JOB_ID", "101")
        with gpu_slot(tmp_path / "locks", devices=["0", "1"], timeout_s=5) as device:
            assert device == "1"
    finally:
        other_release.touch()
        assert other_job.wait(timeout=30) == 0


# A workflow of GPU jobs, each holding its slot for a second and recording what it got.
GPU_WORKFLOW = r'''
rule all:
    input: expand("out/{i}.json", i=range(4))

rule gpu_job:
    output: "out/{i}.json"
    resources: gpu=1
    shell: "python hold.py {output}"
'''
HOLD_SCRIPT = r"""
import json, os, sys, time
from segbench.gpu_slots import gpu_slot
launched = time.time()
with gpu_slot(".gpu_locks", timeout_s=60, poll_s=0.05) as device:
    start, visible = time.time(), os.environ["CUDA_VISIBLE_DEVICES"]
    time.sleep(1.0)
    end = time.time()
with open(sys.argv[1], "w") as handle:
    json.dump({"device": device, "visible": visible, "launched": launched, "start": start, "end": end}, handle)
"""


@pytest.mark.slow
def test_default_profile_runs_one_job_per_gpu_each_on_its_own_device(tmp_path):
    from conftest import REPO, run_tool

    (tmp_path / "Snakefile").write_text(GPU_WORKFLOW)
    (tmp_path / "hold.py").write_text(HOLD_SCRIPT)
    run_tool([sys.executable, "-m", "snakemake", "--workflow-profile", str(REPO / "profiles" / "default"),
              "--cores", "4"], tmp_path, CUDA_VISIBLE_DEVICES="0,1")
    records = [json.loads(path.read_text()) for path in sorted((tmp_path / "out").glob("*.json"))]

    assert len(records) == 4
    for record in records:
        assert record["visible"] == record["device"] and record["device"] in {"0", "1"}
    holding = sorted([(r["start"], 1, r["device"]) for r in records] + [(r["end"], -1, r["device"]) for r in records])
    running = set()
    for _, change, device in holding:
        if change == 1:
            assert device not in running, f"two jobs held device {device} at once: {records}"
            running.add(device)
        else:
            running.discard(device)
    # Snakemake's own limit (resources: gpu in the profile): never more than 2 GPU jobs alive, so
    # none of them even had to wait for the allocator.
    alive = sorted([(r["launched"], 1) for r in records] + [(r["end"], -1) for r in records])
    counts = [sum(change for _, change in alive[: i + 1]) for i in range(len(alive))]
    assert max(counts) == 2, f"with 2 GPUs and 4 cores, 2 GPU jobs should run at once; {max(counts)} did"
