"""Report statistics and the paper-consistency checks on inputs whose answers are known."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from segbench.report.errata import find_errata
from segbench.report.paper import load_paper_results
from segbench.report.stats import bootstrap_ci, holm, paired_wilcoxon, rank_biserial

PAPER_CSV = Path(__file__).resolve().parents[1] / "config" / "paper_results.csv"


def test_bootstrap_ci_of_constant_scores_has_zero_width():
    assert bootstrap_ci(np.full(20, 0.83), resamples=500, seed=0) == (0.83, 0.83)


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    scores = np.random.default_rng(1).uniform(0.4, 0.9, 50)
    low, high = bootstrap_ci(scores, resamples=2000, seed=3)
    assert low < scores.mean() < high
    assert (low, high) == bootstrap_ci(scores, resamples=2000, seed=3)
    assert (low, high) != bootstrap_ci(scores, resamples=2000, seed=4)
    narrow = bootstrap_ci(scores, resamples=2000, seed=3, confidence=0.5)
    assert low < narrow[0] < narrow[1] < high


def test_bootstrap_ci_needs_two_scores():
    assert all(math.isnan(v) for v in bootstrap_ci([0.5], resamples=100, seed=0))


def test_wilcoxon_on_identical_samples_gives_p_one():
    scores = np.linspace(0.2, 0.9, 12)
    result = paired_wilcoxon(scores, scores.copy())
    assert result.p_value == 1.0 and result.rank_biserial == 0.0 and result.median_difference == 0.0
    assert result.n_pairs == 12


def test_wilcoxon_exact_p_and_effect_sign():
    base = np.linspace(0.3, 0.8, 8)
    better = base + np.arange(1, 9) / 100  # every difference positive: exact two-sided p = 2 / 2**8
    result = paired_wilcoxon(better, base)
    assert result.p_value == pytest.approx(2 / 256)
    assert result.rank_biserial == 1.0 and result.median_difference == pytest.approx(0.045)
    reverse = paired_wilcoxon(base, better)
    assert reverse.rank_biserial == -1.0 and reverse.median_difference < 0
    assert reverse.p_value == pytest.approx(result.p_value)


def test_wilcoxon_rejects_unpaired_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        paired_wilcoxon([0.1, 0.2], [0.1])


def test_rank_biserial_by_hand():
    # |d| ranks: 0.1 -> 1, 0.2 -> 2, 0.3 -> 3; R+ = 1 + 3, R- = 2 -> r = (4 - 2) / 6
    assert rank_biserial([0.1, -0.2, 0.3, 0.0]) == pytest.approx(1 / 3)


def test_holm_on_known_p_values():
    # sorted 0.01, 0.02, 0.03, 0.04 times 4, 3, 2, 1 -> 0.04, 0.06, 0.06 (monotone), 0.06
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    adjusted = holm([0.01, math.nan, 0.02])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)
    assert holm([]) == []


def _consistent_rows() -> list[dict]:
    """Tables 1-2 rows computed from real confusion matrices (one foreground share per test set): no errata."""
    rows = []
    for dataset, foreground in (("isic17", 2000), ("kvasir", 1500)):
        for model, (tp, fp) in (("unet", (1500, 300)), ("unetv2", (1700, 250)), ("vmunetv2", (1800, 100))):
            tp = tp * foreground // 2000
            fn, tn = foreground - tp, 10000 - foreground - fp
            values = {"miou": tp / (tp + fp + fn), "dsc": 2 * tp / (2 * tp + fp + fn), "acc": (tp + tn) / 10000,
                      "sen": tp / (tp + fn), "spe": tn / (tn + fp)}
            for metric, value in values.items():
                text = f"{100 * value:.2f}"
                rows.append({"table": 1 if dataset == "isic17" else 2, "dataset": dataset, "model": model,
                             "encoder_depth": "", "deep_supervision": None, "metric": metric,
                             "value": float(text), "value_text": text, "unit": "%"})
    return rows


def test_consistent_tables_have_no_errata_and_a_typo_is_found():
    rows = _consistent_rows()
    assert [f for f in find_errata(rows) if f.check != "claims in the text"] == []
    typo = next(r for r in rows if (r["dataset"], r["model"], r["metric"]) == ("kvasir", "unetv2", "dsc"))
    typo["value"] += 0.3
    typo["value_text"] = f"{typo['value']:.2f}"
    checks = {f.check for f in find_errata(rows)}
    assert {"DSC vs mIoU", "DSC vs Acc, Sen, Spe"} <= checks


def test_errata_of_the_paper_include_the_known_ones():
    texts = [f.text for f in find_errata(load_paper_results(PAPER_CSV))]
    assert any("Table 2, ClinicDB, VM-UNetV2 and Table 2, CVC-300, VM-UNetV2 print the same" in t
               and "only Acc differs: 99.09 vs 99.08" in t for t in texts)
    assert any("Table 2, Kvasir-SEG, VM-UNetV2: mIoU 84.15 implies DSC 91.39" in t for t in texts)
    assert any("Table 2, CVC-300, VM-UNetV2 and Table 5, CVC-300, VM-UNetV2 [2,2,9,2] deep supervision FALSE are "
               "the same configuration" in t and "(89.31 vs 79.23)" in t for t in texts)
    assert any("Table 2, CVC-300, VM-UNetV2: Acc, Sen and Spe imply 8.02% foreground pixels" in t for t in texts)
    assert any("[2,2,2,2] deep supervision FALSE and Table 5, CVC-300, VM-UNetV2 [2,2,27,2] deep supervision "
               "FALSE print the same mIoU 77.66" in t for t in texts)
    assert not any("Table 1, ISIC17, UNet:" in t for t in texts)
