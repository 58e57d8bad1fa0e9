"""Run configuration: load, validate against the schema (defaults filled), and expand into runs."""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from pathlib import Path

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the file and the key."""


@dataclasses.dataclass(frozen=True)
class Run:
    protocol: str
    variant: str
    seed: int

    @property
    def directory(self) -> str:
        return f"results/{self.protocol}/{self.variant}/seed{self.seed}"


def _with_defaults(validator_class):
    """A validator that fills schema defaults in place, as snakemake.utils.validate(set_default=True)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, subschema in properties.items():
                if "default" in subschema and key not in instance:
                    instance[key] = _copy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _strict_integers(validator_class):
    """JSON Schema counts 2.0 as an integer; a config value used as a count must be written 2."""
    checker = validator_class.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
    return jsonschema.validators.extend(validator_class, type_checker=checker)


def _copy(value):
    return yaml.safe_load(yaml.safe_dump(value))


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(top level)"


def validate_config(cfg: dict, source: str = "config", variants: Iterable[str] | None = None) -> dict:
    """Validate ``cfg`` in place (defaults filled) and check model names against the registry.

    ``variants``: the variants whose keyword arguments are checked by building them (None: every
    planned one). A job passes only the one it builds: building all of them costs seconds per job.
    """
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = _with_defaults(_strict_integers(jsonschema.Draft202012Validator))(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        problems = [f"{_key_path(error)}: {error.message}" for error in errors]
        raise ConfigError(f"{source} does not match {SCHEMA_PATH.name}: " + "; ".join(problems)
                          + f" (every key is documented in config/README.md)")
    check_references(cfg, source, variants)
    return cfg


def check_references(cfg: dict, source: str, variants: Iterable[str] | None = None) -> None:
    """Names that must exist elsewhere: registered models, protocols, and each model's keyword
    arguments (checked by building the model on the meta device, which allocates nothing)."""
    from segbench.registry import accepts_pretrained, list_models

    known = set(list_models())
    for index, name in enumerate(cfg["models"]):
        if name not in known:
            raise ConfigError(
                f"{source}: models.{index}: unknown model {name!r}; registered: {', '.join(sorted(known))}"
            )
        if name.endswith(SCRATCH_SUFFIX):
            raise ConfigError(f"{source}: models.{index}: {name!r} ends with {SCRATCH_SUFFIX!r}, the suffix of "
                              f"from-scratch variants; rename the model")
    for section in ("model_args", "pretrained"):
        for name in cfg[section]:
            if name not in known:
                raise ConfigError(f"{source}: {section}.{name}: unknown model {name!r}; registered: "
                                  f"{', '.join(sorted(known))}")
    for name in cfg["pretrain"]["models"]:
        if name not in known or not accepts_pretrained(name):
            raise ConfigError(f"{source}: pretrain.models.{name}: {name!r} is not a registered model with a "
                              f"pretrained loader (registered: {', '.join(sorted(known))})")
    for name in cfg["pretrained"]:
        if not accepts_pretrained(name):
            raise ConfigError(f"{source}: pretrained.{name}: model {name!r} has no pretrained loader (its builder "
                              f"takes no `pretrained` argument); remove the entry")
    for index, protocol in enumerate(cfg["from_scratch"]):
        if protocol not in cfg["protocols"]:
            raise ConfigError(f"{source}: from_scratch.{index}: {protocol!r} is not one of protocols "
                              f"({', '.join(cfg['protocols'])})")
    ablation = cfg.get("ablation")
    if ablation and ablation["depths"]:
        if ablation["model"] not in known:
            raise ConfigError(f"{source}: ablation.model: unknown model {ablation['model']!r}")
        if ablation["protocol"] not in cfg["protocols"]:
            raise ConfigError(
                f"{source}: ablation.protocol: {ablation['protocol']!r} is not one of protocols "
                f"({', '.join(cfg['protocols'])})"
            )
    check_model_arguments(cfg, source, variants)


def check_model_arguments(cfg: dict, source: str, only: Iterable[str] | None = None) -> None:
    """Build each planned variant (or those in ``only``) on the meta device: a ConfigError names the
    first whose ``model_args`` its model does not accept."""
    import torch

    from segbench.registry import create_model, model_source

    variants = {name: f"model_args.{name}" for name in cfg["models"]}
    variants.update({cell: f"ablation (cell {cell})" for cell in ablation_cells(cfg)})
    if only is not None:
        wanted = {variant.removesuffix(SCRATCH_SUFFIX) for variant in only}
        variants = {variant: where for variant, where in variants.items() if variant in wanted}
    for variant, where in variants.items():
        model, kwargs = variant_spec(cfg, variant)
        try:
            with torch.device("meta"):
                create_model(model, **kwargs)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{source}: {where}: {model} ({model_source(model)}) does not accept "
                              f"{kwargs}: {error}") from None


def config_file_name(cfg: dict) -> str:
    """A file name for ``cfg`` derived from its content (sha256 of the sorted YAML, 16 hex digits)."""
    text = yaml.safe_dump(cfg, sort_keys=True)
    return f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"


def load_config(path: str | Path, variants: Iterable[str] | None = None) -> dict:
    """Read and validate a config file; ``variants`` as in ``validate_config``."""
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(cfg).__name__}")
    return validate_config(cfg, str(path), variants)


SCRATCH_SUFFIX = "_scratch"


def scratch_variant(model: str) -> str:
    """The from-scratch twin of a pretrained model's variant (``from_scratch`` in the config)."""
    return model + SCRATCH_SUFFIX


def scratch_variants(cfg: dict) -> list[str]:
    """The configured models that start from pretrained weights, as their from-scratch variants."""
    return [scratch_variant(model) for model in cfg["models"] if model in cfg["pretrained"]]


def ablation_variant(model: str, depths: list[int], deep_supervision: bool) -> str:
    return f"{model}_d{'-'.join(map(str, depths))}_ds{int(deep_supervision)}"


def ablation_cells(cfg: dict) -> dict[str, dict]:
    """Ablation variant name -> the model kwargs of that cell (on top of model_args)."""
    ablation = cfg.get("ablation") or {}
    cells = {}
    for depths in ablation.get("depths", []):
        for deep_supervision in ablation.get("deep_supervision", []):
            name = ablation_variant(ablation["model"], depths, deep_supervision)
            cells[name] = {"depths": list(depths), "deep_supervision": deep_supervision}
    return cells


def variant_spec(cfg: dict, variant: str) -> tuple[str, dict]:
    """Variant name -> (registered model name, create_model kwargs)."""
    if variant in cfg["models"]:
        return variant, dict(cfg["model_args"].get(variant, {}))
    if variant in scratch_variants(cfg):
        return variant_spec(cfg, variant.removesuffix(SCRATCH_SUFFIX))
    cells = ablation_cells(cfg)
    if variant in cells:
        model = cfg["ablation"]["model"]
        return model, {**cfg["model_args"].get(model, {}), **cells[variant]}
    raise ConfigError(f"unknown variant {variant!r}: not in models ({', '.join(cfg['models'])}), not a "
                      f"from-scratch variant ({', '.join(scratch_variants(cfg)) or 'none'}) nor an ablation cell")


def variant_weights(cfg: dict, variant: str) -> str | None:
    """The pretrained weight file a variant's training starts from; None: from scratch."""
    model, _ = variant_spec(cfg, variant)
    return None if variant in scratch_variants(cfg) else cfg["pretrained"].get(model)


def ablation_seeds(cfg: dict) -> list[int]:
    return (cfg.get("ablation") or {}).get("seeds") or cfg["seeds"]


def planned_runs(cfg: dict) -> list[Run]:
    """Every training the config asks for: models x protocols x seeds, the from-scratch twins on the
    ``from_scratch`` protocols, and the ablation cells on the ablation protocol."""
    runs = [
        Run(protocol, model, seed)
        for protocol in cfg["protocols"]
        for model in cfg["models"]
        for seed in cfg["seeds"]
    ]
    runs += [
        Run(protocol, variant, seed)
        for protocol in cfg["from_scratch"]
        for variant in scratch_variants(cfg)
        for seed in cfg["seeds"]
    ]
    ablation = cfg.get("ablation") or {}
    runs += [
        Run(ablation["protocol"], cell, seed) for cell in ablation_cells(cfg) for seed in ablation_seeds(cfg)
    ]
    return runs
