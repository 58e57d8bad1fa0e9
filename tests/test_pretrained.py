"""Pretrained encoder loading: the official name matching, counts, and refusal of unsafe files.

Checkpoints are written with torch.save from the simulated VMamba v0-S key list (446 tensors). Each
tensor is one distinct value broadcast to its shape (a stride-0 view), so the files stay a few
kB while every loaded value still says which checkpoint entry it came from.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from segbench.pretrained import load_pretrained
from segbench.registry import create_model

SIMULATED_KEYS = Path(__file__).resolve().parent / "reference" / "vmamba_v0_small_ckpt_keys_simulated.json"


def _constant(value: float, shape) -> torch.Tensor:
    return torch.full((1,), float(value)).expand(*shape)


@pytest.fixture(scope="module")
def vmamba_weights() -> dict[str, torch.Tensor]:
    keys = json.loads(SIMULATED_KEYS.read_text())["keys"]
    return {key: _constant(index + 1, shape) for index, (key, shape) in enumerate(keys)}


@pytest.fixture
def vmamba_checkpoint(tmp_path, vmamba_weights) -> Path:
    path = tmp_path / "vssmsmall_dp03_ckpt_epoch_238.pth"
    torch.save({"model": vmamba_weights, "epoch": 238}, path)
    return path


def _uninitialised(name: str, **kwargs) -> torch.nn.Module:
    """A full-size model without spending seconds on weight init (every tensor gets overwritten or ignored)."""
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    return model.to_empty(device="cpu")


def test_vmunetv2_loads_every_encoder_tensor_by_name(vmamba_checkpoint, vmamba_weights):
    model = _uninitialised("vmunetv2")
    counts = load_pretrained(model, "vmunetv2", vmamba_checkpoint)
    assert counts == {"loaded": 208, "missing": 0, "unexpected": 446 - 208}
    state = model.state_dict()
    for key in ("patch_embed.proj.weight", "layers.2.blocks.8.self_attention.A_logs", "layers.2.downsample.reduction.weight"):
        assert torch.equal(state[f"vmunet.{key}"], vmamba_weights[key]), key
    assert sum(state[f"vmunet.{key}"].numel() for key in model.vmunet.state_dict()) == 22_122_912


def test_vmunet_loads_the_encoder_and_mirrors_it_into_the_decoder(vmamba_checkpoint, vmamba_weights):
    model = _uninitialised("vmunet", depths=[2, 2, 2, 2], depths_decoder=[2, 2, 2, 1])
    counts = load_pretrained(model, "vmunet", vmamba_checkpoint)
    assert (counts["encoder"], counts["decoder"], counts["loaded"]) == (117, 91, 208)
    assert counts["missing"] == 222 - 208  # the patch-expanding layers and the head stay as built
    state = model.state_dict()
    mirrored = {
        "layers_up.0.blocks.1.self_attention.x_proj_weight": "layers.3.blocks.1.self_attention.x_proj_weight",
        "layers_up.1.blocks.0.ln_1.weight": "layers.2.blocks.0.ln_1.weight",
        "layers_up.3.blocks.0.self_attention.out_proj.weight": "layers.0.blocks.0.self_attention.out_proj.weight",
    }
    for decoder_key, encoder_key in mirrored.items():
        assert torch.equal(state[f"vmunet.{decoder_key}"], vmamba_weights[encoder_key]), decoder_key


def test_a_checkpoint_that_matches_nothing_is_an_error(tmp_path):
    path = tmp_path / "unrelated.pth"
    torch.save({"model": {"backbone.conv1.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(ValueError, match=r"unrelated\.pth.*none of its 1 tensors matches"):
        load_pretrained(_uninitialised("vmunetv2"), "vmunetv2", path)


def test_a_shape_mismatch_names_the_key(vmamba_checkpoint):
    toy = create_model("vmunetv2", embed_dim=16, mid_channel=8, depths=[1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"'patch_embed\.proj\.weight' has shape \(96, 3, 4, 4\)"):
        load_pretrained(toy, "vmunetv2", vmamba_checkpoint)


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_pretrained(_uninitialised("vmunetv2"), "vmunetv2", tmp_path / "absent.pth")


class _CreatesFileWhenUnpickled:
    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path, vmamba_weights):
    marker = tmp_path / "code_ran"
    path = tmp_path / "trojan.pth"
    torch.save({"model": vmamba_weights, "payload": _CreatesFileWhenUnpickled(marker)}, path)
    assert not marker.exists()
    with pytest.raises(ValueError, match=r"trojan\.pth: refusing to unpickle"):
        load_pretrained(_uninitialised("vmunetv2"), "vmunetv2", path)
    assert not marker.exists()


def test_training_configs_saved_beside_the_weights_are_accepted(tmp_path, vmamba_weights, monkeypatch):
    """Swin/VMamba training scripts store their yacs CfgNode, argparse args and numpy scalars too."""
    yacs, yacs_config = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.__dict__["__immutable__"] = False
            self.__dict__["__deprecated_keys__"] = set()

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    yacs_config.CfgNode = CfgNode
    path = tmp_path / "with_config.pth"
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "yacs", yacs)
        patch.setitem(sys.modules, "yacs.config", yacs_config)
        config = CfgNode({"MODEL": CfgNode({"DEPTHS": [2, 2, 27, 2]}), "BASE_LR": 5e-4})
        checkpoint = {"model": vmamba_weights, "config": config, "args": argparse.Namespace(epochs=300), "max_accuracy": np.float64(83.5)}
        torch.save(checkpoint, path)
    assert "yacs.config" not in sys.modules
    counts = load_pretrained(_uninitialised("vmunetv2"), "vmunetv2", path)
    assert counts["loaded"] == 208


def _official_pvt_name(timm_name: str) -> str:
    """timm's PVTv2 names -> the names in whai362/PVT's pvt_v2_*.pth (the inverse of timm's filter)."""
    name = re.sub(r"^patch_embed\.", "patch_embed1.", timm_name)
    name = re.sub(r"^stages\.(\d+)\.downsample\.", lambda m: f"patch_embed{int(m.group(1)) + 1}.", name)
    name = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", lambda m: f"block{int(m.group(1)) + 1}.{m.group(2)}.", name)
    name = re.sub(r"^stages\.(\d+)\.norm\.", lambda m: f"norm{int(m.group(1)) + 1}.", name)
    return name.replace("mlp.dwconv.", "mlp.dwconv.dwconv.")


@pytest.mark.parametrize("naming", ["official", "timm"])
def test_unetv2_loads_pvt_weights_into_its_encoder(tmp_path, naming):
    classifier = timm.create_model("pvt_v2_b0", pretrained=False)
    rename = _official_pvt_name if naming == "official" else (lambda name: name)
    weights = {rename(key): _constant(index + 1, value.shape) for index, (key, value) in enumerate(classifier.state_dict().items())}
    assert ("block2.0.mlp.dwconv.dwconv.weight" in weights) == (naming == "official")
    path = tmp_path / "pvt_v2_b0.pth"
    torch.save(weights, path)

    model = create_model("unetv2", encoder="pvt_v2_b0", channel=8, pretrained=str(path))

    encoder_state = model.encoder.state_dict()
    dwconv = "block2.0.mlp.dwconv.dwconv.weight" if naming == "official" else "stages.1.blocks.0.mlp.dwconv.weight"
    assert torch.equal(encoder_state["stages_1.blocks.0.mlp.dwconv.weight"], weights[dwconv])
    counts = load_pretrained(model, "unetv2", path)
    assert counts == {"loaded": len(encoder_state), "missing": 0, "unexpected": 2}  # the classifier head
