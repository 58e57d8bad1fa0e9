"""Statistics for the reports: bootstrap intervals over test images, paired tests, effect sizes.

Conventions (stated in reports/README.md):
* the unit of analysis is a test image; a model's score for an image is its per-image Dice
  averaged over seeds, so seeds do not count as extra samples;
* intervals are percentile bootstrap intervals of the mean over images (seeded);
* VM-UNetV2 is compared with each baseline by a paired Wilcoxon signed-rank test on the
  per-image differences (images paired by id), and the p-values of one table form one family
  for Holm's step-down correction;
* effect sizes: the matched-pairs rank-biserial correlation (positive = the first model better)
  and the median of the per-image differences.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats


def bootstrap_ci(scores, resamples: int, seed: int, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``scores``; (nan, nan) with fewer than 2 scores."""
    scores = np.asarray(scores, dtype=float)
    if scores.size < 2:
        return math.nan, math.nan
    if np.all(scores == scores[0]):
        return float(scores[0]), float(scores[0])
    result = stats.bootstrap(
        (scores,), np.mean, n_resamples=resamples, confidence_level=confidence,
        method="percentile", rng=np.random.default_rng(seed), vectorized=True,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """First model minus second model, over images paired by id."""

    n_pairs: int
    statistic: float
    p_value: float
    rank_biserial: float
    median_difference: float
    mean_difference: float = math.nan


def rank_biserial(differences) -> float:
    """Matched-pairs rank-biserial correlation (R+ - R-) / (R+ + R-), zero differences dropped."""
    differences = np.asarray(differences, dtype=float)
    differences = differences[differences != 0]
    if differences.size == 0:
        return 0.0
    ranks = stats.rankdata(np.abs(differences))
    positive, negative = ranks[differences > 0].sum(), ranks[differences < 0].sum()
    return float((positive - negative) / (positive + negative))


def paired_wilcoxon(first, second) -> PairedComparison:
    """Two-sided Wilcoxon signed-rank test of ``first - second`` (zero differences dropped).

    All differences zero means no evidence of a difference: p = 1 (scipy would warn and divide by 0).
    """
    first, second = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if first.shape != second.shape:
        raise ValueError(f"paired samples differ in length: {first.shape} vs {second.shape}")
    differences = first - second
    if differences.size == 0:
        return PairedComparison(0, math.nan, math.nan, math.nan, math.nan)
    median, mean = float(np.median(differences)), float(np.mean(differences))
    if np.all(differences == 0):
        return PairedComparison(differences.size, 0.0, 1.0, 0.0, median, mean)
    result = stats.wilcoxon(differences, zero_method="wilcox", alternative="two-sided")
    return PairedComparison(differences.size, float(result.statistic), float(result.pvalue),
                            rank_biserial(differences), median, mean)


def holm(p_values) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order; nan entries stay nan and do not count."""
    p_values = [float(p) for p in p_values]
    valid = sorted((p, index) for index, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running_max = 0.0
    for rank, (p, index) in enumerate(valid):
        running_max = max(running_max, min(1.0, (len(valid) - rank) * p))
        adjusted[index] = running_max
    return adjusted
