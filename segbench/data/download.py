"""Fetching archives into ``data/raw/``: mirror, per-archive URL, Google Drive or HTTP; hashes locked.

Where a file comes from, in order: an archive already in ``data/raw/`` (placed by hand or fetched
earlier; verified, never re-fetched); ``$SEGBENCH_MIRROR/<archive name>`` when the variable is set
(an http(s) base URL or a local folder; nothing else is tried); ``data.urls[<archive name>]``; the
registry's source (Google Drive through gdown, HTTP through pooch).

Every download lands in ``data/raw/.incoming/`` first, is checked (sha256 against ``data.sha256``
or ``data/raw/sha256.lock``; then every member unpacked once: readable, safe names, sizes under the
caps), and only then renamed into place. A hash not known yet is recorded in the lock file
(``sha256sum`` format, so ``sha256sum -c`` works too) only after those checks passed, and enforced
from then on: a refused file never locks its hash. Network errors are retried; a checksum mismatch
is not (the same source would serve the same bytes again).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import urllib.parse
from pathlib import Path

from segbench.data.archives import (MAX_MEMBER_BYTES, MAX_TOTAL_BYTES, ArchiveReader, ArchiveReadError,
                                    UnsafeArchiveError)
from segbench.data.registry import get_archive
from segbench.io import atomic_write, default_file_mode, sha256_file

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
            raise DownloadError(f"{path}:{number}: malformed line (expected '<sha256>  <file name>', found "
                                f"{line!r}); fix or delete the line")
        hashes[name.strip()] = digest
    return hashes


def _lock_hash(raw_dir: Path, name: str, digest: str) -> str:
    """Record ``digest`` for ``name`` unless another hash got there first; return the locked hash."""
    with _locked(raw_dir):
        hashes = read_lock(raw_dir)
        if name in hashes:
            return hashes[name]
        hashes[name] = digest
        with atomic_write(raw_dir / LOCK_NAME) as handle:
            handle.write("# sha256 of archives in this folder, recorded once each passed its checks; enforced later.\n")
            for key in sorted(hashes):
                handle.write(f"{hashes[key]}  {key}\n")
        return digest


def _known_hash(raw_dir: Path, name: str, known_hashes: dict[str, str]) -> tuple[str | None, str]:
    """The hash ``name`` must have and where it comes from (the config first, then the lock file)."""
    if known_hashes.get(name):
        return known_hashes[name], f"data.sha256.{name} in the config"
    return read_lock(raw_dir).get(name), str(raw_dir / LOCK_NAME)


def _mismatch_advice(raw_dir: Path, name: str, expected: str, origin: str) -> str:
    if origin == str(raw_dir / LOCK_NAME):
        return (f"{origin} locks {name} to {expected} (the first copy that passed its checks), so this is a "
                f"different file. If it is the one you want, remove the line '{expected}  {name}' from {origin} "
                f"and rerun")
    return (f"{origin} expects {expected}. If the source changed the file on purpose and this version is the one "
            f"you want, set data.sha256.{name} to the new hash")


def check_archive(path: Path, max_total: int = MAX_TOTAL_BYTES, max_member: int = MAX_MEMBER_BYTES) -> None:
    """Open ``path`` as an archive and unpack every member once: safe names, sizes under the caps, CRCs."""
    with ArchiveReader(path, max_total, max_member) as reader:
        reader.check_members()


def verify_archive(path: str | Path, known_hashes: dict[str, str], max_total: int = MAX_TOTAL_BYTES,
                   max_member: int = MAX_MEMBER_BYTES) -> str:
    """Check an archive in ``data/raw/`` against its known or locked sha256; an archive with no known hash
    is checked member by member first, and its hash locked only if it passes."""
    path = Path(path)
    raw_dir, name = path.parent, path.name
    if not path.exists():
        raise DownloadError(f"{path}: missing. Run `snakemake {path}` to download it. {manual_hint(name, raw_dir)}")
    if path.stat().st_size == 0:
        raise DownloadError(f"{path}: empty (0 bytes); delete it. {manual_hint(name, raw_dir)}")
    digest = sha256_file(path)
    expected, origin = _known_hash(raw_dir, name, known_hashes)
    if expected is None:
        check_archive(path, max_total, max_member)
        expected, origin = _lock_hash(raw_dir, name, digest), str(raw_dir / LOCK_NAME)
    if digest != expected:
        raise DownloadError(f"{path}: sha256 is {digest}, not the expected one; "
                            f"{_mismatch_advice(raw_dir, name, expected, origin)}; otherwise delete {path} and "
                            "download it again.")
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


def _fetch_http(url: str, staging: Path, name: str, retries: int, progress: bool) -> Path:
    import pooch

    # No known hash for pooch: it would retry a mismatch as if it were a network error.
    fetcher = pooch.create(path=staging, base_url="", registry={name: None}, urls={name: url},
                           retry_if_failed=retries, allow_updates=False)
    return Path(fetcher.fetch(name, progressbar=progress))


def _fetch_drive(url: str, staging: Path, name: str, retries: int, progress: bool) -> Path:
    import gdown

    staging.mkdir(parents=True, exist_ok=True)
    output = staging / name
    gdown.download(url=url, output=str(output), quiet=not progress, retries=retries)
    return output


def _fetch(source: str, staging: Path, name: str, retries: int, progress: bool) -> Path:
    if _is_drive(source):
        return _fetch_drive(source, staging, name, retries, progress)
    if "://" in source:
        return _fetch_http(source, staging, name, retries, progress)
    staging.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, staging / name)
    return staging / name


def _one_line(error: Exception) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def download_archive(
    name: str,
    raw_dir: str | Path,
    url: str | None = None,
    sha256: str | None = None,
    retries: int = 2,
    progress: bool = True,
    max_total: int = MAX_TOTAL_BYTES,
    max_member: int = MAX_MEMBER_BYTES,
) -> Path:
    """Make ``raw_dir/name`` exist and verified; raise DownloadError naming what to place where."""
    get_archive(name)
    raw_dir = Path(raw_dir)
    target = raw_dir / name
    known_hashes = {name: sha256} if sha256 else {}
    if target.exists():
        verify_archive(target, known_hashes, max_total, max_member)
        return target
    mirror = _mirror_source(name)
    if mirror:
        source, how = mirror, f"the mirror ({MIRROR_VARIABLE})"
    elif url:
        source, how = url, f"data.urls.{name}"
    else:
        source, how = get_archive(name).default_url, "its registered source"
    staging = raw_dir / ".incoming" / f"{name}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    refused = f"{target}: the file downloaded from {source} ({how}) is refused and nothing was kept"
    print(f"downloading {name} from {source} ({how})", file=sys.stderr)
    try:
        try:
            fetched = _fetch(source, staging, name, retries, progress)
        except Exception as error:  # noqa: BLE001 - pooch, requests and gdown raise many kinds
            raise DownloadError(
                f"{target}: could not download {name} from {source} ({how}) after {retries + 1} attempt(s) "
                f"({_one_line(error)}); nothing was kept. {manual_hint(name, raw_dir)}"
            ) from None
        digest = sha256_file(fetched)
        expected, origin = _known_hash(raw_dir, name, known_hashes)
        if expected is not None and digest != expected:
            raise DownloadError(f"{refused} (not retried: its sha256 is {digest}); "
                                f"{_mismatch_advice(raw_dir, name, expected, origin)}.")
        try:
            check_archive(fetched, max_total, max_member)
        except (ArchiveReadError, UnsafeArchiveError) as error:
            reason = str(error).replace(f"{fetched}: ", "", 1)
            raise DownloadError(f"{refused}: {reason} {manual_hint(name, raw_dir)}") from None
        if expected is None:
            expected, origin = _lock_hash(raw_dir, name, digest), str(raw_dir / LOCK_NAME)
            if digest != expected:
                raise DownloadError(f"{refused} (its sha256 is {digest}); "
                                    f"{_mismatch_advice(raw_dir, name, expected, origin)}.")
        # pooch's temporary file is private (0600); give the archive the mode any new file here gets.
        os.chmod(fetched, default_file_mode(raw_dir))
        os.replace(fetched, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            (raw_dir / ".incoming").rmdir()
    return target
