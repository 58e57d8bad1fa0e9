"""The paper's Tables 1-5 with our numbers beside them: sections for Markdown/LaTeX and tidy CSV rows.

Percentages are shown as in the paper (0-100); ``difference`` is ours minus the paper, in points.
"""
from __future__ import annotations

import dataclasses
import math

from segbench.config import scratch_variant
from segbench.report.analysis import Comparison, Cost, Estimate, Summary
from segbench.report.collect import MEMORY_KINDS, Results
from segbench.report.paper import (
    ABLATION_ORDER, BOUNDARY_LABELS, BOUNDARY_METRICS, ISIC_DATASETS, METRIC_LABELS, MODEL_ORDER, POLYP_DATASETS,
    POOLED_METRICS, REFERENCE_MODEL, dataset_label, depth_key, depth_label, model_label,
)
from segbench.report.render import (
    Cell, Column, Section, fmt, fmt_interval, fmt_mean_sd, fmt_p, fmt_signed, ranked,
)

CSV_COLUMNS = [
    "table", "dataset", "protocol", "model", "variant", "init", "encoder_depth", "deep_supervision", "aggregation",
    "metric", "unit", "paper", "published", "source", "ours_mean", "ours_sd", "n_seeds", "seeds_expected",
    "difference", "ci_low", "ci_high", "n_images", "wilcoxon_p", "p_holm", "rank_biserial", "median_difference",
    "run_name", "comparable_to_paper",
]


@dataclasses.dataclass
class Context:
    results: Results
    summaries: dict[tuple[str, str, str], Summary]
    comparisons: dict[tuple[str, str, str], Comparison]
    paper: dict[tuple, dict]
    resamples: int
    bootstrap_seed: int
    costs: dict[tuple[str, str], Cost] = dataclasses.field(default_factory=dict)

    def seeds_expected(self, protocol: str | None, variant: str | None) -> int:
        return len(self.results.expected_seeds(protocol, variant)) if protocol and variant else 0

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
    csv_columns: list[str] = dataclasses.field(default_factory=lambda: list(CSV_COLUMNS))


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


def table_record(ctx: Context, **fields) -> dict:
    cfg = ctx.results.cfg or {}
    record = {column: "" for column in CSV_COLUMNS}
    record.update(run_name=cfg.get("run_name", ""), comparable_to_paper=ctx.results.comparable_to_paper)
    record.update(fields)
    return record


def _seeds_cell(ctx: Context, estimate: Estimate | None, protocol: str | None, variant: str | None) -> Cell:
    expected = ctx.seeds_expected(protocol, variant)
    return Cell(f"{estimate.n if estimate else 0}/{expected}") if expected else Cell()


def missing_notes(ctx: Context, expected: list[tuple[str, str, str, str]]) -> list[str]:
    """(protocol, test_set, variant, label) combinations the config plans but the results lack, in part or whole."""
    notes = []
    for protocol, test_set, variant, label in expected:
        summary = ctx.summaries.get((protocol, test_set, variant))
        found = summary.pooled["dsc"].n if summary else 0
        planned = ctx.seeds_expected(protocol, variant)
        if found < planned:
            notes.append(f"{label} on {dataset_label(test_set)}: results for {found} of {planned} "
                         f"seeds; {'its cells are empty' if found == 0 else 'mean and SD use those found'}.")
    return notes


def init_note(results: Results, variants: list[str]) -> str:
    """Which rows start from pretrained weights (config `pretrained:`) and which from random initialisation."""
    pretrained = [v for v in variants if results.init(v) == "pretrained"]
    scratch = [v for v in variants if results.init(v) == "scratch"]
    recorded = [m for (_, variant, _), m in results.manifest_index.items() if variant in variants
                and (m.get("init") or m.get("pretrained"))]
    parts = []
    if pretrained:
        weights = (results.cfg or {}).get("pretrained", {})
        parts.append("pretrained encoder weights (config `pretrained:`): " + ", ".join(
            f"{results.label(v)} ({weights.get(results.base_model(v), 'weights of the config')})" for v in pretrained))
    if scratch:
        parts.append("random initialisation (from scratch): " + ", ".join(results.label(v) for v in scratch))
    text = "Starting weights: " + "; ".join(parts) + "." if parts else ""
    if recorded:
        text += (f" {len(recorded)} run manifests record their start (init or pretrained file); any that disagree "
                 f"with the config are listed in README.md.")
    return text


def boundary_note(ctx: Context, summaries: list[Summary]) -> str:
    tolerances = sorted({t for s in summaries for t in s.nsd_tolerance_px})
    undefined = max((s.n_boundary_undefined for s in summaries), default=0)
    tolerance = ", ".join(f"{t:g}" for t in tolerances) or "?"
    return (f"Boundary metrics (metrics.json 'boundary', at each mask's original resolution): HD95 = 95th percentile "
            f"of the distances between predicted and true boundaries, in pixels (lower is better); NSD = normalised "
            f"surface distance, the share of boundary within {tolerance} px of the other boundary (higher is better); "
            f"ours: mean ± SD over seeds. Images without a boundary in the mask or the prediction are left out "
            f"(at most {undefined} per run here).")


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


def _rows_for(ctx: Context, table: int, dataset: str, protocol: str | None) -> list[str]:
    """Row variants: the paper's and our models in the paper's order, each followed by its scratch run."""
    rows = []
    for model in _models_for(ctx, table, dataset, protocol is not None):
        rows.append(model)
        if protocol and model in ctx.results.main_variants:
            rows += [v for v in ctx.results.variants(protocol) if v != model and ctx.results.base_model(v) == model]
    return rows


def _estimate_cell(estimate: Estimate, scale: float = 100.0, decimals: int = 2) -> Cell:
    mean, sd = estimate.mean * scale, estimate.sd * scale
    return ranked(fmt_mean_sd(mean, sd, decimals), mean, decimals)


def per_image_columns(lead: list[Column], with_tests: bool) -> list[Column]:
    columns = lead + [
        Column("dice", "ours", "Dice (%)", "max"), Column("dice_ci", "95% CI", "Dice (%)"),
        Column("iou", "ours", "IoU (%)", "max"),
        Column("hd95", BOUNDARY_LABELS["hd95"], "Boundary", "min"),
        Column("nsd", BOUNDARY_LABELS["nsd"], "Boundary", "max"),
        Column("images", "images"), Column("seeds", "seeds"),
    ]
    if with_tests:
        versus = f"vs {model_label(REFERENCE_MODEL)}"
        columns += [Column("p", "p (Holm)", versus), Column("r", "r", versus),
                    Column("median", "median ΔDice", versus)]
    return columns


def fill_per_image(row: dict, summary: Summary) -> None:
    low, high = (_percent(v) for v in summary.dice_ci)
    row.update(dice=_estimate_cell(summary.dice), dice_ci=Cell(fmt_interval(low, high)),
               iou=_estimate_cell(summary.iou),
               hd95=_estimate_cell(summary.boundary.get("hd95", Estimate()), 1.0),
               nsd=_estimate_cell(summary.boundary.get("nsd", Estimate()), 1.0, 3), images=Cell(str(summary.n_images)))


def per_image_records(ctx: Context, summary: Summary | None, **fields) -> list[dict]:
    """Tidy rows of one per-image row: Dice (with its interval), IoU, HD95 and NSD."""
    records = []
    estimates = [("dice", "%", summary.dice if summary else Estimate(), 100.0),
                 ("iou", "%", summary.iou if summary else Estimate(), 100.0)]
    estimates += [(metric, "px" if metric == "hd95" else "fraction",
                   summary.boundary.get(metric, Estimate()) if summary else Estimate(), 1.0)
                  for metric in BOUNDARY_METRICS]
    for metric, unit, estimate, scale in estimates:
        if metric in BOUNDARY_METRICS and estimate.n == 0:
            continue
        record = table_record(ctx, aggregation="per_image", metric=metric, unit=unit,
                              ours_mean=fmt(estimate.mean * scale, 4), ours_sd=fmt(estimate.sd * scale, 4),
                              n_seeds=estimate.n, n_images=summary.n_images if summary else "", **fields)
        if metric == "dice" and summary:
            record.update(ci_low=fmt(_percent(summary.dice_ci[0]), 4), ci_high=fmt(_percent(summary.dice_ci[1]), 4))
        records.append(record)
    return records


def accuracy_table(ctx: Context, table: int) -> BuiltTable:
    results = ctx.results
    paper_datasets = ISIC_DATASETS if table == 1 else POLYP_DATASETS
    groups = _table_test_sets(ctx, paper_datasets, table)
    pooled_columns = [Column("dataset", "Dataset", align="l"), Column("model", "Model", align="l")]
    for metric in POOLED_METRICS:
        group = f"{METRIC_LABELS[metric]} (%)"
        pooled_columns += [Column(f"{metric}_paper", "paper", group, "max"),
                           Column(f"{metric}_ours", "ours", group, "max"), Column(f"{metric}_diff", "Δ", group)]
    image_columns = per_image_columns([Column("dataset", "Dataset", align="l"), Column("model", "Model", align="l")],
                                      True)
    pooled_rows, image_rows, records, expected, variants_shown, image_summaries = [], [], [], [], [], []
    for dataset, protocol in groups:
        label = _group_label(dataset, protocol, groups)
        group_started = False
        for index, variant in enumerate(_rows_for(ctx, table, dataset, protocol)):
            planned = protocol is not None and results.planned(protocol, variant)
            model = results.base_model(variant)
            in_paper_row = variant == model
            if planned:
                expected.append((protocol, dataset, variant, results.label(variant)))
                variants_shown.append(variant)
            summary = ctx.summaries.get((protocol, dataset, variant)) if protocol else None
            first = {"dataset": Cell(label if index == 0 else ""), "model": Cell(results.label(variant))}
            pooled_row = dict(first)
            common = dict(table=str(table), dataset=dataset, protocol=protocol or "", model=model,
                          variant=variant if planned else "", init=results.init(variant) if planned else "")
            for metric in POOLED_METRICS:
                paper_row = ctx.paper.get((table, dataset, model, "", None, metric)) if in_paper_row else None
                estimate = summary.pooled[metric] if summary else Estimate()
                mean, sd, difference = _fill_paper_ours_diff(pooled_row, metric, paper_row, estimate)
                if paper_row or planned:
                    records.append(table_record(
                        ctx, **common, aggregation="pooled", metric=metric, unit="%",
                        paper=paper_row["value_text"] if paper_row else "", ours_mean=fmt(mean, 4),
                        ours_sd=fmt(sd, 4), n_seeds=estimate.n if planned else "",
                        seeds_expected=ctx.seeds_expected(protocol, variant) if planned else "",
                        difference=fmt(difference, 4), n_images=summary.n_images if summary else ""))
            pooled_rows.append(pooled_row)
            comparison = ctx.comparisons.get((protocol, dataset, variant)) if protocol else None
            if not planned:
                continue
            image_row = {"dataset": Cell("" if group_started else label), "model": first["model"]}
            group_started = True
            if summary:
                fill_per_image(image_row, summary)
                image_summaries.append(summary)
            image_row["seeds"] = _seeds_cell(ctx, summary.dice if summary else None, protocol, variant)
            if variant in (REFERENCE_MODEL, scratch_variant(REFERENCE_MODEL)) and summary:
                image_row["p"] = Cell("reference")
            if comparison:
                image_row.update(p=Cell(fmt_p(comparison.p_holm)), r=Cell(fmt(comparison.result.rank_biserial)),
                                 median=Cell(fmt_signed(_percent(comparison.result.median_difference))))
            image_rows.append(image_row)
            new_records = per_image_records(ctx, summary, **common,
                                            seeds_expected=ctx.seeds_expected(protocol, variant))
            if comparison:
                new_records[0].update(wilcoxon_p=f"{comparison.result.p_value:.6g}", p_holm=f"{comparison.p_holm:.6g}",
                                      rank_biserial=fmt(comparison.result.rank_biserial, 4),
                                      median_difference=fmt(_percent(comparison.result.median_difference), 4))
            records += new_records
    missing = missing_notes(ctx, expected)
    stem = "table1_isic" if table == 1 else "table2_polyp"
    what = "skin lesions (ISIC17, ISIC18)" if table == 1 else "polyps (trained on Kvasir-SEG + ClinicDB)"
    starts = [init_note(results, list(dict.fromkeys(variants_shown)))] if variants_shown else []
    image_notes = [_per_image_note(ctx, True)]
    if any(results.is_scratch_variant(v) for v in variants_shown):
        image_notes.append(f"Rows marked (scratch) are tested against "
                           f"{results.label(scratch_variant(REFERENCE_MODEL))}, the others against "
                           f"{model_label(REFERENCE_MODEL)}.")
    image_notes.append(boundary_note(ctx, image_summaries))
    sections = [
        Section(f"Pooled metrics (the paper's way) beside the paper's Table {table}", f"{stem}-pooled",
                pooled_columns, pooled_rows, "dataset", [_pooled_note(ctx)] + starts + missing),
        Section("Per-image metrics at original resolution (headline), with intervals and tests",
                f"{stem}-per-image", image_columns, image_rows, "dataset", image_notes),
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
                records.append(table_record(ctx, table="3", model=model, variant=model if model in ours else "",
                                       aggregation=aggregation, metric=metric, unit=unit,
                                       paper=paper_row["value_text"] if paper_row else "", ours_mean=fmt(mean, 4),
                                       difference=fmt(difference, 4)))
        row["params_total"] = ranked(fmt(values.get("params_total", math.nan)), values.get("params_total", math.nan))
        row["flops_fvcore"] = ranked(fmt(values.get("flops_fvcore", math.nan)), values.get("flops_fvcore", math.nan))
        if profile:
            records.append(table_record(ctx, table="3", model=model, variant=model, aggregation="all_parameters",
                                   metric="params", unit="M", ours_mean=fmt(values["params_total"], 4)))
            records.append(table_record(ctx, table="3", model=model, variant=model, aggregation="fvcore_with_scan",
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
    cost, cost_records = cost_section(ctx)
    return BuiltTable("table3_complexity", "Table 3: parameters, FLOPs and speed; measured training cost",
                      [section, cost], records + cost_records)


def cost_jobs(results: Results) -> list[tuple[str, str]]:
    """Every planned (protocol, variant): per protocol each model with its scratch run, then ablation cells."""
    jobs = [(protocol, variant) for protocol in (results.cfg or {}).get("protocols", {})
            for variant in results.variants(protocol)]
    return list(dict.fromkeys(jobs + [(run.protocol, run.variant) for run in results.runs]))


def _seconds(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.1f}"


def cost_cells(cost: Cost) -> dict[str, Cell]:
    """epoch, run, rate, memory, kind and device cells of one job's cost (mean ± SD over seeds)."""
    def cell(estimate: Estimate, decimals: int) -> Cell:
        return ranked(fmt_mean_sd(estimate.mean, estimate.sd, decimals), estimate.mean, decimals)

    return {"epoch": cell(cost.seconds_per_epoch, 1), "run": cell(cost.wall_seconds, 0),
            "rate": cell(cost.images_per_second, 1), "memory": cell(cost.peak_memory_mb, 0),
            "kind": Cell("; ".join(MEMORY_KINDS.get(k, k) for k in cost.memory_kinds)),
            "device": Cell("; ".join(cost.devices))}


def cost_section(ctx: Context) -> tuple[Section, list[dict]]:
    """Training cost per job from the manifests' cost blocks (mean ± SD over seeds)."""
    results = ctx.results
    columns = [Column("protocol", "Protocol", align="l"), Column("model", "Model", align="l"),
               Column("init", "Init", align="l"), Column("epoch", "s/epoch", "Training", "min"),
               Column("run", "s/run", "Training", "min"), Column("rate", "images/s", "Training", "max"),
               Column("memory", "peak memory (MB)", "Training", "min"), Column("kind", "memory measured", align="l"),
               Column("device", "device", align="l"), Column("runs", "runs")]
    rows, records, started = [], [], set()
    for protocol, variant in cost_jobs(results):
        cost = ctx.costs.get((protocol, variant))
        row = {"protocol": Cell("" if protocol in started else protocol), "model": Cell(results.label(variant)),
               "init": Cell(results.init(variant)),
               "runs": Cell(f"{cost.n_runs if cost else 0}/{ctx.seeds_expected(protocol, variant)}")}
        started.add(protocol)
        if cost:
            row.update(cost_cells(cost))
            for metric, unit, estimate in (("seconds_per_epoch", "s", cost.seconds_per_epoch),
                                           ("wall_seconds", "s", cost.wall_seconds),
                                           ("images_per_second", "1/s", cost.images_per_second),
                                           ("peak_memory_mb", "MB", cost.peak_memory_mb)):
                records.append(table_record(ctx, table="3", protocol=protocol, model=results.base_model(variant),
                                       variant=variant, init=results.init(variant), aggregation="training_cost",
                                       metric=metric, unit=unit, ours_mean=fmt(estimate.mean, 4),
                                       ours_sd=fmt(estimate.sd, 4), n_seeds=estimate.n,
                                       seeds_expected=ctx.seeds_expected(protocol, variant)))
        rows.append(row)
    epochs = sorted({e for cost in ctx.costs.values() for e in cost.epochs})
    notes = [
        "Measured by segbench train (manifest.json 'cost'): s/epoch and images/s over the training epochs, s/run = "
        "wall time of the whole job (data loading, validation and checkpoints included); peak memory as the "
        "'memory measured' column says (GPU: torch's maximum allocated, CPU: the process's peak resident set). "
        "Mean ± SD over seeds; epochs per run: " + (", ".join(map(str, epochs)) or "none recorded") + ".",
        "Lowest time and memory, highest images/s in bold within each protocol; times compare only on one device.",
    ]
    missing = [f"{results.label(v)} ({p} protocol): no cost recorded." for p, v in cost_jobs(results)
               if (p, v) not in ctx.costs]
    if missing:
        notes.append(f"{len(missing)} jobs have no measured cost (missing or older manifests): " +
                     " ".join(missing))
    return Section("Training cost per job, measured (not in the paper)", "table3-cost", columns, rows, "protocol",
                   notes), records


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
    image_columns = per_image_columns(lead, False)
    ablation_model = cfg.get("ablation", {}).get("model", REFERENCE_MODEL)
    pooled_rows, image_rows, records, expected, image_summaries = [], [], [], [], []
    for dataset in datasets:
        table = 4 if dataset in ("kvasir", "clinicdb") else 5
        run_protocol = protocol if dataset in tested else None
        group_started = False
        for index, (depth, ds, variant) in enumerate(cells):
            planned = run_protocol is not None and variant is not None
            label = f"{model_label(ablation_model)} {depth_label(depth)} {'with' if ds else 'without'} deep supervision"
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
                    records.append(table_record(
                        ctx, table=str(table), dataset=dataset, protocol=run_protocol or "", model=REFERENCE_MODEL,
                        variant=variant if planned else "", init=ctx.results.init(variant) if planned else "",
                        encoder_depth=depth, deep_supervision=str(ds).lower(),
                        aggregation="pooled", metric=metric, unit="%",
                        paper=paper_row["value_text"] if paper_row else "", ours_mean=fmt(mean, 4),
                        ours_sd=fmt(sd, 4), n_seeds=estimate.n if planned else "",
                        seeds_expected=ctx.seeds_expected(run_protocol, variant) if planned else "",
                        difference=fmt(difference, 4), n_images=summary.n_images if summary else ""))
            pooled_rows.append(pooled_row)
            if not planned:
                continue
            image_row = {**first, "dataset": Cell("" if group_started else dataset_label(dataset))}
            group_started = True
            if summary:
                fill_per_image(image_row, summary)
                image_summaries.append(summary)
            records += per_image_records(ctx, summary, table=str(table), dataset=dataset, protocol=run_protocol,
                                         model=ablation_model, variant=variant, init=ctx.results.init(variant),
                                         encoder_depth=depth, deep_supervision=str(ds).lower(),
                                         seeds_expected=ctx.seeds_expected(run_protocol, variant))
            image_row["seeds"] = _seeds_cell(ctx, summary.dice if summary else None, run_protocol, variant)
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
                pooled_columns, pooled_rows, "dataset", [_pooled_note(ctx)] + missing_notes(ctx, expected)),
        Section("Per-image metrics at original resolution (headline), with intervals", "table4-5-per-image",
                image_columns, image_rows, "dataset",
                [_per_image_note(ctx, False), boundary_note(ctx, image_summaries)]),
    ]
    if complexity_rows:
        sections.append(Section("Complexity of the ablation cells (not in the paper)", "table4-5-complexity",
                                complexity_columns, complexity_rows, "_all",
                                ["Counted as in Table 3; FPS on the device of Table 3."]))
    return BuiltTable("table4_5_ablation", "Tables 4-5: encoder depth × deep supervision (polyp test sets)",
                      sections, records)
