"""The paper's comparative claims (config/paper_claims.yaml), checked against its own tables and against ours.

A claim is a quoted sentence made checkable: a subject (a model, an encoder depth or deep supervision),
comparators, datasets, metrics, a direction (higher or lower is better) and a quantifier (``all``
comparisons must hold, or ``most``). It expands into comparisons, one per dataset x metric x
comparator (x the other ablation factor, which is held fixed).

* The paper's tables (config/paper_results.csv) support a comparison when the subject's printed value is
  strictly better. ``all``: supported when every comparison holds; ``most``: when more than half hold.
* Our results: a paired Wilcoxon test on the per-image counterpart of the metric (mIoU -> IoU, DSC -> Dice,
  Acc/Sen/Spe from each image's confusion counts), Holm-corrected over the claim's comparisons. A comparison
  is supported when p_Holm < 0.05 and both the mean per-image difference and the difference of the seed
  means of the pooled metric point the claimed way; contradicted when significant and both point the other
  way; otherwise, or when a model or dataset was not run, inconclusive. Parameters and FLOPs are exact
  counts (compared directly); FPS differences under 5% are inconclusive (timing noise).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import yaml

from segbench.report.analysis import PER_IMAGE_OF_POOLED, Summary, paired_test
from segbench.report.collect import Results
from segbench.report.paper import (
    ABLATION_ORDER, DATASET_LABELS, METRIC_LABELS, MODEL_LABELS, POOLED_METRICS, REFERENCE_MODEL, dataset_label,
    depth_key, depth_label, model_label,
)
from segbench.report.render import Cell, Column, Section, fmt_p, fmt_signed
from segbench.report.stats import holm
from segbench.report.tables import BuiltTable

ALPHA = 0.05
FPS_TOLERANCE = 0.05  # relative FPS differences below this are timing noise
FACTORS = ("model", "encoder_depth", "deep_supervision")
# profile keys of the Table 3 metrics, counted the paper's way
COMPLEXITY_METRICS = {"params": "params_paper", "flops": "macs_no_scan_g", "fps": "fps"}
REQUIRED = ("id", "section", "table", "quote", "subject", "comparators", "datasets", "metrics", "direction",
            "quantifier")
VERDICTS = ("supported", "contradicted", "inconclusive")
CSV_COLUMNS = ["id", "section", "table", "factor", "subject", "comparators", "datasets", "metrics", "direction",
               "quantifier", "quote", "paper_verdict", "paper_comparisons", "paper_holding", "paper_contradicting",
               "ours_verdict", "ours_comparisons", "ours_tested", "ours_supported", "ours_contradicted",
               "ours_min_p_holm", "run_name", "comparable_to_paper"]


class ClaimsError(ValueError):
    """config/paper_claims.yaml is malformed; the message names the claim."""


@dataclasses.dataclass(frozen=True)
class Claim:
    id: str
    section: str
    table: str  # "1", "2", "3" or "4-5"
    quote: str
    subject: str
    comparators: tuple[str, ...]
    datasets: tuple[str, ...]
    metrics: tuple[str, ...]
    direction: str  # higher or lower
    quantifier: str  # all or most
    factor: str = "model"
    across: tuple[str, ...] = ()  # the other ablation factor's values, each compared separately
    note: str = ""


def _entity_ok(factor: str, name: str) -> bool:
    if factor == "model":
        return name in MODEL_LABELS
    if factor == "encoder_depth":
        return name in {depth for depth, _ in ABLATION_ORDER}
    return name in ("true", "false")


def _text(value) -> str:
    """YAML reads true/false as booleans: the claims spell deep supervision as 'true' and 'false'."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def load_claims(path: str | Path) -> list[Claim]:
    path = Path(path)
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClaimsError(f"{path} does not exist; it ships with segbench (config/paper_claims.yaml)") from None
    if not isinstance(entries, list):
        raise ClaimsError(f"{path}: expected a list of claims, found {type(entries).__name__}")
    claims, ids = [], set()
    for index, entry in enumerate(entries):
        where = f"{path}: claim {index} ({entry.get('id', '?') if isinstance(entry, dict) else '?'})"
        known = {field.name for field in dataclasses.fields(Claim)}
        if not isinstance(entry, dict) or not set(REQUIRED) <= set(entry) or not set(entry) <= known:
            raise ClaimsError(f"{where}: expected the keys {', '.join(REQUIRED)} (optional: factor, across, note), "
                              f"found {sorted(entry) if isinstance(entry, dict) else entry!r}")
        claim = Claim(**{key: tuple(map(_text, value)) if isinstance(value, list) else _text(value)
                         for key, value in entry.items()})
        across_ok = {"model": set(), "encoder_depth": {"true", "false"},
                     "deep_supervision": {d for d, _ in ABLATION_ORDER}}.get(claim.factor)
        problems = [
            f"factor {claim.factor!r} (one of {', '.join(FACTORS)})" if claim.factor not in FACTORS else "",
            f"direction {claim.direction!r} (higher or lower)" if claim.direction not in ("higher", "lower") else "",
            f"quantifier {claim.quantifier!r} (all or most)" if claim.quantifier not in ("all", "most") else "",
            f"table {claim.table!r} (1, 2, 3 or 4-5)" if claim.table not in ("1", "2", "3", "4-5") else "",
            "an id used twice" if claim.id in ids else "",
            "an empty quote" if not claim.quote.strip() else "",
            "no comparators" if not claim.comparators else "",
        ]
        if claim.factor in FACTORS:
            problems += [f"the {claim.factor} {name!r}" for name in (claim.subject, *claim.comparators)
                         if not _entity_ok(claim.factor, name)]
            problems += [f"the held-fixed value {value!r}" for value in claim.across if value not in across_ok]
        problems += [f"dataset {d!r}" for d in claim.datasets if d not in DATASET_LABELS]
        problems += [f"metric {m!r}" for m in claim.metrics
                     if m not in (COMPLEXITY_METRICS if claim.table == "3" else POOLED_METRICS)]
        if claim.table != "3" and not claim.datasets:
            problems.append("no datasets")
        problems = [p for p in problems if p]
        if problems:
            raise ClaimsError(f"{where}: expected a checkable claim, found {'; '.join(problems)}")
        ids.add(claim.id)
        claims.append(claim)
    return claims


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The subject against one comparator on one dataset and metric, the other ablation factor at ``setting``."""

    dataset: str
    metric: str
    comparator: str
    setting: str = ""


def comparisons(claim: Claim) -> list[Comparison]:
    datasets = claim.datasets or ("",)
    settings = claim.across or ("",)
    return [Comparison(d, m, c, s) for d in datasets for m in claim.metrics for c in claim.comparators
            for s in settings]


def _entity_label(claim: Claim, name: str) -> str:
    if claim.factor == "model":
        return model_label(name)
    if claim.factor == "encoder_depth":
        return f"depth {depth_label(name)}"
    return "deep supervision" if name == "true" else "no deep supervision"


def _setting_label(claim: Claim, setting: str) -> str:
    if not setting:
        return ""
    if claim.factor == "encoder_depth":
        return "with deep supervision" if setting == "true" else "without deep supervision"
    return f"at depth {depth_label(setting)}"


def describe(claim: Claim, comparison: Comparison) -> str:
    where = f"{dataset_label(comparison.dataset)} " if comparison.dataset else ""
    setting = _setting_label(claim, comparison.setting)
    return (f"{where}{METRIC_LABELS[comparison.metric]}, {_entity_label(claim, claim.subject)} vs "
            f"{_entity_label(claim, comparison.comparator)}" + (f" {setting}" if setting else ""))


def statement(claim: Claim) -> str:
    others = ", ".join(_entity_label(claim, c) for c in claim.comparators)
    where = f" on {', '.join(map(dataset_label, claim.datasets))}" if claim.datasets else ""
    held = (f", {'with and without deep supervision' if claim.factor == 'encoder_depth' else 'at each encoder depth'}"
            if claim.across else "")
    return (f"{_entity_label(claim, claim.subject)} {'higher' if claim.direction == 'higher' else 'lower'} than "
            f"{others} in {', '.join(METRIC_LABELS[m] for m in claim.metrics)}{where}{held}; "
            f"{'every' if claim.quantifier == 'all' else 'most'} comparison{'s' if claim.quantifier == 'most' else ''} "
            f"must hold.")


# ---------------------------------------------------------------- the paper's own tables


def _ds(value: str) -> bool | None:
    return {"true": True, "false": False}.get(value)


def _paper_key(claim: Claim, comparison: Comparison, entity: str) -> tuple:
    if claim.table == "3":
        return (3, "", entity, "", None, comparison.metric)
    if claim.factor == "model":
        return (int(claim.table), comparison.dataset, entity, "", None, comparison.metric)
    table = 4 if comparison.dataset in ("kvasir", "clinicdb") else 5
    depth, ds = (entity, comparison.setting) if claim.factor == "encoder_depth" else (comparison.setting, entity)
    return (table, comparison.dataset, REFERENCE_MODEL, depth, _ds(ds), comparison.metric)


@dataclasses.dataclass(frozen=True)
class PaperCheck:
    comparison: Comparison
    subject: dict
    comparator: dict
    holds: bool


def _better(claim: Claim, subject: float, other: float) -> bool:
    return subject > other if claim.direction == "higher" else subject < other


def _aggregate(claim: Claim, n: int, n_supported: int, n_contradicted: int) -> str:
    if n == 0:
        return "inconclusive"
    if claim.quantifier == "all":
        if n_contradicted:
            return "contradicted"
        return "supported" if n_supported == n else "inconclusive"
    if n_supported > n / 2:
        return "supported"
    return "contradicted" if n_contradicted >= n / 2 else "inconclusive"


def check_paper(claim: Claim, paper: dict) -> tuple[str, list[PaperCheck]]:
    checks = []
    for comparison in comparisons(claim):
        subject = paper.get(_paper_key(claim, comparison, claim.subject))
        other = paper.get(_paper_key(claim, comparison, comparison.comparator))
        if subject and other:  # a model the paper does not list on a dataset is not part of its claim there
            checks.append(PaperCheck(comparison, subject, other, _better(claim, subject["value"], other["value"])))
    holding = sum(check.holds for check in checks)
    return _aggregate(claim, len(checks), holding, len(checks) - holding), checks


def contradicting_cells(claim: Claim, checks: list[PaperCheck]) -> list[str]:
    return [f"{describe(claim, c.comparison)}: {c.subject['value_text']} vs {c.comparator['value_text']}"
            for c in checks if not c.holds]


# ---------------------------------------------------------------- our results


@dataclasses.dataclass
class OurCheck:
    comparison: Comparison
    protocol: str = ""
    status: str = "inconclusive"  # supported, contradicted, inconclusive
    reason: str = ""  # why it could not be tested
    difference: float = math.nan  # subject minus comparator: mean per-image difference, or the counts' difference
    pooled_difference: float = math.nan  # difference of the seed means of the pooled metric
    p_value: float = math.nan
    p_holm: float = math.nan

    @property
    def tested(self) -> bool:
        return not self.reason


def _ablation_variants(results: Results) -> dict[tuple[str, str], str]:
    """(depth key, 'true'/'false') -> ablation variant, when the ablation varies VM-UNetV2."""
    cfg = results.cfg or {}
    if (cfg.get("ablation") or {}).get("model") != REFERENCE_MODEL:
        return {}
    return {(depth_key(spec["depths"]), str(bool(spec["deep_supervision"])).lower()): variant
            for variant, spec in results.ablation.items()}


def _our_variant(claim: Claim, results: Results, comparison: Comparison, entity: str) -> str | None:
    if claim.factor == "model":
        return entity if entity in results.main_variants else None
    depth, ds = (entity, comparison.setting) if claim.factor == "encoder_depth" else (comparison.setting, entity)
    return _ablation_variants(results).get((depth, ds))


def _protocols(claim: Claim, results: Results, dataset: str) -> list[str]:
    if claim.factor == "model":
        return [protocol for protocol, test_set in results.test_sets() if test_set == dataset]
    protocol = ((results.cfg or {}).get("ablation") or {}).get("protocol")
    return [protocol] if (protocol, dataset) in results.test_sets() else []


def _complexity_check(claim: Claim, results: Results, comparison: Comparison) -> OurCheck:
    check = OurCheck(comparison)
    key = COMPLEXITY_METRICS[comparison.metric]
    values = []
    for entity in (claim.subject, comparison.comparator):
        profile = results.profiles.get(entity) if entity in results.main_variants else None
        if profile is None or not isinstance(profile.get(key), (int, float)):
            check.reason = f"no complexity profile of {model_label(entity)}"
            return check
        values.append(float(profile[key]))
    subject, other = values
    check.difference = subject - other
    relative = abs(subject - other) / max(abs(subject), abs(other), 1e-12)
    if subject == other or (comparison.metric == "fps" and relative < FPS_TOLERANCE):
        check.status = "inconclusive"
    else:
        check.status = "supported" if _better(claim, subject, other) else "contradicted"
    return check


def check_ours(claim: Claim, results: Results,
               summaries: dict[tuple[str, str, str], Summary]) -> tuple[str, list[OurCheck]]:
    checks: list[OurCheck] = []
    for comparison in comparisons(claim):
        if claim.table == "3":
            checks.append(_complexity_check(claim, results, comparison))
            continue
        subject = _our_variant(claim, results, comparison, claim.subject)
        other = _our_variant(claim, results, comparison, comparison.comparator)
        protocols = _protocols(claim, results, comparison.dataset)
        if results.cfg is None:
            checks.append(OurCheck(comparison, reason="no results"))
            continue
        if subject is None or other is None:
            missing = claim.subject if subject is None else comparison.comparator
            checks.append(OurCheck(comparison, reason=f"{_entity_label(claim, missing)} was not run"))
            continue
        if not protocols:
            checks.append(OurCheck(comparison, reason=f"{dataset_label(comparison.dataset)} is not a test set here"))
            continue
        for protocol in protocols:
            check = OurCheck(comparison, protocol)
            first, second = ((protocol, comparison.dataset, v) for v in (subject, other))
            result = paired_test(summaries, first, second, PER_IMAGE_OF_POOLED[comparison.metric])
            if result is None or math.isnan(result.p_value):
                check.reason = "no paired per-image scores"
            else:
                check.difference, check.p_value = result.mean_difference, result.p_value
                check.pooled_difference = (summaries[first].pooled[comparison.metric].mean
                                           - summaries[second].pooled[comparison.metric].mean)
            checks.append(check)
    tested = [c for c in checks if c.tested and not math.isnan(c.p_value)]
    for check, p in zip(tested, holm([c.p_value for c in tested])):
        check.p_holm = p
        sign = 1.0 if claim.direction == "higher" else -1.0
        claimed_way = sign * check.difference > 0 and sign * check.pooled_difference > 0
        other_way = sign * check.difference < 0 and sign * check.pooled_difference < 0
        significant = p < ALPHA
        check.status = ("supported" if significant and claimed_way else
                        "contradicted" if significant and other_way else "inconclusive")
    supported = sum(c.status == "supported" for c in checks)
    contradicted = sum(c.status == "contradicted" for c in checks)
    return _aggregate(claim, len(checks), supported, contradicted), checks


# ---------------------------------------------------------------- the claims table


@dataclasses.dataclass
class ClaimResult:
    claim: Claim
    paper_verdict: str
    paper_checks: list[PaperCheck]
    ours_verdict: str
    our_checks: list[OurCheck]


def evaluate_claims(claims: list[Claim], paper: dict, results: Results, summaries: dict) -> list[ClaimResult]:
    out = []
    for claim in claims:
        paper_verdict, paper_checks = check_paper(claim, paper)
        ours_verdict, our_checks = check_ours(claim, results, summaries)
        out.append(ClaimResult(claim, paper_verdict, paper_checks, ours_verdict, our_checks))
    return out


def verdict_counts(evaluated: list[ClaimResult]) -> dict:
    return {side: {verdict: sum(getattr(r, f"{side}_verdict") == verdict for r in evaluated) for verdict in VERDICTS}
            for side in ("paper", "ours")}


def _summary_section(evaluated: list[ClaimResult]) -> Section:
    columns = [Column("id", "Claim", align="l"), Column("section", "Section", align="l"),
               Column("table", "Table", align="l"), Column("paper", "paper's own tables", align="l"),
               Column("against", "cells against"), Column("ours", "our results", align="l"),
               Column("tested", "tested"), Column("supported", "supported"), Column("contradicted", "contradicted")]
    rows = []
    for r in evaluated:
        tested = [c for c in r.our_checks if c.tested]
        rows.append({"id": Cell(r.claim.id), "section": Cell(r.claim.section), "table": Cell(r.claim.table),
                     "paper": Cell(r.paper_verdict),
                     "against": Cell(f"{sum(not c.holds for c in r.paper_checks)}/{len(r.paper_checks)}"),
                     "ours": Cell(r.ours_verdict), "tested": Cell(f"{len(tested)}/{len(r.our_checks)}"),
                     "supported": Cell(str(sum(c.status == "supported" for c in r.our_checks))),
                     "contradicted": Cell(str(sum(c.status == "contradicted" for c in r.our_checks)))})
    notes = [
        "paper's own tables: does config/paper_results.csv support the sentence (a comparison holds when the "
        "subject's printed value is strictly better; 'all' claims need every comparison, 'most' claims more than "
        "half); cells against: comparisons that do not hold / all comparisons.",
        f"our results: paired Wilcoxon tests on per-image scores (mIoU: IoU, DSC: Dice, Acc/Sen/Spe from each "
        f"image's confusion counts), Holm over the claim's comparisons; a comparison counts when p_Holm < {ALPHA} and "
        f"the mean per-image difference and the seed means of the pooled metric both point one way. Inconclusive "
        f"when a model or dataset was not run or the test is not significant. Params and FLOPs are compared as exact "
        f"counts, FPS differences under {FPS_TOLERANCE:.0%} count as timing noise.",
    ]
    return Section("Verdicts", "claims-verdicts", columns, rows, "_all", notes)


def _claim_section(result: ClaimResult) -> Section:
    claim = result.claim
    columns = [Column("comparison", "Comparison", align="l"), Column("protocol", "Protocol", align="l"),
               Column("difference", "Δ per image" if claim.table != "3" else "Δ"),
               Column("pooled", "Δ pooled (seed means)"), Column("p_holm", "p (Holm)"),
               Column("status", "status", align="l")]
    rows = []
    for check in result.our_checks:
        if not check.tested:
            continue
        scale = 100.0 if claim.table != "3" else 1.0
        rows.append({"comparison": Cell(describe(claim, check.comparison)), "protocol": Cell(check.protocol),
                     "difference": Cell(fmt_signed(scale * check.difference)),
                     "pooled": Cell(fmt_signed(100 * check.pooled_difference)), "p_holm": Cell(fmt_p(check.p_holm)),
                     "status": Cell(check.status)})
    against = contradicting_cells(claim, result.paper_checks)
    untested = list(dict.fromkeys(c.reason for c in result.our_checks if not c.tested))
    notes = [f"Quote (section {claim.section}): “{claim.quote}”", f"Checked as: {statement(claim)}"]
    if claim.note:
        notes.append(f"Note: {claim.note}")
    notes.append(f"Paper's own tables: {result.paper_verdict} ({len(result.paper_checks) - len(against)} of "
                 f"{len(result.paper_checks)} comparisons hold)" + (". Against it: " + "; ".join(against) + "."
                                                                    if against else "."))
    notes.append(f"Our results: {result.ours_verdict}" + (f"; not tested: {'; '.join(untested)}." if untested else "."))
    if not rows:
        notes.append("No comparison of this claim could be tested on our results.")
    return Section(f"{claim.id}", f"claims-{claim.id.replace('_', '-')}", columns, rows, "_all", notes)


def claims_records(evaluated: list[ClaimResult], results: Results) -> list[dict]:
    cfg = results.cfg or {}
    records = []
    for r in evaluated:
        claim = r.claim
        p_values = [c.p_holm for c in r.our_checks if not math.isnan(c.p_holm)]
        records.append({
            "id": claim.id, "section": claim.section, "table": claim.table, "factor": claim.factor,
            "subject": claim.subject, "comparators": ";".join(claim.comparators), "datasets": ";".join(claim.datasets),
            "metrics": ";".join(claim.metrics), "direction": claim.direction, "quantifier": claim.quantifier,
            "quote": claim.quote, "paper_verdict": r.paper_verdict, "paper_comparisons": len(r.paper_checks),
            "paper_holding": sum(c.holds for c in r.paper_checks),
            "paper_contradicting": "; ".join(contradicting_cells(claim, r.paper_checks)),
            "ours_verdict": r.ours_verdict, "ours_comparisons": len(r.our_checks),
            "ours_tested": sum(c.tested for c in r.our_checks),
            "ours_supported": sum(c.status == "supported" for c in r.our_checks),
            "ours_contradicted": sum(c.status == "contradicted" for c in r.our_checks),
            "ours_min_p_holm": f"{min(p_values):.6g}" if p_values else "",
            "run_name": cfg.get("run_name", ""), "comparable_to_paper": results.comparable_to_paper})
    return records


def claims_table(evaluated: list[ClaimResult], results: Results) -> BuiltTable:
    sections = [_summary_section(evaluated)] + [_claim_section(r) for r in evaluated]
    return BuiltTable("claims", "Claims of the paper's text (sections 3.3 and 3.4), checked", sections,
                      claims_records(evaluated, results), CSV_COLUMNS)
