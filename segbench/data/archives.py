"""Reading zip and tar archives without trusting their member names or sizes.

Every member is checked before anything is read or written: absolute paths, ``..`` components,
drive letters, and links (symbolic or hard) whose target leaves the archive's folder are refused.
Sizes are capped per member and in total (a zip bomb guard): the declared sizes when the archive
is opened, and the bytes actually produced while a member is read, in chunks, so a lying header
cannot make a read exceed the cap. A member that does not unpack (bad CRC, corrupt deflate data, a
truncated tar) is an error naming the archive and the member. Preparation reads members straight
from the archive, so nothing is written under a name taken from the archive; ``extract_safely``
exists for users who want the files on disk.
"""
from __future__ import annotations

import posixpath
import stat
import tarfile
import threading
import zipfile
import zlib
from pathlib import Path

# The largest real member is a full-resolution ISIC dermoscopy image, a few tens of MB; 256 MiB
# leaves a wide margin and bounds what one preparation worker holds in memory.
MAX_MEMBER_BYTES = 256 * 1024**2
# The largest real archive, ISIC2018_Task1-2_Training_Input.zip, unpacks to about 11 GB (the other
# official ISIC zips and PraNet's two zips to less); 64 GiB passes all of them with room to spare.
MAX_TOTAL_BYTES = 64 * 1024**3
# A link member's content is its target path; no file system allows one longer than this.
MAX_LINK_BYTES = 4096
READ_CHUNK_BYTES = 1 << 20
IGNORED_PARTS = ("__MACOSX",)
IGNORED_NAMES = (".DS_Store", "Thumbs.db", "desktop.ini")
# What zipfile, zlib, tarfile and gzip raise on damaged member data (a bad CRC, corrupt deflate
# data, an encrypted or unknown-method member, a stream that ends early).
MEMBER_READ_ERRORS = (zipfile.BadZipFile, zlib.error, tarfile.TarError, EOFError, OSError, NotImplementedError,
                      RuntimeError)


class UnsafeArchiveError(ValueError):
    """An archive member would escape the target folder or the archive is too large when unpacked."""


class ArchiveReadError(ValueError):
    """The archive cannot be opened (truncated, not a zip/tar) or one of its members does not unpack."""


def _size(count: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= scale:
            return f"{count} bytes ({count / scale:.3g} {unit})"
    return f"{count} bytes"


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
    """Checked members of one zip or tar file: ``files`` maps a normalised member path to its declared size."""

    def __init__(self, path: str | Path, max_total: int = MAX_TOTAL_BYTES, max_member: int = MAX_MEMBER_BYTES):
        self.path = Path(path)
        self.max_total, self.max_member = max_total, max_member
        self.files: dict[str, int] = {}
        self.links: list[str] = []
        self._members: dict[str, zipfile.ZipInfo | tarfile.TarInfo] = {}
        self._lock = threading.Lock()
        self._bytes_read = 0
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
                    f"{self.path}: not an archive (expected a zip or tar file; a truncated download?). Delete it "
                    "and download it again, or place a good copy there by hand (see docs/data.md)."
                )
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error) as error:
            self.close()
            raise ArchiveReadError(f"{self.path}: cannot be read as an archive (expected a zip or tar file, found "
                                   f"{type(error).__name__}: {error}); delete it and download it again") from None
        except ValueError:
            self.close()
            raise
        total = sum(self.files.values())
        if total > max_total:
            self.close()
            raise UnsafeArchiveError(
                f"{self.path}: members declare {_size(total)} uncompressed, over the total cap of "
                f"{_size(max_total)} (zip bomb guard); refusing the archive. If it is genuine, raise the cap "
                "with --max-uncompressed BYTES."
            )

    def _index_zip(self) -> None:
        for info in self._zip.infolist():
            name = _check_name(self.path, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                target = self._read_member(name, info, MAX_LINK_BYTES, "the link size cap")
                _check_link(self.path, name, target.decode("utf-8", "replace"))
                self.links.append(name)
                continue
            if info.is_dir() or not name or _ignored(name):
                continue
            self._add(name, info.file_size, info)

    def _index_tar(self) -> None:
        # Iterating reads the headers one by one, and checks that the previous member's data is all
        # there before each step: a stream that ends early names the member it cut.
        member = None
        try:
            for member in self._tar:
                self._index_tar_member(member)
        except (tarfile.ReadError, EOFError, zlib.error) as error:
            where = f"member {member.name!r}" if member is not None else "its first member"
            raise ArchiveReadError(
                f"{self.path}: {where} is cut short or corrupt (expected it to unpack, found {type(error).__name__}: "
                f"{error}); delete the archive and download it again, or place a good copy there by hand "
                "(docs/data.md)"
            ) from None

    def _index_tar_member(self, member: tarfile.TarInfo) -> None:
        name = _check_name(self.path, member.name)
        if member.issym():
            _check_link(self.path, name, member.linkname)
            self.links.append(name)
        elif member.islnk():
            _check_name(self.path, member.linkname)
            self.links.append(name)
        elif not member.isfile() and not member.isdir():
            raise UnsafeArchiveError(f"{self.path}: member {name!r} is a device or fifo; refusing the archive")
        elif member.isfile() and name and not _ignored(name):
            self._add(name, member.size, member)

    def _add(self, name: str, size: int, member) -> None:
        if size > self.max_member:
            raise UnsafeArchiveError(
                f"{self.path}: member {name!r} declares {_size(size)} uncompressed, over the per-member cap of "
                f"{_size(self.max_member)} (zip bomb guard); refusing the archive. If it is genuine, raise the "
                "cap with --max-member BYTES."
            )
        self.files[name] = size
        self._members[name] = member

    def _read_member(self, name: str, member, limit: int, cap: str) -> bytes:
        """The member's bytes, read in chunks and stopped as soon as they pass ``limit`` or the total cap."""
        chunks, size = [], 0
        try:
            with (self._zip.open(member) if self._zip is not None else self._tar.extractfile(member)) as handle:
                while chunk := handle.read(READ_CHUNK_BYTES):
                    size += len(chunk)
                    if size > limit:
                        raise UnsafeArchiveError(
                            f"{self.path}: member {name!r} unpacks to more than {_size(limit)}, {cap} (zip bomb "
                            "guard); refusing the archive. If it is genuine, raise the cap with --max-member BYTES."
                        )
                    if self._bytes_read + size > self.max_total:
                        raise UnsafeArchiveError(
                            f"{self.path}: members unpack to more than {_size(self.max_total)} in total, the total "
                            f"cap, at member {name!r} (zip bomb guard); refusing the archive. If it is genuine, "
                            "raise the cap with --max-uncompressed BYTES."
                        )
                    chunks.append(chunk)
        except MEMBER_READ_ERRORS as error:
            raise ArchiveReadError(
                f"{self.path}: member {name!r} is corrupt (expected it to unpack, found {type(error).__name__}: "
                f"{error}); delete the archive and download it again, or place a good copy there by hand "
                "(docs/data.md)"
            ) from None
        self._bytes_read += size
        return b"".join(chunks)

    def read(self, name: str) -> bytes:
        if name not in self.files:
            raise KeyError(f"{self.path} has no member {name!r}")
        # One reader at a time: a tar file has one file position, and the total cap counts every read.
        with self._lock:
            return self._read_member(name, self._members[name], self.max_member, "the per-member cap")

    def check_members(self) -> None:
        """Unpack every member once (sizes capped, CRCs checked) without keeping the data."""
        for name in self.files:
            self.read(name)

    def close(self) -> None:
        for handle in (self._zip, self._tar):
            if handle is not None:
                handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def extract_safely(archive: str | Path, destination: str | Path, max_total: int = MAX_TOTAL_BYTES,
                   max_member: int = MAX_MEMBER_BYTES) -> list[Path]:
    """Extract the regular files of a checked archive under ``destination`` (links are skipped)."""
    destination = Path(destination).resolve()
    written = []
    with ArchiveReader(archive, max_total, max_member) as reader:
        for name in reader.files:
            target = (destination / name).resolve()
            if destination not in target.parents:
                raise UnsafeArchiveError(f"{archive}: member {name!r} resolves outside {destination}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as handle:
                handle.write(reader.read(name))
            written.append(target)
    return written
