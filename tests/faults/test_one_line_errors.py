"""The independent attack on the suite, item 5: data errors on one line, the file first. A wrong split file,
integrity report, prepared image or cache, through the real `segbench data split/check/cache` and `segbench
train`: exit 2 and one line ``<file>: <what is wrong> (expected ..., found ...); <what to do>``, never a
traceback."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from .helpers import TEST_SET, TRAIN_SET, error_line, segbench, train_args, train_config


@pytest.fixture
def root(tmp_path, data_root):
    """A copy of the prepared, split and cached tiny datasets, free to spoil."""
    shutil.copytree(data_root, tmp_path / "data")
    return tmp_path / "data"


def unknown_split_value(root):
    user = root / "user_split.csv"
    ids = sorted(path.stem for path in (root / "processed" / TEST_SET / "images").iterdir())
    user.write_text("id,split\n" + "".join(f"{i},{'testing' if n == 1 else 'test'}\n" for n, i in enumerate(ids)))
    return ["data", "split", TEST_SET, "--root", root, "--user-split", user], f"{user}:3: ", \
        "unknown split for id", "found 'testing'"


def corrupt_integrity_report(root):
    report = root / "processed" / TEST_SET / "integrity.json"
    report.write_text(report.read_text()[:200])
    return ["data", "split", TEST_SET, "--root", root], f"{report}: ", "not valid JSON", "re-prepare"


def corrupt_integrity_report_checked(root):
    _, prefix, _, todo = corrupt_integrity_report(root)
    return ["data", "check", TEST_SET, "--root", root], prefix, "not a segbench integrity report", todo


def image_changed_after_the_split(root):
    image = sorted((root / "processed" / TEST_SET / "images").iterdir())[0]
    Image.new("RGB", Image.open(image).size, (9, 9, 9)).save(image)
    return ["data", "cache", TEST_SET, "--size", 32, "--root", root, "--out", root / "new.npz", "--no-progress"], \
        f"{image}: ", "does not match", "re-run the prepare and split steps"


def npy_instead_of_npz(root):
    cache = root / "cache" / f"{TRAIN_SET}_32.npz"
    with np.load(cache) as arrays:
        images = arrays["images"]
    with open(cache, "wb") as handle:
        np.save(handle, images)
    return "train", cache, "is not a segbench cache (expected an .npz archive of ids, split, images, masks, found an " \
                           ".npy array file)", "delete it and rebuild it"


def npz_cut_short(root):
    cache = root / "cache" / f"{TRAIN_SET}_32.npz"
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    return "train", cache, "is not a segbench cache", "delete it and rebuild it"


def npz_with_wrong_arrays(root):
    cache = root / "cache" / f"{TRAIN_SET}_32.npz"
    with np.load(cache) as arrays:
        spoiled = dict(arrays)
    spoiled["images"] = spoiled["images"].astype(np.float32)
    np.savez(cache, **spoiled)
    return "train", cache, "is not a segbench cache (expected ids and split (N,), images uint8", "found ids"


@pytest.mark.parametrize("spoil", [
    pytest.param(unknown_split_value, id="user-split-value", marks=pytest.mark.fault(
        "a user split file (data.split_files) with a split value that does not exist ('testing')",
        expected="`segbench data split` exits 2 with one line starting with <file>:<line>: naming the id, the "
                 "expected values and the value found")),
    pytest.param(corrupt_integrity_report, id="split-integrity-json", marks=pytest.mark.fault(
        "a prepared dataset's integrity.json cut short, then `segbench data split`",
        expected="exit 2 with one line starting with the integrity.json path: not valid JSON, re-prepare")),
    pytest.param(corrupt_integrity_report_checked, id="check-integrity-json", marks=pytest.mark.fault(
        "the same cut integrity.json, then `segbench data check`",
        expected="exit 2 with one line starting with the integrity.json path: not a segbench integrity report")),
    pytest.param(image_changed_after_the_split, id="cache-changed-image", marks=pytest.mark.fault(
        "a prepared image edited after the split file recorded its sha256, then `segbench data cache`",
        expected="exit 2 with one line starting with the image's path, both hashes, and re-run prepare and split; "
                 "no cache written")),
])
def test_data_command_error_is_one_line_starting_with_the_file(root, spoil):
    args, prefix, what, todo = spoil(root)

    result = segbench(*args, cwd=root.parent)

    message = error_line(result, f"data {args[1]}")
    assert message.startswith(prefix) and what in message and todo in message, message
    assert not (root / "new.npz").exists()


@pytest.mark.parametrize("spoil", [
    pytest.param(npy_instead_of_npz, id="npy-cache", marks=pytest.mark.fault(
        "the training cache is an .npy array saved under the .npz name",
        expected="`segbench train` exits 2 with one line starting with the cache path: not a segbench cache "
                 "(expected an .npz archive, found an .npy array file); delete and rebuild it")),
    pytest.param(npz_cut_short, id="cut-cache", marks=pytest.mark.fault(
        "the training cache (.npz) cut short (a copy interrupted half-way)",
        expected="`segbench train` exits 2 with one line starting with the cache path: not a segbench cache")),
    pytest.param(npz_with_wrong_arrays, id="float-cache", marks=pytest.mark.fault(
        "a cache whose images are float32 instead of uint8 (written by another tool)",
        expected="`segbench train` exits 2 with one line starting with the cache path, the expected and the found "
                 "shapes and types")),
])
def test_unreadable_cache_is_one_line_starting_with_the_file(tmp_path, root, spoil):
    command, cache, what, todo = spoil(root)
    config = train_config(tmp_path / "train.yaml", root)

    result = segbench(*train_args(config, tmp_path / "run"), cwd=tmp_path)

    message = error_line(result, command)
    assert message.startswith(f"{cache}: {what}") and todo in message, message
    assert not (tmp_path / "run" / "model.pt").exists()
