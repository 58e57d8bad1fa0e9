"""Mechanical consistency checks of the paper's own tables (errata candidates).

Every check uses identities of pooled confusion-matrix metrics, which is how the paper's code
computes them (one confusion matrix over all test pixels):

* DSC = 2 IoU / (1 + IoU) exactly, so a printed mIoU fixes the printed DSC up to rounding.
* Acc = p Sen + (1 - p) Spe, where p is the share of foreground pixels in the test set. p is a
  property of the ground truth, so it must be the same for every model on one test set, and
  (p, Sen, Spe) fix the DSC: TP = p Sen, FN = p (1 - Sen), FP = (1 - p)(1 - Spe).
* The same configuration must give the same numbers wherever it is printed; different
  configurations sharing every printed number are copies until shown otherwise.

Printed values are rounded to 0.01 points; every check propagates that rounding (the corners of
the +-0.005 box) and flags a row only when the printed value lies outside the resulting interval.
"""
from __future__ import annotations

import dataclasses
import itertools
import statistics

from segbench.report.paper import (
    METRIC_LABELS, POOLED_METRICS, REFERENCE_MODEL, dataset_label, depth_label, model_label,
)

HALF_UNIT = 0.005  # half of the last printed digit, in points


@dataclasses.dataclass(frozen=True)
class Finding:
    check: str
    text: str


def _rows_by_key(paper_rows: list[dict]) -> dict[tuple, dict[str, dict]]:
    """(table, dataset, model, depth, ds) -> {metric: row} for the accuracy tables (1, 2, 4, 5)."""
    grouped: dict[tuple, dict[str, dict]] = {}
    for row in paper_rows:
        if row["table"] == 3:
            continue
        key = (row["table"], row["dataset"], row["model"], row["encoder_depth"], row["deep_supervision"])
        grouped.setdefault(key, {})[row["metric"]] = row
    return grouped


def _describe(key: tuple) -> str:
    table, dataset, model, depth, ds = key
    where = f"Table {table}, {dataset_label(dataset)}, {model_label(model)}"
    if depth:
        where += f" {depth_label(depth)} deep supervision {'TRUE' if ds else 'FALSE'}"
    return where


def _dice_from_iou(iou: float) -> float:
    return 200.0 * iou / (100.0 + iou)


def _corners(values: dict[str, float]):
    names = sorted(values)
    for signs in itertools.product((-HALF_UNIT, HALF_UNIT), repeat=len(names)):
        yield {name: values[name] + sign for name, sign in zip(names, signs)}


def _prevalence(acc: float, sen: float, spe: float) -> float:
    return (spe - acc) / (spe - sen)


def _dice_from_rates(acc: float, sen: float, spe: float) -> float:
    p = _prevalence(acc, sen, spe)
    tp, fn, fp = p * sen / 100, p * (1 - sen / 100), (1 - p) * (1 - spe / 100)
    return 200.0 * tp / (2 * tp + fp + fn)


def check_dice_vs_iou(grouped) -> list[Finding]:
    findings = []
    for key, metrics in grouped.items():
        if "miou" not in metrics or "dsc" not in metrics:
            continue
        iou, dsc = metrics["miou"]["value"], metrics["dsc"]["value"]
        low, high = _dice_from_iou(iou - HALF_UNIT), _dice_from_iou(iou + HALF_UNIT)
        if not low - HALF_UNIT <= dsc <= high + HALF_UNIT:
            findings.append(Finding("DSC vs mIoU", (
                f"{_describe(key)}: mIoU {metrics['miou']['value_text']} implies DSC {_dice_from_iou(iou):.2f} "
                f"(2 IoU/(1+IoU)), printed {metrics['dsc']['value_text']}.")))
    return findings


def check_rates(grouped) -> list[Finding]:
    """Acc between Sen and Spe; the DSC implied by (Acc, Sen, Spe); one foreground share per test set."""
    findings, prevalence = [], {}
    for key, metrics in grouped.items():
        if not {"acc", "sen", "spe", "dsc"} <= set(metrics):
            continue
        acc, sen, spe = (metrics[name]["value"] for name in ("acc", "sen", "spe"))
        if not min(sen, spe) - HALF_UNIT <= acc <= max(sen, spe) + HALF_UNIT:
            findings.append(Finding("Acc, Sen, Spe", (
                f"{_describe(key)}: Acc {acc} is not between Sen {sen} and Spe {spe}, which a weighted mean "
                f"of the two must be.")))
            continue
        corners = [c for c in _corners({"acc": acc, "sen": sen, "spe": spe}) if c["spe"] != c["sen"]]
        dice = [_dice_from_rates(c["acc"], c["sen"], c["spe"]) for c in corners]
        dsc = metrics["dsc"]["value"]
        if not min(dice) - HALF_UNIT <= dsc <= max(dice) + HALF_UNIT:
            findings.append(Finding("DSC vs Acc, Sen, Spe", (
                f"{_describe(key)}: Acc {metrics['acc']['value_text']}, Sen {metrics['sen']['value_text']} and "
                f"Spe {metrics['spe']['value_text']} imply DSC {min(dice):.2f}-{max(dice):.2f}, printed "
                f"{metrics['dsc']['value_text']}.")))
        shares = [_prevalence(c["acc"], c["sen"], c["spe"]) for c in corners]
        prevalence.setdefault((key[0], key[1]), []).append((key, _prevalence(acc, sen, spe), min(shares), max(shares)))
    for (_, dataset), entries in prevalence.items():
        if len(entries) < 3:
            continue
        consensus = statistics.median(point for _, point, _, _ in entries)
        for key, point, low, high in entries:
            if not low <= consensus <= high:
                findings.append(Finding("foreground share", (
                    f"{_describe(key)}: Acc, Sen and Spe imply {100 * point:.2f}% foreground pixels "
                    f"({100 * low:.2f}-{100 * high:.2f}% with rounding), while the other models on "
                    f"{dataset_label(dataset)} imply {100 * consensus:.2f}% (median); the share is a property "
                    f"of the test set, so it cannot depend on the model.")))
    return findings


def _shared(first: dict[str, dict], second: dict[str, dict]) -> tuple[list[str], list[str]]:
    common = [m for m in POOLED_METRICS if m in first and m in second]
    equal = [m for m in common if first[m]["value"] == second[m]["value"]]
    return equal, [m for m in common if m not in equal]


def _configuration_of_table2(grouped) -> tuple[str, bool] | None:
    """The ablation cell whose printed numbers match Table 2's VM-UNetV2 on the most values."""
    votes = {}
    for key, metrics in grouped.items():
        if key[0] not in (4, 5):
            continue
        main = grouped.get((2, key[1], REFERENCE_MODEL, "", None))
        if main:
            equal, _ = _shared(main, metrics)
            votes[(key[3], key[4])] = votes.get((key[3], key[4]), 0) + len(equal)
    if not votes or max(votes.values()) == 0:
        return None
    return max(sorted(votes), key=lambda cell: votes[cell])


def check_copies(grouped) -> list[Finding]:
    findings = []
    same_as_table2 = _configuration_of_table2(grouped)
    equivalent = set()
    if same_as_table2:
        depth, ds = same_as_table2
        for key in grouped:
            if key[0] == 2 and key[2] == REFERENCE_MODEL:
                table = 4 if (4, key[1], REFERENCE_MODEL, depth, ds) in grouped else 5
                ablation_key = (table, key[1], REFERENCE_MODEL, depth, ds)
                if ablation_key in grouped:
                    equivalent.add(frozenset((key, ablation_key)))
                    equal, different = _shared(grouped[key], grouped[ablation_key])
                    if different:
                        findings.append(Finding("same configuration, different numbers", (
                            f"{_describe(key)} and {_describe(ablation_key)} are the same configuration (Table 2's "
                            f"VM-UNetV2 matches the {depth_label(depth)} / deep supervision "
                            f"{'TRUE' if ds else 'FALSE'} "
                            f"cell on most datasets) but differ in " + ", ".join(
                                f"{METRIC_LABELS[m]} ({grouped[key][m]['value_text']} vs "
                                f"{grouped[ablation_key][m]['value_text']})" for m in different) + ".")))
    for first, second in itertools.combinations(sorted(grouped, key=str), 2):
        if frozenset((first, second)) in equivalent:
            continue
        equal, different = _shared(grouped[first], grouped[second])
        compared = len(equal) + len(different)
        if compared >= 2 and len(equal) >= max(2, compared - 1):
            values = ", ".join(f"{METRIC_LABELS[m]} {grouped[first][m]['value_text']}" for m in equal)
            rest = (" (only " + ", ".join(f"{METRIC_LABELS[m]} differs: {grouped[first][m]['value_text']} vs "
                                          f"{grouped[second][m]['value_text']}" for m in different) + ")"
                    if different else "")
            findings.append(Finding("repeated numbers", (
                f"{_describe(first)} and {_describe(second)} print the same {values}{rest}. "
                + ("Four or more equal values are a copied row." if len(equal) >= 4 else
                   "mIoU fixes DSC, so this is one coincidence of a 4-digit number: likely, not certainly, a copy."))))
    return findings


def find_errata(paper_rows: list[dict]) -> list[Finding]:
    grouped = _rows_by_key(paper_rows)
    return check_dice_vs_iou(grouped) + check_rates(grouped) + check_copies(grouped)
