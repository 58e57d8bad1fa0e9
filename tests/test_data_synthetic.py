"""The synthetic source: seeded, the paper's dataset shapes, valid masks, sizes that exercise resizing."""
import json

import numpy as np
import pytest

from segbench.data.prepare import prepare_synthetic
from segbench.data.registry import DATASET_NAMES
from segbench.data.synthetic import SyntheticSettings, generate, synthetic_count

SMOKE = SyntheticSettings(seed=0, n_train=24, n_test=8, min_side=80, max_side=128)


def test_counts_follow_the_dataset_roles():
    counts = {name: synthetic_count(name, SMOKE) for name in DATASET_NAMES}
    assert counts == {"isic17": 32, "isic18": 32, "polyp_train": 24, "kvasir": 8, "clinicdb": 8,
                      "colondb": 8, "etis": 8, "cvc300": 8}


def test_n_isic_sets_the_isic_counts_only():
    settings = SyntheticSettings(seed=0, n_train=24, n_test=8, n_isic=20)
    counts = {name: synthetic_count(name, settings) for name in DATASET_NAMES}
    assert counts == {"isic17": 20, "isic18": 20, "polyp_train": 24, "kvasir": 8, "clinicdb": 8,
                      "colondb": 8, "etis": 8, "cvc300": 8}
    with pytest.raises(ValueError, match="n_isic=0"):
        SyntheticSettings(n_isic=0)


@pytest.mark.parametrize("dataset", ["isic17", "polyp_train", "etis"])
def test_images_and_masks_are_valid_and_varied(dataset):
    items = list(generate(dataset, SMOKE))
    sides = set()
    for identifier, image, mask in items:
        assert identifier.startswith(dataset)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert mask.dtype == np.uint8 and mask.shape == image.shape[:2]
        assert set(np.unique(mask)) == {0, 255}
        assert 0.01 < (mask > 0).mean() < 0.8
        assert all(80 <= side <= 128 for side in mask.shape)
        sides.update(mask.shape)
        inside, outside = image[mask > 0].mean(axis=0), image[mask == 0].mean(axis=0)
        assert np.abs(inside - outside).max() > 5, "the lesion must differ from its background"
    assert any(side % 32 for side in sides), "sizes must not all be multiples of 32"
    assert len(sides) > 5
    fractions = [(mask > 0).mean() for _, _, mask in items]
    assert max(fractions) > 2 * min(fractions), "lesion sizes must vary"


def test_generator_is_seeded_and_datasets_are_independent():
    first = list(generate("kvasir", SMOKE))
    again = list(generate("kvasir", SMOKE))
    other_seed = list(generate("kvasir", SyntheticSettings(seed=1)))
    for (_, image_a, mask_a), (_, image_b, mask_b) in zip(first, again):
        assert np.array_equal(image_a, image_b) and np.array_equal(mask_a, mask_b)
    assert not np.array_equal(first[0][1], other_seed[0][1])
    assert not np.array_equal(first[0][1], next(generate("etis", SMOKE))[1])


def test_skin_and_polyp_stand_ins_look_different():
    skin = np.mean([image.mean(axis=(0, 1)) for _, image, _ in generate("isic17", SMOKE)], axis=0)
    polyp = np.mean([image.mean(axis=(0, 1)) for _, image, _ in generate("polyp_train", SMOKE)], axis=0)
    assert polyp[0] - polyp[1] > skin[0] - skin[1], "polyp stand-ins are redder than skin stand-ins"


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="min_side"):
        SyntheticSettings(min_side=100, max_side=50)


def test_prepared_synthetic_folder_follows_the_processed_convention(tmp_path):
    from PIL import Image

    report = prepare_synthetic("cvc300", SMOKE, tmp_path / "cvc300", progress=False)
    folder = tmp_path / "cvc300"
    assert json.loads((folder / "integrity.json").read_text()) == report
    assert report["n_pairs"] == 8 and report["source"] == "synthetic" and report["n_empty_masks"] == 0
    for item in report["items"]:
        with Image.open(folder / "images" / f"{item['id']}.png") as image, \
                Image.open(folder / "masks" / f"{item['id']}.png") as mask:
            assert image.mode == "RGB" and mask.mode == "L"
            assert image.size == mask.size == (item["width"], item["height"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cvc300"], "no temporary folder left behind"


def test_polyp_test_sets_differ_from_the_training_set_as_the_real_ones_do():
    """Kvasir and ClinicDB look like the training set; ETIS has smaller polyps, ColonDB less contrast,
    CVC-300 another colour cast (the generalisation gap of the PraNet protocol)."""
    settings = SyntheticSettings(seed=0, n_train=40, n_test=40, min_side=80, max_side=128)

    def statistics(dataset):
        items = list(generate(dataset, settings))
        area = np.mean([(mask > 0).mean() for _, _, mask in items])
        contrast = np.mean([np.abs(image[mask > 0].mean(0) - image[mask == 0].mean(0)).max() for _, image, mask in items])
        colour = np.mean([image.reshape(-1, 3).mean(0) for _, image, _ in items], axis=0)
        return area, contrast, colour

    train_area, train_contrast, train_colour = statistics("polyp_train")
    for dataset in ("kvasir", "clinicdb"):
        area, contrast, colour = statistics(dataset)
        assert abs(area / train_area - 1) < 0.25 and abs(contrast / train_contrast - 1) < 0.25
        assert np.abs(colour - train_colour).max() < 10
    assert statistics("etis")[0] < 0.3 * train_area
    assert statistics("colondb")[1] < 0.75 * train_contrast
    cast = statistics("cvc300")[2] - train_colour
    assert cast[2] > 15 and cast[0] < -15, f"CVC-300's colour cast (R, G, B shift) is {cast}"
