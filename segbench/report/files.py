"""Every table and figure file `segbench report` writes for a config, with a caption and a category.

The one list of the report's outputs: build_reports writes exactly these files (tests check it), the
README's index and figure captions come from it, and the workflow declares them as Snakemake
``report()`` outputs. Each caption is a Jinja2 template (the engine Snakemake renders report captions
with) that may read ``snakemake.config``; ``python -m segbench.report.files`` writes them as the
reStructuredText caption files of ``workflow/report/captions/`` that the workflow's report rule
names, so the HTML report and reports/README.md show the same sentences. Only light modules are
imported here, so a Snakefile can call ``report_files`` cheaply.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
from pathlib import Path

import jinja2

from segbench.data.registry import DATASET_NAMES
from segbench.report.paper import dataset_label

FIGURE_EXTENSIONS = ("png", "pdf")
TABLE_EXTENSIONS = {"md": "Markdown", "tex": "LaTeX (booktabs)", "csv": "CSV, one row per cell"}
REPORT_DIR = Path(__file__).resolve().parents[2] / "workflow" / "report"
CAPTION_DIR = REPORT_DIR / "captions"
# the caption of qualitative grids whose stem names a protocol too (a test set tested by two protocols)
GENERIC_QUALITATIVE = "qualitative"


@dataclasses.dataclass(frozen=True)
class ReportFile:
    path: str  # relative to the report folder (reports/)
    caption: str
    category: str

    @property
    def caption_file(self) -> str:
        """The name of this file's caption under workflow/report/captions/."""
        stem = Path(self.path).with_suffix("").name
        return f"{stem if stem in caption_templates() else GENERIC_QUALITATIVE}.rst"


# (file stem, category, caption): the tables, in the README's order
TABLES = [
    ("table1_isic", "Table 1",
     "Table 1 of the paper beside ours on ISIC17 and ISIC18: pooled metrics the paper's way, per-image Dice, IoU, "
     "HD95 and NSD with intervals and paired tests, pretrained and from-scratch rows."),
    ("table2_polyp", "Table 2",
     "Table 2 of the paper beside ours on the five polyp test sets: pooled metrics the paper's way, per-image Dice, "
     "IoU, HD95 and NSD with intervals and paired tests, pretrained and from-scratch rows."),
    ("table2b_polyp_toolbox", "Table 2b",
     "The polyp test sets in the PraNet toolbox metrics and boundary metrics, ours as mean and SD over seeds beside "
     "the published PraNet and Polyp-PVT values."),
    ("table3_complexity", "Table 3",
     "Table 3 of the paper beside ours: parameters, FLOPs and speed, and the measured training cost of every job."),
    ("table4_5_ablation", "Tables 4-5",
     "Tables 4 and 5 of the paper beside ours: encoder depth and deep supervision on the polyp test sets."),
    ("controls", "Controls",
     "Controls: VM-UNetV2 against its no-scan control and UNetV2, each pretrained and from scratch, with paired "
     "tests and what they support."),
    ("claims", "Claims",
     "Every comparative claim of the paper's results and ablation sections, checked against its own tables and "
     "against our results."),
]


def qualitative_stems(cfg: dict) -> list[tuple[str, str, str]]:
    """(protocol, test set, figure stem) of the qualitative grids; none when report.qualitative_n is 0."""
    if int((cfg.get("report") or {}).get("qualitative_n", 4)) == 0:
        return []
    pairs = [(protocol, test_set) for protocol, spec in cfg["protocols"].items() for test_set in spec["test"]]
    out = []
    for protocol, test_set in pairs:
        repeated = sum(t == test_set for _, t in pairs) > 1
        out.append((protocol, test_set, f"figures/qualitative_{protocol}_{test_set}" if repeated
                    else f"figures/qualitative_{test_set}"))
    return out


_QUALITATIVE = ("{label}: up to {{{{ snakemake.config.report.qualitative_n }}}} test images with saved predictions of "
                "every model; white marks true positives, red false positives and blue false negatives, at threshold "
                "{{{{ snakemake.config.evaluate.threshold }}}} and {{{{ snakemake.config.image_size }}}} by "
                "{{{{ snakemake.config.image_size }}}} pixels.")

# (figure stem, category, caption template)
FIXED_FIGURES = [
    ("figures/dsc_pooled_bars", "Accuracy figures",
     "Pooled DSC the paper's way per test set, mean over seeds with SD error bars; black crosses mark the "
     "paper's Tables 1 and 2."),
    ("figures/dice_per_image_bars", "Accuracy figures",
     "Per-image Dice at original resolution per test set, the mean over images of the seed-averaged score; error "
     "bars show the 95 percent bootstrap interval over images."),
    ("figures/params_vs_dsc", "Complexity and cost figures",
     "Pooled DSC against parameters counted the paper's way; filled markers are ours with mean and SD over "
     "seeds, hollow markers the paper's Tables 1 to 3."),
    ("figures/flops_vs_dsc", "Complexity and cost figures",
     "Pooled DSC against FLOPs counted the paper's way, multiply-accumulates without the selective scan; filled "
     "markers are ours with mean and SD over seeds, hollow markers the paper's Tables 1 to 3."),
    ("figures/dsc_vs_training_cost", "Complexity and cost figures",
     "Pooled DSC against the measured training time per run on a log scale, mean and SD over seeds; circles "
     "start from pretrained weights, triangles from scratch."),
    ("figures/training_curves", "Training curves",
     "Training loss and validation DSC per epoch for every protocol, mean over seeds with a band of one SD; "
     "dashed lines are runs from scratch; the learning rate is drawn only where it changes."),
]


def _qualitative_template(test_set: str | None) -> str:
    return _QUALITATIVE.format(label=dataset_label(test_set) if test_set else "Qualitative results")


def figures(cfg: dict) -> list[tuple[str, str, str]]:
    """(stem, category, caption template) of every figure for ``cfg``."""
    out = list(FIXED_FIGURES)
    for _, test_set, stem in qualitative_stems(cfg):
        out.append((stem, "Qualitative results", _qualitative_template(test_set)))
    return out


def caption_templates() -> dict[str, str]:
    """Caption file stem -> template, for every table, every figure of any config (a qualitative grid per
    dataset), and the generic qualitative caption."""
    templates = {stem: caption for stem, _, caption in TABLES}
    templates.update({Path(stem).name: caption for stem, _, caption in FIXED_FIGURES})
    templates.update({f"qualitative_{name}": _qualitative_template(name) for name in DATASET_NAMES})
    templates[GENERIC_QUALITATIVE] = _qualitative_template(None)
    return templates


def render_caption(template: str, cfg: dict) -> str:
    return jinja2.Template(template, undefined=jinja2.StrictUndefined).render(
        snakemake=types.SimpleNamespace(config=cfg))


def report_files(cfg: dict | None) -> list[ReportFile]:
    """Every table and figure file the report writes for ``cfg`` (None: no results, tables of the paper only)."""
    files = [ReportFile(f"{stem}.{extension}", f"{caption} {form}.", category)
             for stem, category, caption in TABLES for extension, form in TABLE_EXTENSIONS.items()]
    if cfg is not None:
        files += [ReportFile(f"{stem}.{extension}", render_caption(caption, cfg), category)
                  for stem, category, caption in figures(cfg) for extension in FIGURE_EXTENSIONS]
    return files


def figure_caption(cfg: dict, stem: str) -> str:
    return next(render_caption(caption, cfg) for figure_stem, _, caption in figures(cfg) if figure_stem == stem)


# The front page of Snakemake's report (Jinja2 on reStructuredText, reading snakemake.config).
FRONT_PAGE = """{% set cfg = snakemake.config %}
segbench: {{ cfg.run_name }}
==========================================================
{% if not cfg.comparable_to_paper %}
**Synthetic data, smoke settings: not comparable to the paper.** Seeded synthetic stand-ins of the
datasets and toy model widths on the CPU: the numbers show that the pipeline learns, not how the
models compare on real data.
{% endif %}

The VM-UNetV2 paper's protocol (Zhang et al., 2024), every model under one recipe.

**What was run:** {{ cfg.models | join(", ") }}; seeds {{ cfg.seeds | join(", ") }}; {{ cfg.data.source }} data at
{{ cfg.image_size }} x {{ cfg.image_size }}; {{ cfg.train.epochs }} epochs, batch {{ cfg.train.batch_size }}, AdamW lr
{{ cfg.train.lr }}; from scratch as well on: {{ cfg.from_scratch | join(", ") if cfg.from_scratch else "none" }};
pretrained weights: {{ cfg.pretrained | join(", ") if cfg.pretrained else "none" }}.

**Protocols:** {% for name, spec in cfg.protocols.items() %}{{ name }} ({{ spec.train }} -> {{ spec.test | join(", ") }}){{ "; " if not loop.last else "." }}{% endfor %}


**Deviations from the paper's setup** (reasons in ``reports/README.md``): @DEVIATIONS@.
"""


def front_page() -> str:
    """workflow/report/workflow.rst: what was run, the protocols, the weights, the deviations, the banner."""
    from segbench.report.readme import load_deviations

    deviations = "; ".join(f"{entry['topic']} ({'kept' if entry.get('status') == 'kept' else 'changed'})"
                           for entry in load_deviations())
    return FRONT_PAGE.replace("@DEVIATIONS@", deviations)


def report_texts() -> dict[Path, str]:
    """Every file of workflow/report/ with its content: the front page and one caption per stem."""
    texts = {REPORT_DIR / "workflow.rst": front_page()}
    texts.update({CAPTION_DIR / f"{stem}.rst": template + "\n" for stem, template in caption_templates().items()})
    return texts


def write_report_texts() -> list[Path]:
    """Write workflow/report/ (the report rule's front page and captions); returns the files."""
    CAPTION_DIR.mkdir(parents=True, exist_ok=True)
    texts = report_texts()
    for path, text in texts.items():
        path.write_text(text, encoding="utf-8")
    return list(texts)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m segbench.report.files",
                            description="write workflow/report/ (front page and captions of the Snakemake report)"
                            ).parse_args(argv)
    print(f"wrote {len(write_report_texts())} files to {REPORT_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
