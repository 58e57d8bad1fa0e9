"""reports/README.md: index, protocol, deviations, environment, errata candidates, how to cite."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import yaml

from segbench.report.collect import Results
from segbench.report.errata import Finding
from segbench.report.files import ReportFile
from segbench.report.render import NOT_COMPARABLE_BANNER, Section, section_markdown
from segbench.report.tables import BuiltTable

DEVIATIONS_PATH = Path(__file__).with_name("deviations.yaml")
CITATION_PATH = Path(__file__).with_name("citation.bib")
_DEVIATION_KEYS = {"topic", "paper", "ours", "reason"}


class DeviationsError(ValueError):
    """segbench/report/deviations.yaml is malformed."""


def load_deviations(path: Path = DEVIATIONS_PATH) -> list[dict]:
    entries = yaml.safe_load(path.read_text())
    if not isinstance(entries, list):
        raise DeviationsError(f"{path}: expected a list of entries, found {type(entries).__name__}")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not _DEVIATION_KEYS <= set(entry):
            raise DeviationsError(f"{path}: entry {index} needs the keys {', '.join(sorted(_DEVIATION_KEYS))}, "
                                  f"found {entry!r}")
        if entry.get("status", "changed") not in ("changed", "kept"):
            raise DeviationsError(f"{path}: entry {index} ({entry['topic']}): status must be changed or kept")
    return entries


def _config_value(cfg: dict | None, dotted: str):
    value = cfg
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _inline(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=True, width=1 << 20)
    return text.strip().removesuffix("...").strip()


def _protocol_lines(cfg: dict | None) -> list[str]:
    if not cfg:
        return ["No run config was found (results/run_config.yaml), so no protocol can be reported."]
    train, data = cfg.get("train", {}), cfg.get("data", {})
    lines = [
        f"- Run `{cfg.get('run_name', '?')}`; comparable to the paper: "
        f"**{'yes' if cfg.get('comparable_to_paper', True) else 'no'}**; "
        f"data: {data.get('source', '?')}; models: {', '.join(cfg.get('models', []))}; seeds: "
        f"{', '.join(map(str, cfg.get('seeds', [])))}.",
        "- Protocols (training set -> test sets): " + "; ".join(
            f"{name}: {spec['train']} -> {', '.join(spec['test'])}"
            for name, spec in cfg.get("protocols", {}).items()) + ".",
        f"- Input {cfg.get('image_size', '?')}×{cfg.get('image_size', '?')}; {train.get('epochs', '?')} epochs, batch "
        f"{train.get('batch_size', '?')}; AdamW lr {train.get('lr', '?')}, weight decay "
        f"{train.get('weight_decay', '?')}; "
        f"CosineAnnealingLR(T_max={train.get('t_max', '?')}, eta_min={train.get('eta_min', '?')}) per epoch; "
        f"loss {train.get('bce_weight', '?')}·BCE + {train.get('dice_weight', '?')}·Dice; flips "
        f"{train.get('hflip', '?')}/{train.get('vflip', '?')}, rotation {train.get('rotate', '?')} "
        f"({train.get('rotation_angle', '?')}); checkpoint: {train.get('checkpoint', '?')}; "
        f"threshold {(cfg.get('evaluate') or {}).get('threshold', '?')}.",
        f"- Validation split: {data.get('val_fraction', '?')} of each training set (split seed "
        f"{data.get('split_seed', '?')}); pretrained weights: "
        f"{_inline(cfg.get('pretrained')) if cfg.get('pretrained') else 'none (trained from scratch)'}; "
        f"selective-scan backend: {cfg.get('scan_backend', '?')}.",
        "- Also trained from scratch (variants `<model>_scratch`, same seeds) on the protocols "
        + (", ".join(cfg["from_scratch"]) + ": every model listed under `pretrained:`; the plain model name starts "
           "from the pretrained weights." if cfg.get("from_scratch") else "of `from_scratch`: none in this run."),
    ]
    ablation = cfg.get("ablation") or {}
    if ablation.get("depths"):
        seeds = ablation.get("seeds") or cfg.get("seeds", [])
        lines.append(f"- Ablation: {ablation.get('model')} on the {ablation.get('protocol')} protocol, encoder depths "
                     f"{', '.join(_inline(d) for d in ablation['depths'])} × deep supervision "
                     f"{', '.join(map(str, ablation.get('deep_supervision', [])))}; seeds "
                     f"{', '.join(map(str, seeds))}.")
    lines.append("- The complete resolved configuration is `results/run_config.yaml` and, per run, `manifest.json`.")
    return lines


def _environment_lines(results: Results) -> list[str]:
    if not results.manifests and not results.profiles:
        return ["No run manifests were found."]
    lines = []
    devices = Counter(str(m.get("device", "unknown")) for m in results.manifests)
    if devices:
        lines.append("- Training devices: " + "; ".join(f"{d} ({n} runs)" for d, n in sorted(devices.items())) + ".")
    profile_devices = sorted({str(p.get("device", "unknown")) for p in results.profiles.values()})
    if profile_devices:
        lines.append("- Profiling devices (Table 3): " + "; ".join(profile_devices) + ".")
    for key, label in (("git_sha", "Code versions (git)"), ("scan_backend", "Selective-scan backends"),
                       ("selected_checkpoint", "Checkpoints used")):
        values = sorted({str(m[key]) for m in results.manifests if key in m})
        if values:
            lines.append(f"- {label}: {', '.join(values)}.")
    determinism = sorted({_inline(m["determinism"]) for m in results.manifests
                          if isinstance(m.get("determinism"), dict)})
    if determinism:
        lines.append(f"- Determinism settings: {'; '.join(determinism)}.")
    versions: dict[str, set[str]] = {}
    for manifest in results.manifests:
        for package, version in (manifest.get("versions") or {}).items():
            versions.setdefault(str(package), set()).add(str(version))
    if versions:
        lines += ["", "| package | version(s) |", "|---|---|"]
        lines += [f"| {package} | {', '.join(sorted(found))} |" for package, found in sorted(versions.items())]
    return lines


def _deviation_lines(cfg: dict | None) -> list[str]:
    lines = []
    for number, entry in enumerate(load_deviations(), start=1):
        status = "kept on purpose" if entry.get("status") == "kept" else "changed"
        line = (f"{number}. **{entry['topic']}** ({status}). Paper: {entry['paper']} Ours: {entry['ours']} "
                f"Why: {entry['reason']}")
        if entry.get("config"):
            value = _config_value(cfg, entry["config"])
            this_run = f" = `{_inline(value)}` in this run." if value is not None else "."
            line += f" Config: `{entry['config']}`{this_run}"
        lines.append(line)
    return lines


def _errata_lines(findings: list[Finding]) -> list[str]:
    if not findings:
        return ["No inconsistencies were found."]
    lines = []
    for check in dict.fromkeys(f.check for f in findings):
        lines += ["", f"**{check}**", ""]
        lines += [f"- {f.text}" for f in findings if f.check == check]
    return lines


def _cost_lines(results: Results, cost: Section, total_seconds: float, n_runs: int) -> list[str]:
    if not n_runs:
        return ["No run manifest records its cost yet (manifest.json 'cost', written by segbench train)."]
    lines = [f"Measured, not estimated: {n_runs} runs recorded their cost and took {total_seconds / 3600:.2f} hours "
             f"of wall time in total. Use these times per job to plan a run of this config on the same devices.", ""]
    return lines + section_markdown(cost).splitlines()[2:] + [""]


def render_readme(results: Results, tables: list[BuiltTable], files: list[ReportFile], findings: list[Finding],
                  notes: list[str], cost: Section, total_seconds: float, n_cost_runs: int, claims: Section) -> str:
    cfg = results.cfg
    out = ["# segbench report", ""]
    if cfg is not None and not results.comparable_to_paper:
        out += [f"> **{NOT_COMPARABLE_BANNER}** Every table and figure below comes from "
                f"run `{cfg.get('run_name', '?')}`; its numbers test the pipeline, not the models.", ""]
    out += [
        "Generated by `segbench report` (`dvc repro`) from `results/`; do not edit: edit "
        "`segbench/report/` or `segbench/report/deviations.yaml` and rerun `dvc repro`.",
        "Paper: Zhang et al., *VM-UNET-V2: Rethinking Vision Mamba UNet for Medical Image Segmentation*, "
        "arXiv:2403.09157 (2024); its numbers are in `config/paper_results.csv`, its claims in "
        "`config/paper_claims.yaml`, the published PraNet and Polyp-PVT numbers in `config/literature_results.csv`.",
        "",
        "## Tables",
        "",
        "| table | files | contents |",
        "|---|---|---|",
    ]
    for table in tables:
        links = ", ".join(f"[{ext}]({table.name}.{ext})" for ext in ("md", "tex", "csv"))
        out.append(f"| {table.title} | {links} | " + "; ".join(s.title for s in table.sections[:6])
                   + ("; ..." if len(table.sections) > 6 else "") + " |")
    out += ["", "Tables 1-5 and 2b share their CSV columns (one row per table cell and aggregation): `" +
            "`, `".join(["table", "dataset", "model", "variant", "init", "aggregation", "metric", "paper",
                         "published", "source", "ours_mean", "ours_sd", "difference", "ci_low", "ci_high", "p_holm",
                         "..."]) + "`; percentages in points, toolbox metrics as fractions. `controls.csv` has one "
            "row per comparison, `claims.csv` one row per claim.", "", "## Figures", ""]
    figures = [f for f in files if f.path.endswith(".png")]
    if figures:
        out += [f"- [{f.path}]({f.path}) ([pdf]({f.path.removesuffix('.png')}.pdf)): {f.caption}" for f in figures]
    else:
        out.append("No figures: no results were found.")
    out += [
        "", "## How the numbers are made", "",
        "- **Pooled (the paper's way):** one confusion matrix over every pixel of a test set at the model's input "
        "size; mIoU = TP/(TP+FP+FN) (foreground only), DSC = 2TP/(2TP+FP+FN), Acc, Sen = TP/(TP+FN), "
        "Spe = TN/(TN+FP). These are the columns beside the paper's numbers.",
        "- **Per image (headline):** Dice and IoU of every test image at its mask's original resolution (the "
        "probability map is resized bilinearly, then thresholded), averaged over images; an empty mask scores 1 "
        "when the prediction is empty too and 0 otherwise.",
        "- **Polyp field (Table 2b):** the PraNet evaluation toolbox's per-image metrics (threshold-averaged mDice "
        "and mIoU, weighted F-measure, S-measure, mean and max E-measure, MAE) and the boundary metrics HD95 "
        "(pixels) and NSD, from metrics.json; beside them the values PraNet and Polyp-PVT published.",
        "- **Seeds:** ours = mean ± SD (ddof 1) over seeds of each seed's score; no SD with one seed.",
        "- **Intervals:** 95% percentile bootstrap over test images of the mean per-image Dice, each image's score "
        "averaged over seeds first (images, not seeds, are the sampling unit); resamples and seed from "
        "`report.bootstrap_resamples` and `report.seed`.",
        "- **Tests:** two-sided paired Wilcoxon signed-rank tests of VM-UNetV2 against each baseline on per-image "
        "Dice (paired by image id, seeds averaged, zero differences dropped), Holm-corrected over all comparisons "
        "of a table; a row trained from scratch is tested against VM-UNetV2 from scratch. Effect sizes: "
        "matched-pairs rank-biserial correlation r (positive = VM-UNetV2 better) and the median per-image "
        "difference.",
        "- **Controls:** VM-UNetV2, its no-scan control and UNetV2, each pretrained and from scratch, on the "
        "protocols of `from_scratch`; the same tests, Holm over the controls table, and a sentence per comparison "
        "that says only what the numbers support ([controls.md](controls.md)).",
        "- **Bold:** the best value of each column within a dataset (ties all bold), for the paper's and our "
        "columns separately.",
        "", "## Claims", "",
        "Every comparative sentence of the paper's sections 3.3 and 3.4 (`config/paper_claims.yaml`), checked "
        "against the paper's own tables and against our results; details, quotes and every comparison in "
        "[claims.md](claims.md).", "",
    ]
    out += section_markdown(claims).splitlines()[2:] + [""]
    out += ["## Measured cost per job", ""]
    out += _cost_lines(results, cost, total_seconds, n_cost_runs)
    out += ["## Protocol", ""]
    out += _protocol_lines(cfg)
    out += ["", "## Deviations from the paper's setup", "",
            "Each entry comes from `segbench/report/deviations.yaml`; add an entry there for every new difference.", ""]
    out += _deviation_lines(cfg)
    out += ["", "## Environment", ""]
    out += _environment_lines(results)
    if notes:
        out += ["", "## Missing or inconsistent inputs", ""]
        out += [f"- {note}" for note in notes]
    out += ["", "## Errata candidates in the paper's tables (found mechanically)", "",
            "Checks: DSC = 2·IoU/(1+IoU) for pooled metrics; Acc = p·Sen + (1−p)·Spe with one foreground share p "
            "per test set, which also fixes the DSC; one configuration printed twice must carry the same numbers; "
            "different rows should not carry the same numbers. Printed values are rounded to 0.01, and every check "
            "allows for that. Source: `segbench/report/errata.py`. The text's claims are checked under Claims above."]
    out += _errata_lines(findings)
    out += ["", "## How to cite", "",
            "Cite the suite (metadata in `CITATION.cff`) and the paper whose protocol it reproduces:", "",
            "```bibtex", CITATION_PATH.read_text().strip(), "```", ""]
    return "\n".join(out)
