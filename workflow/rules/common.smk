# Shared helpers: the run grid, file names and per-job resources, all derived from the config.
import json
import os

from segbench.config import (
    config_file_name,
    planned_runs,
    validate_config,
    variant_spec,
    variant_weights,
)
from segbench.data import cache_file
from segbench.io import atomic_write

validate_config(config, "--configfile")

RESULTS = "results"
# Every job reads the config of its own invocation, by content: two invocations with different
# configs in one folder never hand each other's settings to a job.
JOB_CONFIG = f"{RESULTS}/configs/{config_file_name(config)}"
# The config of the latest invocation: what `dvc repro` reports on.
RUN_CONFIG = f"{RESULTS}/run_config.yaml"
RUN_DIR = f"{RESULTS}/{{protocol}}/{{variant}}/seed{{seed}}"
RUNS = planned_runs(config)


wildcard_constraints:
    protocol="|".join(config["protocols"]),
    variant="[a-z][a-z0-9_.-]*",
    seed=r"\d+",
    test_set="[a-z0-9_]+",


def write_run_config():
    """The invocation's validated config, as JOB_CONFIG (written once) and as RUN_CONFIG (when it changes)."""
    import yaml

    text = yaml.safe_dump(config, sort_keys=True)
    for path in (JOB_CONFIG, RUN_CONFIG):
        try:
            with open(path) as handle:
                if handle.read() == text:
                    continue
        except FileNotFoundError:
            pass
        with atomic_write(path) as handle:
            handle.write(text)


def cache_for(dataset):
    return str(cache_file(DATA_DIR, dataset, config["image_size"]))


def gpus_for(device):
    """GPUs a job asks for: none when the config pins it to the CPU, so CPU runs are not serialized."""
    return 0 if device == "cpu" else 1


def job_spec(*sections, variant=None):
    """The config values a job depends on, as a params string: Snakemake reruns the job when they change."""
    spec = {section: config[section] for section in sections}
    if variant is not None:
        spec["variant"] = variant_spec(config, variant)
    return json.dumps(spec, sort_keys=True)


def pretrained_file(variant):
    """The pretrained file a variant's training reads, as an input (ancient: a restored copy is not news)."""
    path = variant_weights(config, variant)
    return [ancient(path)] if path else []


def model_with_weights(filename):
    """The model whose card names ``filename`` as its pretrained file (download_weights)."""
    for model, path in config["pretrained"].items():
        if os.path.basename(path) == filename:
            return model
    raise ValueError(f"no model in config 'pretrained' uses weights/{filename}")


def eval_targets(runs):
    return [
        f"{RESULTS}/{run.protocol}/{run.variant}/seed{run.seed}/eval/{test_set}/metrics.json"
        for run in runs
        for test_set in config["protocols"][run.protocol]["test"]
    ]


def profile_targets(variants):
    return [f"{RESULTS}/profile/{variant}.json" for variant in variants]


def all_targets():
    """Every evaluation and profile, and the report rendered from them by `dvc repro`."""
    return (
        eval_targets(RUNS) + profile_targets(config["models"]) + ["reports/README.md"]
    )
