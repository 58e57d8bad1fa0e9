"""Load ImageNet-pretrained encoder weights into the benchmark's models, as the official code does,
and write a trained model's encoder in the same format (``save_encoder_checkpoint``).

- ``vmunetv2``: VMamba v0-S (``vssmsmall_dp03_ckpt_epoch_238.pth``, weights in ``ckpt['model']``,
  old key names) into ``model.vmunet`` by name: only keys that exist there are taken
  (``layers.2`` takes the first 9 of the checkpoint's 27 blocks; ``norm``/``head`` are dropped).
- ``vmunetv2_noscan``: the same; the scan tensors it does not have are left in the file.
- ``vmunet``: the same, then the encoder stages mirrored into the decoder
  (``layers.0 -> layers_up.3``, ``1 -> 2``, ``2 -> 1``, ``3 -> 0``), again by name.
- ``unetv2``: PVTv2-b2 (the official ``pvt_v2_b2.pth`` names or timm's) into ``model.encoder``,
  a timm ``features_only`` network.
- ``unet_resnet50``: a ResNet with torchvision's names (smp's ``resnet50.imagenet`` safetensors, or
  torchvision's ``resnet50-<sha256 prefix>.pth``; ``fc`` is dropped) into ``model.encoder``.

Files are read with ``torch.load(weights_only=True)`` (or safetensors); if the checkpoint also
stores a training config, a small allow-list of plain data types is admitted (never arbitrary
objects). A file named as torchvision names its downloads (``name-<hex>.pth``) must have a sha256
that starts with that hex, as ``torch.hub`` checks. Every error is one line naming the file.
"""
from __future__ import annotations

import argparse
import io
import pickle
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segbench.io import atomic_write, sha256_file

VMAMBA_MODELS = ("vmunetv2", "vmunetv2_noscan", "vmunet")
PVT_MODELS = ("unetv2",)
RESNET_MODELS = ("unet_resnet50",)
SUPPORTED_MODELS = (*VMAMBA_MODELS, *PVT_MODELS, *RESNET_MODELS)
EXPECTED_FILES = {
    **dict.fromkeys(VMAMBA_MODELS, "VMamba v0 small, vssmsmall_dp03_ckpt_epoch_238.pth"),
    **dict.fromkeys(PVT_MODELS, "pvt_v2_b2.pth"),
    **dict.fromkeys(RESNET_MODELS, "a torchvision-named ResNet, resnet50.imagenet.safetensors or resnet50-19c8e357.pth"),
}

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
# What smp 0.6.0 itself downloads for Unet("resnet50", encoder_weights="imagenet") (encoders/resnet.py:
# smp-hub/resnet50.imagenet at the pinned revision, model.safetensors); its model card names the
# original torchvision file https://download.pytorch.org/models/resnet50-19c8e357.pth, which loads too.
RESNET50_IMAGENET = {
    "url": "https://huggingface.co/smp-hub/resnet50.imagenet/resolve/00cb74e366966d59cd9a35af57e618af9f88efe9/model.safetensors",
    "sha256": None,
    "filename": "resnet50.imagenet.safetensors",
}

# torchvision / torch.hub file names end in -<first hex digits of the file's sha256>.<ext>
_TORCHVISION_HASH_PREFIX = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z]+$")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


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


def _first_sentence(error: BaseException) -> str:
    text = _ANSI_ESCAPE.sub("", str(error)).strip()
    return re.split(r"(?<=[^.])\.\s|\n", text, maxsplit=1)[0].rstrip(".")


def _check_name_hash(path: Path) -> None:
    match = _TORCHVISION_HASH_PREFIX.search(path.name)
    if match is None:
        return
    prefix, digest = match.group(1), sha256_file(path)
    if not digest.startswith(prefix):
        raise ValueError(
            f"{path}: its name carries the sha256 prefix {prefix} (torchvision's naming) but the file's sha256 "
            f"starts {digest[:len(prefix)]}; the file is damaged or is not the one named: download it again"
        )


def _unpickling_refusal(path: Path, error: pickle.UnpicklingError) -> str:
    text = _ANSI_ESCAPE.sub("", str(error))
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsafe:
        return (
            f"{path}: refusing to unpickle it: it holds {unsafe.group(1)}, which is neither a tensor nor plain "
            f"config data, and loading it would run code from the file; if you trust the file, re-save only "
            f"its weights (torch.save({{'model': torch.load(f, weights_only=False)['model']}}, out)) and load that"
        )
    reason = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    return (
        f"{path}: not a torch checkpoint (the unpickler found {reason.group(1).strip() if reason else _first_sentence(error)}); "
        f"download it again (an HTML error page saved under the weights' name looks like this)"
    )


def read_checkpoint(path: str | Path) -> object:
    """Read a weight file safely: safetensors, or a torch file under ``weights_only``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pretrained weight file not found; download it first (the model card's url, segbench fetch-weights)")
    _check_name_hash(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as error:
            raise ValueError(f"{path}: not a readable safetensors file ({_first_sentence(error)}); download it again") from None
    try:
        return _torch_load(path)
    except pickle.UnpicklingError as error:
        raise ValueError(_unpickling_refusal(path, error)) from None
    except (RuntimeError, EOFError) as error:
        raise ValueError(f"{path}: damaged or truncated torch file ({_first_sentence(error) or 'empty'}); download it again") from None


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        with torch.serialization.safe_globals(_config_allow_list()):
            return torch.load(path, map_location="cpu", weights_only=True)


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
                f"{tuple(expected[key].shape)}; the file does not fit this configuration: build the model as the "
                "file was written (the ImageNet files need the default widths: embed_dim 96, PVTv2-b2, ResNet-50)"
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


def _check_supported(model_name: str) -> None:
    if model_name not in SUPPORTED_MODELS:
        raise ValueError(f"no pretrained encoder format for model {model_name!r}; supported: {', '.join(SUPPORTED_MODELS)}")


def _encoder(model: nn.Module, model_name: str) -> tuple[nn.Module, str]:
    """The module that holds the pretrained encoder, and its attribute path for messages."""
    return (model.vmunet, "vmunet.") if model_name in VMAMBA_MODELS else (model.encoder, "encoder.")


def load_pretrained(model: nn.Module, model_name: str, path: str | Path) -> dict[str, int]:
    """Load the encoder weights in ``path`` into ``model`` (built by ``create_model(model_name)``).

    Returns counts: ``loaded`` (tensors set), ``missing`` (tensors of the receiving module that the
    file did not provide), ``unexpected`` (tensors of the file that were not used), plus
    ``encoder``/``decoder`` for vmunet. Prints the same.
    """
    path = Path(path)
    _check_supported(model_name)
    checkpoint = read_checkpoint(path)
    target, prefix = _encoder(model, model_name)
    source = _state_dict_in(checkpoint, path, ("model",) if model_name in VMAMBA_MODELS else ("model", "state_dict"))
    names = _pvt_feature_names(source) if model_name in PVT_MODELS else {key: key for key in source}
    loaded = _matching({new: source[old] for new, old in names.items()}, target, path, prefix)
    used = {names[key] for key in loaded}

    counts: dict[str, int] = {}
    if model_name == "vmunet":
        mirrored = _mirrored_names(source, len(target.layers))
        decoder = _matching({new: source[old] for new, old in mirrored.items()}, target, path, prefix)
        counts.update(encoder=len(loaded), decoder=len(decoder))
        loaded.update(decoder)
        used |= {mirrored[key] for key in decoder}

    if not loaded:
        raise ValueError(
            f"{path}: none of its {len(source)} tensors matches the {model_name} encoder by name "
            f"(file has e.g. {list(source)[:5]}, the model expects e.g. {list(target.state_dict())[:5]}); "
            f"is it the right file ({EXPECTED_FILES[model_name]})?"
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


def encoder_state_dict(model: nn.Module, model_name: str) -> dict[str, torch.Tensor]:
    """The model's encoder under the upstream checkpoint's names: VMamba v0 (``patch_embed.*``,
    ``layers.*``), timm PVTv2 (``stages.i.*``), torchvision ResNet (``conv1.*``, ``layer1.*``)."""
    _check_supported(model_name)
    target, _ = _encoder(model, model_name)
    state = target.state_dict()
    if model_name in VMAMBA_MODELS:
        return {key: value for key, value in state.items() if key.startswith(("patch_embed.", "layers."))}
    if model_name in PVT_MODELS:
        return {re.sub(r"^stages_(\d+)\.", r"stages.\1.", key): value for key, value in state.items()}
    return dict(state)


def save_encoder_checkpoint(model: nn.Module, model_name: str, path: str | Path) -> int:
    """Write the encoder of ``model`` where ``load_pretrained`` reads it, in the upstream format:
    ``{"model": tensors}`` for VMamba, a flat dict for PVTv2 and ResNet; a ``.safetensors`` path gets
    the flat dict as safetensors. Returns the number of tensors written."""
    path = Path(path)
    tensors = {key: value.detach().to("cpu", copy=True).contiguous() for key, value in encoder_state_dict(model, model_name).items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        payload = save(tensors)
    else:
        # through a buffer: torch.save names the records inside the file after the file it writes, so
        # writing the random temporary name directly would give every export different bytes
        buffer = io.BytesIO()
        torch.save({"model": tensors} if model_name in VMAMBA_MODELS else tensors, buffer)
        payload = buffer.getvalue()
    with atomic_write(path, "wb") as handle:
        handle.write(payload)
    print(f"encoder of {model_name} -> {path}: {len(tensors)} tensors")
    return len(tensors)
