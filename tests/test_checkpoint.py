import pickle

import pytest
import torch

from segbench.checkpoint import CheckpointError, UnsafeCheckpointError, load_checkpoint, save_checkpoint


def test_round_trip_loads_with_weights_only(tmp_path):
    state = {"model": {"w": torch.arange(4.0)}, "epoch": 3, "log": [{"epoch": 1, "lr": 0.1}]}
    save_checkpoint(tmp_path / "last.pt", state)
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], state["model"]["w"])
    torch.load(tmp_path / "last.pt", weights_only=True)


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    save_checkpoint(path, {"epoch": 2})
    path.write_bytes(path.read_bytes()[:20])  # killed mid-write
    assert load_checkpoint(path)["epoch"] == 1


def test_checkpoint_without_hash_or_previous_is_an_error(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    path.with_name("last.pt.sha256").unlink()
    with pytest.raises(CheckpointError, match="not completely saved"):
        load_checkpoint(path)


class _WritesMarker:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_checkpoint_does_not_execute_code(tmp_path):
    import hashlib

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _WritesMarker(str(marker))}, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    (tmp_path / "evil.pt.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest())
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)
    assert not marker.exists()


def _matching_sidecar(path):
    import hashlib

    path.with_name(path.name + ".sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")


def test_every_cut_of_a_checkpoint_is_a_one_line_checkpoint_error(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(2000.0)}, "epoch": 1, "log": [{"epoch": 1, "lr": 0.1}]})
    whole = path.read_bytes()
    for length in range(0, len(whole), max(1, len(whole) // 150)):
        path.write_bytes(whole[:length])
        _matching_sidecar(path)  # the hash cannot catch it: only loading can
        with pytest.raises(CheckpointError) as error:
            load_checkpoint(path)
        assert "\n" not in str(error.value) and str(error.value).startswith(f"{path}: "), (length, str(error.value))


def test_previous_file_verifies_against_the_hash_left_under_the_current_name(tmp_path):
    """A kill between the rotation's two renames leaves last.pt.prev beside last.pt.sha256 (its own hash)."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    path.rename(tmp_path / "last.pt.prev")
    assert load_checkpoint(path)["epoch"] == 1


def test_unsafe_previous_checkpoint_is_refused_not_skipped(tmp_path):
    path = tmp_path / "last.pt"
    previous = tmp_path / "last.pt.prev"
    torch.save({"payload": _WritesMarker(str(tmp_path / "pwned"))}, previous)
    _matching_sidecar(previous)
    with pytest.raises(UnsafeCheckpointError, match=rf"^{previous}: .*refusing to unpickle"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
