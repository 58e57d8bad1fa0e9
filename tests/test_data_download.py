"""Downloads over real HTTP on 127.0.0.1: mirror and URL override, cut connections, hashes, lock file."""
import hashlib

import pytest
from archive_fixtures import pranet_train_members, serve, write_zip

from segbench.data.download import LOCK_NAME, DownloadError, download_archive, read_lock, verify_archive


@pytest.fixture
def served(tmp_path):
    archive = write_zip(tmp_path / "served" / "TrainDataset.zip", pranet_train_members())
    with serve(tmp_path / "served") as server:
        yield server, archive


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _only_the_lock_in(raw):
    return sorted(p.name for p in raw.iterdir() if not p.name.startswith(".sha256")) in ([], [LOCK_NAME])


def test_mirror_download_records_the_hash_and_reuses_the_file(served, tmp_path, monkeypatch):
    server, archive = served
    monkeypatch.setenv("SEGBENCH_MIRROR", server.url + "/")
    raw = tmp_path / "raw"
    path = download_archive("TrainDataset.zip", raw, progress=False)
    assert path.read_bytes() == archive.read_bytes()
    assert read_lock(raw) == {"TrainDataset.zip": _sha256(archive)}
    assert not (raw / ".incoming").exists()
    download_archive("TrainDataset.zip", raw, progress=False)
    assert server.requests == ["TrainDataset.zip"], "a verified archive is not fetched again"


def test_url_override_is_used_when_no_mirror_is_set(served, tmp_path, monkeypatch):
    server, archive = served
    monkeypatch.delenv("SEGBENCH_MIRROR", raising=False)
    path = download_archive("TrainDataset.zip", tmp_path / "raw", url=f"{server.url}/TrainDataset.zip",
                            sha256=_sha256(archive), progress=False)
    assert path.exists() and server.requests == ["TrainDataset.zip"]


def test_mirror_may_be_a_local_folder(served, tmp_path, monkeypatch):
    _, archive = served
    monkeypatch.setenv("SEGBENCH_MIRROR", str(archive.parent))
    assert download_archive("TrainDataset.zip", tmp_path / "raw", progress=False).read_bytes() == archive.read_bytes()


def test_connection_cut_mid_file_is_retried(served, tmp_path, monkeypatch):
    server, archive = served
    monkeypatch.setenv("SEGBENCH_MIRROR", server.url)
    server.cuts["TrainDataset.zip"] = 1
    path = download_archive("TrainDataset.zip", tmp_path / "raw", retries=1, progress=False)
    assert server.requests == ["TrainDataset.zip"] * 2
    assert _sha256(path) == _sha256(archive) == read_lock(tmp_path / "raw")["TrainDataset.zip"]


def test_connection_always_cut_gives_a_clear_error_and_keeps_nothing(served, tmp_path, monkeypatch):
    server, _ = served
    monkeypatch.setenv("SEGBENCH_MIRROR", server.url)
    server.cuts["TrainDataset.zip"] = 5
    raw = tmp_path / "raw"
    with pytest.raises(DownloadError) as error:
        download_archive("TrainDataset.zip", raw, retries=0, progress=False)
    text = str(error.value)
    assert "\n" not in text and text.startswith(f"{raw / 'TrainDataset.zip'}: could not download TrainDataset.zip")
    assert "nothing was kept" in text
    assert f"save it as {raw / 'TrainDataset.zip'}" in text
    assert _only_the_lock_in(raw) and LOCK_NAME not in [p.name for p in raw.iterdir()]


def test_checksum_mismatch_is_refused_and_not_retried(served, tmp_path, monkeypatch):
    server, archive = served
    monkeypatch.setenv("SEGBENCH_MIRROR", server.url)
    raw = tmp_path / "raw"
    with pytest.raises(DownloadError, match=rf"not retried: its sha256 is {_sha256(archive)}\); "
                                            rf"data.sha256.TrainDataset.zip in the config expects {'0' * 64}"):
        download_archive("TrainDataset.zip", raw, sha256="0" * 64, retries=2, progress=False)
    assert server.requests == ["TrainDataset.zip"]
    assert not (raw / "TrainDataset.zip").exists() and _only_the_lock_in(raw)


def test_missing_file_and_error_pages_are_refused(served, tmp_path, monkeypatch):
    server, _ = served
    monkeypatch.setenv("SEGBENCH_MIRROR", server.url)
    with pytest.raises(DownloadError, match="404"):
        download_archive("TestDataset.zip", tmp_path / "raw", retries=0, progress=False)
    (server.directory / "isic_vmunet.zip").write_text("<html>quota exceeded</html>")
    with pytest.raises(DownloadError, match="is refused and nothing was kept: not an archive"):
        download_archive("isic_vmunet.zip", tmp_path / "raw", retries=0, progress=False)
    assert not (tmp_path / "raw" / "isic_vmunet.zip").exists()


def test_hand_placed_archive_is_verified_against_config_and_lock(tmp_path):
    raw = tmp_path / "raw"
    placed = write_zip(raw / "TestDataset.zip", {"TestDataset/Kvasir/images/a.png": b"x"})
    assert verify_archive(placed, {}) == read_lock(raw)["TestDataset.zip"]
    with pytest.raises(DownloadError, match=rf"data.sha256.TestDataset.zip in the config expects {'1' * 64}"):
        verify_archive(placed, {"TestDataset.zip": "1" * 64})
    placed.write_bytes(placed.read_bytes() + b"tail")
    with pytest.raises(DownloadError, match=LOCK_NAME):
        verify_archive(placed, {})
