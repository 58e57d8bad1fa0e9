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
    # the paper's periodic schedule; the short smoke run anneals once over its own epochs
    assert cfg["train"]["t_max"] == (50 if name == "config.yaml" else "epochs")
    assert cfg["evaluate"]["threshold"] == 0.5


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c["train"].update(epochs=-1), "train.epochs"),
        (lambda c: c["models"].append("no_such_net"), "models.8"),
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


def test_planned_runs_include_the_controls_and_the_ablation_grid():
    cfg = load_config(REPO / "config" / "config.yaml")
    runs = planned_runs(cfg)
    # 8 models and the from-scratch twins of the 5 pretrained ones on 3 protocols, and 6 ablation cells, x 3 seeds
    assert len(runs) == (3 * (8 + 5) + 6) * 3
    scratch = {(run.protocol, run.variant) for run in runs if run.variant.endswith("_scratch")}
    assert scratch == {(protocol, f"{model}_scratch") for protocol in ("isic17", "isic18", "polyp")
                       for model in ("vmunetv2", "vmunet", "vmunetv2_noscan", "unetv2", "unet_resnet50")}
    assert variant_spec(cfg, "vmunetv2_noscan_scratch") == ("vmunetv2_noscan", {})
    assert variant_spec(cfg, "vmunetv2_d2-2-27-2_ds0") == ("vmunetv2", {"depths": [2, 2, 27, 2], "deep_supervision": False})


def test_scratch_variants_start_from_no_weights_and_ablation_seeds_default_to_the_seeds():
    from segbench.config import ablation_seeds, variant_weights

    cfg = load_config(REPO / "config" / "config.yaml")
    assert variant_weights(cfg, "vmunetv2") == "weights/vssmsmall_dp03_ckpt_epoch_238.pth"
    assert variant_weights(cfg, "vmunetv2_scratch") is None and variant_weights(cfg, "unet") is None
    assert ablation_seeds(cfg) == [0, 1, 2]
    assert ablation_seeds(load_config(REPO / "config" / "smoke.yaml")) == [0]


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["train"].update(epochs=2.0), "train.epochs: 2.0 is not of type 'integer'"),
    (lambda c: c["model_args"]["unet"].update(base_widht=4), "model_args.unet: unet"),
    (lambda c: c["pretrained"].update(unet="x.pth"), "pretrained.unet: model 'unet' has no pretrained loader"),
    (lambda c: c.update(from_scratch=["nosuch"]), "from_scratch.0: 'nosuch' is not one of protocols"),
    (lambda c: c["pretrain"]["models"].update(unet="x.pth"), "pretrain.models.unet"),
])
def test_values_that_would_fail_late_are_refused_at_load(mutate, message):
    cfg = _smoke()
    mutate(cfg)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        validate_config(cfg, "smoke.yaml")


def test_a_job_checks_only_the_arguments_of_the_variant_it_builds():
    cfg = _smoke()
    cfg["model_args"]["unet"]["base_widht"] = 4
    validate_config(yaml.safe_load(yaml.safe_dump(cfg)), "smoke.yaml", variants=["vmunetv2_scratch"])
    with pytest.raises(ConfigError, match=r"model_args\.unet: unet"):
        validate_config(cfg, "smoke.yaml", variants=["unet"])
