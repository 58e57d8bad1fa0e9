"""Issue 8, item 4: bad inputs. A dataset placed by a user, a config and a model file, each wrong in one
way, through the real CLI: a clear error naming the file (or key) and nothing half-written, or, where
the documented rule converts, a note in the integrity report."""
from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
from archive_fixtures import encode, sample_pair
from PIL import Image

from conftest import REPO

from .helpers import error_line, last_lines, partial_files, segbench, tiny_config, train_args, write_yaml

KVASIR = "TestDataset/Kvasir"
IDS = ["cju0a", "cju0b", "cju0c"]


def members() -> dict[str, bytes]:
    """Three good Kvasir-style pairs, as PraNet's TestDataset.zip lays them out."""
    files = {}
    for index, identifier in enumerate(IDS):
        image, mask = sample_pair(index, 24, 30)
        files[f"{KVASIR}/images/{identifier}.png"] = encode(image)
        files[f"{KVASIR}/masks/{identifier}.png"] = encode(mask)
    return files


def image_of(files, identifier=IDS[0]):
    return f"{KVASIR}/images/{identifier}.png"


def mask_of(files, identifier=IDS[0]):
    return f"{KVASIR}/masks/{identifier}.png"


def truncated_image(files):
    files[image_of(files)] = files[image_of(files)][:80]
    return image_of(files), "image cannot be decoded (expected PNG, JPEG, BMP or TIFF, found OSError"


def image_without_mask(files):
    del files[mask_of(files)]
    return image_of(files), f"image has no mask (expected {IDS[0]}.png/"


def mask_of_another_size(files):
    files[mask_of(files)] = encode(np.zeros((12, 15), np.uint8))
    return mask_of(files), "mask size differs from its image"


def probability_map_mask(files):
    files[mask_of(files)] = encode(np.tile(np.linspace(0, 255, 30).astype(np.uint8), (24, 1)))
    return mask_of(files), "mask is not binary (expected 0/255"


def zero_byte_image(files):
    files[image_of(files)] = b""
    return image_of(files), "image is empty (expected an encoded image, found 0 bytes)"


def names_differing_in_case(files):
    files[f"{KVASIR}/images/{IDS[0].upper()}.png"] = files[image_of(files)]
    return image_of(files), f"file names '{IDS[0].upper()}.png' and '{IDS[0]}.png' differ only in case"


REFUSED = [
    pytest.param(truncated_image, id="truncated-image", marks=pytest.mark.fault(
        "a corrupt (truncated) image in a user-placed dataset archive",
        expected="`segbench data prepare` exits 2 with one line starting with the archive:member path; no dataset "
                 "folder")),
    pytest.param(image_without_mask, id="image-without-mask", marks=pytest.mark.fault(
        "an image without its mask",
        expected="`segbench data prepare` stops naming the image; no dataset folder")),
    pytest.param(mask_of_another_size, id="mask-other-size", marks=pytest.mark.fault(
        "a mask whose size differs from its image's",
        expected="`segbench data prepare` stops naming the mask and both sizes; no dataset folder")),
    pytest.param(probability_map_mask, id="non-binary-mask", marks=pytest.mark.fault(
        "a non-binary mask (a probability map / photo among the masks)",
        expected="`segbench data prepare` stops naming the mask (rule: > 5% of pixels in 32..223 is not a mask); "
                 "no dataset folder")),
    pytest.param(zero_byte_image, id="zero-byte-file", marks=pytest.mark.fault(
        "a zero-byte image file",
        expected="`segbench data prepare` stops naming the file; no dataset folder")),
    pytest.param(names_differing_in_case, id="case-only-names", marks=pytest.mark.fault(
        "two file names that differ only in case (collide on macOS/Windows)",
        expected="`segbench data prepare` stops naming both files; no dataset folder")),
]


def place_archive(root, files):
    raw = root / "raw"
    raw.mkdir(parents=True)
    with zipfile.ZipFile(raw / "TestDataset.zip", "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)


def prepare(root, expected_count):
    return segbench("data", "prepare", "kvasir", "--root", root, "--expected-count", expected_count,
                    "--no-progress", cwd=root.parent)


@pytest.mark.parametrize("spoil", REFUSED)
def test_bad_dataset_file_stops_preparation_naming_it(tmp_path, spoil):
    files = members()
    named, reason = spoil(files)
    root = tmp_path / "data"
    place_archive(root, files)

    result = prepare(root, len(IDS))

    message = error_line(result, "data prepare")
    assert message.startswith(f"{root / 'raw' / 'TestDataset.zip'}:{named}: {reason}"), message
    assert "nothing was prepared for kvasir" in message
    assert not (root / "processed" / "kvasir").exists()
    assert partial_files(tmp_path) == []


def coloured_mask(files):
    red = np.zeros((24, 30, 3), np.uint8)
    red[:2, :2, 0] = 255  # a small red lesion: luminance 76, below the 128 threshold
    files[mask_of(files)] = encode(red)
    return IDS[0]


def empty_mask(files):
    files[mask_of(files)] = encode(np.zeros((24, 30), np.uint8))
    return IDS[0]


def grayscale_and_rgba_images(files):
    image, _ = sample_pair(0, 24, 30)
    files[image_of(files, IDS[0])] = encode(image, mode="L")
    files[image_of(files, IDS[1])] = encode(image, mode="RGBA")
    return IDS[0]


@pytest.mark.fault(
    "an RGB mask whose foreground is coloured (pure red, luminance 76)",
    expected="converted by the documented rule (luminance, threshold at 128) with a warning that names the "
             "mask as thresholded and empty, printed by `segbench data prepare` and kept in integrity.json",
)
def test_coloured_mask_is_thresholded_with_a_warning(tmp_path):
    files = members()
    identifier = coloured_mask(files)
    root = tmp_path / "data"
    place_archive(root, files)

    result = prepare(root, len(IDS))

    assert result.returncode == 0, last_lines(result.stderr)
    assert "thresholded at 128" in result.stdout and "empty" in result.stdout, result.stdout
    report = json.loads((root / "processed" / "kvasir" / "integrity.json").read_text())
    assert report["thresholded_mask_ids"] == [identifier] and report["empty_mask_ids"] == [identifier]
    assert report["conversions"] == {"mask RGB (coloured) -> grayscale luminance": 1}


@pytest.mark.fault(
    "an empty mask (no foreground pixel)",
    expected="prepared, counted (n_empty_masks, empty_mask_ids) and warned about; scoring follows the declared "
             "rule (README): Dice = 1 when the prediction is empty too, else 0",
)
def test_empty_mask_is_counted_and_scored_by_the_declared_rule(tmp_path):
    files = members()
    identifier = empty_mask(files)
    root = tmp_path / "data"
    place_archive(root, files)

    result = prepare(root, len(IDS))

    assert result.returncode == 0, last_lines(result.stderr)
    assert "1 mask(s) are empty" in result.stdout
    report = json.loads((root / "processed" / "kvasir" / "integrity.json").read_text())
    assert report["n_empty_masks"] == 1 and report["empty_mask_ids"] == [identifier]
    assert "an empty ground-truth mask scores 1 when the prediction is empty too, else 0" in " ".join(
        (REPO / "README.md").read_text().split())

    gt = tmp_path / "gt"
    gt.mkdir()
    shutil.copy(root / "processed" / "kvasir" / "masks" / f"{identifier}.png", gt / f"{identifier}.png")
    scores = {}
    for name, foreground in (("empty", 0), ("spurious", 255)):
        pred = tmp_path / name
        pred.mkdir()
        prediction = np.zeros((24, 30), np.uint8)
        prediction[:3, :3] = foreground
        Image.fromarray(prediction).save(pred / f"{identifier}.png")
        scored = segbench("score", pred, gt, cwd=tmp_path)
        assert scored.returncode == 0, last_lines(scored.stderr)
        scores[name] = json.loads(scored.stdout)["per_image"]["dice_mean"]
    assert scores == {"empty": 1.0, "spurious": 0.0}


@pytest.mark.fault(
    "grayscale and RGBA images among RGB ones",
    expected="converted to RGB, each conversion noted in integrity.json; the prepared images are RGB",
)
def test_grayscale_and_rgba_images_are_converted_with_a_note(tmp_path):
    files = members()
    grayscale_and_rgba_images(files)
    root = tmp_path / "data"
    place_archive(root, files)

    result = prepare(root, len(IDS))

    assert result.returncode == 0, last_lines(result.stderr)
    report = json.loads((root / "processed" / "kvasir" / "integrity.json").read_text())
    assert report["conversions"] == {"image L -> RGB": 1, "image RGBA -> RGB (alpha dropped)": 1}
    for identifier in IDS[:2]:
        with Image.open(root / "processed" / "kvasir" / "images" / f"{identifier}.png") as image:
            assert image.mode == "RGB"


@pytest.mark.parametrize("change, key", [
    pytest.param({"trian": {"epochs": 2}}, "trian", id="unknown-key", marks=pytest.mark.fault(
        "a config with an unknown top-level key (a typo: trian)",
        expected="`segbench train` exits 2 with a schema error naming the key; no run folder")),
    pytest.param({"train": {"learning_rate": 0.1}}, "learning_rate", id="unknown-nested-key", marks=pytest.mark.fault(
        "a config with an unknown nested key (train.learning_rate instead of train.lr)",
        expected="`segbench train` exits 2 with a schema error naming train and the key; no run folder")),
    pytest.param({"train": {"epochs": "ten"}}, "train.epochs", id="wrong-type", marks=pytest.mark.fault(
        "a config value of the wrong type (train.epochs: 'ten')",
        expected="`segbench train` exits 2 with a schema error naming train.epochs; no run folder")),
])
def test_bad_config_is_refused_naming_the_key(tmp_path, change, key):
    cfg = tiny_config()
    for section, values in change.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    config = write_yaml(tmp_path / "bad.yaml", cfg)
    out = tmp_path / "run"

    result = segbench(*train_args(config, out), cwd=tmp_path)

    assert result.returncode == 2, last_lines(result.stderr)
    assert "Traceback" not in result.stderr, last_lines(result.stderr)
    assert str(config) in result.stderr and key in result.stderr, result.stderr
    assert not out.exists()


BROKEN_MODEL = '''
import torch
from segbench.registry import register_model

raise RuntimeError("this model file is broken on purpose")
'''


@pytest.mark.fault(
    "a model file in models/ that raises at import",
    expected="`segbench models` names the file and its error and still lists every other model; other models "
             "build and run (`segbench profile --model unet`); asking for the broken one names the file",
)
def test_model_file_raising_at_import_is_named_and_the_others_stay_usable(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for name in ("unet.py", "unetpp.py"):
        shutil.copy(REPO / "models" / name, models / name)
    broken = models / "broken_net.py"
    broken.write_text(BROKEN_MODEL)
    env = {"SEGBENCH_MODELS_DIR": str(models)}

    listed = segbench("models", cwd=tmp_path, **env)

    assert listed.returncode == 0, last_lines(listed.stderr)
    assert f"BROKEN {broken}" in listed.stdout and "broken on purpose" in listed.stdout, listed.stdout
    usable = [line.split()[0] for line in listed.stdout.splitlines() if not line.startswith("BROKEN")]
    assert usable == ["unet", "unetpp"], listed.stdout

    profiled = segbench("profile", "--model", "unet", "--size", 32, "--warmup", 0, "--runs", 1, "--device", "cpu",
                        cwd=tmp_path, **env)
    assert profiled.returncode == 0, last_lines(profiled.stderr)
    assert json.loads(profiled.stdout)["params_total"] > 0

    asked = segbench("profile", "--model", "broken_net", "--size", 32, "--runs", 1, "--device", "cpu",
                     cwd=tmp_path, **env)
    assert asked.returncode == 2, last_lines(asked.stderr)
    assert str(broken) in asked.stderr and "broken on purpose" in asked.stderr
