"""Pretrained encoder loading: the official name matching, counts, refusal of unsafe or damaged
files (one-line errors), and the inverse, encoder export.

Checkpoints are written with torch.save from the simulated VMamba v0-S key list (446 tensors) or
torchvision's ResNet-50 names. Each tensor is one distinct value broadcast to its shape (a stride-0
view), so the files stay a few kB while every loaded value still says which checkpoint entry it
came from.
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
import torchvision

from segbench.io import sha256_file
from segbench.pretrained import encoder_state_dict, load_pretrained, save_encoder_checkpoint
from segbench.registry import create_model, get_card

SIMULATED_KEYS = Path(__file__).resolve().parent / "reference" / "vmamba_v0_small_ckpt_keys_simulated.json"


def _constant(value: float, shape) -> torch.Tensor:
    return torch.tensor(float(value)).expand(tuple(shape))


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and "\x1b" not in message, message
    return message


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


SCAN_TENSORS = ("x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds")


def test_vmunetv2_noscan_loads_every_tensor_it_still_has(vmamba_checkpoint, vmamba_weights):
    model = _uninitialised("vmunetv2_noscan")
    counts = load_pretrained(model, "vmunetv2_noscan", vmamba_checkpoint)
    assert counts == {"loaded": 208 - 75, "missing": 0, "unexpected": 446 - 133}  # 15 blocks x 5 scan tensors stay in the file
    state = model.state_dict()
    for key in ("patch_embed.proj.weight", "layers.2.blocks.8.self_attention.in_proj.weight", "layers.1.downsample.norm.bias"):
        assert torch.equal(state[f"vmunet.{key}"], vmamba_weights[key]), key
    assert not any(key.endswith(SCAN_TENSORS) for key in state)


def test_a_checkpoint_that_matches_nothing_is_an_error(tmp_path):
    path = tmp_path / "unrelated.pth"
    torch.save({"model": {"backbone.conv1.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(ValueError, match=r"unrelated\.pth.*none of its 1 tensors matches") as error:
        load_pretrained(_uninitialised("vmunetv2"), "vmunetv2", path)
    assert "vssmsmall_dp03_ckpt_epoch_238.pth" in _one_line(error)


def test_a_shape_mismatch_names_the_key(vmamba_checkpoint):
    toy = create_model("vmunetv2", embed_dim=16, mid_channel=8, depths=[1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"'patch_embed\.proj\.weight' has shape \(96, 3, 4, 4\)") as error:
        load_pretrained(toy, "vmunetv2", vmamba_checkpoint)
    _one_line(error)


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pth") as error:
        load_pretrained(_uninitialised("vmunetv2"), "vmunetv2", tmp_path / "absent.pth")
    _one_line(error)


def test_a_model_without_a_loader_is_named(vmamba_checkpoint):
    with pytest.raises(ValueError, match=r"'unet'.*supported: vmunetv2, vmunetv2_noscan") as error:
        load_pretrained(create_model("unet", base_width=4), "unet", vmamba_checkpoint)
    _one_line(error)


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
    with pytest.raises(ValueError, match=r"trojan\.pth: refusing to unpickle") as error:
        load_pretrained(_uninitialised("vmunetv2"), "vmunetv2", path)
    assert not marker.exists()
    message = _one_line(error)  # torch's own text is 6 lines with ANSI escapes
    assert "io.open" in message and "re-save only its weights" in message


def _truncated_torch_file(path: Path) -> None:
    torch.save({"model": {"w": torch.zeros(4)}}, path)
    path.write_bytes(path.read_bytes()[:200])


@pytest.mark.parametrize(("write", "found"), [
    (lambda path: path.write_text("<html><body>404 Not Found</body></html>"), r"not a torch checkpoint \(the unpickler found Unsupported operand"),
    (_truncated_torch_file, "damaged or truncated torch file"),
    (lambda path: path.write_bytes(b""), "damaged or truncated torch file"),
], ids=["html-page", "truncated", "empty"])
def test_an_unreadable_file_is_one_line_naming_it(tmp_path, write, found):
    path = tmp_path / "vssmsmall_dp03_ckpt_epoch_238.pth"
    write(path)
    with pytest.raises(ValueError, match=found) as error:
        load_pretrained(_uninitialised("vmunetv2"), "vmunetv2", path)
    message = _one_line(error)
    assert message.startswith(f"{path}: ") and "download it again" in message


def test_a_damaged_safetensors_file_is_one_line(tmp_path):
    path = tmp_path / "resnet50.imagenet.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="not a readable safetensors file") as error:
        load_pretrained(create_model("unet_resnet50", **get_card("unet_resnet50").test_kwargs), "unet_resnet50", path)
    assert _one_line(error).startswith(f"{path}: ")


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


@pytest.fixture(scope="module")
def resnet50_weights() -> dict[str, torch.Tensor]:
    """torchvision's ResNet-50 state dict (fc included), one distinct value per tensor."""
    with torch.device("meta"):
        classifier = torchvision.models.resnet50()
    return {key: _constant(index + 1, value.shape) for index, (key, value) in enumerate(classifier.state_dict().items())}


def _named_as_torchvision(path: Path, prefix: str | None = None) -> Path:
    """Rename ``path`` to torchvision's ``<stem>-<sha256 prefix>.pth``; ``prefix`` overrides the true one."""
    named = path.with_name(f"{path.stem}-{prefix or sha256_file(path)[:8]}{path.suffix}")
    return path.rename(named)


def test_unet_resnet50_loads_a_torchvision_resnet_file(tmp_path, resnet50_weights):
    path = tmp_path / "resnet50.pth"
    torch.save(resnet50_weights, path)
    path = _named_as_torchvision(path)

    model = _uninitialised("unet_resnet50")
    counts = load_pretrained(model, "unet_resnet50", path)

    encoder_keys = list(model.encoder.state_dict())
    assert counts == {"loaded": len(encoder_keys), "missing": 0, "unexpected": 2}  # fc.weight, fc.bias
    state = model.state_dict()
    for key in ("conv1.weight", "layer3.5.bn2.running_var", "layer4.0.downsample.0.weight"):
        assert torch.equal(state[f"encoder.{key}"], resnet50_weights[key]), key


def test_a_torchvision_name_whose_sha256_prefix_does_not_match_is_refused(tmp_path, resnet50_weights):
    path = tmp_path / "resnet50.pth"
    torch.save(resnet50_weights, path)
    wrong = "0" * 8 if not sha256_file(path).startswith("0" * 8) else "f" * 8
    path = _named_as_torchvision(path, wrong)
    with pytest.raises(ValueError, match=rf"sha256 prefix {wrong} \(torchvision's naming\)") as error:
        load_pretrained(_uninitialised("unet_resnet50"), "unet_resnet50", path)
    assert _one_line(error).startswith(f"{path}: ")


def test_unet_resnet50_loads_smps_safetensors_layout(tmp_path, resnet50_weights):
    """smp's file (smp-hub/resnet50.imagenet model.safetensors) holds the encoder, torchvision names, no fc."""
    from safetensors.torch import save_file

    stem = {key: value.contiguous() for key, value in resnet50_weights.items() if key.startswith(("conv1.", "bn1."))}
    path = tmp_path / get_card("unet_resnet50").pretrained["filename"]
    save_file(stem, str(path))
    model = _uninitialised("unet_resnet50")
    counts = load_pretrained(model, "unet_resnet50", path)
    assert counts["loaded"] == len(stem) == 6 and counts["unexpected"] == 0
    assert torch.equal(model.encoder.bn1.running_mean, resnet50_weights["bn1.running_mean"])


def test_the_resnet_weights_url_is_what_smp_downloads_for_imagenet():
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders["resnet50"]["pretrained_settings"]["imagenet"]
    url = get_card("unet_resnet50").pretrained["url"]
    assert url == f"https://huggingface.co/{settings['repo_id']}/resolve/{settings['revision']}/model.safetensors"


EXPORTABLE = [
    ("vmunetv2", ".pth"),
    ("vmunetv2_noscan", ".pth"),
    ("vmunet", ".pth"),
    ("unetv2", ".pth"),
    ("unet_resnet50", ".safetensors"),
]


def _toy(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name, **get_card(name).test_kwargs)


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """As after training: every float tensor moved off its init (A_logs, Ds, norms start equal across seeds)."""
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.rand_like(value))
    return model


@pytest.mark.parametrize(("name", "suffix"), EXPORTABLE)
def test_an_exported_encoder_loads_back_into_a_fresh_model(tmp_path, name, suffix):
    trained, fresh = _perturbed(_toy(name, 0)), _toy(name, 1)
    exported = encoder_state_dict(trained, name)
    assert any(not torch.equal(value, encoder_state_dict(fresh, name)[key]) for key, value in exported.items())
    path = tmp_path / f"encoder{suffix}"

    written = save_encoder_checkpoint(trained, name, path)
    counts = load_pretrained(fresh, name, path)

    assert written == len(exported) and counts["loaded"] >= written and counts["unexpected"] == 0
    loaded = encoder_state_dict(fresh, name)
    assert loaded.keys() == exported.keys()
    for key, value in exported.items():
        assert torch.equal(loaded[key], value), key


def test_export_formats_are_the_upstream_ones(tmp_path):
    save_encoder_checkpoint(_toy("vmunet", 0), "vmunet", tmp_path / "vmamba.pth")
    vmamba = torch.load(tmp_path / "vmamba.pth", weights_only=True)
    assert list(vmamba) == ["model"] and "patch_embed.proj.weight" in vmamba["model"]
    assert {key.split(".")[0] for key in vmamba["model"]} == {"patch_embed", "layers"}  # not the decoder

    save_encoder_checkpoint(_toy("unetv2", 0), "unetv2", tmp_path / "pvt.pth")
    pvt = torch.load(tmp_path / "pvt.pth", weights_only=True)
    classifier = timm.create_model("pvt_v2_b0", pretrained=False).state_dict()
    assert set(pvt) == set(classifier) - {"head.weight", "head.bias"}  # timm's names

    save_encoder_checkpoint(_toy("unet_resnet50", 0), "unet_resnet50", tmp_path / "resnet18.pth")
    resnet = torch.load(tmp_path / "resnet18.pth", weights_only=True)
    assert set(resnet) == set(torchvision.models.resnet18().state_dict()) - {"fc.weight", "fc.bias"}


def test_a_vmunetv2_export_loads_into_vmunet_and_vmunetv2_noscan(tmp_path):
    torch.manual_seed(0)
    trained = _perturbed(create_model("vmunetv2", embed_dim=16, mid_channel=8))  # depths [2, 2, 9, 2]
    path = tmp_path / "vssmsmall_dp03_ckpt_epoch_238.pth"
    exported = encoder_state_dict(trained, "vmunetv2")
    save_encoder_checkpoint(trained, "vmunetv2", path)

    vmunet = create_model("vmunet", embed_dim=16, depths=[2, 2, 2, 2], depths_decoder=[2, 2, 2, 1], pretrained=str(path))
    state = vmunet.vmunet.state_dict()
    for key in ("patch_embed.proj.weight", "layers.2.blocks.1.self_attention.A_logs", "layers.3.blocks.1.ln_1.bias"):
        assert torch.equal(state[key], exported[key]), key
    assert torch.equal(state["layers_up.1.blocks.1.self_attention.x_proj_weight"], exported["layers.2.blocks.1.self_attention.x_proj_weight"])
    assert torch.equal(state["layers_up.3.blocks.0.self_attention.out_proj.weight"], exported["layers.0.blocks.0.self_attention.out_proj.weight"])

    noscan = create_model("vmunetv2_noscan", embed_dim=16, mid_channel=8)
    counts = load_pretrained(noscan, "vmunetv2_noscan", path)
    kept = {key: value for key, value in exported.items() if not key.endswith(SCAN_TENSORS)}
    assert counts == {"loaded": len(kept), "missing": 0, "unexpected": len(exported) - len(kept)}
    assert len(exported) - len(kept) == 5 * 15
    for key, value in noscan.vmunet.state_dict().items():
        assert torch.equal(value, kept[key]), key
