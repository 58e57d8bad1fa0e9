"""``segbench data check``: re-verify a prepared dataset against its integrity report and split file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from segbench.data.registry import get_dataset

REPORT_KEYS = ("dataset", "title", "source", "archives", "n_pairs", "expected_count", "counts_by_source_split",
               "height_range", "width_range", "n_empty_masks", "n_masks_thresholded", "conversions", "terms",
               "checks", "warnings", "items")


def check_dataset(dataset: str, root: str | Path) -> tuple[dict, list[str]]:
    """The integrity report and the problems found now (missing/extra/changed files, non-binary masks)."""
    from PIL import Image

    from segbench.data.splits import SplitError, read_split
    from segbench.io import sha256_file

    get_dataset(dataset)
    folder = Path(root) / "processed" / dataset
    report_path = folder / "integrity.json"
    if not report_path.exists():
        raise FileNotFoundError(
            f"{report_path}: missing, so {dataset} is not prepared; run `snakemake {report_path}` or "
            f"`segbench data prepare {dataset}`"
        )
    try:
        report = json.loads(report_path.read_text())
        missing = [key for key in REPORT_KEYS if key not in report]
        if missing:
            raise KeyError(f"no {', '.join(missing)}")
        listed = {item["id"]: item for item in report["items"]}
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{report_path}: not a segbench integrity report (expected the JSON that `segbench data "
                         f"prepare` writes, found {type(error).__name__}: {error}); re-prepare {dataset}") from None
    problems = []
    for kind in ("images", "masks"):
        present = {path.stem for path in (folder / kind).glob("*.png")}
        problems += [f"{folder / kind / (i + '.png')}: missing (listed in {report_path})"
                     for i in sorted(set(listed) - present)]
        problems += [f"{folder / kind / (i + '.png')}: not listed in {report_path}"
                     for i in sorted(present - set(listed))]
    for identifier, item in listed.items():
        mask_path = folder / "masks" / f"{identifier}.png"
        if not mask_path.exists():
            continue
        try:
            with Image.open(mask_path) as mask:
                values = np.asarray(mask)
        except OSError as error:
            problems.append(f"{mask_path}: cannot be read as an image ({type(error).__name__}: {error})")
            continue
        if values.shape != (item.get("height"), item.get("width")):
            found = f"{values.shape[1]}x{values.shape[0]}" if values.ndim > 1 else str(values.shape)
            problems.append(f"{mask_path}: wrong size (expected {item.get('width')}x{item.get('height')} as "
                            f"{report_path} says, found {found})")
        elif not np.isin(values, (0, 255)).all():
            problems.append(f"{mask_path}: not binary (expected values 0/255, found others)")
    split_path = Path(root) / "splits" / f"{dataset}.csv"
    report["split_file"] = str(split_path) if split_path.exists() else None
    if split_path.exists():
        try:
            rows = read_split(split_path)
        except SplitError as error:
            rows = []
            problems.append(str(error))
        counts = {}
        for row in rows:
            counts[row["split"]] = counts.get(row["split"], 0) + 1
            for kind in ("image", "mask"):
                path = folder / f"{kind}s" / f"{row['id']}.png"
                if path.exists() and sha256_file(path) != row[f"{kind}_sha256"]:
                    problems.append(f"{path}: changed after {split_path} was written (sha256 differs)")
        report["split_counts"] = counts
    return report, problems


def format_report(report: dict, problems: list[str]) -> str:
    lines = [
        f"{report['dataset']}: {report['title']}",
        f"  source: {report['source']}" + "".join(f"\n    {name}  sha256 {digest}" for name, digest in report["archives"].items()),
        f"  pairs: {report['n_pairs']} (expected {report['expected_count']})",
        f"  by source split: {report['counts_by_source_split'] or 'none (split rule applies)'}",
        f"  split file: {report.get('split_file') or 'not written yet'}"
        + (f" {report['split_counts']}" if report.get("split_counts") else ""),
        f"  image sizes: height {report['height_range'][0]}-{report['height_range'][1]}, "
        f"width {report['width_range'][0]}-{report['width_range'][1]}",
        f"  empty masks: {report['n_empty_masks']}; masks thresholded at 128: {report['n_masks_thresholded']}",
        f"  conversions: {report['conversions'] or 'none'}",
        f"  ignored archive members: {report.get('n_ignored_files', 0)}",
        f"  terms: {report['terms']}",
        "  checks passed at preparation:",
        *[f"    - {check}" for check in report["checks"]],
        *[f"  warning: {warning}" for warning in report["warnings"]],
    ]
    if problems:
        lines.append(f"  PROBLEMS found now ({len(problems)}):")
        lines += [f"    - {problem}" for problem in problems[:50]]
    else:
        lines.append("  re-check now: ok (files present, masks 0/255, hashes match the split file)")
    return "\n".join(lines)
