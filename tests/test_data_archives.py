"""Archive safety: traversal, absolute paths, escaping links and zip bombs are refused before any read."""
import io
import stat
import tarfile
import zipfile

import pytest

from segbench.data.archives import ArchiveReader, ArchiveReadError, UnsafeArchiveError, extract_safely


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _zip_symlink(path, name, target):
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("TestDataset/Kvasir/images/a.png", b"x")
        archive.writestr(info, target)
    return path


def _tar(path, add):
    with tarfile.open(path, "w:gz") as archive:
        add(archive)
    return path


def _tar_file(archive, name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("name", ["../evil.png", "TrainDataset/../../evil.png", "/etc/evil.png", "C:/evil.png",
                                  "..\\evil.png"])
def test_zip_members_escaping_the_folder_are_refused(tmp_path, name):
    path = _zip(tmp_path / "a.zip", {"TrainDataset/images/1.png": b"x", name: b"x"})
    with pytest.raises(UnsafeArchiveError, match="refusing the archive"):
        ArchiveReader(path)


def test_zip_symlink_leaving_the_folder_is_refused_and_inside_is_skipped(tmp_path):
    with pytest.raises(UnsafeArchiveError, match="link to '../../etc/passwd'"):
        ArchiveReader(_zip_symlink(tmp_path / "out.zip", "TestDataset/x.png", "../../etc/passwd"))
    with ArchiveReader(_zip_symlink(tmp_path / "in.zip", "TestDataset/Kvasir/images/b.png", "a.png")) as reader:
        assert list(reader.files) == ["TestDataset/Kvasir/images/a.png"]
        assert reader.links == ["TestDataset/Kvasir/images/b.png"]


def test_tar_traversal_and_escaping_links_are_refused(tmp_path):
    with pytest.raises(UnsafeArchiveError, match="'..'"):
        ArchiveReader(_tar(tmp_path / "a.tar.gz", lambda t: _tar_file(t, "../evil")))

    def symlink(archive):
        info = tarfile.TarInfo("data/link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(info)

    with pytest.raises(UnsafeArchiveError, match="outside the archive"):
        ArchiveReader(_tar(tmp_path / "b.tar.gz", symlink))


def test_zip_bomb_guard_caps_the_total_and_each_member(tmp_path):
    path = _zip(tmp_path / "big.zip", {"a/b.png": b"\0" * 100_000, "a/c.png": b"\0" * 10})
    with pytest.raises(UnsafeArchiveError, match="over the total cap of 50000 bytes .*zip bomb guard"):
        ArchiveReader(path, max_total=50_000)
    with pytest.raises(UnsafeArchiveError, match=r"member 'a/b.png' declares 100000 bytes .* per-member cap of 60000"):
        ArchiveReader(path, max_member=60_000)
    with ArchiveReader(path, max_total=200_000, max_member=100_000) as reader:
        assert reader.read("a/b.png") == b"\0" * 100_000


def test_reading_stops_at_the_cap_whatever_the_header_says(tmp_path):
    path = _zip(tmp_path / "big.zip", {"a/b.png": b"\0" * 100_000, "a/c.png": b"\0" * 60_000})
    with ArchiveReader(path) as reader:
        reader.max_member = 40_000  # as if the header had declared less than the member holds
        with pytest.raises(UnsafeArchiveError, match="member 'a/b.png' unpacks to more than 40000 bytes"):
            reader.read("a/b.png")
    with ArchiveReader(path, max_total=200_000) as reader:
        reader.read("a/b.png")
        reader.max_total = 150_000
        with pytest.raises(UnsafeArchiveError, match="more than 150000 bytes .* in total.* at member 'a/c.png'"):
            reader.read("a/c.png")


def _unpack_all(path):
    with ArchiveReader(path) as reader:
        reader.check_members()


def _spoil(path, start, length):
    raw = bytearray(path.read_bytes())
    raw[start : start + length] = bytes(b ^ 0xFF for b in raw[start : start + length])
    path.write_bytes(bytes(raw))


def test_corrupt_members_are_named(tmp_path):
    data = bytes(range(256)) * 40
    data_offset = 30 + len("a/b.png")  # after the zip local header, which holds the name
    for compression, tail in ((zipfile.ZIP_STORED, "Bad CRC-32"), (zipfile.ZIP_DEFLATED, "")):
        path = tmp_path / f"{compression}.zip"
        with zipfile.ZipFile(path, "w", compression) as archive:
            archive.writestr("a/b.png", data)
        _spoil(path, data_offset + 100 if compression == zipfile.ZIP_STORED else data_offset + 2, 8)
        with pytest.raises(ArchiveReadError, match=rf"{path}: member 'a/b.png' is corrupt .*{tail}"):
            _unpack_all(path)

    whole = tmp_path / "whole.tar"
    with tarfile.open(whole, "w") as archive:
        _tar_file(archive, "a/a.png", b"first")
        _tar_file(archive, "a/b.png", data)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole.read_bytes()[: 3 * 512 + len(data) // 2])
    with pytest.raises(ArchiveReadError, match=rf"{cut}: member 'a/b.png' is cut short"):
        _unpack_all(cut)


def test_truncated_or_foreign_files_are_not_archives(tmp_path):
    whole = _zip(tmp_path / "whole.zip", {"a/b.png": b"x" * 1000}).read_bytes()
    (tmp_path / "half.zip").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "page.zip").write_text("<html>Google Drive - Virus scan warning</html>")
    for name in ("half.zip", "page.zip"):
        with pytest.raises(ArchiveReadError, match="download it again"):
            ArchiveReader(tmp_path / name)


def test_extract_safely_writes_only_inside_and_skips_junk(tmp_path):
    path = _zip(tmp_path / "ok.zip", {"Kvasir/images/a.png": b"1", "__MACOSX/Kvasir/._a.png": b"junk",
                                      "Kvasir/.DS_Store": b"junk"})
    written = extract_safely(path, tmp_path / "out")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in written] == ["Kvasir/images/a.png"]
    with pytest.raises(UnsafeArchiveError):
        extract_safely(_zip(tmp_path / "bad.zip", {"../x": b"1"}), tmp_path / "out2")
    assert not (tmp_path / "x").exists() and not (tmp_path / "out2").exists()
