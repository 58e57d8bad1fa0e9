"""Every registered model learns through segbench.train: a wrong loss, a wrong output kind on a card or a
broken input scaling fails here, where shape and round-trip tests pass.

Each model, at its card's ``test_kwargs``, trains on a small synthetic set (one high-contrast object per
image, written as a real cache file in the documented format) for a bounded number of steps with
segbench's real training run, and must exceed a pooled DSC on held-out images.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from segbench.config import validate_config
from segbench.metrics import PooledConfusion
from segbench.registry import list_models, to_probabilities
from segbench.train import load_trained, train_run
from segbench.transforms import scale_input

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
N_TRAIN, N_TEST = 48, 16
EPOCHS = 16  # 6 steps per epoch at batch 8: 96 steps
DSC_FLOOR = 0.6


def _write_cache(path: Path, dataset: str, images: np.ndarray, masks: np.ndarray, split: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = np.array([f"{dataset}_{index:04d}" for index in range(len(images))])
    np.savez(path, ids=ids, split=np.array([split] * len(images)), images=images, masks=masks)


def bright_ellipses(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipse of random size and place on a dark noisy background: the easiest segmentation task
    there is, so that a model that does not learn it is broken."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:SIZE, 0:SIZE]
    masks = np.empty((count, SIZE, SIZE), np.uint8)
    for index in range(count):
        cy, cx = rng.uniform(0.3, 0.7, 2) * SIZE
        ry, rx = rng.uniform(0.12, 0.3, 2) * SIZE
        masks[index] = (((rows - cy) / ry) ** 2 + ((columns - cx) / rx) ** 2 <= 1) * 255
    noise = rng.normal(0, 12, (count, SIZE, SIZE, 3))
    images = np.clip(np.where(masks[..., None] > 0, 190.0, 60.0) + noise, 0, 255).astype(np.uint8)
    return images, masks


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A training cache and a held-out test cache of bright ellipses, in the documented cache format."""
    root = tmp_path_factory.mktemp("learning-data")
    images, masks = bright_ellipses(N_TRAIN + N_TEST, seed=3)
    _write_cache(root / "cache" / f"polyp_train_{SIZE}.npz", "polyp_train", images[:N_TRAIN], masks[:N_TRAIN], "train")
    _write_cache(root / "cache" / f"kvasir_{SIZE}.npz", "kvasir", images[N_TRAIN:], masks[N_TRAIN:], "test")
    return root


def learning_config(model: str, data_root: Path) -> dict:
    from segbench.registry import get_card

    return validate_config({
        "run_name": "learning-test", "comparable_to_paper": False,
        "data": {"source": "synthetic", "root": str(data_root)}, "image_size": SIZE,
        "protocols": {"polyp": {"train": "polyp_train", "test": ["kvasir"]}},
        "models": [model], "model_args": {model: dict(get_card(model).test_kwargs)}, "seeds": [0],
        "scan_backend": "torch",
        "train": {"epochs": EPOCHS, "batch_size": 8, "lr": 0.003, "t_max": "epochs", "device": "cpu",
                  "num_threads": 1},
    }, "learning test")


def held_out_dsc(run_dir: Path, data_root: Path) -> float:
    from segbench.data import load_cache

    model, card, _ = load_trained(run_dir)
    _, images, masks = load_cache(data_root / "cache" / f"kvasir_{SIZE}.npz", "test")
    with torch.no_grad():
        output = model(scale_input(torch.from_numpy(images).permute(0, 3, 1, 2), "minmax255"))
    pooled = PooledConfusion()
    pooled.add((to_probabilities(output, card)[:, 0] >= 0.5).numpy(), masks >= 128)
    return pooled.ratios()["dsc"]


@pytest.mark.slow
@pytest.mark.parametrize("model", list_models())
def test_every_registered_model_learns(model, data_root, tmp_path):
    cfg = learning_config(model, data_root)
    run_dir = train_run(cfg, "polyp", model, 0, tmp_path / "run")
    dsc = held_out_dsc(run_dir, data_root)
    assert dsc > DSC_FLOOR, (f"{model} reached pooled DSC {dsc:.3f} on held-out images after {EPOCHS} epochs "
                             f"(floor {DSC_FLOOR}): it does not learn")


BROKEN_CARD = '''
import torch
from torch import nn
from segbench.registry import ModelCard, register_model


class Probabilities(nn.Module):
    """A working tiny CNN that ends in a sigmoid ..."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 1, 1))

    def forward(self, x):
        return torch.sigmoid(self.body(x / 255.0))


# ... whose card wrongly says it returns logits: the loss applies a second sigmoid and every pixel
# scores above 0.5.
@register_model(card=ModelCard(paper="-", origin="a broken model file", output="logits"))
def sigmoid_net_with_a_logits_card(**kwargs):
    return Probabilities()
'''


@pytest.mark.slow
def test_the_learning_test_fails_for_a_card_that_says_logits_for_probabilities(tmp_path):
    """The same learning check, in a fresh process on a models folder with one broken file: the output-kind
    guard warns on the first batch and the held-out DSC stays at the foreground share, below the floor."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "broken.py").write_text(BROKEN_CARD)
    script = tmp_path / "check.py"
    script.write_text(
        "import sys, warnings\n"
        "sys.path.insert(0, %r)\n"
        "from pathlib import Path\n"
        "import test_learning as t\n"
        "root = Path(%r)\n"
        "images, masks = t.bright_ellipses(t.N_TRAIN + t.N_TEST, seed=3)\n"
        "t._write_cache(root / 'cache' / f'polyp_train_{t.SIZE}.npz', 'polyp_train', images[:t.N_TRAIN], "
        "masks[:t.N_TRAIN], 'train')\n"
        "t._write_cache(root / 'cache' / f'kvasir_{t.SIZE}.npz', 'kvasir', images[t.N_TRAIN:], masks[t.N_TRAIN:], "
        "'test')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    run = t.train_run(t.learning_config('sigmoid_net_with_a_logits_card', root), 'polyp', "
        "'sigmoid_net_with_a_logits_card', 0, root / 'run')\n"
        "print('WARNED', any(\"says output='logits'\" in str(w.message) for w in caught))\n"
        "print('DSC', t.held_out_dsc(run, root))\n" % (str(REPO / "tests"), str(tmp_path / "data")))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "SEGBENCH_MODELS_DIR": str(models)})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.startswith(("WARNED", "DSC")))
    assert lines["WARNED"] == "True", result.stdout
    assert float(lines["DSC"]) < DSC_FLOOR, f"a broken card passed the learning check: {result.stdout}"


def test_a_probabilities_card_on_a_logits_model_stops_training_with_one_line(tmp_path, data_root):
    """Item 3's guard, through the real CLI: the error names the model file and the card field."""
    models = tmp_path / "models"
    shutil.copytree(REPO / "models", models, ignore=shutil.ignore_patterns("__pycache__"))
    (models / "logit_net.py").write_text(
        "from torch import nn\n"
        "from segbench.registry import ModelCard, register_model\n\n\n"
        "@register_model(card=ModelCard(paper='-', origin='a broken model file', output='probabilities'))\n"
        "def logit_net(**kwargs):\n"
        "    return nn.Conv2d(3, 1, 3, padding=1)\n")
    cfg = learning_config("unet", data_root)
    cfg["models"] = ["logit_net"]
    cfg["model_args"] = {}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = subprocess.run([str(Path(sys.executable).parent / "segbench"), "train", "--config", "config.yaml",
                             "--protocol", "polyp", "--variant", "logit_net", "--seed", "0", "--out", "run"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "SEGBENCH_MODELS_DIR": str(models)})
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    assert "logit_net.py" in errors[0] and "output='probabilities'" in errors[0], errors[0]
