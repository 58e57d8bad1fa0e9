import pickle

import pytest
import torch

from segbench.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


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
