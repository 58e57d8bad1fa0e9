"""The controls table: does the selective scan, the pretraining or the VM encoder make the difference?

One section per protocol in the config's ``from_scratch``: VM-UNetV2, its no-scan control and UNetV2
(same decoder family, PVTv2 encoder), each pretrained and from scratch; paired Wilcoxon tests on
per-image Dice (Holm over every comparison of this table) and one sentence per comparison, written
from the numbers with conservative wording.
"""
from __future__ import annotations

import dataclasses
import math

from segbench.config import scratch_variant
from segbench.report.analysis import Comparison, compare_pairs
from segbench.report.paper import dataset_label, model_label
from segbench.report.render import Cell, Column, Section, fmt, fmt_interval, fmt_mean_sd, fmt_p, fmt_signed, ranked
from segbench.report.tables import BuiltTable, Context, cost_cells

ALPHA = 0.05
SCAN, NO_SCAN, PVT = "vmunetv2", "vmunetv2_noscan", "unetv2"
CONTROL_MODELS = [SCAN, NO_SCAN, PVT]
CONTROL_VARIANTS = [variant for model in CONTROL_MODELS for variant in (model, scratch_variant(model))]
CSV_COLUMNS = ["protocol", "test_set", "comparison", "first", "second", "first_init", "second_init", "n_images",
               "mean_difference", "median_difference", "rank_biserial", "wilcoxon_p", "p_holm",
               "pooled_dsc_difference", "n_seeds_first", "n_seeds_second", "verdict", "sentence", "run_name",
               "comparable_to_paper"]


@dataclasses.dataclass(frozen=True)
class Contrast:
    """first minus second; ``claim`` is what a positive, significant difference would support."""

    name: str
    first: str
    second: str
    inits: tuple[str, str]
    claim: str
    counterclaim: str


def contrasts() -> list[Contrast]:
    pretrained, scratch = "pretrained", "scratch"
    out = [Contrast(f"scan_vs_noscan_{init}", first, second, (init, init),
                    f"the selective scan helps ({'pretrained' if init == pretrained else 'from scratch'})",
                    "the selective scan hurts")
           for init, first, second in ((pretrained, SCAN, NO_SCAN),
                                       (scratch, scratch_variant(SCAN), scratch_variant(NO_SCAN)))]
    out += [Contrast(f"pretrained_vs_scratch_{model}", model, scratch_variant(model), (pretrained, scratch),
                     f"ImageNet pretraining helps {model_label(model)}", f"pretraining hurts {model_label(model)}")
            for model in CONTROL_MODELS]
    out += [Contrast(f"vmunetv2_vs_unetv2_{init}", first, second, (init, init),
                     f"VM-UNetV2 beats UNetV2 ({'both pretrained' if init == pretrained else 'both from scratch'})",
                     "UNetV2 beats VM-UNetV2")
            for init, first, second in ((pretrained, SCAN, PVT),
                                        (scratch, scratch_variant(SCAN), scratch_variant(PVT)))]
    return out


@dataclasses.dataclass
class Outcome:
    protocol: str
    test_set: str
    contrast: Contrast
    comparison: Comparison | None
    pooled_difference: float
    seeds: tuple[int, int]
    verdict: str  # supported, contradicted, no evidence, not tested
    sentence: str


def _untestable(ctx: Context, protocol: str, test_set: str, contrast: Contrast) -> str | None:
    """Why a contrast cannot be tested here (a run missing or started the other way), or None."""
    results = ctx.results
    for variant, init in zip((contrast.first, contrast.second), contrast.inits):
        if not results.planned(protocol, variant):
            return f"{results.label(variant)} is not planned on the {protocol} protocol"
        if results.init(variant) != init:
            return f"{results.label(variant)} starts from {results.init(variant)} weights, not {init}"
        summary = ctx.summaries.get((protocol, test_set, variant))
        if summary is None or summary.seed_averaged.empty:
            return f"{results.label(variant)} has no per-image results on {dataset_label(test_set)}"
    return None


def _sentence(ctx: Context, outcome: Outcome) -> tuple[str, str]:
    results, contrast, comparison = ctx.results, outcome.contrast, outcome.comparison
    first, second = results.label(contrast.first), results.label(contrast.second)
    result = comparison.result
    seeds = min(outcome.seeds)
    numbers = (f"{first} − {second} = {fmt_signed(100 * result.mean_difference)} points of per-image Dice on "
               f"{result.n_pairs} images (median {fmt_signed(100 * result.median_difference)}; seed means of pooled "
               f"DSC {fmt_signed(100 * outcome.pooled_difference)})")
    caveat = f"{seeds} seed{'s' if seeds != 1 else ''} per model" + (
        ", so run-to-run variation is not measured" if seeds < 2 else "")
    if comparison.p_holm < ALPHA and result.mean_difference > 0 and result.median_difference >= 0:
        return "supported", (f"Evidence that {contrast.claim} on this test set: {numbers}, p_Holm = "
                             f"{fmt_p(comparison.p_holm)}; {caveat}.")
    if comparison.p_holm < ALPHA and result.mean_difference < 0 and result.median_difference <= 0:
        return "contradicted", (f"Evidence against it: {contrast.counterclaim} on this test set: {numbers}, p_Holm = "
                                f"{fmt_p(comparison.p_holm)}; {caveat}.")
    return "no evidence", (f"No evidence that {contrast.claim}: {numbers}, not significant after Holm correction "
                           f"(p_Holm = {fmt_p(comparison.p_holm)}); {caveat}.")


def evaluate_controls(ctx: Context) -> list[Outcome]:
    results = ctx.results
    cfg = results.cfg or {}
    protocols = [p for p in cfg.get("from_scratch", []) if p in cfg.get("protocols", {})]
    pairs, reasons = {}, {}
    for protocol in protocols:
        for test_set in results.cfg["protocols"][protocol]["test"]:
            for contrast in contrasts():
                key = (protocol, test_set, contrast.name)
                reason = _untestable(ctx, protocol, test_set, contrast)
                if reason:
                    reasons[key] = reason
                else:
                    pairs[key] = ((protocol, test_set, contrast.first), (protocol, test_set, contrast.second))
    comparisons = compare_pairs(ctx.summaries, pairs)
    outcomes = []
    for protocol in protocols:
        for test_set in results.cfg["protocols"][protocol]["test"]:
            for contrast in contrasts():
                key = (protocol, test_set, contrast.name)
                first, second = (ctx.summaries.get((protocol, test_set, v)) for v in (contrast.first, contrast.second))
                pooled = (first.pooled["dsc"].mean - second.pooled["dsc"].mean) if first and second else math.nan
                seeds = (first.dice.n if first else 0, second.dice.n if second else 0)
                outcome = Outcome(protocol, test_set, contrast, comparisons.get(key), pooled, seeds, "not tested", "")
                if outcome.comparison is None:
                    outcome.sentence = (f"Not tested: {reasons.get(key, 'no images are paired')} "
                                        f"({results.label(contrast.first)} vs {results.label(contrast.second)}).")
                else:
                    outcome.verdict, outcome.sentence = _sentence(ctx, outcome)
                outcomes.append(outcome)
    return outcomes


def _accuracy_section(ctx: Context, protocol: str) -> Section:
    results = ctx.results
    columns = [Column("test_set", "Test set", align="l"), Column("model", "Model", align="l"),
               Column("init", "Init", align="l"), Column("pooled", "pooled DSC (%)", best="max"),
               Column("dice", "per-image Dice (%)", best="max"), Column("ci", "95% CI"), Column("seeds", "seeds")]
    rows, missing = [], []
    for test_set in results.cfg["protocols"][protocol]["test"]:
        for index, variant in enumerate(CONTROL_VARIANTS):
            summary = ctx.summaries.get((protocol, test_set, variant))
            planned = results.planned(protocol, variant)
            row = {"test_set": Cell(dataset_label(test_set) if index == 0 else ""),
                   "model": Cell(results.label(variant)), "init": Cell(results.init(variant) if planned else ""),
                   "seeds": Cell(f"{summary.dice.n if summary else 0}/{ctx.seeds_expected(protocol, variant)}")}
            if summary:
                pooled, dice = summary.pooled["dsc"], summary.dice
                row.update(pooled=ranked(fmt_mean_sd(100 * pooled.mean, 100 * pooled.sd), 100 * pooled.mean),
                           dice=ranked(fmt_mean_sd(100 * dice.mean, 100 * dice.sd), 100 * dice.mean),
                           ci=Cell(fmt_interval(100 * summary.dice_ci[0], 100 * summary.dice_ci[1])))
            else:
                missing.append(f"{results.label(variant)} on {dataset_label(test_set)}: "
                               + ("no results yet" if planned else "not planned (not in the config's models with "
                                                                   "pretrained weights)"))
            rows.append(row)
    notes = ["Mean ± SD over seeds; 95% CI: bootstrap over images of the seed-averaged per-image Dice. Rows whose "
             "runs are missing stay in the table with empty cells."]
    if missing:
        notes.append("Missing rows: " + "; ".join(missing) + ".")
    return Section(f"{protocol} protocol: accuracy", f"controls-{protocol}-accuracy", columns, rows, "test_set", notes)


def _cost_section(ctx: Context, protocol: str) -> Section:
    results = ctx.results
    columns = [Column("model", "Model", align="l"), Column("init", "Init", align="l"),
               Column("params", "Params (M, all)", best="min"), Column("flops", "FLOPs (G, with scan)", best="min"),
               Column("fps", "FPS", best="max"), Column("epoch", "s/epoch", best="min"),
               Column("run", "s/run", best="min"), Column("memory", "peak memory (MB)", best="min")]
    rows = []
    for variant in CONTROL_VARIANTS:
        profile, cost = results.profile(variant), ctx.costs.get((protocol, variant))
        row = {"model": Cell(results.label(variant)),
               "init": Cell(results.init(variant) if results.planned(protocol, variant) else "")}
        if profile:
            row.update(params=ranked(fmt(profile["params_total"] / 1e6), profile["params_total"] / 1e6),
                       flops=ranked(fmt(float(profile["flops_g"])), float(profile["flops_g"])),
                       fps=ranked(fmt(float(profile["fps"])), float(profile["fps"])))
        if cost:
            cells = cost_cells(cost)
            row.update(epoch=cells["epoch"], run=cells["run"], memory=cells["memory"])
        rows.append(row)
    devices = sorted({d for v in CONTROL_VARIANTS if (protocol, v) in ctx.costs
                      for d in ctx.costs[(protocol, v)].devices})
    notes = ["Params and FLOPs count every parameter and the scan (fvcore), from results/profile/ (a scratch run has "
             "its model's architecture); FPS as in Table 3. Training cost as in Table 3's cost section; devices: "
             + ("; ".join(devices) or "none recorded") + "."]
    return Section(f"{protocol} protocol: size and cost", f"controls-{protocol}-cost", columns, rows, "_all", notes)


def _comparison_section(ctx: Context, protocol: str, outcomes: list[Outcome]) -> Section:
    results = ctx.results
    columns = [Column("test_set", "Test set", align="l"), Column("comparison", "first − second", align="l"),
               Column("mean", "mean ΔDice (points)"), Column("median", "median ΔDice"), Column("r", "r"),
               Column("p", "p"), Column("p_holm", "p (Holm)"), Column("pooled", "Δ pooled DSC"),
               Column("verdict", "verdict", align="l")]
    rows, started = [], set()
    for outcome in (o for o in outcomes if o.protocol == protocol):
        first, second = results.label(outcome.contrast.first), results.label(outcome.contrast.second)
        row = {"test_set": Cell("" if outcome.test_set in started else dataset_label(outcome.test_set)),
               "comparison": Cell(f"{first} − {second}"), "verdict": Cell(outcome.verdict)}
        started.add(outcome.test_set)
        if outcome.comparison:
            result = outcome.comparison.result
            row.update(mean=Cell(fmt_signed(100 * result.mean_difference)),
                       median=Cell(fmt_signed(100 * result.median_difference)), r=Cell(fmt(result.rank_biserial)),
                       p=Cell(fmt_p(result.p_value)), p_holm=Cell(fmt_p(outcome.comparison.p_holm)),
                       pooled=Cell(fmt_signed(100 * outcome.pooled_difference)))
        rows.append(row)
    n_tests = sum(1 for o in outcomes if o.comparison)
    notes = [f"Two-sided paired Wilcoxon signed-rank tests on per-image Dice (images paired by id, each model's score "
             f"averaged over its seeds), Holm-corrected over all {n_tests} tests of this table (every protocol and "
             f"test set); r: matched-pairs rank-biserial correlation (positive: first better); ΔDice and Δ pooled "
             f"DSC in percentage points. A verdict needs p (Holm) < {ALPHA} and mean and median differences of one "
             f"sign; otherwise: no evidence."]
    notes += [f"{dataset_label(o.test_set)}: {o.sentence}" for o in outcomes if o.protocol == protocol]
    return Section(f"{protocol} protocol: paired comparisons, and what they support", f"controls-{protocol}-tests",
                   columns, rows, "test_set", notes)


def controls_table(ctx: Context, outcomes: list[Outcome]) -> BuiltTable:
    results = ctx.results
    protocols = list(dict.fromkeys(o.protocol for o in outcomes))
    sections = []
    for protocol in protocols:
        sections += [_accuracy_section(ctx, protocol), _cost_section(ctx, protocol),
                     _comparison_section(ctx, protocol, outcomes)]
    if not sections:
        reason = ("no results were found" if results.cfg is None else
                  "the config's from_scratch lists no protocol, so no model is trained from scratch")
        sections.append(Section("No controls in this run", "controls-none", [Column("note", "Note", align="l")],
                                [{"note": Cell(f"Nothing to compare: {reason}.")}], "_all", []))
    return BuiltTable("controls", "Controls: selective scan, pretraining and encoder (VM-UNetV2, no-scan, UNetV2)",
                      sections, controls_records(ctx, outcomes), CSV_COLUMNS)


def controls_records(ctx: Context, outcomes: list[Outcome]) -> list[dict]:
    cfg = ctx.results.cfg or {}
    records = []
    for o in outcomes:
        result = o.comparison.result if o.comparison else None
        records.append({
            "protocol": o.protocol, "test_set": o.test_set, "comparison": o.contrast.name, "first": o.contrast.first,
            "second": o.contrast.second, "first_init": o.contrast.inits[0], "second_init": o.contrast.inits[1],
            "n_images": result.n_pairs if result else "",
            "mean_difference": fmt(100 * result.mean_difference, 4) if result else "",
            "median_difference": fmt(100 * result.median_difference, 4) if result else "",
            "rank_biserial": fmt(result.rank_biserial, 4) if result else "",
            "wilcoxon_p": f"{result.p_value:.6g}" if result else "",
            "p_holm": f"{o.comparison.p_holm:.6g}" if o.comparison else "",
            "pooled_dsc_difference": fmt(100 * o.pooled_difference, 4), "n_seeds_first": o.seeds[0],
            "n_seeds_second": o.seeds[1], "verdict": o.verdict, "sentence": o.sentence,
            "run_name": cfg.get("run_name", ""), "comparable_to_paper": ctx.results.comparable_to_paper})
    return records
