"""Table 2b: the polyp test sets in the polyp field's metrics (PraNet toolbox, HD95, NSD) beside PraNet and Polyp-PVT.

Ours come from metrics.json's "toolbox" and "boundary" blocks (mean ± SD over seeds); the published
values from config/literature_results.csv, one row per (model, paper that printed it).
"""
from __future__ import annotations

from segbench.report.analysis import Estimate
from segbench.report.literature import PublishedValue
from segbench.report.paper import (
    BOUNDARY_LABELS, BOUNDARY_METRICS, ISIC_DATASETS, LOWER_IS_BETTER, POLYP_DATASETS, TOOLBOX_LABELS, TOOLBOX_METRICS,
    dataset_label, model_label,
)
from segbench.report.render import Cell, Column, Section, fmt, fmt_mean_sd, ranked
from segbench.report.tables import BuiltTable, Context, table_record, init_note, missing_notes

METRICS = TOOLBOX_METRICS + BOUNDARY_METRICS
LABELS = {**TOOLBOX_LABELS, **BOUNDARY_LABELS}


def _decimals(metric: str) -> int:
    return 2 if metric == "hd95" else 3


def _published_label(model: str, reported_in: str) -> str:
    return f"{model_label(model)} ({reported_in})"


def _missing_published(literature: list[PublishedValue], datasets: list[str]) -> list[str]:
    """Which (row, metric) pairs of the table have no published value, compressed per row."""
    sentences = []
    for model, reported_in in dict.fromkeys((v.model, v.reported_in) for v in literature):
        have = {(v.dataset, v.metric) for v in literature if (v.model, v.reported_in) == (model, reported_in)}
        parts = []
        for metric in METRICS:
            absent = [d for d in datasets if (d, metric) not in have]
            if len(absent) == len(datasets):
                parts.append(f"{LABELS[metric]} (not reported)")
            elif absent:
                parts.append(f"{LABELS[metric]} on {', '.join(map(dataset_label, absent))}")
        if parts:
            sentences.append(f"{_published_label(model, reported_in)}: no " + "; ".join(parts) + ".")
    return sentences


def toolbox_table(ctx: Context, literature: list[PublishedValue]) -> BuiltTable:
    results = ctx.results
    tested = [(protocol, test_set) for protocol, test_set in results.test_sets() if test_set not in ISIC_DATASETS]
    datasets = POLYP_DATASETS + [t for _, t in tested if t not in POLYP_DATASETS]
    groups = []
    for dataset in datasets:
        for protocol in [p for p, t in tested if t == dataset] or [None]:
            groups.append((dataset, protocol))
    columns = [Column("dataset", "Dataset", align="l"), Column("model", "Model", align="l")]
    columns += [Column(metric, LABELS[metric], best="min" if metric in LOWER_IS_BETTER else "max")
                for metric in METRICS]
    rows, records, expected, shown = [], [], [], []
    for dataset, protocol in groups:
        repeated = sum(1 for d, _ in groups if d == dataset) > 1
        label = f"{dataset_label(dataset)} ({protocol})" if repeated else dataset_label(dataset)
        first = True
        published = [v for v in literature if v.dataset == dataset]
        for model, reported_in in dict.fromkeys((v.model, v.reported_in) for v in published):
            row = {"dataset": Cell(label if first else ""), "model": Cell(_published_label(model, reported_in))}
            first = False
            for value in (v for v in published if (v.model, v.reported_in) == (model, reported_in)):
                row[value.metric] = ranked(value.value_text, value.value, _decimals(value.metric))
                records.append(table_record(ctx, table="2b", dataset=dataset, protocol=protocol or "", model=model,
                                       aggregation="toolbox" if value.metric in TOOLBOX_METRICS else "boundary",
                                       metric=value.metric, unit="px" if value.metric == "hd95" else "fraction",
                                       published=value.value_text, source=value.source))
            rows.append(row)
        for variant in results.variants(protocol) if protocol else []:
            summary = ctx.summaries.get((protocol, dataset, variant))
            expected.append((protocol, dataset, variant, results.label(variant)))
            shown.append(variant)
            row = {"dataset": Cell(label if first else ""), "model": Cell(f"ours: {results.label(variant)}")}
            first = False
            for metric in METRICS:
                estimates = (summary.toolbox if metric in TOOLBOX_METRICS else summary.boundary) if summary else {}
                estimate = estimates.get(metric, Estimate())
                decimals = _decimals(metric)
                row[metric] = ranked(fmt_mean_sd(estimate.mean, estimate.sd, decimals), estimate.mean, decimals)
                records.append(table_record(
                    ctx, table="2b", dataset=dataset, protocol=protocol, model=results.base_model(variant),
                    variant=variant, init=results.init(variant),
                    aggregation="toolbox" if metric in TOOLBOX_METRICS else "boundary", metric=metric,
                    unit="px" if metric == "hd95" else "fraction", ours_mean=fmt(estimate.mean, 6),
                    ours_sd=fmt(estimate.sd, 6), n_seeds=estimate.n,
                    seeds_expected=ctx.seeds_expected(protocol, variant), n_images=summary.n_images if summary else ""))
            rows.append(row)
    sources = list(dict.fromkeys(v.source for v in literature))
    notes = [
        "PraNet-toolbox metrics per image at each mask's original resolution, then the mean over images (fractions): "
        "mDice and mIoU averaged over thresholds; wFm = weighted F-measure; Sα = structure measure; mean and "
        "max Eφ = the enhanced-alignment curve over thresholds, averaged and at its maximum; MAE = mean absolute "
        "error of the probability map (lower is better). HD95 (pixels, lower is better) and NSD from metrics.json's "
        "boundary block. Ours: mean ± SD over seeds of segbench evaluate's values; best per column and dataset in bold.",
        "Rows named with a paper (e.g. PraNet (Fan et al. 2020)) are published values, as printed, from "
        "config/literature_results.csv: other papers' models, trained with their own recipes and scored with the "
        "MATLAB toolbox. They share our test images and metric definitions, not our training, so no test compares "
        "them with ours. PraNet appears twice: its own paper, and Polyp-PVT's reprint of it (different ColonDB and "
        "ETIS values). Sources: " + "; ".join(sources) + ".",
    ]
    missing_published = _missing_published(literature, datasets)
    if missing_published:
        notes.append("Not published (cells left empty): " + " ".join(missing_published))
    if shown:
        notes.append(init_note(results, list(dict.fromkeys(shown))))
    notes += missing_notes(ctx, expected)
    section = Section("Polyp-field metrics beside published PraNet and Polyp-PVT", "table2b-toolbox", columns, rows,
                      "dataset", notes)
    return BuiltTable("table2b_polyp_toolbox", "Table 2b: polyp test sets in the PraNet-toolbox and boundary metrics",
                      [section], records)
