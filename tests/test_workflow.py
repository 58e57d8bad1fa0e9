"""The whole DAG, for real: Snakemake, the segbench CLI and DVC in a fresh copy of the project."""
import json
import sys

import pytest

from conftest import REPO, TINY_CONFIG, run_tool, write_config

pytestmark = pytest.mark.slow

MY_NET = '''
from torch import nn
from segbench.registry import ModelCard, register_model


@register_model(card=ModelCard(paper="a user's model", origin="tests", output="logits", input_divisor=1,
                               test_kwargs={"width": 2}))
def my_net(width: int = 4, **kwargs) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 1, 1))
'''


def test_snakemake_lint_is_clean():
    result = run_tool([sys.executable, "-m", "snakemake", "--lint", "--configfile", "config/smoke.yaml"], REPO, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for rule" not in result.stdout + result.stderr


def test_paper_protocol_plans_the_controls_for_every_seed():
    """The no-scan control pretrained and from scratch, and the from-scratch twin of every pretrained model,
    on every protocol and seed; every training evaluated; the report at the end."""
    import re

    result = run_tool([sys.executable, "-m", "snakemake", "-n", "--configfile", "config/config.yaml"], REPO)
    planned = result.stdout
    trainings = set(re.findall(r"wildcards: protocol=(\w+), variant=([\w.-]+), seed=(\d+)", planned))
    pretrained = ["vmunetv2", "vmunet", "vmunetv2_noscan", "unetv2", "unet_resnet50"]
    for protocol in ("isic17", "isic18", "polyp"):
        for seed in ("0", "1", "2"):
            for variant in ["vmunetv2_noscan"] + [f"{model}_scratch" for model in pretrained]:
                assert (protocol, variant, seed) in trainings, f"{variant} seed {seed} on {protocol} is not planned"
    for rule in ("train", "evaluate_polyp", "profile", "report", "download_weights"):
        assert re.search(rf"^{rule}\s+\d+", planned, flags=re.MULTILINE), f"no {rule} job planned"


def test_bad_config_stops_with_the_key(tmp_path):
    bad = write_config(tmp_path / "bad.yaml", train={**TINY_CONFIG["train"], "epochs": -3})
    result = run_tool([sys.executable, "-m", "snakemake", "-n", "--configfile", str(bad)], REPO, check=False)
    assert result.returncode != 0
    assert "epochs" in result.stdout + result.stderr


def test_a_new_model_file_runs_through_the_dag_into_the_report(project_copy):
    (project_copy / "models" / "my_net.py").write_text(MY_NET)
    config = write_config(project_copy / "tiny.yaml", models=["unet", "my_net"])
    run_tool([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(config)], project_copy)
    metrics = json.loads((project_copy / "results/polyp/my_net/seed0/eval/kvasir/metrics.json").read_text())
    assert metrics["n_images"] == TINY_CONFIG["data"]["synthetic"]["n_test"]
    assert set(metrics["pooled"]) == {"miou", "dsc", "acc", "sen", "spe"}
    manifest = json.loads((project_copy / "results/polyp/unet/seed0/manifest.json").read_text())
    assert manifest["scan_backend"].startswith("torch/") and manifest["versions"]["torch"]

    again = run_tool([sys.executable, "-m", "snakemake", "-n", "--configfile", str(config)], project_copy)
    assert "Nothing to be done" in again.stdout + again.stderr

    run_tool(["dvc", "repro"], project_copy)
    table = (project_copy / "reports" / "table2_polyp.md").read_text()
    assert "my_net" in table
    second = run_tool(["dvc", "repro"], project_copy)
    assert "didn't change" in second.stdout + second.stderr or "up to date" in second.stdout + second.stderr
