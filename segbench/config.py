"""Run configuration: load, validate against the schema (defaults filled), and expand into runs."""
from __future__ import annotations

import dataclasses
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


def _copy(value):
    return yaml.safe_load(yaml.safe_dump(value))


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(top level)"


def validate_config(cfg: dict, source: str = "config") -> dict:
    """Validate ``cfg`` in place (defaults filled) and check model names against the registry."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {_key_path(error)}: {error.message}" for error in errors]
        raise ConfigError(f"{source} does not match {SCHEMA_PATH.name}:\n" + "\n".join(lines))
    check_references(cfg, source)
    return cfg


def check_references(cfg: dict, source: str) -> None:
    from segbench.registry import list_models

    known = set(list_models())
    for index, name in enumerate(cfg["models"]):
        if name not in known:
            raise ConfigError(
                f"{source}: models.{index}: unknown model {name!r}; registered: {', '.join(sorted(known))}"
            )
    for name in cfg["model_args"]:
        if name not in known:
            raise ConfigError(f"{source}: model_args.{name}: unknown model {name!r}")
    ablation = cfg.get("ablation")
    if ablation and ablation["depths"]:
        if ablation["model"] not in known:
            raise ConfigError(f"{source}: ablation.model: unknown model {ablation['model']!r}")
        if ablation["protocol"] not in cfg["protocols"]:
            raise ConfigError(
                f"{source}: ablation.protocol: {ablation['protocol']!r} is not one of protocols "
                f"({', '.join(cfg['protocols'])})"
            )


def load_config(path: str | Path) -> dict:
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(cfg).__name__}")
    return validate_config(cfg, str(path))


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
    cells = ablation_cells(cfg)
    if variant in cells:
        model = cfg["ablation"]["model"]
        return model, {**cfg["model_args"].get(model, {}), **cells[variant]}
    raise ConfigError(f"unknown variant {variant!r}: not in models ({cfg['models']}) nor an ablation cell")


def planned_runs(cfg: dict) -> list[Run]:
    runs = [
        Run(protocol, model, seed)
        for protocol in cfg["protocols"]
        for model in cfg["models"]
        for seed in cfg["seeds"]
    ]
    ablation = cfg.get("ablation") or {}
    runs += [
        Run(ablation["protocol"], cell, seed) for cell in ablation_cells(cfg) for seed in cfg["seeds"]
    ]
    return runs
