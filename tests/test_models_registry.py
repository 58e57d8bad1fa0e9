"""Every model file in models/ is tested here through the registry (timm/smp habit)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segbench.registry import create_model, get_card, list_models, model_import_errors, to_probabilities

REPO = Path(__file__).resolve().parents[1]
MODELS = list_models()


def test_every_model_file_imports():
    assert model_import_errors() == {}
    assert {"unet", "unetpp"} <= set(MODELS)


@pytest.fixture(params=MODELS)
def tiny(request):
    torch.manual_seed(0)
    card = get_card(request.param)
    return request.param, card, create_model(request.param, **card.test_kwargs)


def test_forward_backward_on_cpu(tiny):
    name, card, model = tiny
    images = torch.rand(2, 3, 64, 64) * 255
    output = model.train()(images)
    heads = output if card.train_output == "heads" else [output]
    assert isinstance(heads, list) and heads, f"{name}: train_output={card.train_output!r} but got {type(output)}"
    for head in heads:
        assert head.shape == (2, 1, 64, 64), name
        assert torch.isfinite(head).all()
        if card.output == "probabilities":
            assert 0 <= float(head.min()) and float(head.max()) <= 1
    loss = sum(to_probabilities(head, card).mean() for head in heads)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with torch.no_grad():
        assert model.eval()(images).shape == (2, 1, 64, 64), f"{name}: eval mode must return one map"


def test_state_dict_round_trip(tiny, tmp_path):
    name, card, model = tiny
    model.eval()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    torch.manual_seed(1)
    fresh = create_model(name, **card.test_kwargs).eval()
    fresh.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    images = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        assert torch.equal(model(images), fresh(images))


def test_card_is_complete(tiny):
    _, card, _ = tiny
    assert card.paper and card.origin and card.input_divisor in (1, 2, 4, 8, 16, 32, 64)  # 64: ResEnc-M, 7 stages


def test_unknown_model_names_the_registered_ones():
    with pytest.raises(KeyError, match="registered models: .*unet"):
        create_model("no_such_net")


def test_unet_has_the_textbook_parameter_count():
    assert sum(p.numel() for p in create_model("unet").parameters()) == 7_763_041


def test_broken_model_file_is_named_and_others_still_work(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(REPO / "models", models, ignore=shutil.ignore_patterns("__pycache__"))
    (models / "broken_net.py").write_text("raise RuntimeError('boom at import')\n")
    env = {**os.environ, "SEGBENCH_MODELS_DIR": str(models)}
    listing = subprocess.run([sys.executable, "-m", "segbench.cli", "models"], env=env,
                             capture_output=True, text=True, check=True)
    assert "unet " in listing.stdout
    assert "BROKEN" in listing.stdout and "broken_net.py" in listing.stdout and "boom at import" in listing.stdout
