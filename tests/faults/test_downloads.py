"""The independent attack on the suite, item 3: downloads, over real HTTP on 127.0.0.1 through `segbench data
download`. A refused archive never locks its hash, so the good file downloads after it; a file that differs
from the locked one is refused on one line that names data/raw/sha256.lock, both hashes and how to reset; a
checksum mismatch is never retried."""
from __future__ import annotations

import zipfile

import pytest
from archive_fixtures import deflated, deflated_zeros, pranet_test_members, serve, write_raw_zip, write_zip

from segbench.data.download import LOCK_NAME, read_lock
from segbench.io import sha256_file

from .helpers import error_line, last_lines, segbench

NAME = "TestDataset.zip"


def download(root, server, *options):
    return segbench("data", "download", NAME, "--root", root, "--no-progress", *options, cwd=root.parent,
                    SEGBENCH_MIRROR=server.url)


def traversal(path):
    members = pranet_test_members()
    members["TestDataset/../../escaped.png"] = b"x"
    write_zip(path, members)
    return "contains '..' and would escape the target folder"


def bad_crc(path):
    members = pranet_test_members()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    victim = next(iter(members.values()))
    raw = bytearray(path.read_bytes())
    raw[raw.index(victim) + 60] ^= 0xFF
    path.write_bytes(bytes(raw))
    return "is corrupt (expected it to unpack, found BadZipFile: Bad CRC-32"


def bomb(path):
    write_raw_zip(path, [(f"TestDataset/Kvasir/images/{index}.png", deflated_zeros(300)) for index in range(2)]
                  + [("TestDataset/Kvasir/masks/0.png", deflated(b"x"))])
    return "over the per-member cap"


@pytest.mark.parametrize("serve_bad", [
    pytest.param(traversal, id="traversal", marks=pytest.mark.fault(
        "the source serves an archive with a path-traversal member; the user deletes nothing and reruns once the "
        "source serves the good file",
        expected="the download is refused on one line (nothing kept, no hash locked); the rerun downloads the good "
                 "file and locks its hash")),
    pytest.param(bad_crc, id="bad-crc", marks=pytest.mark.fault(
        "the source serves a readable zip with a corrupt member (bad CRC), then the good file",
        expected="the download is refused on one line naming the member (nothing kept, no hash locked); the rerun "
                 "downloads the good file and locks its hash")),
    pytest.param(bomb, id="zip-bomb", marks=pytest.mark.fault(
        "the source serves a zip bomb (members of 300 MiB in 600 KB), then the good file",
        expected="the download is refused on one line naming the cap (nothing kept, no hash locked); the rerun "
                 "downloads the good file and locks its hash")),
])
def test_refused_archive_does_not_lock_its_hash(tmp_path, serve_bad):
    served, root = tmp_path / "served", tmp_path / "data"
    served.mkdir()
    reason = serve_bad(served / NAME)
    with serve(served) as server:
        refused = download(root, server)
        message = error_line(refused, "data download")
        assert message.startswith(f"{root / 'raw' / NAME}: the file downloaded from {server.url}/{NAME}"), message
        assert "is refused and nothing was kept" in message and reason in message, message
        assert not (root / "raw" / NAME).exists() and NAME not in read_lock(root / "raw")

        good = write_zip(served / NAME, pranet_test_members())
        result = download(root, server)

    assert result.returncode == 0, last_lines(result.stderr)
    assert read_lock(root / "raw") == {NAME: sha256_file(good)}
    assert (root / "raw" / NAME).read_bytes() == good.read_bytes()


@pytest.mark.fault(
    "the archive is deleted and the source now serves a different (valid) file than the one whose hash was locked",
    expected="`segbench data download` exits 2 with one line naming data/raw/sha256.lock, the archive, both hashes "
             "and the line to remove; it is fetched once (a mismatch is not retried); after removing that line the "
             "new file is downloaded and locked",
)
def test_file_differing_from_the_locked_one_names_the_lock_and_how_to_reset(tmp_path):
    served, root = tmp_path / "served", tmp_path / "data"
    first = write_zip(served / NAME, pranet_test_members(count=2))
    locked = sha256_file(first)
    lock = root / "raw" / LOCK_NAME
    with serve(served) as server:
        assert download(root, server).returncode == 0
        (root / "raw" / NAME).unlink()
        second = write_zip(served / NAME, pranet_test_members(count=3))
        changed = sha256_file(second)
        server.requests.clear()

        result = download(root, server, "--retries", 3)

        message = error_line(result, "data download")
        assert server.requests == [NAME], "a checksum mismatch was retried"
        assert message.startswith(f"{root / 'raw' / NAME}: "), message
        assert f"its sha256 is {changed}" in message and f"{lock} locks {NAME} to {locked}" in message, message
        assert f"remove the line '{locked}  {NAME}' from {lock}" in message, message
        assert not (root / "raw" / NAME).exists() and read_lock(root / "raw") == {NAME: locked}

        lock.write_text("".join(line for line in lock.read_text().splitlines(keepends=True) if NAME not in line))
        reset = download(root, server)

    assert reset.returncode == 0, last_lines(reset.stderr)
    assert read_lock(root / "raw") == {NAME: changed}


@pytest.mark.fault(
    "data.sha256 gives a hash the served file does not have, with --retries 3",
    expected="`segbench data download` exits 2 after one request with one line naming the archive, both hashes and "
             "data.sha256; nothing kept, no hash locked",
)
def test_checksum_mismatch_is_not_retried(tmp_path):
    served, root = tmp_path / "served", tmp_path / "data"
    archive = write_zip(served / NAME, pranet_test_members())
    with serve(served) as server:
        result = download(root, server, "--retries", 3, "--sha256", "0" * 64)
        requests = list(server.requests)

    message = error_line(result, "data download")
    assert requests == [NAME], "a checksum mismatch was retried"
    assert message.startswith(f"{root / 'raw' / NAME}: "), message
    assert f"its sha256 is {sha256_file(archive)}" in message, message
    assert f"data.sha256.{NAME} in the config expects {'0' * 64}" in message, message
    assert not (root / "raw" / NAME).exists() and read_lock(root / "raw") == {}
