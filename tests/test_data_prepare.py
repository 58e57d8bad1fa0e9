"""Preparation from archives in the real layouts, and every bad input stopping with a clear error.

These call the library directly (fast); tests/test_data_workflow.py drives the same code through
the Snakemake rules and the HTTP mirror.
"""
import json
import re

import numpy as np
import pytest
from archive_fixtures import (FIXTURE_COUNTS, encode, gradient_like, isic_challenge_archives, pranet_test_members,
                              real_layout_archives, sample_pair, write_zip)
from PIL import Image

from segbench.data.download import LOCK_NAME, read_lock
from segbench.data.prepare import PrepareError, prepare_real

KVASIR = "TestDataset/Kvasir"
FIRST = "cju0s2a9ekvms080138tjjpxr"


def _prepare(raw, out, dataset="kvasir", **kwargs):
    kwargs.setdefault("expected_count", FIXTURE_COUNTS.get(dataset))
    return prepare_real(dataset, raw, out / dataset, progress=False, **kwargs)


def _test_archive(raw, change):
    members = pranet_test_members()
    change(members)
    write_zip(raw / "TestDataset.zip", members)
    return raw


def _assert_nothing_prepared(out):
    assert not out.exists() or list(out.iterdir()) == []


def test_real_layouts_prepare_into_the_one_convention(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "processed"
    real_layout_archives(raw)
    for dataset, count in FIXTURE_COUNTS.items():
        report = _prepare(raw, out, dataset)
        assert report["n_pairs"] == count
        for item in report["items"]:
            mask = np.asarray(Image.open(out / dataset / "masks" / f"{item['id']}.png"))
            assert mask.shape == (item["height"], item["width"]) and set(np.unique(mask)) <= {0, 255}
    assert sorted(p.name for p in out.iterdir()) == sorted(FIXTURE_COUNTS)
    polyp = json.loads((out / "polyp_train" / "integrity.json").read_text())
    assert [item["id"] for item in polyp["items"]] == ["1", "2", "cju0qkwl35piu0993l0dewei2",
                                                      "cju0qoxqj9q6s0835b43399p4", "cju0roawvklrq0799vmjorwfv"]
    clinicdb = json.loads((out / "clinicdb" / "integrity.json").read_text())
    assert clinicdb["items"][0]["mask"] == "TestDataset.zip:TestDataset/CVC-ClinicDB/masks/1.tif"
    isic = json.loads((out / "isic17" / "integrity.json").read_text())
    assert isic["counts_by_source_split"] == {"test": 2, "train": 4}
    assert isic["items"][0]["mask"].endswith("data/isic2017/train/masks/ISIC_0000000_segmentation.png")
    assert set(read_lock(raw)) == {"TrainDataset.zip", "TestDataset.zip", "isic_vmunet.zip"}


def test_official_isic_zips_skip_superpixels_and_metadata(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "processed"
    isic_challenge_archives(raw)
    report = _prepare(raw, out, "isic18", isic_split="seeded", expected_count=10)
    assert report["source"] == "isic_challenge" and report["counts_by_source_split"] == {}
    assert report["n_ignored_files"] == 5 + 1 + 1 + 5 + 1 + 1
    assert {item["id"] for item in report["items"]} == {f"ISIC_{i:07d}" for i in [*range(5), *range(1000, 1005)]}


def test_count_differing_from_the_registry_stops(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "processed"
    real_layout_archives(raw)
    with pytest.raises(PrepareError, match=rf"^{raw / 'TestDataset.zip'}: wrong number of image/mask pairs for kvasir "
                                           r"\(expected 100, .* found 2\); if this is the source you want, set "
                                           r"data.expected_counts.kvasir: 2"):
        _prepare(raw, out, "kvasir", expected_count=None)
    _assert_nothing_prepared(out)


IMAGE = f"TestDataset.zip:{KVASIR}/images/{FIRST}.png"
MASK = f"TestDataset.zip:{KVASIR}/masks/{FIRST}.png"


@pytest.mark.parametrize("change, file, message", [
    (lambda m: m.pop(f"{KVASIR}/masks/{FIRST}.png"), IMAGE,
     rf"image has no mask \(expected {FIRST}.png/tif/.* in .*masks/, found none\)"),
    (lambda m: m.pop(f"{KVASIR}/images/{FIRST}.png"), MASK, "mask has no image"),
    (lambda m: m.__setitem__(f"{KVASIR}/masks/{FIRST}.png", encode(np.zeros((5, 7), np.uint8))), MASK,
     rf"mask size differs from its image .*{IMAGE} \(expected 26x20 \(width x height\), found 7x5\)"),
    (lambda m: m.__setitem__(f"{KVASIR}/masks/{FIRST}.png", gradient_like(m[f"{KVASIR}/masks/{FIRST}.png"])), MASK,
     r"mask is not binary \(expected 0/255 with at most 5% .* found \d+.\d%\)"),
    (lambda m: m.__setitem__(f"{KVASIR}/masks/{FIRST}.png", b""), MASK,
     r"mask is empty \(expected an encoded image, found 0 bytes\)"),
    (lambda m: m.__setitem__(f"{KVASIR}/images/{FIRST}.png", m[f"{KVASIR}/images/{FIRST}.png"][:60]), IMAGE,
     r"image cannot be decoded \(expected PNG, JPEG, BMP or TIFF, found OSError"),
    (lambda m: m.__setitem__(f"{KVASIR}/masks/{FIRST}.tif", m[f"{KVASIR}/masks/{FIRST}.png"]), MASK,
     "several masks for id"),
    (lambda m: m.__setitem__(f"{KVASIR}/images/{FIRST.upper()}.png", m[f"{KVASIR}/images/{FIRST}.png"]),
     f"TestDataset.zip:{KVASIR}/images/{FIRST}.png", "differ only in case"),
], ids=["mask-missing", "image-missing", "mask-wrong-size", "mask-not-binary", "zero-byte", "truncated-image",
        "two-masks", "case-only"])
def test_bad_inputs_stop_with_one_line_that_starts_with_the_file(tmp_path, change, file, message):
    raw, out = tmp_path / "raw", tmp_path / "processed"
    _test_archive(raw, change)
    with pytest.raises(PrepareError) as error:
        _prepare(raw, out)
    text = str(error.value)
    assert "\n" not in text
    assert text.startswith(f"{raw / file}: "), text
    assert re.search(message, text), text
    assert "nothing was prepared for kvasir" in text
    _assert_nothing_prepared(out)


def test_several_problems_are_counted_on_the_same_line(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "processed"

    def change(members):
        members.pop(f"{KVASIR}/masks/{FIRST}.png")
        members.pop(f"{KVASIR}/images/cju0s690hkp960855tjuaqvv0.png")

    _test_archive(raw, change)
    with pytest.raises(PrepareError) as error:
        _prepare(raw, out)
    text = str(error.value)
    assert "\n" not in text and text.startswith(f"{raw / IMAGE}: image has no mask"), text
    other = f"{raw}/TestDataset.zip:{KVASIR}/masks/cju0s690hkp960855tjuaqvv0.png"
    assert f"(1 more problem(s): {other}: mask has no image" in text


def test_conversions_are_noted_and_artefacts_thresholded_with_a_warning(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "processed"
    second = "cju0s690hkp960855tjuaqvv0"

    def change(members):
        image, mask = sample_pair(10_000, 20, 26)
        noisy = mask.copy()
        noisy[0, :3] = (100, 130, 250)
        members[f"{KVASIR}/images/{FIRST}.png"] = encode(image, mode="RGBA")
        members[f"{KVASIR}/masks/{FIRST}.png"] = encode(np.repeat(noisy[..., None], 3, axis=2))
        members[f"{KVASIR}/images/{second}.png"] = encode(image, mode="L")
        members[f"{KVASIR}/masks/{second}.png"] = encode(np.zeros_like(mask))

    _test_archive(raw, change)
    report = _prepare(raw, out)
    assert report["conversions"] == {"image L -> RGB": 1, "image RGBA -> RGB (alpha dropped)": 1,
                                     "mask RGB with equal channels -> one channel": 1}
    assert report["n_masks_thresholded"] == 1 and report["thresholded_mask_ids"] == [FIRST]
    assert report["n_empty_masks"] == 1 and report["empty_mask_ids"] == [second]
    assert any("thresholded at 128" in warning for warning in report["warnings"])
    mask = np.asarray(Image.open(out / "kvasir" / "masks" / f"{FIRST}.png"))
    assert mask[0, :3].tolist() == [0, 255, 255]
    assert Image.open(out / "kvasir" / "images" / f"{second}.png").mode == "RGB"


def test_a_failed_rerun_removes_a_stale_incomplete_folder(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "processed"
    _test_archive(raw, lambda m: m.pop(f"{KVASIR}/masks/{FIRST}.png"))
    (out / "kvasir" / "images").mkdir(parents=True)
    (out / "kvasir" / "images" / "old.png").write_bytes(b"old")
    with pytest.raises(PrepareError):
        _prepare(raw, out)
    _assert_nothing_prepared(out)


def test_archive_changed_after_its_hash_was_locked_stops(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "processed"
    real_layout_archives(raw)
    _prepare(raw, out, "etis")
    _test_archive(raw, lambda m: m.pop(f"{KVASIR}/masks/{FIRST}.png"))
    digest = "[0-9a-f]{64}"
    with pytest.raises(PrepareError, match=rf"^{raw / 'TestDataset.zip'}: sha256 is {digest}, not the expected one; "
                                           rf"{raw / LOCK_NAME} locks TestDataset.zip to {digest} .* remove the "
                                           rf"line '{digest}  TestDataset.zip' from {raw / LOCK_NAME}"):
        _prepare(raw, out, "cvc300")
    assert not (out / "cvc300").exists() and (out / "etis" / "integrity.json").exists()


def test_missing_archive_says_what_to_place_where(tmp_path):
    with pytest.raises(PrepareError) as error:
        _prepare(tmp_path / "raw", tmp_path / "processed", "polyp_train")
    text = str(error.value)
    assert text.startswith(f"{tmp_path / 'raw' / 'TrainDataset.zip'}: missing")
    assert "https://drive.google.com/file/d/1YiGHLw4iTvKdvbT6MgwO9zcCv8zJ_Bnb/view" in text


def test_path_traversal_archive_is_refused_before_anything_is_written(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "processed"
    _test_archive(raw, lambda m: m.__setitem__("TestDataset/../../escaped.png", b"x"))
    with pytest.raises(PrepareError, match="contains '..' and would escape"):
        _prepare(raw, out)
    _assert_nothing_prepared(out)
    assert not (tmp_path / "escaped.png").exists()
