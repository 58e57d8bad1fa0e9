"""The paper's Tables 1-5 with our numbers beside them: sections for Markdown/LaTeX and tidy CSV rows.

Percentages are shown as in the paper (0-100); ``difference`` is ours minus the paper, in points.
"""
from __future__ import annotations

import dataclasses
import math

from segbench.report.analysis import Comparison, Estimate, Summary
from segbench.report.collect import Results
from segbench.report.paper import (
    ABLATION_ORDER, ISIC_DATASETS, METRIC_LABELS, MODEL_ORDER, POLYP_DATASETS, POOLED_METRICS, REFERENCE_MODEL,
    dataset_label, depth_key, depth_label, model_label,
)
from segbench.report.render import (
    Cell, Column, Section, fmt, fmt_interval, fmt_mean_sd, fmt_p, fmt_signed, ranked,
)

CSV_COLUMNS = [
    "table", "dataset", "protocol", "model", "variant", "encoder_depth", "deep_supervision", "aggregation",
    "metric", "unit", "paper", "ours_mean", "ours_sd", "n_seeds", "seeds_expected", "difference", "ci_low",
    "ci_high", "n_images", "wilcoxon_p", "p_holm", "rank_biserial", "median_difference", "run_name",
    "comparable_to_paper",
]


@dataclasses.dataclass
class Context:
    results: Results
    summaries: dict[tuple[str, str, str], Summary]
    comparisons: dict[tuple[str, str, str], Comparison]
    paper: dict[tuple, dict]
    resamples: int
    bootstrap_seed: int

    @property
    def seeds_expected(self) -> int:
        return len((self.results.cfg or {}).get("seeds", []))

    @property
    def size(self) -> str:
        size = (self.results.cfg or {}).get("image_size")
        return f"{size}×{size}" if size else "the model's input size"

    @property
    def threshold(self):
        return ((self.results.cfg or {}).get("evaluate") or {}).get("threshold", 0.5)


@dataclasses.dataclass
class BuiltTable:
    name: str  # file stem under reports/
    title: str
    sections: list[Section]
    records: list[dict]


def _percent(value: float) -> float:
    return value * 100.0


def _difference(ours: float, paper_row: dict | None) -> float:
    return math.nan if paper_row is None or math.isnan(ours) else ours - paper_row["value"]


def _fill_paper_ours_diff(row: dict, metric: str, paper_row: dict | None, estimate) -> tuple[float, float, float]:
    """Fill the paper / ours (mean ± SD) / difference cells of one pooled metric; return mean, SD, difference."""
    mean, sd = _percent(estimate.mean), _percent(estimate.sd)
    difference = _difference(mean, paper_row)
    row[f"{metric}_paper"] = ranked(paper_row["value_text"], paper_row["value"]) if paper_row else Cell()
    row[f"{metric}_ours"] = ranked(fmt_mean_sd(mean, sd), mean)
    row[f"{metric}_diff"] = Cell(fmt_signed(difference))
    return mean, sd, difference


def _record(ctx: Context, **fields) -> dict:
    cfg = ctx.results.cfg or {}
    record = {column: "" for column in CSV_COLUMNS}
    record.update(run_name=cfg.get("run_name", ""), comparable_to_paper=ctx.results.comparable_to_paper)
    record.update(fields)
    return record


def _seeds_cell(ctx: Context, estimate: Estimate | None, planned: bool) -> Cell:
    if not planned:
        return Cell()
    return Cell(f"{estimate.n if estimate else 0}/{ctx.seeds_expected}")


def _missing_notes(ctx: Context, expected: list[tuple[str, str, str, str]]) -> list[str]:
    """(protocol, test_set, variant, label) combinations the config plans but the results lack, in part or whole."""
    notes = []
    for protocol, test_set, variant, label in expected:
        summary = ctx.summaries.get((protocol, test_set, variant))
        found = summary.pooled["dsc"].n if summary else 0
        if found < ctx.seeds_expected:
            notes.append(f"{label} on {dataset_label(test_set)}: results for {found} of {ctx.seeds_expected} "
                         f"seeds; {'its cells are empty' if found == 0 else 'mean and SD use those found'}.")
    return notes


def _pooled_note(ctx: Context) -> str:
    return (f"Pooled over every test pixel at {ctx.size} (one confusion matrix per test set, threshold "
            f"{ctx.threshold}), as the paper computes them; mIoU is the foreground IoU TP/(TP+FP+FN). "
            f"ours: mean ± SD over seeds (no SD for one seed); Δ = ours − paper in percentage points. "
            f"Best per column and dataset in bold.")


def _per_image_note(ctx: Context, with_tests: bool) -> str:
    note = (f"Per image at each mask's original resolution (prediction resized bilinearly, threshold "
            f"{ctx.threshold}), then the mean over images; ours: mean ± SD over seeds. 95% CI: percentile "
            f"bootstrap over test images ({ctx.resamples} resamples, seed {ctx.bootstrap_seed}) of the mean "
            f"seed-averaged per-image Dice.")
    if with_tests:
        note += (f" p: two-sided paired Wilcoxon signed-rank test of {model_label(REFERENCE_MODEL)} against the "
                 f"row's model on per-image Dice (images paired by id, seeds averaged), Holm-corrected over every "
                 f"comparison in this table. r: matched-pairs rank-biserial correlation, positive when "
                 f"{model_label(REFERENCE_MODEL)} is better. median ΔDice: median over images of "
                 f"{model_label(REFERENCE_MODEL)} minus the row's model, in points.")
    return note


# ---------------------------------------------------------------- Tables 1 and 2


def _table_test_sets(ctx: Context, paper_datasets: list[str], table: int) -> list[tuple[str, str | None]]:
    """(dataset, protocol or None) row groups: the paper's datasets in its order, then other tested sets."""
    tested = ctx.results.test_sets()
    belongs = (lambda name: name in ISIC_DATASETS) if table == 1 else (lambda name: name not in ISIC_DATASETS)
    groups = []
    for dataset in paper_datasets + [t for _, t in tested if belongs(t) and t not in paper_datasets]:
        protocols = [protocol for protocol, test_set in tested if test_set == dataset]
        for protocol in protocols or [None]:
            if (dataset, protocol) not in groups:
                groups.append((dataset, protocol))
    return groups


def _group_label(dataset: str, protocol: str | None, groups) -> str:
    repeated = sum(1 for d, _ in groups if d == dataset) > 1
    return f"{dataset_label(dataset)} ({protocol})" if repeated else dataset_label(dataset)


def _models_for(ctx: Context, table: int, dataset: str, tested: bool) -> list[str]:
    in_paper = {key[2] for key in ctx.paper if key[0] == table and key[1] == dataset}
    ours = ctx.results.main_variants if tested else []
    ordered = [model for model in MODEL_ORDER if model in in_paper or model in ours]
    return ordered + [model for model in ours if model not in MODEL_ORDER]


def accuracy_table(ctx: Context, table: int) -> BuiltTable:
    paper_datasets = ISIC_DATASETS if table == 1 else POLYP_DATASETS
    groups = _table_test_sets(ctx, paper_datasets, table)
    pooled_columns = [Column("dataset", "Dataset", align="l"), Column("model", "Model", align="l")]
    for metric in POOLED_METRICS:
        group = f"{METRIC_LABELS[metric]} (%)"
        pooled_columns += [Column(f"{metric}_paper", "paper", group, "max"),
                           Column(f"{metric}_ours", "ours", group, "max"), Column(f"{metric}_diff", "Δ", group)]
    image_columns = [
        Column("dataset", "Dataset", align="l"), Column("model", "Model", align="l"),
        Column("dice", "ours", "Dice (%)", "max"), Column("dice_ci", "95% CI", "Dice (%)"),
        Column("iou", "ours", "IoU (%)", "max"), Column("images", "images"), Column("seeds", "seeds"),
        Column("p", "p (Holm)", f"vs {model_label(REFERENCE_MODEL)}"),
        Column("r", "r", f"vs {model_label(REFERENCE_MODEL)}"),
        Column("median", "median ΔDice", f"vs {model_label(REFERENCE_MODEL)}"),
    ]
    pooled_rows, image_rows, records, expected = [], [], [], []
    for dataset, protocol in groups:
        label = _group_label(dataset, protocol, groups)
        group_started = False
        for index, model in enumerate(_models_for(ctx, table, dataset, protocol is not None)):
            planned = protocol is not None and model in ctx.results.main_variants
            if planned:
                expected.append((protocol, dataset, model, model_label(model)))
            summary = ctx.summaries.get((protocol, dataset, model)) if protocol else None
            first = {"dataset": Cell(label if index == 0 else ""), "model": Cell(model_label(model))}
            pooled_row = dict(first)
            for metric in POOLED_METRICS:
                paper_row = ctx.paper.get((table, dataset, model, "", None, metric))
                estimate = summary.pooled[metric] if summary else Estimate()
                mean, sd, difference = _fill_paper_ours_diff(pooled_row, metric, paper_row, estimate)
                if paper_row or planned:
                    records.append(_record(
                        ctx, table=str(table), dataset=dataset, protocol=protocol or "", model=model,
                        variant=model if planned else "", aggregation="pooled", metric=metric, unit="%",
                        paper=paper_row["value_text"] if paper_row else "", ours_mean=fmt(mean, 4),
                        ours_sd=fmt(sd, 4), n_seeds=estimate.n if planned else "",
                        seeds_expected=ctx.seeds_expected if planned else "", difference=fmt(difference, 4),
                        n_images=summary.n_images if summary else ""))
            pooled_rows.append(pooled_row)
            comparison = ctx.comparisons.get((protocol, dataset, model)) if protocol else None
            if not planned:
                continue
            image_row = {"dataset": Cell("" if group_started else label), "model": first["model"]}
            group_started = True
            if summary:
                low, high = (_percent(v) for v in summary.dice_ci)
                image_row.update(
                    dice=ranked(fmt_mean_sd(_percent(summary.dice.mean), _percent(summary.dice.sd)),
                                _percent(summary.dice.mean)),
                    dice_ci=Cell(fmt_interval(low, high)),
                    iou=ranked(fmt_mean_sd(_percent(summary.iou.mean), _percent(summary.iou.sd)),
                               _percent(summary.iou.mean)),
                    images=Cell(str(summary.n_images)))
            image_row["seeds"] = _seeds_cell(ctx, summary.dice if summary else None, planned)
            if model == REFERENCE_MODEL and summary:
                image_row["p"] = Cell("reference")
            if comparison:
                image_row.update(p=Cell(fmt_p(comparison.p_holm)), r=Cell(fmt(comparison.result.rank_biserial)),
                                 median=Cell(fmt_signed(_percent(comparison.result.median_difference))))
            image_rows.append(image_row)
            for metric, estimate in (("dice", summary.dice if summary else Estimate()),
                                     ("iou", summary.iou if summary else Estimate())):
                record = _record(
                    ctx, table=str(table), dataset=dataset, protocol=protocol, model=model, variant=model,
                    aggregation="per_image", metric=metric, unit="%", ours_mean=fmt(_percent(estimate.mean), 4),
                    ours_sd=fmt(_percent(estimate.sd), 4), n_seeds=estimate.n,
                    seeds_expected=ctx.seeds_expected, n_images=summary.n_images if summary else "")
                if metric == "dice" and summary:
                    record.update(ci_low=fmt(_percent(summary.dice_ci[0]), 4),
                                  ci_high=fmt(_percent(summary.dice_ci[1]), 4))
                if metric == "dice" and comparison:
                    record.update(wilcoxon_p=f"{comparison.result.p_value:.6g}", p_holm=f"{comparison.p_holm:.6g}",
                                  rank_biserial=fmt(comparison.result.rank_biserial, 4),
                                  median_difference=fmt(_percent(comparison.result.median_difference), 4))
                records.append(record)
    missing = _missing_notes(ctx, expected)
    stem = "table1_isic" if table == 1 else "table2_polyp"
    what = "skin lesions (ISIC17, ISIC18)" if table == 1 else "polyps (trained on Kvasir-SEG + ClinicDB)"
    sections = [
        Section(f"Pooled metrics (the paper's way) beside the paper's Table {table}", f"{stem}-pooled",
                pooled_columns, pooled_rows, "dataset", [_pooled_note(ctx)] + missing),
        Section("Per-image metrics at original resolution (headline), with intervals and tests",
                f"{stem}-per-image", image_columns, image_rows, "dataset", [_per_image_note(ctx, True)]),
    ]
    return BuiltTable(stem, f"Table {table}: {what}", sections, records)


# ---------------------------------------------------------------- Table 3


def _million(value) -> float:
    return math.nan if value is None else float(value) / 1e6


def _number(value) -> float:
    return math.nan if value is None else float(value)


def complexity_table(ctx: Context) -> BuiltTable:
    in_paper = {key[2] for key in ctx.paper if key[0] == 3}
    ours = ctx.results.main_variants
    models = [m for m in MODEL_ORDER if m in in_paper or m in ours] + [m for m in ours if m not in MODEL_ORDER]
    columns = [
        Column("model", "Model", align="l"), Column("input_paper", "paper", "Input", align="l"),
        Column("input_ours", "ours", "Input", align="l"),
        Column("params_paper", "paper", "Params (M)", "min"),
        Column("params_ours", "ours, paper's counting", "Params (M)", "min"),
        Column("params_diff", "Δ", "Params (M)"), Column("params_total", "ours, all", "Params (M)", "min"),
        Column("flops_paper", "paper", "FLOPs (G)", "min"),
        Column("flops_ours", "ours, MACs without scan", "FLOPs (G)", "min"),
        Column("flops_diff", "Δ", "FLOPs (G)"), Column("flops_fvcore", "ours, fvcore with scan", "FLOPs (G)", "min"),
        Column("fps_paper", "paper (V100)", "FPS", "max"), Column("fps_ours", "ours", "FPS", "max"),
        Column("fps_diff", "Δ", "FPS"),
    ]
    rows, records, devices = [], [], set()
    for model in models:
        profile = ctx.results.profiles.get(model) if model in ours else None
        paper = {metric: ctx.paper.get((3, "", model, "", None, metric)) for metric in
                 ("input_size", "params", "flops", "fps")}
        row = {"model": Cell(model_label(model))}
        if paper["input_size"]:
            side = paper["input_size"]["value_text"]
            row["input_paper"] = Cell(f"(3, {side}, {side})")
        values = {}
        if profile:
            devices.add(str(profile.get("device", "unknown device")))
            row["input_ours"] = Cell(f"(3, {profile.get('size', '?')}, {profile.get('size', '?')})")
            values = {"params": _million(profile.get("params_paper")),
                      "params_total": _million(profile["params_total"]),
                      "flops": _number(profile.get("macs_no_scan_g")), "flops_fvcore": _number(profile["flops_g"]),
                      "fps": _number(profile["fps"])}
        for metric, decimals, unit in (("params", 2, "M"), ("flops", 2, "G"), ("fps", 2, "1/s")):
            paper_row = paper[metric]
            mean = values.get(metric, math.nan)
            difference = _difference(mean, paper_row)
            row[f"{metric}_paper"] = ranked(paper_row["value_text"], paper_row["value"], 3) if paper_row else Cell()
            row[f"{metric}_ours"] = ranked(fmt(mean, decimals), mean, decimals)
            row[f"{metric}_diff"] = Cell(fmt_signed(difference, decimals))
            aggregation = {"params": "paper_counting", "flops": "macs_without_scan", "fps": "batch1"}[metric]
            if paper_row or profile or model in ours:
                records.append(_record(ctx, table="3", model=model, variant=model if model in ours else "",
                                       aggregation=aggregation, metric=metric, unit=unit,
                                       paper=paper_row["value_text"] if paper_row else "", ours_mean=fmt(mean, 4),
                                       difference=fmt(difference, 4)))
        row["params_total"] = ranked(fmt(values.get("params_total", math.nan)), values.get("params_total", math.nan))
        row["flops_fvcore"] = ranked(fmt(values.get("flops_fvcore", math.nan)), values.get("flops_fvcore", math.nan))
        if profile:
            records.append(_record(ctx, table="3", model=model, variant=model, aggregation="all_parameters",
                                   metric="params", unit="M", ours_mean=fmt(values["params_total"], 4)))
            records.append(_record(ctx, table="3", model=model, variant=model, aggregation="fvcore_with_scan",
                                   metric="flops", unit="G", ours_mean=fmt(values["flops_fvcore"], 4)))
        rows.append(row)
    notes = [
        "Params: the paper counts thop-style for the VM models (SS2D's raw parameters left out) and all parameters "
        "for UNetV2; 'ours, paper's counting' follows it (params_paper of segbench profile), 'ours, all' counts "
        "every parameter. FLOPs: the paper's GFLOPs are thop multiply-accumulates without the selective scan; "
        "'ours, fvcore with scan' also counts the scan.",
        "FPS depends on the device: the paper used an NVIDIA V100; ours: " + ("; ".join(sorted(devices)) or "none")
        + ", batch 1, median time per forward pass after warm-up.",
    ] + [f"{model_label(m)}: no complexity profile in results/profile/." for m in models
         if m in ours and m not in ctx.results.profiles]
    section = Section("Complexity beside the paper's Table 3", "table3-complexity", columns, rows, "_all", notes)
    return BuiltTable("table3_complexity", "Table 3: parameters, FLOPs and speed", [section], records)


# ---------------------------------------------------------------- Tables 4 and 5


def _ablation_cells(ctx: Context) -> list[tuple[str, bool, str | None]]:
    """(depth key, deep supervision, variant or None), the paper's order first."""
    configured = {(depth_key(spec["depths"]), bool(spec["deep_supervision"])): variant
                  for variant, spec in ctx.results.ablation.items()}
    cells = [(depth, ds, configured.get((depth, ds))) for depth, ds in ABLATION_ORDER]
    cells += [(depth, ds, variant) for (depth, ds), variant in configured.items() if (depth, ds) not in ABLATION_ORDER]
    return cells


def ablation_table(ctx: Context) -> BuiltTable:
    cfg = ctx.results.cfg or {}
    protocol = (cfg.get("ablation") or {}).get("protocol") if ctx.results.ablation else None
    tested = cfg["protocols"][protocol]["test"] if protocol else []
    datasets = POLYP_DATASETS + [t for t in tested if t not in POLYP_DATASETS]
    cells = _ablation_cells(ctx)
    lead = [Column("dataset", "Dataset", align="l"), Column("depth", "Encoder depth", align="l"),
            Column("ds", "Deep supervision", align="l")]
    pooled_columns = list(lead)
    for metric in ("miou", "dsc"):
        group = f"{METRIC_LABELS[metric]} (%)"
        pooled_columns += [Column(f"{metric}_paper", "paper", group, "max"),
                           Column(f"{metric}_ours", "ours", group, "max"), Column(f"{metric}_diff", "Δ", group)]
    image_columns = lead + [Column("dice", "ours", "Dice (%)", "max"), Column("dice_ci", "95% CI", "Dice (%)"),
                            Column("iou", "ours", "IoU (%)", "max"), Column("images", "images"),
                            Column("seeds", "seeds")]
    pooled_rows, image_rows, records, expected = [], [], [], []
    for dataset in datasets:
        table = 4 if dataset in ("kvasir", "clinicdb") else 5
        run_protocol = protocol if dataset in tested else None
        group_started = False
        for index, (depth, ds, variant) in enumerate(cells):
            planned = run_protocol is not None and variant is not None
            label = f"{model_label(cfg.get('ablation', {}).get('model', REFERENCE_MODEL))} {depth_label(depth)} " \
                    f"{'with' if ds else 'without'} deep supervision"
            if planned:
                expected.append((run_protocol, dataset, variant, label))
            summary = ctx.summaries.get((run_protocol, dataset, variant)) if planned else None
            first = {"dataset": Cell(dataset_label(dataset) if index == 0 else ""), "depth": Cell(depth_label(depth)),
                     "ds": Cell("TRUE" if ds else "FALSE")}
            pooled_row = dict(first)
            for metric in ("miou", "dsc"):
                paper_row = ctx.paper.get((table, dataset, REFERENCE_MODEL, depth, ds, metric))
                estimate = summary.pooled[metric] if summary else Estimate()
                mean, sd, difference = _fill_paper_ours_diff(pooled_row, metric, paper_row, estimate)
                if paper_row or planned:
                    records.append(_record(
                        ctx, table=str(table), dataset=dataset, protocol=run_protocol or "", model=REFERENCE_MODEL,
                        variant=variant if planned else "", encoder_depth=depth, deep_supervision=str(ds).lower(),
                        aggregation="pooled", metric=metric, unit="%",
                        paper=paper_row["value_text"] if paper_row else "", ours_mean=fmt(mean, 4),
                        ours_sd=fmt(sd, 4), n_seeds=estimate.n if planned else "",
                        seeds_expected=ctx.seeds_expected if planned else "", difference=fmt(difference, 4),
                        n_images=summary.n_images if summary else ""))
            pooled_rows.append(pooled_row)
            if not planned:
                continue
            image_row = {**first, "dataset": Cell("" if group_started else dataset_label(dataset))}
            group_started = True
            if summary:
                low, high = (_percent(v) for v in summary.dice_ci)
                image_row.update(
                    dice=ranked(fmt_mean_sd(_percent(summary.dice.mean), _percent(summary.dice.sd)),
                                _percent(summary.dice.mean)),
                    dice_ci=Cell(fmt_interval(low, high)),
                    iou=ranked(fmt_mean_sd(_percent(summary.iou.mean), _percent(summary.iou.sd)),
                               _percent(summary.iou.mean)),
                    images=Cell(str(summary.n_images)))
                records.append(_record(
                    ctx, table=str(table), dataset=dataset, protocol=run_protocol, model=REFERENCE_MODEL,
                    variant=variant, encoder_depth=depth, deep_supervision=str(ds).lower(), aggregation="per_image",
                    metric="dice", unit="%", ours_mean=fmt(_percent(summary.dice.mean), 4),
                    ours_sd=fmt(_percent(summary.dice.sd), 4), n_seeds=summary.dice.n,
                    seeds_expected=ctx.seeds_expected, ci_low=fmt(low, 4), ci_high=fmt(high, 4),
                    n_images=summary.n_images))
            image_row["seeds"] = _seeds_cell(ctx, summary.dice if summary else None, planned)
            image_rows.append(image_row)
    complexity_columns = [Column("depth", "Encoder depth", align="l"), Column("ds", "Deep supervision", align="l"),
                          Column("params_total", "all", "Params (M)", "min"),
                          Column("params_paper", "paper's counting", "Params (M)", "min"),
                          Column("flops", "MACs without scan", "FLOPs (G)", "min"),
                          Column("flops_fvcore", "fvcore with scan", "FLOPs (G)", "min"),
                          Column("fps", "ours", "FPS", "max")]
    complexity_rows = []
    for depth, ds, variant in cells:
        profile = ctx.results.profiles.get(variant) if variant else None
        if profile is None:
            continue
        values = {"params_total": _million(profile["params_total"]),
                  "params_paper": _million(profile.get("params_paper")),
                  "flops": _number(profile.get("macs_no_scan_g")), "flops_fvcore": _number(profile["flops_g"]),
                  "fps": _number(profile["fps"])}
        complexity_rows.append({"depth": Cell(depth_label(depth)), "ds": Cell("TRUE" if ds else "FALSE"),
                                **{key: ranked(fmt(value), value) for key, value in values.items()}})
    sections = [
        Section("Pooled metrics (the paper's way) beside the paper's Tables 4 and 5", "table4-5-pooled",
                pooled_columns, pooled_rows, "dataset", [_pooled_note(ctx)] + _missing_notes(ctx, expected)),
        Section("Per-image metrics at original resolution (headline), with intervals", "table4-5-per-image",
                image_columns, image_rows, "dataset", [_per_image_note(ctx, False)]),
    ]
    if complexity_rows:
        sections.append(Section("Complexity of the ablation cells (not in the paper)", "table4-5-complexity",
                                complexity_columns, complexity_rows, "_all",
                                ["Counted as in Table 3; FPS on the device of Table 3."]))
    return BuiltTable("table4_5_ablation", "Tables 4-5: encoder depth × deep supervision (polyp test sets)",
                      sections, records)
