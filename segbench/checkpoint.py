"""Checkpoints that load with ``weights_only=True`` and carry a sha256 that loading verifies.

Saving rotates the current checkpoint to ``<name>.prev`` (file, then its ``.sha256`` sidecar) and
then writes the new file and its sidecar, each atomically. A save killed at any point leaves a
checkpoint that verifies, and loading takes the newest one that does: a file verifies when its
sha256 is one of the hashes recorded beside it, in either sidecar, because a kill between the two
renames of the rotation leaves the previous file with its hash still under the current name.
A truncated or mismatching file is reported and skipped; a file that holds anything other than
tensors and plain data is refused outright, with no fallback past it.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path

import torch

from segbench.io import atomic_write

HASH_LENGTH = 64


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
    try:
        if path.exists() and _hash_file(path).exists():
            os.replace(path, _previous(path))
            os.replace(_hash_file(path), _hash_file(_previous(path)))
        with atomic_write(path, "wb") as handle:
            handle.write(payload)
        with atomic_write(_hash_file(path)) as handle:
            handle.write(hashlib.sha256(payload).hexdigest() + "\n")
    except OSError as error:
        raise CheckpointError(
            f"{path}: could not write the checkpoint ({error.strerror or error}); the previous checkpoint "
            f"{_previous(path)} is kept. Free disk space, then rerun the same command to resume from it."
        ) from error


def _recorded_hash(sidecar: Path) -> str | None:
    try:
        text = sidecar.read_text(errors="replace").strip()
    except (FileNotFoundError, IsADirectoryError):
        return None
    return text if len(text) == HASH_LENGTH else None


def _load_weights_only(path: Path, payload: bytes):
    """``torch.load(payload, weights_only=True)`` with one-line errors naming ``path``: UnsafeCheckpointError
    for objects the weights-only unpickler refuses, CheckpointError for anything else that does not load."""
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines()]
        refused = next((line for line in lines if "Unsupported" in line), "")
        raise UnsafeCheckpointError(
            f"{path}: holds objects other than tensors and plain data; refusing to unpickle it (that could run "
            f"code from the file{': ' + refused if refused else ''}). segbench never writes such checkpoints: "
            f"if you did not put it there, delete {path.parent} and rerun."
        ) from None
    except Exception as error:  # noqa: BLE001 - torch.load fails on damaged bytes in many ways (zip, pickle, seek)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{path}: not a loadable checkpoint (expected a torch.save zip file, found {type(error).__name__}: "
            f"{reason}); delete it and rerun"
        ) from None


def _read_verified(path: Path, recorded: set[str]) -> dict:
    try:
        payload = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: does not exist") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot be read ({error.strerror or error})") from None
    found = hashlib.sha256(payload).hexdigest()
    if found not in recorded and _recorded_hash(_hash_file(path)) is None:
        raise CheckpointError(f"{path}: has no valid {_hash_file(path).name}; it was not completely saved")
    if found not in recorded:
        raise CheckpointError(f"{path}: corrupt or truncated (expected sha256 {' or '.join(sorted(recorded))}, "
                              f"found {found})")
    return _load_weights_only(path, payload)


def load_checkpoint(path: str | Path) -> dict:
    """The state saved at ``path``, or at its previous version if ``path`` does not verify."""
    path = Path(path)
    recorded = {digest for digest in map(_recorded_hash, (_hash_file(path), _hash_file(_previous(path)))) if digest}
    try:
        return _read_verified(path, recorded)
    except UnsafeCheckpointError:
        raise
    except CheckpointError as error:
        if not _previous(path).exists():
            raise
        try:
            state = _read_verified(_previous(path), recorded)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as previous_error:
            raise CheckpointError(f"{error}; and the previous one: {previous_error}") from None
        print(f"warning: {error}; using the previous checkpoint {_previous(path)}", flush=True)
        return state
