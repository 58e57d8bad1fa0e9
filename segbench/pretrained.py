"""Load ImageNet-pretrained encoder weights into the benchmark's models, as the official code does.

- ``vmunetv2``: VMamba v0-S (``vssmsmall_dp03_ckpt_epoch_238.pth``, weights in ``ckpt['model']``,
  old key names) into ``model.vmunet`` by name: only keys that exist there are taken
  (``layers.2`` takes the first 9 of the checkpoint's 27 blocks; ``norm``/``head`` are dropped).
- ``vmunet``: the same, then the encoder stages mirrored into the decoder
  (``layers.0 -> layers_up.3``, ``1 -> 2``, ``2 -> 1``, ``3 -> 0``), again by name.
- ``unetv2``: PVTv2-b2 (the official ``pvt_v2_b2.pth`` names or timm's) into ``model.encoder``,
  a timm ``features_only`` network.

Files are read with ``torch.load(weights_only=True)``; if the checkpoint also stores a training
config, a small allow-list of plain data types is admitted (never arbitrary objects).
A shape mismatch is an error naming the key; a file of which nothing matches is an error.
"""
from __future__ import annotations

import argparse
import pickle
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

SUPPORTED_MODELS = ("vmunetv2", "vmunet", "unetv2")

# Weight sources for the model cards. Neither project publishes a checksum; the download step
# records the sha256 it saw.
VMAMBA_V0_SMALL = {
    "url": "https://github.com/MzeroMiko/VMamba/releases/download/%23v0cls/vssmsmall_dp03_ckpt_epoch_238.pth",
    "sha256": None,
    "filename": "vssmsmall_dp03_ckpt_epoch_238.pth",
}
PVT_V2_B2 = {
    "url": "https://github.com/whai362/PVT/releases/download/v2/pvt_v2_b2.pth",
    "sha256": None,
    "filename": "pvt_v2_b2.pth",
}


class _ConfigNodeAsOrderedDict:
    """Stand-in for yacs' ``CfgNode`` (the config that Swin/VMamba training scripts save beside
    the weights): unpickled as a plain OrderedDict, so no yacs code runs and no yacs is needed."""

    def __new__(cls, *args):
        return OrderedDict()


def _config_allow_list() -> list:
    numpy_scalar = np._core.multiarray.scalar
    return [
        argparse.Namespace,
        (_ConfigNodeAsOrderedDict, "yacs.config.CfgNode"),
        numpy_scalar,
        (numpy_scalar, "numpy.core.multiarray.scalar"),
        np.dtype,
        *(type(np.dtype(code)) for code in ("f8", "f4", "i8", "i4", "b1")),
    ]


def read_checkpoint(path: str | Path) -> object:
    """Read a weight file safely: safetensors, or a torch file under ``weights_only``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weight file {path} does not exist; download it first (see the model card's url)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as first_error:
        try:
            with torch.serialization.safe_globals(_config_allow_list()):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ValueError(
                f"{path}: refusing to unpickle it: it holds objects that are neither tensors nor plain "
                f"config data ({error}). Loading it would run code from the file. If you trust it, re-save "
                f"only the weights, e.g. torch.save({{'model': torch.load(f, weights_only=False)['model']}}, out)."
            ) from first_error


def _state_dict_in(checkpoint: object, path: Path, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensor dict stored under the first of ``keys`` present, or the checkpoint itself if flat."""
    if isinstance(checkpoint, dict):
        for key in keys:
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
        tensors = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    found = sorted(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise ValueError(f"{path}: expected a state dict (or one under {' / '.join(repr(k) for k in keys)}), found {found}")


def _matching(source: dict[str, torch.Tensor], target: nn.Module, path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Entries of ``source`` whose name exists in ``target``; a shape mismatch is an error."""
    expected = target.state_dict()
    matched = {}
    for key, tensor in source.items():
        if key not in expected:
            continue
        if tensor.shape != expected[key].shape:
            raise ValueError(
                f"{path}: tensor {key!r} has shape {tuple(tensor.shape)} but the model's {prefix}{key} is "
                f"{tuple(expected[key].shape)}; the file does not fit this configuration (pretrained weights "
                "need the default widths: embed_dim 96 / PVTv2-b2)"
            )
        matched[key] = tensor
    return matched


def _mirrored_names(source: dict[str, torch.Tensor], num_stages: int) -> dict[str, str]:
    """VM-UNet's decoder initialisation: encoder stage i -> decoder stage (num_stages-1-i).
    Returns {decoder name: checkpoint name}."""
    names = {}
    for key in source:
        match = re.match(r"layers\.(\d+)\.", key)
        if match:
            names[f"layers_up.{num_stages - 1 - int(match.group(1))}.{key[match.end():]}"] = key
    return names


def _pvt_feature_names(source: dict[str, torch.Tensor]) -> dict[str, str]:
    """Official PVTv2 names (``patch_embed1``, ``block1.0``, ``norm1``) -> timm names -> the names
    of timm's ``features_only`` wrapper (``stages.0`` becomes ``stages_0``).
    Returns {model name: checkpoint name}."""
    from timm.models.pvt_v2 import checkpoint_filter_fn

    timm_names = checkpoint_filter_fn({key: key for key in source}, None)
    return {re.sub(r"^stages\.(\d+)\.", r"stages_\1.", new): old for new, old in timm_names.items()}


def load_pretrained(model: nn.Module, model_name: str, path: str | Path) -> dict[str, int]:
    """Load the encoder weights in ``path`` into ``model`` (built by ``create_model(model_name)``).

    Returns counts: ``loaded`` (tensors set), ``missing`` (tensors of the receiving module that the
    file did not provide), ``unexpected`` (tensors of the file that were not used), plus
    ``encoder``/``decoder`` for vmunet. Prints the same.
    """
    path = Path(path)
    if model_name not in SUPPORTED_MODELS:
        raise ValueError(f"no pretrained loader for model {model_name!r}; supported: {', '.join(SUPPORTED_MODELS)}")
    checkpoint = read_checkpoint(path)

    counts: dict[str, int] = {}
    if model_name in ("vmunetv2", "vmunet"):
        source = _state_dict_in(checkpoint, path, ("model",))
        target = model.vmunet
        loaded = _matching(source, target, path, "vmunet.")
        used = set(loaded)
        if model_name == "vmunet":
            names = _mirrored_names(source, len(target.layers))
            decoder = _matching({new: source[old] for new, old in names.items()}, target, path, "vmunet.")
            loaded.update(decoder)
            used |= {names[key] for key in decoder}
            counts.update(encoder=len(loaded) - len(decoder), decoder=len(decoder))
    else:
        source = _state_dict_in(checkpoint, path, ("model", "state_dict"))
        target = model.encoder
        names = _pvt_feature_names(source)
        loaded = _matching({new: source[old] for new, old in names.items()}, target, path, "encoder.")
        used = {names[key] for key in loaded}

    if not loaded:
        expected = list(target.state_dict())[:5]
        raise ValueError(
            f"{path}: none of its {len(source)} tensors matches the {model_name} encoder by name "
            f"(file has e.g. {list(source)[:5]}, the model expects e.g. {expected}); is it the right file "
            f"({'VMamba v0 small, vssmsmall_dp03_ckpt_epoch_238.pth' if model_name != 'unetv2' else 'pvt_v2_b2.pth'})?"
        )
    target.load_state_dict(loaded, strict=False)  # names and shapes were checked above
    counts.update(
        loaded=len(loaded),
        missing=len(set(target.state_dict()) - set(loaded)),
        unexpected=len(set(source) - used),
    )
    print(
        f"pretrained {path.name} -> {model_name}: loaded {counts['loaded']} tensors"
        + (f" ({counts['encoder']} encoder + {counts['decoder']} decoder)" if "decoder" in counts else "")
        + f", missing {counts['missing']}, unexpected (unused) {counts['unexpected']}"
    )
    return counts
