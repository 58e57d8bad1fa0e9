"""From collected results to the numbers every table and figure shows (one place, so they agree).

Pooled metrics (the paper's way) are summarised as mean and SD over seeds of each seed's pooled
value. Per-image metrics are summarised twice: mean and SD over seeds of each seed's mean over
images, and a bootstrap interval over images of the seed-averaged per-image score.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from segbench.report.collect import Results
from segbench.report.paper import POOLED_METRICS, REFERENCE_MODEL
from segbench.report.stats import PairedComparison, bootstrap_ci, holm, paired_wilcoxon


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Mean and SD (ddof 1; nan for one seed) over ``n`` seeds."""

    mean: float = math.nan
    sd: float = math.nan
    n: int = 0

    @classmethod
    def of(cls, values) -> "Estimate":
        values = np.asarray(list(values), dtype=float)
        if values.size == 0:
            return cls()
        sd = float(np.std(values, ddof=1)) if values.size > 1 else math.nan
        return cls(float(np.mean(values)), sd, int(values.size))


@dataclasses.dataclass
class Summary:
    """One (protocol, test set, variant): every number the reports show, as fractions in [0, 1]."""

    pooled: dict[str, Estimate]
    dice: Estimate
    iou: Estimate
    dice_ci: tuple[float, float]
    n_images: int
    # per-image Dice averaged over the seeds that scored the image, indexed by image id
    seed_averaged_dice: pd.Series


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The reference model (VM-UNetV2) minus one baseline on one test set."""

    result: PairedComparison
    p_holm: float


Key = tuple[str, str, str]  # (protocol, test_set, variant)


def summarize(results: Results, resamples: int, seed: int) -> dict[Key, Summary]:
    summaries = {}
    if results.metrics.empty:
        return summaries
    for (protocol, test_set, variant), group in results.metrics.groupby(["protocol", "test_set", "variant"], sort=True):
        pooled = {metric: Estimate.of(group[f"pooled_{metric}"]) for metric in POOLED_METRICS}
        tables = results.per_image.get((protocol, variant, test_set), {})
        if tables:
            seeds = sorted(tables)
            dice = Estimate.of(tables[s]["dice"].mean() for s in seeds)
            iou = Estimate.of(tables[s]["iou"].mean() for s in seeds)
            stacked = pd.concat([tables[s][["id", "dice"]] for s in seeds])
            averaged = stacked.groupby("id", sort=True)["dice"].mean()
            interval = bootstrap_ci(averaged.to_numpy(), resamples, seed)
            n_images = int(averaged.size)
        else:
            dice, iou = Estimate.of(group["dice_mean"]), Estimate.of(group["iou_mean"])
            averaged, interval, n_images = pd.Series(dtype=float), (math.nan, math.nan), int(group["n_images"].max())
        summaries[(protocol, test_set, variant)] = Summary(pooled, dice, iou, interval, n_images, averaged)
    return summaries


def compare_to_reference(summaries: dict[Key, Summary], test_sets: list[tuple[str, str]],
                         baselines: list[str], reference: str = REFERENCE_MODEL) -> dict[Key, Comparison]:
    """Paired Wilcoxon tests of ``reference`` vs each baseline on each test set; one Holm family."""
    raw = {}
    for protocol, test_set in test_sets:
        ours = summaries.get((protocol, test_set, reference))
        if ours is None or ours.seed_averaged_dice.empty:
            continue
        for baseline in baselines:
            theirs = summaries.get((protocol, test_set, baseline))
            if baseline == reference or theirs is None or theirs.seed_averaged_dice.empty:
                continue
            paired = pd.concat([ours.seed_averaged_dice.rename("ours"), theirs.seed_averaged_dice.rename("theirs")],
                               axis=1, join="inner")
            raw[(protocol, test_set, baseline)] = paired_wilcoxon(paired["ours"].to_numpy(),
                                                                  paired["theirs"].to_numpy())
    keys = sorted(raw)
    adjusted = holm([raw[key].p_value for key in keys])
    return {key: Comparison(raw[key], p) for key, p in zip(keys, adjusted)}
