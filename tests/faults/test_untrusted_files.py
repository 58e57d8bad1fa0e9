"""Issue 8, item 1: untrusted files. Crafted pickles never run code through any loading path of the
real CLI, and archives that would write outside their folder are refused before anything is written."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import stat
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from archive_fixtures import encode, sample_pair

from segbench.registry import get_card

from .helpers import TRAIN_SET, last_lines, partial_files, segbench, train_args, train_config

KVASIR = "TestDataset/Kvasir"


class RunsCode:
    """Unpickling this object runs ``exec(code)``: a stand-in for any payload in a downloaded file."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def payload(marker) -> RunsCode:
    return RunsCode(f"open({str(marker)!r}, 'w').write('code from the file ran')")


def assert_payload_is_live(path, marker, load) -> None:
    """The crafted file really runs its code when loaded unsafely, so the test below can fail."""
    load(path)
    assert marker.exists(), "the crafted file did not run its payload under an unsafe load"
    marker.unlink()


def crafted_resume_checkpoint(tmp_path, data_root, marker):
    out = tmp_path / "run"
    checkpoint = out / "checkpoints" / "last.pt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"model": {}, "epoch": 1, "log": [payload(marker)]}, checkpoint)
    # A matching hash: the file is crafted, not truncated, so the hash check alone cannot catch it.
    checkpoint.with_name("last.pt.sha256").write_text(hashlib.sha256(checkpoint.read_bytes()).hexdigest() + "\n")
    assert_payload_is_live(checkpoint, marker, lambda path: torch.load(path, weights_only=False))
    config = train_config(tmp_path / "c.yaml", data_root)
    return checkpoint, train_args(config, out), out


def crafted_pretrained_file(tmp_path, data_root, marker):
    weights = tmp_path / "vssmsmall_dp03_ckpt_epoch_238.pth"
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(1)}, "config": payload(marker)}, weights)
    assert_payload_is_live(weights, marker, lambda path: torch.load(path, weights_only=False))
    config = train_config(tmp_path / "c.yaml", data_root, models=["vmunetv2"],
                          model_args={"vmunetv2": get_card("vmunetv2").test_kwargs},
                          pretrained={"vmunetv2": str(weights)})
    out = tmp_path / "run"
    return weights, train_args(config, out, "vmunetv2"), out


def crafted_final_weights(tmp_path, data_root, marker):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"conv.weight": payload(marker)}, run / "model.pt")
    assert_payload_is_live(run / "model.pt", marker, lambda path: torch.load(path, weights_only=False))
    # The manifest vouches for the crafted file (its sha256), as a forged results folder would.
    (run / "manifest.json").write_text(json.dumps({
        "protocol": "polyp", "variant": "unet", "model": "unet", "seed": 0, "model_kwargs": {"base_width": 4},
        "weights_sha256": hashlib.sha256((run / "model.pt").read_bytes()).hexdigest()}))
    config = train_config(tmp_path / "c.yaml", data_root)
    out = run / "eval"
    return run / "model.pt", ["evaluate", "--config", config, "--run", run, "--test-sets", "kvasir", "--out", out], out


def crafted_cache(tmp_path, data_root, marker):
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    cache = root / "cache" / f"{TRAIN_SET}_32.npz"
    with np.load(cache) as original:
        arrays = dict(original)
    arrays["ids"] = np.array([payload(marker)] * len(arrays["ids"]), dtype=object)
    with open(cache, "wb") as handle:
        np.savez(handle, **arrays)
    assert_payload_is_live(cache, marker, lambda path: np.load(path, allow_pickle=True)["ids"])
    config = train_config(tmp_path / "c.yaml", root)
    out = tmp_path / "run"
    return cache, train_args(config, out), out


@pytest.mark.parametrize("craft, refusal", [
    pytest.param(crafted_resume_checkpoint, "refus", id="resume-checkpoint", marks=pytest.mark.fault(
        "a crafted checkpoints/last.pt (valid sha256 sidecar) whose unpickling would run code",
        expected="`segbench train` refuses it (weights_only), exits 2 naming the file; the code never runs; "
                 "no model.pt")),
    pytest.param(crafted_pretrained_file, "refusing to unpickle", id="pretrained", marks=pytest.mark.fault(
        "a crafted pretrained encoder file (VMamba-style, config object beside the weights) that would run code",
        expected="`segbench train` refuses it through segbench.pretrained's allow-list, exits 2 naming the "
                 "file; the code never runs; no run output")),
    pytest.param(crafted_final_weights, "refus", id="model-pt", marks=pytest.mark.fault(
        "a crafted model.pt in a pulled results folder that would run code",
        expected="`segbench evaluate` refuses it (weights_only), exits 2 naming the file; the code never runs; "
                 "no metrics written")),
    pytest.param(crafted_cache, "not a segbench cache", id="data-cache", marks=pytest.mark.fault(
        "a crafted data cache (.npz with pickled object arrays) that would run code",
        expected="`segbench train` refuses it (allow_pickle=False), exits 2 naming the file; the code never runs")),
])
def test_crafted_file_never_runs_code(tmp_path, data_root, craft, refusal):
    marker = tmp_path / "marker"
    crafted, args, out = craft(tmp_path, data_root, marker)

    result = segbench(*args, cwd=tmp_path)

    assert not marker.exists(), "unpickling ran code from the crafted file"
    assert result.returncode == 2, last_lines(result.stderr)
    assert "Traceback" not in result.stderr, last_lines(result.stderr)
    assert str(crafted) in result.stderr and refusal in result.stderr, last_lines(result.stderr)
    assert not (out / "model.pt").exists() and not (out / "metrics.json").exists()
    assert partial_files(tmp_path) == []


def zip_with(path, members: dict, links: dict | None = None):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)


def tar_with(path, members: dict, hardlinks: dict):
    """A tar archive (under the zip's name: segbench reads either format by content)."""
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in hardlinks.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.LNKTYPE, target
            archive.addfile(info)


def kvasir_members() -> dict[str, bytes]:
    members = {}
    for index in range(2):
        image, mask = sample_pair(index)
        members[f"{KVASIR}/images/{index}.png"] = encode(image)
        members[f"{KVASIR}/masks/{index}.png"] = encode(mask)
    return members


@pytest.mark.parametrize("build, member, options", [
    pytest.param(lambda path: zip_with(path, {**kvasir_members(), f"{KVASIR}/images/../../../../escaped.png": b"x"}),
                 "../../../../escaped.png", [], id="traversal", marks=pytest.mark.fault(
                     "a downloaded archive with a member named ../../escaped.png (path traversal)",
                     expected="`segbench data prepare` refuses the archive naming the member; nothing is written")),
    pytest.param(lambda path: zip_with(path, {**kvasir_members(), "/tmp/escaped.png": b"x"}),
                 "/tmp/escaped.png", [], id="absolute", marks=pytest.mark.fault(
                     "an archive member with an absolute path",
                     expected="`segbench data prepare` refuses the archive naming the member; nothing is written")),
    pytest.param(lambda path: zip_with(path, kvasir_members(), links={f"{KVASIR}/images/2.png": "/etc/passwd"}),
                 "/etc/passwd", [], id="symlink", marks=pytest.mark.fault(
                     "an archive with a symbolic link to a file outside its folder",
                     expected="`segbench data prepare` refuses the archive naming the link; nothing is written")),
    pytest.param(lambda path: tar_with(path, kvasir_members(),
                                       hardlinks={f"{KVASIR}/images/2.png": "../../../etc/passwd"}),
                 "../../../etc/passwd", [], id="hardlink", marks=pytest.mark.fault(
                     "a tar archive with a hard link whose target leaves its folder",
                     expected="`segbench data prepare` refuses the archive naming the link; nothing is written")),
    pytest.param(lambda path: zip_with(path, {**kvasir_members(), f"{KVASIR}/images/zeros.png": b"\0" * 4_000_000}),
                 "zip bomb guard", ["--max-uncompressed", "1000000"], id="oversize", marks=pytest.mark.fault(
                     "an archive whose members unpack to more than the size limit (zip bomb)",
                     expected="`segbench data prepare` refuses it before reading a member; nothing is written")),
])
def test_unsafe_archive_is_refused_before_anything_is_written(tmp_path, build, member, options):
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    archive = raw / "TestDataset.zip"
    build(archive)
    before = sorted(tmp_path.rglob("*"))

    result = segbench("data", "prepare", "kvasir", "--root", tmp_path / "data", "--expected-count", 2,
                      "--no-progress", *options, cwd=tmp_path)

    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, last_lines(result.stderr)
    assert str(archive) in result.stderr and member in result.stderr and "refusing" in result.stderr, result.stderr
    created = sorted(set(tmp_path.rglob("*")) - set(before))
    assert all(path.parent == raw for path in created), created  # at most the archive's recorded hash
    assert not (tmp_path / "data" / "processed").exists() or not any((tmp_path / "data" / "processed").iterdir())
