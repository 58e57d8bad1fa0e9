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

from segbench.config import scratch_variant
from segbench.report.collect import COST_NUMBERS, Results
from segbench.report.paper import BOUNDARY_METRICS, POOLED_METRICS, REFERENCE_MODEL, TOOLBOX_METRICS
from segbench.report.stats import PairedComparison, bootstrap_ci, holm, paired_wilcoxon

# Per-image scores a paired test can use, each image averaged over seeds: the pooled metrics' per-image
# counterparts (mIoU -> IoU, DSC -> Dice; Acc, Sen, Spe from the image's confusion counts).
PER_IMAGE_OF_POOLED = {"miou": "iou", "dsc": "dice", "acc": "acc", "sen": "sen", "spe": "spe"}


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Mean and SD (ddof 1; nan for one seed) over ``n`` seeds; missing (nan) values are left out."""

    mean: float = math.nan
    sd: float = math.nan
    n: int = 0

    @classmethod
    def of(cls, values) -> "Estimate":
        values = np.asarray(list(values), dtype=float)
        values = values[~np.isnan(values)]
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
    # per-image scores (dice, iou, acc, sen, spe) averaged over the seeds that scored the image, indexed by id
    seed_averaged: pd.DataFrame
    toolbox: dict[str, Estimate] = dataclasses.field(default_factory=dict)
    # hd95 (pixels) and nsd (fraction), mean and SD over seeds of metrics.json's boundary block
    boundary: dict[str, Estimate] = dataclasses.field(default_factory=dict)
    nsd_tolerance_px: tuple[float, ...] = ()
    n_boundary_undefined: int = 0  # the most any seed left out

    @property
    def seed_averaged_dice(self) -> pd.Series:
        return self.seed_averaged["dice"] if "dice" in self.seed_averaged else pd.Series(dtype=float)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One model minus another on one test set, over images paired by id."""

    result: PairedComparison
    p_holm: float


Key = tuple[str, str, str]  # (protocol, test_set, variant)


def _ratio(numerator: pd.Series, denominator: pd.Series) -> pd.Series:
    """Undefined (nan) where the denominator is 0, e.g. sensitivity of an image without foreground."""
    return (numerator / denominator.where(denominator > 0)).astype(float)


def per_image_scores(table: pd.DataFrame) -> pd.DataFrame:
    """dice, iou and, where per_image.csv has the confusion counts, acc, sen and spe of every image."""
    scores = table[["id", "dice", "iou"]].copy()
    if {"tp", "fp", "fn", "tn"} <= set(table.columns):
        tp, fp, fn, tn = (table[column] for column in ("tp", "fp", "fn", "tn"))
        scores["acc"] = _ratio(tp + tn, tp + fp + fn + tn)
        scores["sen"] = _ratio(tp, tp + fn)
        scores["spe"] = _ratio(tn, tn + fp)
    return scores


def summarize(results: Results, resamples: int, seed: int) -> dict[Key, Summary]:
    summaries = {}
    if results.metrics.empty:
        return summaries
    for (protocol, test_set, variant), group in results.metrics.groupby(["protocol", "test_set", "variant"], sort=True):
        pooled = {metric: Estimate.of(group[f"pooled_{metric}"]) for metric in POOLED_METRICS}
        toolbox = {metric: Estimate.of(group[f"toolbox_{metric}"]) for metric in TOOLBOX_METRICS}
        boundary = {metric: Estimate.of(group[f"boundary_{metric}"]) for metric in BOUNDARY_METRICS}
        tolerances = tuple(sorted({float(v) for v in group["nsd_tolerance_px"] if not math.isnan(v)}))
        undefined = [int(v) for v in group["n_boundary_undefined"] if not math.isnan(v)]
        tables = results.per_image.get((protocol, variant, test_set), {})
        if tables:
            seeds = sorted(tables)
            dice = Estimate.of(tables[s]["dice"].mean() for s in seeds)
            iou = Estimate.of(tables[s]["iou"].mean() for s in seeds)
            stacked = pd.concat([per_image_scores(tables[s]) for s in seeds])
            averaged = stacked.groupby("id", sort=True).mean()
            interval = bootstrap_ci(averaged["dice"].to_numpy(), resamples, seed)
            n_images = int(len(averaged))
        else:
            dice, iou = Estimate.of(group["dice_mean"]), Estimate.of(group["iou_mean"])
            averaged, interval, n_images = pd.DataFrame(), (math.nan, math.nan), int(group["n_images"].max())
        summaries[(protocol, test_set, variant)] = Summary(pooled, dice, iou, interval, n_images, averaged, toolbox,
                                                           boundary, tolerances, max(undefined, default=0))
    return summaries


def paired_test(summaries: dict[Key, Summary], first: Key, second: Key, score: str = "dice") -> PairedComparison | None:
    """Wilcoxon of first minus second on a seed-averaged per-image score; None when either lacks it.

    Images are paired by id; an image whose score is undefined for either model (nan) is left out.
    """
    a, b = summaries.get(first), summaries.get(second)
    if a is None or b is None or score not in a.seed_averaged or score not in b.seed_averaged:
        return None
    paired = pd.concat([a.seed_averaged[score].rename("first"), b.seed_averaged[score].rename("second")],
                       axis=1, join="inner").dropna()
    if paired.empty:
        return None
    return paired_wilcoxon(paired["first"].to_numpy(), paired["second"].to_numpy())


def compare_pairs(summaries: dict[Key, Summary], pairs: dict, score: str = "dice") -> dict:
    """{name: (first key, second key)} -> {name: Comparison}, Holm-corrected as one family; untestable left out."""
    raw = {name: paired_test(summaries, first, second, score) for name, (first, second) in pairs.items()}
    raw = {name: result for name, result in raw.items() if result is not None}
    names = sorted(raw, key=str)
    adjusted = holm([raw[name].p_value for name in names])
    return {name: Comparison(raw[name], p) for name, p in zip(names, adjusted)}


def reference_of(results: Results, variant: str) -> str:
    """The row a Tables 1-2 row is tested against: VM-UNetV2 started the same way (scratch rows: its scratch run)."""
    return scratch_variant(REFERENCE_MODEL) if results.is_scratch_variant(variant) else REFERENCE_MODEL


def compare_to_reference(results: Results, summaries: dict[Key, Summary],
                         test_sets: list[tuple[str, str]]) -> dict[Key, Comparison]:
    """Paired tests of VM-UNetV2 (same start) against every other row of Tables 1-2; one Holm family."""
    pairs = {}
    for protocol, test_set in test_sets:
        for variant in results.variants(protocol):
            reference = reference_of(results, variant)
            if variant != reference:
                pairs[(protocol, test_set, variant)] = ((protocol, test_set, reference), (protocol, test_set, variant))
    return compare_pairs(summaries, pairs)


@dataclasses.dataclass(frozen=True)
class Cost:
    """Training cost of one (protocol, variant) over its seeds, from the manifests' cost blocks."""

    seconds_per_epoch: Estimate
    wall_seconds: Estimate
    images_per_second: Estimate
    peak_memory_mb: Estimate
    epochs: tuple[int, ...]
    memory_kinds: tuple[str, ...]
    devices: tuple[str, ...]
    n_runs: int


def summarize_costs(results: Results) -> dict[tuple[str, str], Cost]:
    costs = {}
    grouped: dict[tuple[str, str], list[dict]] = {}
    for (protocol, variant, _), manifest in sorted(results.manifest_index.items()):
        grouped.setdefault((protocol, variant), []).append(manifest)
    for key, manifests in grouped.items():
        blocks = [m["cost"] for m in manifests if isinstance(m.get("cost"), dict)]
        if not blocks:
            continue

        def values(name):
            return [math.nan if block.get(name) is None else float(block[name]) for block in blocks]

        estimates = {name: Estimate.of(values(name)) for name in COST_NUMBERS if name != "epochs"}
        costs[key] = Cost(
            **estimates, epochs=tuple(sorted({int(b["epochs"]) for b in blocks if b.get("epochs") is not None})),
            memory_kinds=tuple(sorted({str(b["peak_memory_kind"]) for b in blocks if b.get("peak_memory_kind")})),
            devices=tuple(sorted({str(m.get("device", "unknown device")) for m in manifests
                                  if isinstance(m.get("cost"), dict)})),
            n_runs=len(blocks))
    return costs
