"""One GPU per job on a multi-GPU machine.

Snakemake's ``resources: gpu=N`` limit (profiles/default) keeps at most N GPU jobs running, but
it does not say *which* GPU each job may use. ``gpu_slot`` does: it takes an OS-level lock
(``fcntl.flock``) on one device id and sets ``CUDA_VISIBLE_DEVICES`` to that id while the job
runs. The kernel drops the lock when the process exits, however it exits (SIGKILL and
out-of-memory kills included), so a crashed job never leaves a slot taken.

Use it before anything initialises CUDA in the process; CUDA reads ``CUDA_VISIBLE_DEVICES`` once.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 6 * 3600
_NVIDIA_PROC_DIR = Path("/proc/driver/nvidia/gpus")


def visible_gpu_ids(devices: Sequence[str | int] | None = None) -> list[str]:
    """Device ids this process may use: ``devices`` if given, else ``CUDA_VISIBLE_DEVICES``, else every GPU.

    ``CUDA_VISIBLE_DEVICES`` is read the way CUDA reads it: entries up to the first negative index
    (``-1`` hides every device), so ``""`` and ``"-1"`` both mean no GPU.
    """
    if devices is not None:
        return [str(device) for device in devices]
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids = []
        for entry in (part.strip() for part in listed.split(",")):
            if not entry or re.fullmatch(r"-\d+", entry):
                break
            ids.append(entry)
        return ids
    # Importing torch costs seconds; skip it where no NVIDIA driver is installed at all.
    if not _NVIDIA_PROC_DIR.is_dir() and shutil.which("nvidia-smi") is None:
        return []
    import torch

    # device_count() asks NVML and leaves CUDA uninitialised, so CUDA_VISIBLE_DEVICES still works later.
    return [str(index) for index in range(torch.cuda.device_count())]


def visible_gpu_count() -> int:
    """The number of GPUs this machine offers to jobs (profiles/default uses it as the ``gpu`` limit)."""
    return len(visible_gpu_ids())


def _lock_scope() -> str:
    """Which jobs compete for the same ids.

    Jobs on other hosts sharing the lock folder over NFS use other GPUs, and so do other SLURM
    jobs on the same host: SLURM gives each job its own devices, often numbered from 0 in each.
    """
    scope = socket.gethostname()
    if os.environ.get("SLURM_JOB_ID"):
        scope += f"-slurm{os.environ['SLURM_JOB_ID']}"
    return _safe_name(scope)


def _safe_name(text: str) -> str:
    return re.sub(r"[^\w.-]", "_", text)


def _lock_path(lock_dir: Path, device: str) -> Path:
    return lock_dir / _lock_scope() / f"slot-{_safe_name(device)}.lock"


def _try_lock(path: Path):
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    return handle


def _holders(paths: Sequence[Path]) -> str:
    return "; ".join(f"{path.name}: {path.read_text().strip() or 'held'}" for path in paths)


@contextlib.contextmanager
def gpu_slot(
    lock_dir: str | Path = ".gpu_locks",
    devices: Sequence[str | int] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = 1.0,
) -> Iterator[str | None]:
    """Hold one free GPU id for the duration of the block, with ``CUDA_VISIBLE_DEVICES`` set to it.

    Yields the id, or ``None`` (and changes nothing) when there is no GPU. Waits while every id
    is held by another process and raises ``TimeoutError`` after ``timeout_s`` seconds.
    """
    ids = visible_gpu_ids(devices)
    if not ids:
        yield None
        return
    lock_dir = Path(lock_dir)
    paths = {device: _lock_path(lock_dir, device) for device in ids}
    next(iter(paths.values())).parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    announced = False
    while True:
        held = next(((device, handle) for device in ids if (handle := _try_lock(paths[device]))), None)
        if held is not None:
            break
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"No free GPU slot after {timeout_s:.0f} s: every one of the devices {ids} is locked "
                f"under {paths[ids[0]].parent} ({_holders(list(paths.values()))}). Wait for those "
                "processes to finish, or lower the `gpu` limit in profiles/default/config.yaml so "
                "that Snakemake does not start more GPU jobs than there are GPUs."
            )
        if not announced:
            logger.warning("All GPU slots %s are busy (%s); waiting for one to free up.",
                           ids, _holders(list(paths.values())))
            announced = True
        time.sleep(poll_s)

    device, handle = held
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    try:
        yield device
    finally:
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous
        handle.close()
