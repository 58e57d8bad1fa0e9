"""Model registry: every ``models/*.py`` file registers entrypoints with a card.

Modelled on timm's ``register_model`` / ``create_model`` / ``list_models``. Model files are
discovered by path (``models/`` beside this package, or ``$SEGBENCH_MODELS_DIR``), so adding a
model is adding one file. A file that fails to import is reported by name and the other models
stay usable.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

OUTPUT_KINDS = ("logits", "probabilities")
TRAIN_OUTPUTS = ("one", "heads")


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """What a user needs to know about a model before trusting its numbers."""

    paper: str
    origin: str
    output: str = "logits"
    # "heads": in train mode the model returns a list of maps (B, 1, H, W), each at the input size, and
    # the trainer applies the recipe's loss to each and sums them (deep supervision as its authors
    # trained it); in eval mode it returns the one map that is scored.
    train_output: str = "one"
    input_divisor: int = 32
    needs_mamba_ssm: bool = False
    pretrained: dict | None = None
    test_kwargs: dict = dataclasses.field(default_factory=dict)
    notes: str = ""

    def __post_init__(self):
        if self.output not in OUTPUT_KINDS:
            raise ValueError(f"ModelCard.output must be one of {OUTPUT_KINDS}, got {self.output!r}")
        if self.train_output not in TRAIN_OUTPUTS:
            raise ValueError(f"ModelCard.train_output must be one of {TRAIN_OUTPUTS}, got {self.train_output!r}")


@dataclasses.dataclass(frozen=True)
class _Entry:
    name: str
    builder: Callable[..., nn.Module]
    card: ModelCard
    source: str


_ENTRIES: dict[str, _Entry] = {}
_IMPORT_ERRORS: dict[str, str] = {}
_DISCOVERED: set[Path] = set()


def register_model(card: ModelCard):
    """Decorator: register ``fn(**kwargs) -> nn.Module`` under its function name."""

    def decorate(fn):
        name = fn.__name__
        source = getattr(sys.modules.get(fn.__module__), "__file__", fn.__module__)
        previous = _ENTRIES.get(name)
        if previous is not None and previous.source != source:
            raise ValueError(f"model {name!r} is registered twice: {previous.source} and {source}")
        _ENTRIES[name] = _Entry(name, fn, card, source)
        return fn

    return decorate


def models_dir() -> Path:
    configured = os.environ.get("SEGBENCH_MODELS_DIR")
    return Path(configured) if configured else Path(__file__).resolve().parents[1] / "models"


def _discover() -> None:
    directory = models_dir()
    if not directory.is_dir():
        raise FileNotFoundError(f"models folder {directory} does not exist (set SEGBENCH_MODELS_DIR)")
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_") or path in _DISCOVERED:
            continue
        _DISCOVERED.add(path)
        module_name = f"segbench_models.{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as error:  # a broken model file must not take the others down
            del sys.modules[module_name]
            _IMPORT_ERRORS[str(path)] = "".join(traceback.format_exception_only(type(error), error)).strip()
            warnings.warn(f"model file {path} failed to import and is skipped: {_IMPORT_ERRORS[str(path)]}")


def list_models() -> list[str]:
    _discover()
    return sorted(_ENTRIES)


def model_import_errors() -> dict[str, str]:
    _discover()
    return dict(_IMPORT_ERRORS)


def _entry(name: str) -> _Entry:
    _discover()
    if name not in _ENTRIES:
        broken = "".join(f"\n  {path}: {error}" for path, error in _IMPORT_ERRORS.items())
        hint = f"\nmodel files that failed to import:{broken}" if broken else ""
        raise KeyError(
            f"unknown model {name!r}; registered models: {', '.join(sorted(_ENTRIES))}. "
            f"Add models/{name}.py with a @register_model function named {name}.{hint}"
        )
    return _ENTRIES[name]


def get_card(name: str) -> ModelCard:
    return _entry(name).card


def accepts_pretrained(name: str) -> bool:
    """Whether the model's builder takes a ``pretrained`` weight file (segbench.pretrained loads it)."""
    return "pretrained" in inspect.signature(_entry(name).builder).parameters


def model_source(name: str) -> str:
    """The file that registered ``name`` (for error messages that send the user to it)."""
    return _entry(name).source


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; kwargs set to None are dropped (the entrypoint's default wins)."""
    return _entry(name).builder(**{key: value for key, value in kwargs.items() if value is not None})


class OutputKindError(ValueError):
    """A model's outputs contradict its card's ``output`` field."""


def check_output_kind(name: str, output: torch.Tensor) -> None:
    """Compare a first batch's output with the card: a ``probabilities`` model must stay in [0, 1]
    (else an error), a ``logits`` model entirely in [0, 1] is probably a probability model (a warning:
    the loss would apply a second sigmoid)."""
    card = get_card(name)
    low, high = float(output.detach().min()), float(output.detach().max())
    in_unit_interval = 0.0 <= low and high <= 1.0
    if card.output == "probabilities" and not in_unit_interval:
        raise OutputKindError(
            f"{model_source(name)}: model {name!r} returned values in [{low:.4g}, {high:.4g}] but its card says "
            f"output='probabilities'; set ModelCard(output='logits') or end the model with a sigmoid")
    if card.output == "logits" and in_unit_interval:
        warnings.warn(
            f"{model_source(name)}: model {name!r} returned only values in [0, 1] on the first batch but its card "
            f"says output='logits' (a sigmoid will be applied on top); if it returns probabilities, set "
            f"ModelCard(output='probabilities')", stacklevel=2)


def to_probabilities(output: torch.Tensor, card: ModelCard) -> torch.Tensor:
    """Map a model's output to foreground probabilities, whatever the card says it returns."""
    return torch.sigmoid(output) if card.output == "logits" else output
