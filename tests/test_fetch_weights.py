"""`segbench fetch-weights` against a real HTTP server on 127.0.0.1: download, hash lock, mismatch."""
import shutil
import sys

import torch

from archive_fixtures import serve
from conftest import REPO, run_tool

CARD_MODEL = '''
from torch import nn
from segbench.registry import ModelCard, register_model


@register_model(card=ModelCard(paper="test", origin="tests", output="logits", input_divisor=1,
                               pretrained={{"url": "{url}/encoder.pth", "sha256": None, "filename": "encoder.pth"}}))
def weighted_net(**kwargs) -> nn.Module:
    return nn.Conv2d(3, 1, 1)
'''


def _fetch(tmp_path, models_dir, out):
    return run_tool([sys.executable, "-m", "segbench.cli", "fetch-weights", "weighted_net", "--out", str(out)],
                    tmp_path, check=False, SEGBENCH_MODELS_DIR=str(models_dir))


def test_weights_are_downloaded_locked_and_enforced(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    torch.save({"w": torch.arange(3.0)}, served / "encoder.pth")
    models_dir = tmp_path / "models"
    shutil.copytree(REPO / "models", models_dir, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "weights" / "encoder.pth"
    with serve(served) as server:
        (models_dir / "weighted_net.py").write_text(CARD_MODEL.format(url=server.url))
        first = _fetch(tmp_path, models_dir, out)
        assert first.returncode == 0, first.stderr
        assert torch.load(out, weights_only=True)["w"].tolist() == [0.0, 1.0, 2.0]
        lock = (tmp_path / "weights" / "sha256.lock").read_text()
        assert "encoder.pth" in lock

        torch.save({"w": torch.zeros(3)}, served / "encoder.pth")  # the server now serves other bytes
        out.unlink()
        second = _fetch(tmp_path, models_dir, out)
    assert second.returncode == 2
    assert "sha256" in second.stderr and "encoder.pth" in second.stderr
    assert not out.exists()


def test_a_model_without_weights_is_a_clear_error(tmp_path):
    result = run_tool([sys.executable, "-m", "segbench.cli", "fetch-weights", "unet", "--out", str(tmp_path / "x.pth")],
                      tmp_path, check=False)
    assert result.returncode == 2 and "has no pretrained weights" in result.stderr
