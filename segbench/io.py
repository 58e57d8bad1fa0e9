"""File output that never leaves a half-written file where a good one is expected.

Outputs get the permissions ``open()`` would give them (0o666 less the umask, or what a default ACL
says): the temporary is created with that default mode rather than ``mkstemp``'s 0600, which the
rename would otherwise carry over, so collaborators on a shared filesystem could not read the files.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import stat
from pathlib import Path

NEW_FILE_FLAGS = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)


def create_temporary(path: str | Path) -> Path:
    """A new empty file ``.<name>.<random>.tmp`` beside ``path``, with the default mode of a new file."""
    path = Path(path)
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(temporary, NEW_FILE_FLAGS, 0o666))
            return temporary
        except FileExistsError:
            continue


def default_file_mode(directory: str | Path) -> int:
    """The permission bits a new file in ``directory`` gets, found by creating one: reading the umask
    would mean setting it, and the umask is process-wide (racy under threads)."""
    probe = create_temporary(Path(directory) / "mode-probe")
    try:
        return stat.S_IMODE(os.stat(probe).st_mode)
    finally:
        os.unlink(probe)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path`` for writers that want a filename (np.savez, torch.save)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = create_temporary(path)
    try:
        yield temporary
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if isinstance(error, OSError) and error.filename is None and error.errno:
            raise OSError(error.errno, error.strerror, str(path)) from error  # a full disk: name the file
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs):
    """Yield a file object on a temporary name beside ``path``; rename over ``path`` on success only."""
    with atomic_path(path) as temporary, open(temporary, mode, **open_kwargs) as handle:
        yield handle


def write_json(path: str | Path, data) -> None:
    with atomic_write(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()
