"""Fetching archives into ``data/raw/``: mirror, per-archive URL, Google Drive or HTTP; hashes locked.

Where a file comes from, in order: an archive already in ``data/raw/`` (placed by hand or fetched
earlier; verified, never re-fetched); ``$SEGBENCH_MIRROR/<archive name>`` when the variable is set
(an http(s) base URL or a local folder; nothing else is tried); ``data.urls[<archive name>]``; the
registry's source (Google Drive through gdown, HTTP through pooch).

Every download lands in ``data/raw/.incoming/`` first, is checked (sha256 against ``data.sha256``
or ``data/raw/sha256.lock``, readable as an archive), and only then renamed into place. A hash not
known yet is recorded in the lock file (``sha256sum`` format, so ``sha256sum -c`` works too) and
enforced from then on.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import tarfile
import urllib.parse
import zipfile
from pathlib import Path

from segbench.data.registry import get_archive
from segbench.io import atomic_write, sha256_file

LOCK_NAME = "sha256.lock"
MIRROR_VARIABLE = "SEGBENCH_MIRROR"


class DownloadError(RuntimeError):
    """An archive could not be fetched or verified; the message says what to place where."""


def manual_hint(name: str, raw_dir: Path) -> str:
    archive = get_archive(name)
    return (
        f"To place it by hand: download {archive.manual_url} ({archive.origin}; size: {archive.approx_size}) "
        f"and save it as {raw_dir / name} (exactly this name), then rerun. Or set {MIRROR_VARIABLE} to a "
        f"folder/URL that serves {name}, or data.urls.{name} in the config."
    )


@contextlib.contextmanager
def _locked(raw_dir: Path):
    raw_dir.mkdir(parents=True, exist_ok=True)
    with open(raw_dir / f".{LOCK_NAME}.guard", "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)


def read_lock(raw_dir: Path) -> dict[str, str]:
    path = Path(raw_dir) / LOCK_NAME
    if not path.exists():
        return {}
    hashes = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise DownloadError(f"{path}:{number}: expected '<sha256>  <file name>', found {line!r}; fix or delete the line")
        hashes[name.strip()] = digest
    return hashes


def _record(raw_dir: Path, name: str, digest: str) -> str:
    """Record ``digest`` for ``name`` unless another hash got there first; return the locked hash."""
    with _locked(raw_dir):
        hashes = read_lock(raw_dir)
        if name in hashes:
            return hashes[name]
        hashes[name] = digest
        with atomic_write(raw_dir / LOCK_NAME) as handle:
            handle.write("# sha256 of archives in this folder, recorded at first download; enforced later.\n")
            for key in sorted(hashes):
                handle.write(f"{hashes[key]}  {key}\n")
        return digest


def verify_archive(path: str | Path, known_hashes: dict[str, str]) -> str:
    """Check an archive in ``data/raw/`` against its known or locked sha256 (recording it if new)."""
    path = Path(path)
    raw_dir, name = path.parent, path.name
    if not path.exists():
        raise DownloadError(f"{path} is missing. Run `snakemake {path}` to download it. {manual_hint(name, raw_dir)}")
    if path.stat().st_size == 0:
        raise DownloadError(f"{path} is empty (0 bytes); delete it. {manual_hint(name, raw_dir)}")
    digest = sha256_file(path)
    expected, origin = known_hashes.get(name), f"data.sha256.{name} in the config"
    if not expected:
        expected, origin = read_lock(raw_dir).get(name), f"{raw_dir / LOCK_NAME}"
    if expected is None:
        expected, origin = _record(raw_dir, name, digest), f"{raw_dir / LOCK_NAME}"
    if digest != expected:
        raise DownloadError(
            f"{path}: sha256 is {digest}, expected {expected} (from {origin}). The file is corrupt or not the "
            f"version this project was run with. Delete it and download it again; if this version is the one "
            f"you want, set data.sha256.{name} in the config (or remove its line from {raw_dir / LOCK_NAME})."
        )
    return digest


def _mirror_source(name: str) -> str | None:
    base = os.environ.get(MIRROR_VARIABLE, "").strip()
    if not base:
        return None
    if base.startswith(("http://", "https://", "ftp://")):
        return base.rstrip("/") + "/" + urllib.parse.quote(name)
    folder = Path(base[len("file://"):] if base.startswith("file://") else base)
    return str(folder / name)


def _is_drive(url: str) -> bool:
    return urllib.parse.urlparse(url).netloc in ("drive.google.com", "docs.google.com")


def _fetch_http(url: str, staging: Path, name: str, known: str | None, retries: int, progress: bool) -> Path:
    import pooch

    fetcher = pooch.create(
        path=staging, base_url="", registry={name: f"sha256:{known}" if known else None},
        urls={name: url}, retry_if_failed=retries, allow_updates=False,
    )
    return Path(fetcher.fetch(name, progressbar=progress))


def _fetch_drive(url: str, staging: Path, name: str, retries: int, progress: bool) -> Path:
    import gdown

    staging.mkdir(parents=True, exist_ok=True)
    output = staging / name
    gdown.download(url=url, output=str(output), quiet=not progress, retries=retries)
    return output


def _fetch(source: str, staging: Path, name: str, known: str | None, retries: int, progress: bool) -> Path:
    if _is_drive(source):
        return _fetch_drive(source, staging, name, retries, progress)
    if "://" in source:
        return _fetch_http(source, staging, name, known, retries, progress)
    staging.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, staging / name)
    return staging / name


def _readable_archive(path: Path) -> bool:
    with contextlib.suppress(OSError, tarfile.TarError, EOFError):
        return zipfile.is_zipfile(path) or tarfile.is_tarfile(path)
    return False


def download_archive(
    name: str,
    raw_dir: str | Path,
    url: str | None = None,
    sha256: str | None = None,
    retries: int = 2,
    progress: bool = True,
) -> Path:
    """Make ``raw_dir/name`` exist and verified; raise DownloadError naming what to place where."""
    get_archive(name)
    raw_dir = Path(raw_dir)
    target = raw_dir / name
    known_hashes = {name: sha256} if sha256 else {}
    if target.exists():
        verify_archive(target, known_hashes)
        return target
    mirror = _mirror_source(name)
    if mirror:
        source, how = mirror, f"the mirror ({MIRROR_VARIABLE})"
    elif url:
        source, how = url, f"data.urls.{name}"
    else:
        source, how = get_archive(name).default_url, "its registered source"
    known = sha256 or read_lock(raw_dir).get(name)
    staging = raw_dir / ".incoming" / f"{name}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    print(f"downloading {name} from {source} ({how})", file=sys.stderr)
    try:
        try:
            fetched = _fetch(source, staging, name, known, retries, progress)
        except Exception as error:  # noqa: BLE001 - pooch, requests and gdown raise many kinds
            reason = f"{type(error).__name__}: {error}"
            raise DownloadError(
                f"could not download {name} from {source} ({how}) after {retries + 1} attempt(s): {reason}\n"
                f"Nothing was kept in {raw_dir}. {manual_hint(name, raw_dir)}"
            ) from None
        if not _readable_archive(fetched):
            raise DownloadError(
                f"the file downloaded from {source} for {name} is not a zip or tar archive (an error page or a "
                f"truncated transfer?). Nothing was kept. {manual_hint(name, raw_dir)}"
            )
        digest = sha256_file(fetched)
        expected = known or _record(raw_dir, name, digest)
        if digest != expected:
            raise DownloadError(
                f"{name} from {source}: sha256 is {digest}, expected {expected}. Nothing was kept. If the "
                f"source changed the file on purpose, set data.sha256.{name}. {manual_hint(name, raw_dir)}"
            )
        os.replace(fetched, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            (raw_dir / ".incoming").rmdir()
    return target
