"""Reading zip and tar archives without trusting their member names.

Every member is checked before anything is read or written: absolute paths, ``..`` components,
drive letters, and links (symbolic or hard) whose target leaves the archive's folder are refused,
and the declared uncompressed total is capped (a zip bomb guard). Preparation reads members
straight from the archive, so nothing is written under a name taken from the archive;
``extract_safely`` exists for users who want the files on disk.
"""
from __future__ import annotations

import posixpath
import stat
import tarfile
import threading
import zipfile
from pathlib import Path

DEFAULT_MAX_UNCOMPRESSED = 64 * 1024**3
IGNORED_PARTS = ("__MACOSX",)
IGNORED_NAMES = (".DS_Store", "Thumbs.db", "desktop.ini")


class UnsafeArchiveError(ValueError):
    """An archive member would escape the target folder or the archive is too large when unpacked."""


class ArchiveReadError(ValueError):
    """The archive cannot be opened (truncated, not a zip/tar)."""


def _check_name(archive: Path, name: str) -> str:
    if "\x00" in name:
        raise UnsafeArchiveError(f"{archive}: member {name!r} has a NUL byte in its name; refusing the archive")
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or (len(normalised) > 1 and normalised[1] == ":"):
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} has an absolute path; refusing the archive (it would write outside "
            "the target folder). Re-download it from the source named in docs/data.md."
        )
    parts = normalised.split("/")
    if ".." in parts:
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} contains '..' and would escape the target folder; refusing the "
            "archive. Re-download it from the source named in docs/data.md."
        )
    return posixpath.normpath(normalised).lstrip("./") if normalised not in ("", ".") else ""


def _check_link(archive: Path, name: str, target: str) -> None:
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target.replace("\\", "/")))
    if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} is a link to {target!r}, outside the archive's folder; refusing "
            "the archive. Re-download it from the source named in docs/data.md."
        )


def _ignored(name: str) -> bool:
    parts = name.split("/")
    base = parts[-1]
    return any(part in IGNORED_PARTS for part in parts) or base in IGNORED_NAMES or base.startswith("._")


class ArchiveReader:
    """Checked members of one zip or tar file: ``files`` maps a normalised member path to its size."""

    def __init__(self, path: str | Path, max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED):
        self.path = Path(path)
        self.files: dict[str, int] = {}
        self.links: list[str] = []
        self._members: dict[str, zipfile.ZipInfo | tarfile.TarInfo] = {}
        self._lock = threading.Lock()
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None
        try:
            if zipfile.is_zipfile(self.path):
                self._zip = zipfile.ZipFile(self.path)
                self._index_zip()
            elif tarfile.is_tarfile(self.path):
                self._tar = tarfile.open(self.path)
                self._index_tar()
            else:
                raise ArchiveReadError(
                    f"{self.path} is neither a zip nor a tar archive (truncated download?). Delete it and "
                    "download again, or place a good copy there by hand (see docs/data.md)."
                )
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as error:
            self.close()
            raise ArchiveReadError(f"{self.path} cannot be read as an archive ({error}); delete it and "
                                   "download again") from None
        total = sum(self.files.values())
        if total > max_uncompressed:
            self.close()
            raise UnsafeArchiveError(
                f"{self.path}: members declare {total} bytes uncompressed, over the limit of {max_uncompressed} "
                "bytes (zip bomb guard); refusing the archive. Raise --max-uncompressed if the archive is genuine."
            )

    def _index_zip(self) -> None:
        for info in self._zip.infolist():
            name = _check_name(self.path, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                _check_link(self.path, name, self._zip.read(info).decode("utf-8", "replace"))
                self.links.append(name)
                continue
            if info.is_dir() or not name or _ignored(name):
                continue
            self.files[name] = info.file_size
            self._members[name] = info

    def _index_tar(self) -> None:
        for member in self._tar.getmembers():
            name = _check_name(self.path, member.name)
            if member.issym():
                _check_link(self.path, name, member.linkname)
                self.links.append(name)
                continue
            if member.islnk():
                _check_name(self.path, member.linkname)
                self.links.append(name)
                continue
            if not member.isfile():
                if member.isdir():
                    continue
                raise UnsafeArchiveError(f"{self.path}: member {name!r} is a device or fifo; refusing the archive")
            if name and not _ignored(name):
                self.files[name] = member.size
                self._members[name] = member

    def read(self, name: str) -> bytes:
        if name not in self.files:
            raise KeyError(f"{self.path} has no member {name!r}")
        # One reader at a time: a tar file has one file position. zipfile stops at the declared size
        # and checks the CRC, so a lying header cannot make us read more than the guard allowed.
        with self._lock:
            if self._zip is not None:
                with self._zip.open(self._members[name]) as handle:
                    return handle.read()
            with self._tar.extractfile(self._members[name]) as handle:
                return handle.read()

    def close(self) -> None:
        for handle in (self._zip, self._tar):
            if handle is not None:
                handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def extract_safely(archive: str | Path, destination: str | Path,
                   max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED) -> list[Path]:
    """Extract the regular files of a checked archive under ``destination`` (links are skipped)."""
    destination = Path(destination).resolve()
    written = []
    with ArchiveReader(archive, max_uncompressed) as reader:
        for name in reader.files:
            target = (destination / name).resolve()
            if destination not in target.parents:
                raise UnsafeArchiveError(f"{archive}: member {name!r} resolves outside {destination}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as handle:
                handle.write(reader.read(name))
            written.append(target)
    return written

