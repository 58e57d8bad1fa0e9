from pathlib import Path

import pytest
import yaml

from segbench.config import ConfigError, load_config, planned_runs, validate_config, variant_spec

REPO = Path(__file__).resolve().parents[1]


def _smoke():
    return yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())


@pytest.mark.parametrize("name", ["config.yaml", "smoke.yaml"])
def test_shipped_configs_validate(name):
    cfg = load_config(REPO / "config" / name)
    assert cfg["train"]["t_max"] == 50 and cfg["evaluate"]["threshold"] == 0.5


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c["train"].update(epochs=-1), "train.epochs"),
        (lambda c: c["models"].append("no_such_net"), "models.5"),
        (lambda c: c["protocols"]["polyp"]["test"].append("no_such_set"), "protocols.polyp.test.5"),
        (lambda c: c.update(learning_rate=1), "learning_rate"),
        (lambda c: c["train"].update(batch_size="8"), "train.batch_size"),
    ],
)
def test_bad_values_name_the_key(mutate, key):
    cfg = _smoke()
    mutate(cfg)
    with pytest.raises(ConfigError) as error:
        validate_config(cfg, "smoke.yaml")
    assert key in str(error.value) or f"'{key}'" in str(error.value)


def test_defaults_are_filled():
    cfg = validate_config({"protocols": {"polyp": {"train": "polyp_train", "test": ["kvasir"]}}, "models": ["unet"]})
    assert cfg["train"]["epochs"] == 300 and cfg["seeds"] == [0, 1, 2] and cfg["scan_backend"] == "auto"


def test_planned_runs_include_the_ablation_grid():
    cfg = load_config(REPO / "config" / "config.yaml")
    runs = planned_runs(cfg)
    assert len(runs) == (3 * 5 + 6) * 3
    assert variant_spec(cfg, "vmunetv2_d2-2-27-2_ds0") == ("vmunetv2", {"depths": [2, 2, 27, 2], "deep_supervision": False})
