"""The ``fault`` marker and the tiny prepared dataset the fault tests train on.

Every test here declares ``@pytest.mark.fault("what goes wrong", expected="what segbench does")``;
``scripts/reliability_report.py`` turns those declarations and the outcome of a real run into
``reports/reliability.md``.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TINY_CONFIG

from .helpers import TEST_SET, TRAIN_SET, last_lines, segbench, train_args, train_config


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "fault(description, expected): a fault the suite injects and the behaviour it proves "
        "(collected into reports/reliability.md by scripts/reliability_report.py)",
    )


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """TINY_CONFIG's synthetic training and test sets, prepared, split and cached by segbench.data's
    public functions (the same ones `segbench data` runs)."""
    from segbench.data.cache import build_cache
    from segbench.data.prepare import prepare_synthetic
    from segbench.data.splits import write_split
    from segbench.data.synthetic import SyntheticSettings

    root = tmp_path_factory.mktemp("data")
    settings = SyntheticSettings(**TINY_CONFIG["data"]["synthetic"])
    for dataset in (TRAIN_SET, TEST_SET):
        processed = root / "processed" / dataset
        prepare_synthetic(dataset, settings, processed, progress=False)
        write_split(dataset, processed, root / "splits" / f"{dataset}.csv")
        build_cache(dataset, processed, root / "splits" / f"{dataset}.csv", TINY_CONFIG["image_size"],
                    root / "cache" / f"{dataset}_{TINY_CONFIG['image_size']}.npz", progress=False)
    return root


@pytest.fixture(scope="session")
def two_epoch_run(tmp_path_factory, data_root):
    """An uninterrupted two-epoch run: checkpoints/last.pt (epoch 2), last.pt.prev (epoch 1), model.pt."""
    folder = tmp_path_factory.mktemp("reference")
    config = train_config(folder / "two.yaml", data_root, train={"epochs": 2})
    result = segbench(*train_args(config, folder / "run"), cwd=folder)
    assert result.returncode == 0, last_lines(result.stderr)
    return config, folder / "run"
