"""The tiny DAG through a real single-node SLURM cluster, compared with the same DAG run locally.

CI starts the cluster first (`bash scripts/start_slurm.sh`, root + apt-get). Elsewhere the test
starts already-installed daemons itself, or is skipped with the reason; set
SEGBENCH_REQUIRE_SLURM=1 to make that a failure instead (CI does).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_tool, tool_env, write_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SNAKEMAKE_TIMEOUT_S = 300


def node_is_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    states = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True).stdout.split()
    return any(state.startswith(("idle", "mixed", "allocated")) for state in states)


@pytest.fixture(scope="module")
def slurm_cluster():
    if node_is_up():
        return
    started = subprocess.run(["bash", str(REPO / "scripts" / "start_slurm.sh"), "--no-install"],
                             capture_output=True, text=True, timeout=120)
    if started.returncode == 0 and node_is_up():
        return
    reason = (f"no SLURM cluster here and scripts/start_slurm.sh could not start one "
              f"(exit {started.returncode}: {started.stderr.strip()[-300:]}); "
              "run `sudo bash scripts/start_slurm.sh` to install and start it")
    if os.environ.get("SEGBENCH_REQUIRE_SLURM") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def start_snakemake(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "snakemake", *args], cwd=cwd, env=tool_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish_snakemake(process: subprocess.Popen) -> str:
    """Wait for Snakemake; on failure or timeout, cancel the SLURM jobs it submitted and show its output."""
    try:
        output, _ = process.communicate(timeout=SNAKEMAKE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", output)
    if process.returncode != 0:
        if submitted:
            subprocess.run(["scancel", *submitted], capture_output=True)
        raise AssertionError(f"{' '.join(process.args[1:])} failed ({process.returncode}):\n{output[-6000:]}")
    return output


def metrics_files(root: Path) -> dict[str, dict]:
    return {str(path.relative_to(root)): json.loads(path.read_text())
            for path in sorted((root / "results").glob("*/*/seed*/eval/*/metrics.json"))}


def test_tiny_dag_through_slurm_equals_the_local_run(slurm_cluster, project_copy, tmp_path):
    config = write_config(project_copy / "tiny.yaml",
                          protocols={"polyp": {"train": "polyp_train", "test": ["kvasir"]}},
                          train={"epochs": 1, "batch_size": 4, "device": "cpu", "num_threads": 1})
    through_slurm = tmp_path / "slurm_project"
    shutil.copytree(project_copy, through_slurm, symlinks=True)

    # The SLURM run mostly waits for squeue, so the local run goes meanwhile.
    slurm_run = start_snakemake(
        ["--workflow-profile", "profiles/slurm", "--configfile", str(through_slurm / "tiny.yaml"),
         # The profile as users get it, fitted to this 2-CPU node: rules ask for up to 4 threads,
         # and the first status check comes sooner than the profile's 20 s.
         "--max-threads", "1", "--slurm-init-seconds-before-status-checks", "5"],
        through_slurm,
    )
    try:
        finish_snakemake(start_snakemake(["--cores", "2", "--configfile", str(config)], project_copy))
    except AssertionError:
        slurm_run.send_signal(signal.SIGINT)  # Snakemake cancels its SLURM jobs on SIGINT
        slurm_run.communicate(timeout=120)
        raise
    output = finish_snakemake(slurm_run)

    submitted = set(re.findall(r"logs/slurm/((?:rule|group)_[a-z]+)", output))
    assert {"group_data", "rule_train", "rule_evaluate", "rule_profile"} <= submitted, (
        f"expected the data group, train, evaluate and profile to run as SLURM jobs; the run submitted {submitted}"
    )
    train_logs = list((through_slurm / "logs" / "slurm" / "rule_train").rglob("*.log"))
    assert train_logs, "the profile keeps SLURM logs under logs/slurm/, but none was written for train"

    local, remote = metrics_files(project_copy), metrics_files(through_slurm)
    assert local, "the local run wrote no metrics.json"
    assert local == remote, "CPU training is deterministic: the SLURM run must reproduce the local metrics"
    for name in local:
        per_image = Path(name).with_name("per_image.csv")
        assert (project_copy / per_image).read_bytes() == (through_slurm / per_image).read_bytes(), per_image

    again = run_tool([sys.executable, "-m", "snakemake", "-n", "--workflow-profile", "profiles/slurm",
                      "--configfile", str(through_slurm / "tiny.yaml")], through_slurm)
    assert "Nothing to be done" in again.stdout + again.stderr
