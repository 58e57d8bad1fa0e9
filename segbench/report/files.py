"""Every table and figure file `segbench report` writes for a config, with a caption and a category.

The one list of the report's outputs: build_reports writes exactly these files (tests check it), the
README's index and figure captions come from it, and the workflow can declare them (e.g. Snakemake
``report()`` outputs). Captions are plain sentences, safe in reStructuredText. Only light modules are
imported here, so a Snakefile can call ``report_files`` cheaply.
"""
from __future__ import annotations

import dataclasses

from segbench.report.paper import dataset_label

FIGURE_EXTENSIONS = ("png", "pdf")
TABLE_EXTENSIONS = {"md": "Markdown", "tex": "LaTeX (booktabs)", "csv": "CSV, one row per cell"}


@dataclasses.dataclass(frozen=True)
class ReportFile:
    path: str  # relative to the report folder (reports/)
    caption: str
    category: str


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


def figures(cfg: dict) -> list[tuple[str, str, str]]:
    """(stem, category, caption) of every figure for ``cfg``."""
    threshold = (cfg.get("evaluate") or {}).get("threshold", 0.5)
    size = cfg.get("image_size", 256)
    count = int((cfg.get("report") or {}).get("qualitative_n", 4))
    out = [
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
    for _, test_set, stem in qualitative_stems(cfg):
        out.append((stem, "Qualitative results",
                    f"{dataset_label(test_set)}: up to {count} test images with saved predictions of every model; "
                    f"white marks true positives, red false positives and blue false negatives, at threshold "
                    f"{threshold} and {size} by {size} pixels."))
    return out


def report_files(cfg: dict | None) -> list[ReportFile]:
    """Every table and figure file the report writes for ``cfg`` (None: no results, tables of the paper only)."""
    files = [ReportFile(f"{stem}.{extension}", f"{caption} {form}.", category)
             for stem, category, caption in TABLES for extension, form in TABLE_EXTENSIONS.items()]
    if cfg is not None:
        files += [ReportFile(f"{stem}.{extension}", caption, category)
                  for stem, category, caption in figures(cfg) for extension in FIGURE_EXTENSIONS]
    return files


def figure_caption(cfg: dict, stem: str) -> str:
    return next(caption for figure_stem, _, caption in figures(cfg) if figure_stem == stem)
