"""Split files and the resized cache: seeded and reproducible, val carved from train only, clear errors."""
import csv

import numpy as np
import pytest

from segbench.data import load_cache
from segbench.data.cache import CacheError, build_cache, resize_pair
from segbench.data.prepare import prepare_synthetic
from segbench.data.splits import SplitError, assign_splits, read_split, seeded_subset, write_split
from segbench.data.synthetic import SyntheticSettings

SETTINGS = SyntheticSettings(seed=0, n_train=20, n_test=6, min_side=40, max_side=70)


def test_seeded_subset_is_deterministic_sized_and_seed_dependent():
    ids = [f"id{i:03d}" for i in range(200)]
    chosen = seeded_subset(ids, 0.1, 0, "polyp_train", "val")
    assert len(chosen) == 20
    assert chosen == seeded_subset(list(reversed(ids)), 0.1, 0, "polyp_train", "val"), "order must not matter"
    assert chosen != seeded_subset(ids, 0.1, 1, "polyp_train", "val")
    assert len(seeded_subset(ids[:3], 0.1, 0, "x", "val")) == 1, "at least one id when there are two or more"


def test_training_set_gets_a_val_subset_and_no_test():
    ids = [f"p{i}" for i in range(1450)]
    assignment = assign_splits("polyp_train", ids, {}, 0.1, 0)
    counts = {s: list(assignment.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 1305, "val": 145, "test": 0}


def test_test_datasets_are_all_test():
    assert set(assign_splits("etis", ["1", "2", "3"], {}, 0.1, 0).values()) == {"test"}


def test_isic_keeps_the_archive_split_and_carves_val_from_its_train_part():
    ids = [f"ISIC_{i:07d}" for i in range(100)]
    source = {i: ("train" if n < 70 else "test") for n, i in enumerate(ids)}
    assignment = assign_splits("isic17", ids, source, 0.1, 0)
    assert all(assignment[i] == "test" for i in ids[70:])
    assert sum(assignment[i] == "val" for i in ids[:70]) == 7


def test_isic_without_archive_split_gets_a_seeded_7_3_split():
    ids = [f"ISIC_{i:07d}" for i in range(2150)]
    assignment = assign_splits("isic17", ids, {i: None for i in ids}, 0.1, 0)
    values = list(assignment.values())
    assert values.count("test") == 645
    assert values.count("val") == 151 and values.count("train") == 1354
    assert assignment == assign_splits("isic17", list(reversed(ids)), {i: None for i in ids}, 0.1, 0)


def test_split_file_columns_hashes_and_user_split(tmp_path):
    from segbench.io import sha256_file

    folder = tmp_path / "processed" / "polyp_train"
    prepare_synthetic("polyp_train", SETTINGS, folder, progress=False)
    counts = write_split("polyp_train", folder, tmp_path / "splits.csv", 0.1, 0)
    assert counts == {"train": 18, "val": 2, "test": 0}
    rows = read_split(tmp_path / "splits.csv")
    assert [row["id"] for row in rows] == sorted(row["id"] for row in rows)
    assert rows[0]["image_sha256"] == sha256_file(folder / "images" / f"{rows[0]['id']}.png")
    first = (tmp_path / "splits.csv").read_bytes()
    write_split("polyp_train", folder, tmp_path / "again.csv", 0.1, 0)
    assert (tmp_path / "again.csv").read_bytes() == first

    user = tmp_path / "user.csv"
    with open(user, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "split"])
        writer.writerows([row["id"], "val" if n < 5 else "train"] for n, row in enumerate(rows))
    assert write_split("polyp_train", folder, tmp_path / "user_split.csv", user_split=user) == \
        {"train": 15, "val": 5, "test": 0}
    with open(user, "a") as handle:
        handle.write("not_an_id,train\n")
    with pytest.raises(SplitError, match="1 unknown"):
        write_split("polyp_train", folder, tmp_path / "bad.csv", user_split=user)
    assert not (tmp_path / "bad.csv").exists()


def test_mask_resize_is_bilinear_then_thresholded_at_half():
    image = np.zeros((4, 4, 3), np.uint8)
    mask = np.zeros((4, 4), np.uint8)
    mask[:, :2] = 255
    resized_image, resized_mask = resize_pair(image, mask, 8)
    assert resized_image.shape == (8, 8, 3) and resized_mask.dtype == np.uint8
    assert set(np.unique(resized_mask)) == {0, 255}
    assert (resized_mask[:, :4] == 255).all() and (resized_mask[:, 4:] == 0).all()


def test_cache_and_load_cache(tmp_path):
    root = tmp_path
    prepare_synthetic("isic18", SETTINGS, root / "processed" / "isic18", progress=False)
    write_split("isic18", root / "processed" / "isic18", root / "splits" / "isic18.csv", 0.1, 0)
    path = root / "cache" / "isic18_32.npz"
    assert build_cache("isic18", root / "processed" / "isic18", root / "splits" / "isic18.csv", 32, path,
                       progress=False) == 26
    seen = set()
    for split, expected in (("train", 16), ("val", 2), ("test", 8)):
        ids, images, masks = load_cache(path, split)
        assert len(ids) == expected and images.shape == (expected, 32, 32, 3) and masks.shape == (expected, 32, 32)
        assert images.dtype == masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 255}
        seen.update(ids)
    assert len(seen) == 26

    with pytest.raises(CacheError, match="does not exist"):
        load_cache(root / "cache" / "missing_32.npz", "train")
    with pytest.raises(CacheError, match="split must be one of"):
        load_cache(path, "training")

    prepare_synthetic("etis", SETTINGS, root / "processed" / "etis", progress=False)
    write_split("etis", root / "processed" / "etis", root / "splits" / "etis.csv")
    build_cache("etis", root / "processed" / "etis", root / "splits" / "etis.csv", 32, root / "etis.npz", progress=False)
    with pytest.raises(CacheError, match="no 'train' rows"):
        load_cache(root / "etis.npz", "train")


def test_cache_refuses_files_changed_after_the_split(tmp_path):
    from PIL import Image

    folder = tmp_path / "processed" / "kvasir"
    prepare_synthetic("kvasir", SETTINGS, folder, progress=False)
    write_split("kvasir", folder, tmp_path / "kvasir.csv")
    victim = sorted((folder / "masks").iterdir())[0]
    Image.new("L", Image.open(victim).size, 0).save(victim)
    with pytest.raises(CacheError, match=victim.name):
        build_cache("kvasir", folder, tmp_path / "kvasir.csv", 32, tmp_path / "kvasir.npz", progress=False)
    assert not (tmp_path / "kvasir.npz").exists()
