"""Published polyp results of other papers (config/literature_results.csv), for Table 2b.

One row per printed value: model, reported_in (the paper that printed it), dataset, metric (the
PraNet-toolbox or boundary names of metrics.json), value as printed, and source (paper and table).
"""
from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

from segbench.report.paper import BOUNDARY_METRICS, DATASET_LABELS, MODEL_LABELS, TOOLBOX_METRICS

LITERATURE_COLUMNS = ["model", "reported_in", "dataset", "metric", "value", "source"]


class LiteratureResultsError(ValueError):
    """config/literature_results.csv is malformed; the message names the line."""


@dataclasses.dataclass(frozen=True)
class PublishedValue:
    model: str
    reported_in: str
    dataset: str
    metric: str
    value: float
    value_text: str
    source: str


def load_literature_results(path: str | Path) -> list[PublishedValue]:
    path = Path(path)
    try:
        handle = open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        raise LiteratureResultsError(f"{path} does not exist; it ships with segbench "
                                     f"(config/literature_results.csv)") from None
    with handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != LITERATURE_COLUMNS:
            raise LiteratureResultsError(f"{path}: expected the header {','.join(LITERATURE_COLUMNS)}, "
                                         f"found {','.join(reader.fieldnames or [])}")
        values, seen = [], set()
        for line, row in enumerate(reader, start=2):
            try:
                value = float(row["value"])
            except ValueError:
                raise LiteratureResultsError(f"{path}:{line}: value {row['value']!r} is not a number") from None
            fraction = row["metric"] in TOOLBOX_METRICS or row["metric"] == "nsd"
            problems = [
                f"model {row['model']!r} (add its label to segbench/report/paper.py)"
                if row["model"] not in MODEL_LABELS else "",
                f"dataset {row['dataset']!r}" if row["dataset"] not in DATASET_LABELS else "",
                f"metric {row['metric']!r}" if row["metric"] not in TOOLBOX_METRICS + BOUNDARY_METRICS else "",
                f"value {value} outside [0, 1]" if fraction and not 0 <= value <= 1 else "",
                f"value {value}" if not math.isfinite(value) or value < 0 else "",
                "an empty reported_in or source" if not row["reported_in"].strip() or not row["source"].strip() else "",
            ]
            problems = [p for p in problems if p]
            if problems:
                raise LiteratureResultsError(f"{path}:{line}: expected a known model, dataset and metric with a "
                                             f"value and its source, found {'; '.join(problems)}")
            key = (row["model"], row["reported_in"], row["dataset"], row["metric"])
            if key in seen:
                raise LiteratureResultsError(f"{path}:{line}: expected one value per model, reported_in, dataset "
                                             f"and metric, found {', '.join(key)} again")
            seen.add(key)
            values.append(PublishedValue(row["model"], row["reported_in"], row["dataset"], row["metric"], value,
                                         row["value"], row["source"]))
    return values
