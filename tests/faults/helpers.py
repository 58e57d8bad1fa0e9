"""Helpers of the fault-injection suite: the real CLI and Snakemake in subprocesses, tiny configs,
and the check that nothing half-written is left behind."""
from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from conftest import TINY_CONFIG, tool_env

SEGBENCH = str(Path(sys.executable).parent / "segbench")
TRAIN_SET = "polyp_train"
TEST_SET = "kvasir"
SETTINGS_SECTIONS = ("data", "train", "evaluate", "profile", "report")
FAULT_SEED = int(os.environ.get("SEGBENCH_FAULT_SEED", "8"))

# Names that segbench.io, segbench.checkpoint and segbench.data.prepare give to work in progress.
PARTIAL_NAME = re.compile(r"^\..+\.tmp$|\.partial-\d+$|\.old-\d+$")


def partial_files(root: Path) -> list[str]:
    """Temporary names of unfinished writes anywhere under ``root`` (should be none after any exit)."""
    return sorted(str(path.relative_to(root)) for path in Path(root).rglob("*") if PARTIAL_NAME.search(path.name))


def error_line(result: subprocess.CompletedProcess, command: str) -> str:
    """The message of a command that failed as the CLI promises: exit status 2, no traceback, and the error
    on one line of its own, ``segbench <command>: error: <message>``."""
    assert result.returncode == 2, last_lines(result.stdout + result.stderr)
    assert "Traceback" not in result.stderr, last_lines(result.stderr)
    prefix = f"segbench {command}: error: "
    errors = [line for line in result.stderr.splitlines() if line.startswith(prefix)]
    assert len(errors) == 1, last_lines(result.stderr)
    assert result.stderr.rstrip().endswith(errors[0]), "lines follow the error line: " + last_lines(result.stderr)
    return errors[0][len(prefix):]


def last_lines(text: str, count: int = 8) -> str:
    """The end of a command's output, without progress-bar redraws: what an assertion message should show."""
    lines = [line.rstrip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    return "\n".join(lines[-count:])


def segbench(*args, cwd: Path, timeout: float = 300, preexec_fn=None, **env) -> subprocess.CompletedProcess:
    """The real ``segbench`` command of the venv, run in ``cwd`` with ``env`` added to the environment."""
    return subprocess.run([SEGBENCH, *map(str, args)], cwd=cwd,
                          env=tool_env(**env), capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn)


def with_umask(mask: int):
    """A preexec_fn that runs the command under ``umask``."""
    def apply() -> None:
        os.umask(mask)

    return apply


def segbench_peak_memory(*args, cwd: Path, **env) -> tuple[subprocess.CompletedProcess, int]:
    """``segbench(*args)`` and the peak resident memory (bytes) of that process alone (wait4's rusage)."""
    with open(cwd / ".stdout", "w+") as stdout, open(cwd / ".stderr", "w+") as stderr:
        process = subprocess.Popen([SEGBENCH, *map(str, args)], cwd=cwd, env=tool_env(**env), stdout=stdout,
                                   stderr=stderr, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout.read(), stderr.read())
    (cwd / ".stdout").unlink()
    (cwd / ".stderr").unlink()
    return result, usage.ru_maxrss * 1024


def limit_file_size(limit: int):
    """A preexec_fn that makes every write past ``limit`` bytes of a file fail with EFBIG, as a full disk
    would (SIGXFSZ ignored so the write returns the error instead of killing the process)."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def snakemake_command(configfile: Path, *args, cores: int = 1) -> list[str]:
    """``snakemake ARGS --cores N --configfile FILE`` (--configfile last: it takes several values)."""
    return [sys.executable, "-m", "snakemake", *map(str, args), "--cores", str(cores), "--configfile", str(configfile)]


def start(command: list[str], cwd: Path, log: Path, **env) -> subprocess.Popen:
    """A background process in its own process group (so a kill reaches its children), output in ``log``."""
    with open(log, "w") as handle:
        return subprocess.Popen(command, cwd=cwd, env=tool_env(**env), stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    process.wait(timeout=60)


def wait_until(condition, process: subprocess.Popen | None = None, timeout: float = 180, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def tiny_config(**overrides) -> dict:
    """TINY_CONFIG (tests/conftest.py) with one test set; settings sections in ``overrides`` are merged
    into TINY_CONFIG's, other keys replace TINY_CONFIG's."""
    cfg = yaml.safe_load(yaml.safe_dump(TINY_CONFIG))
    cfg["protocols"] = {"polyp": {"train": TRAIN_SET, "test": [TEST_SET]}}
    for key, value in overrides.items():
        cfg[key] = {**cfg.get(key, {}), **value} if key in SETTINGS_SECTIONS else value
    return cfg


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def train_config(path: Path, data_root: Path, **overrides) -> Path:
    """A tiny CPU training config reading ``data_root``."""
    return write_yaml(path, tiny_config(data={"root": str(data_root)}, **overrides))


def train_args(config: Path, out: Path, variant: str = "unet") -> list:
    return ["train", "--config", config, "--protocol", "polyp", "--variant", variant, "--seed", 0, "--out", out]
