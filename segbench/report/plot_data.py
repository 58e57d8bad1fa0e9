"""The data of dvc.yaml's top-level plots (`dvc plots show`, `dvc plots diff`): reports/plots/*.csv.

A DVC plot names fixed files and fields, and reads no globs, while the runs depend on the config; so
each file holds every run in long format, the run's protocol, variant and seed as columns, one row
per epoch (training_curves.csv) or per test image (per_image_dice.csv). `segbench report` writes
them after the tables, the report stage's outputs; without results they hold a header only.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from segbench.io import atomic_write
from segbench.report.collect import Results

PLOT_DIR = "plots"  # under the report folder
TRAINING_CURVES = "training_curves.csv"
PER_IMAGE_DICE = "per_image_dice.csv"
RUN_COLUMNS = ["protocol", "variant", "seed"]
TRAINING_COLUMNS = RUN_COLUMNS + ["epoch", "lr", "train_loss", "val_dsc"]
# quantile: the image's place among its run's images of that test set in order of Dice, (rank - 0.5) / n,
# so sorted Dice of test sets of any size share one axis from 0 to 1
DICE_COLUMNS = RUN_COLUMNS + ["test_set", "id", "dice", "quantile"]


def training_curves(results: Results) -> pd.DataFrame:
    """One row per epoch of every run with a train_log.csv; a column an older log lacks is left empty."""
    frames = [log.reindex(columns=TRAINING_COLUMNS[len(RUN_COLUMNS):]).assign(protocol=protocol, variant=variant,
                                                                             seed=seed)
              for (protocol, variant), logs in results.train_logs.items() for seed, log in logs.items()]
    return _long_table(frames, TRAINING_COLUMNS)


def per_image_dice(results: Results) -> pd.DataFrame:
    """One row per test image of every evaluated run, with the image's Dice quantile within its run."""
    frames = []
    for (protocol, variant, test_set), by_seed in results.per_image.items():
        for seed, table in by_seed.items():
            rank = table["dice"].rank(method="first").to_numpy()
            frames.append(table[["id", "dice"]].assign(protocol=protocol, variant=variant, seed=seed,
                                                       test_set=test_set, quantile=(rank - 0.5) / len(table)))
    return _long_table(frames, DICE_COLUMNS)


def _long_table(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [frame for frame in frames if len(frame)]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def write_plot_data(results: Results, out_dir: str | Path) -> list[Path]:
    """Write training_curves.csv and per_image_dice.csv to ``out_dir``/plots; returns their paths."""
    plot_dir = Path(out_dir) / PLOT_DIR
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in ((TRAINING_CURVES, training_curves(results)), (PER_IMAGE_DICE, per_image_dice(results))):
        with atomic_write(plot_dir / name, newline="", encoding="utf-8") as handle:
            table.to_csv(handle, index=False, lineterminator="\n")
        written.append(plot_dir / name)
    return written
