"""Checkpoints that load with ``weights_only=True`` and carry a sha256 that loading verifies.

Saving keeps the previous checkpoint beside the new one (``<name>.prev``) until the new one and
its hash are on disk, so a save killed at any point (or a disk that fills up) leaves a checkpoint
that verifies: a truncated or mismatching file is reported and the previous one is used.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
from pathlib import Path

import torch

from segbench.io import atomic_write


class CheckpointError(RuntimeError):
    """No checkpoint that verifies could be read."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """The file holds objects other than tensors and plain data: refused, never unpickled, no fallback."""


def _hash_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _previous(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def checkpoint_exists(path: str | Path) -> bool:
    """Whether there is something to resume from: ``path`` or its previous version (a save cut short
    after the rotation below leaves only the previous one)."""
    path = Path(path)
    return path.exists() or _previous(path).exists()


def save_checkpoint(path: str | Path, state: dict) -> None:
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    if path.exists() and _hash_file(path).exists():
        os.replace(path, _previous(path))
        os.replace(_hash_file(path), _hash_file(_previous(path)))
    try:
        with atomic_write(path, "wb") as handle:
            handle.write(payload)
        with atomic_write(_hash_file(path)) as handle:
            handle.write(hashlib.sha256(payload).hexdigest() + "\n")
    except OSError as error:
        raise CheckpointError(
            f"could not write checkpoint {path}: {error.strerror or error}; the previous checkpoint "
            f"{_previous(path)} is kept. Free disk space, then rerun the same command to resume from it."
        ) from error


def _read_verified(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    payload = path.read_bytes()
    try:
        expected = _hash_file(path).read_text().strip()
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no {_hash_file(path).name}; it was not completely saved") from None
    found = hashlib.sha256(payload).hexdigest()
    if found != expected:
        raise CheckpointError(f"{path} is corrupt or truncated: sha256 {found} != recorded {expected}")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = [line for line in str(error).splitlines() if "Unsupported global" in line]
        raise UnsafeCheckpointError(
            f"{path} holds objects other than tensors and plain data; refusing to unpickle it (that could run "
            f"code from the file{': ' + refused[0].strip() if refused else ''}). segbench never writes such "
            f"checkpoints: if you did not put it there, delete {path.parent} and rerun."
        ) from None


def load_checkpoint(path: str | Path) -> dict:
    """The state saved at ``path``, or at its previous version if ``path`` does not verify."""
    path = Path(path)
    try:
        return _read_verified(path)
    except UnsafeCheckpointError:
        raise
    except CheckpointError as error:
        with contextlib.suppress(CheckpointError):
            state = _read_verified(_previous(path))
            print(f"warning: {error}; using the previous checkpoint {_previous(path)}", flush=True)
            return state
        raise
