"""Figures (PNG and PDF) with no date or version stamps, so the same results give the same files.

matplotlib's object API (``Figure``) is used instead of pyplot: no global backend or figure state.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from segbench.io import atomic_path
from segbench.report.analysis import Summary
from segbench.report.collect import Results
from segbench.report.paper import MODEL_ORDER, dataset_label, model_label
from segbench.report.render import NOT_COMPARABLE

PNG_METADATA = {"Software": None}
PDF_METADATA = {"Creator": None, "Producer": None, "CreationDate": None}
STYLE = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
         "ytick.labelsize": 7, "pdf.compression": 6, "svg.hashsalt": "segbench"}


@dataclasses.dataclass(frozen=True)
class FigureEntry:
    stem: str  # path under reports/ without the extension
    caption: str


def _save(fig: Figure, out_dir: Path, stem: str) -> None:
    for extension, metadata in (("png", PNG_METADATA), ("pdf", PDF_METADATA)):
        with atomic_path(out_dir / f"{stem}.{extension}") as temporary:
            fig.savefig(temporary, format=extension, dpi=100, metadata=metadata)


def _banner(fig: Figure, results: Results) -> None:
    if not results.comparable_to_paper:
        fig.suptitle(NOT_COMPARABLE.replace(": ", ":\n"), color="firebrick", fontsize=9, fontweight="bold")


def _grid(count: int, columns: int = 4) -> tuple[int, int]:
    columns = max(1, min(columns, count))
    return math.ceil(count / columns), columns


def _ordered_models(models: list[str]) -> list[str]:
    return [m for m in MODEL_ORDER if m in models] + [m for m in models if m not in MODEL_ORDER]


def _paper_value(paper: dict, dataset: str, model: str, metric: str, table: int | None = None):
    for number in ([table] if table else [1, 2]):
        row = paper.get((number, dataset, model, "", None, metric))
        if row:
            return row["value"]
    return None


def dsc_bars(results: Results, summaries: dict, paper: dict, out_dir: Path, per_image: bool) -> FigureEntry | None:
    test_sets = results.test_sets()
    models = _ordered_models(results.main_variants)
    if not test_sets or not models:
        return None
    rows, columns = _grid(len(test_sets))
    fig = Figure(figsize=(2.6 * columns, 2.4 * rows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    positions = np.arange(len(models))
    for axis, (protocol, test_set) in zip(axes, test_sets):
        means, lower, upper = [], [], []
        for model in models:
            summary: Summary | None = summaries.get((protocol, test_set, model))
            if summary is None:
                means.append(np.nan), lower.append(0.0), upper.append(0.0)
            elif per_image:
                mean = 100 * summary.seed_averaged_dice.mean() if not summary.seed_averaged_dice.empty else np.nan
                low, high = (100 * v for v in summary.dice_ci)
                means.append(mean)
                lower.append(0.0 if math.isnan(low) else mean - low)
                upper.append(0.0 if math.isnan(high) else high - mean)
            else:
                estimate = summary.pooled["dsc"]
                means.append(100 * estimate.mean)
                spread = 0.0 if math.isnan(estimate.sd) else 100 * estimate.sd
                lower.append(spread), upper.append(spread)
        axis.bar(positions, means, yerr=[lower, upper], color="#4c72b0", capsize=2, label="ours")
        if not per_image:
            paper_values = [_paper_value(paper, test_set, model, "dsc") for model in models]
            shown = [(x, v) for x, v in zip(positions, paper_values) if v is not None]
            if shown:
                axis.scatter([x for x, _ in shown], [v for _, v in shown], marker="x", color="black", zorder=3,
                             label="paper")
        axis.set_title(dataset_label(test_set))
        axis.set_xticks(positions, [model_label(m) for m in models], rotation=45, ha="right")
        axis.set_ylim(0, 100)
        axis.set_ylabel("per-image Dice (%)" if per_image else "pooled DSC (%)")
    for axis in axes[len(test_sets):]:
        axis.set_visible(False)
    axes[0].legend(loc="lower left")
    _banner(fig, results)
    stem = "figures/dice_per_image_bars" if per_image else "figures/dsc_pooled_bars"
    _save(fig, out_dir, stem)
    if per_image:
        caption = ("Per-image Dice at original resolution, mean over test images of the seed-averaged score; "
                   "error bars: 95% bootstrap interval over images.")
    else:
        caption = ("Pooled DSC (the paper's way), mean over seeds with SD error bars; crosses: the paper's "
                   "Tables 1-2.")
    return FigureEntry(stem, caption)


def complexity_scatter(results: Results, summaries: dict, paper: dict, out_dir: Path,
                       quantity: str) -> FigureEntry | None:
    """quantity: 'params' (params_paper, millions) or 'flops' (macs_no_scan_g), both counted as the paper does."""
    test_sets = results.test_sets()
    models = [m for m in _ordered_models(results.main_variants) if m in results.profiles]
    if not test_sets or not models:
        return None
    key = "params_paper" if quantity == "params" else "macs_no_scan_g"
    scale = 1e-6 if quantity == "params" else 1.0
    rows, columns = _grid(len(test_sets))
    fig = Figure(figsize=(2.6 * columns, 2.4 * rows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    colours = matplotlib.colormaps["tab10"]
    for axis, (protocol, test_set) in zip(axes, test_sets):
        for index, model in enumerate(models):
            value = results.profiles[model].get(key)
            summary = summaries.get((protocol, test_set, model))
            if value is not None and summary is not None:
                estimate = summary.pooled["dsc"]
                axis.errorbar(float(value) * scale, 100 * estimate.mean,
                              yerr=0.0 if math.isnan(estimate.sd) else 100 * estimate.sd, fmt="o",
                              color=colours(index % 10), capsize=2, label=model_label(model))
            paper_x = paper.get((3, "", model, "", None, quantity))
            paper_y = _paper_value(paper, test_set, model, "dsc")
            if paper_x and paper_y is not None:
                axis.scatter(paper_x["value"], paper_y, marker="o", facecolors="none", edgecolors=colours(index % 10))
        axis.set_title(dataset_label(test_set))
        axis.set_xlabel("params (M, paper's counting)" if quantity == "params" else "GFLOPs (MACs without scan)")
        axis.set_ylabel("pooled DSC (%)")
    for axis in axes[len(test_sets):]:
        axis.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6))
    _banner(fig, results)
    stem = f"figures/{quantity}_vs_dsc"
    _save(fig, out_dir, stem)
    what = "parameters" if quantity == "params" else "FLOPs"
    return FigureEntry(stem, f"Pooled DSC against {what} (both counted as the paper does); filled: ours "
                             f"(mean ± SD over seeds), hollow: the paper's Tables 1-3.")


def training_curves(results: Results, out_dir: Path) -> FigureEntry | None:
    protocols = list((results.cfg or {}).get("protocols", {}))
    models = _ordered_models(results.main_variants)
    quantities = [(column, label) for column, label in (("train_loss", "training loss"),
                                                        ("val_dsc", "validation DSC"), ("lr", "learning rate"))
                  if any(column in log.columns for logs in results.train_logs.values() for log in logs.values())]
    if not results.train_logs or not quantities:
        return None
    fig = Figure(figsize=(3.0 * len(protocols), 2.0 * len(quantities) + 0.6), layout="constrained")
    axes = fig.subplots(len(quantities), len(protocols), squeeze=False)
    colours = matplotlib.colormaps["tab10"]
    for column_index, protocol in enumerate(protocols):
        for row_index, (column, label) in enumerate(quantities):
            axis = axes[row_index][column_index]
            for index, model in enumerate(models):
                logs = [log for log in results.train_logs.get((protocol, model), {}).values() if column in log.columns]
                if not logs:
                    continue
                per_epoch = [log.groupby("epoch")[column].last() for log in logs]
                stacked = np.vstack([series.reindex(per_epoch[0].index).to_numpy() for series in per_epoch])
                mean = np.nanmean(stacked, axis=0) if not np.all(np.isnan(stacked)) else stacked[0]
                few = len(mean) <= 30  # markers keep short runs (one epoch: one point) visible
                axis.plot(per_epoch[0].index, mean, color=colours(index % 10), label=model_label(model), linewidth=1,
                          marker="o" if few else None, markersize=2)
                if len(logs) > 1:
                    spread = np.nanstd(stacked, axis=0, ddof=1)
                    axis.fill_between(per_epoch[0].index, mean - spread, mean + spread, color=colours(index % 10),
                                      alpha=0.2, linewidth=0)
            if row_index == 0:
                axis.set_title(f"{protocol} protocol")
            if column == "lr":
                axis.set_yscale("log")
            axis.set_ylabel(label)
            axis.set_xlabel("epoch")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6))
    _banner(fig, results)
    stem = "figures/training_curves"
    _save(fig, out_dir, stem)
    return FigureEntry(stem, "Training loss, validation DSC and learning rate per epoch; mean over seeds, "
                             "band: ± SD.")


def _load_pair(data_root: Path, dataset: str, image_id: str, size: int, cache: dict):
    """(image RGB uint8, mask bool) at size x size, or None when the data is not on this machine."""
    image_path = data_root / "processed" / dataset / "images" / f"{image_id}.png"
    mask_path = data_root / "processed" / dataset / "masks" / f"{image_id}.png"
    if image_path.exists() and mask_path.exists():
        with Image.open(image_path) as image, Image.open(mask_path) as mask:
            rgb = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
            truth = np.asarray(mask.convert("L").resize((size, size), Image.Resampling.NEAREST)) >= 128
        return rgb, truth
    from segbench.data import cache_file, load_cache

    cache_path = cache_file(data_root, dataset, size)
    if cache_path.exists():
        if cache_path not in cache:
            ids, images, masks = load_cache(cache_path, "test")
            cache[cache_path] = {str(i): (images[n], masks[n] >= 128) for n, i in enumerate(ids)}
        return cache[cache_path].get(image_id)
    return None


def _overlay(probabilities: np.ndarray, truth: np.ndarray | None, threshold: float) -> np.ndarray:
    """RGB: true positives white, false positives red, false negatives blue (grey probabilities without truth)."""
    predicted = probabilities >= round(threshold * 255)
    if truth is None:
        return np.repeat(probabilities[..., None], 3, axis=2)
    picture = np.zeros(predicted.shape + (3,), np.uint8)
    picture[predicted & truth] = (255, 255, 255)
    picture[predicted & ~truth] = (220, 40, 40)
    picture[~predicted & truth] = (40, 90, 230)
    return picture


def qualitative_grids(results: Results, data_root: Path, out_dir: Path) -> tuple[list[FigureEntry], list[str]]:
    count = int(results.report_setting("qualitative_n", 4))
    threshold = ((results.cfg or {}).get("evaluate") or {}).get("threshold", 0.5)
    models = _ordered_models(results.main_variants)
    entries, notes, cache = [], [], {}
    for protocol, test_set in results.test_sets():
        chosen = {}
        for model in models:
            seeds = sorted(seed for (p, v, seed, t) in results.predictions if (p, v, t) == (protocol, model, test_set))
            if seeds:
                with np.load(results.predictions[(protocol, model, seeds[0], test_set)]) as data:
                    chosen[model] = (seeds[0], dict(zip(map(str, data["ids"]), data["probabilities"])))
        if not chosen or count == 0:
            continue
        first = next(iter(chosen.values()))[1]
        ids = [i for i in first if all(i in predictions for _, predictions in chosen.values())][:count]
        if not ids:
            continue
        size = next(iter(first.values())).shape[0]
        fig = Figure(figsize=(1.5 * (2 + len(chosen)), 1.5 * len(ids) + 0.7), layout="constrained")
        axes = fig.subplots(len(ids), 2 + len(chosen), squeeze=False)
        for row, image_id in enumerate(ids):
            pair = _load_pair(data_root, test_set, image_id, size, cache)
            if pair is None:
                notes.append(f"{dataset_label(test_set)} image {image_id}: not found under {data_root}/processed "
                             f"or {data_root}/cache; its image and ground truth panels are blank")
            panels = [(pair[0] if pair else None, "image"), (pair[1] if pair else None, "ground truth")]
            for model, (seed, predictions) in chosen.items():
                panels.append((_overlay(predictions[image_id], pair[1] if pair else None, threshold),
                               f"{model_label(model)} (seed {seed})"))
            for column, (picture, title) in enumerate(panels):
                axis = axes[row][column]
                axis.set_xticks([]), axis.set_yticks([])
                if picture is not None:
                    axis.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1 if
                                picture.dtype == bool else 255, interpolation="nearest")
                if row == 0:
                    axis.set_title(title)
            axes[row][0].set_ylabel(image_id, fontsize=6)
        _banner(fig, results)
        stem = f"figures/qualitative_{test_set}" if sum(t == test_set for _, t in results.test_sets()) == 1 \
            else f"figures/qualitative_{protocol}_{test_set}"
        _save(fig, out_dir, stem)
        entries.append(FigureEntry(stem, f"{dataset_label(test_set)}: the first {len(ids)} test images with saved "
                                         f"predictions; white = true positive, red = false positive, blue = false "
                                         f"negative (threshold {threshold}, at {size}×{size})."))
    return entries, notes


def make_figures(results: Results, summaries: dict, paper: dict, data_root: Path, out_dir: Path):
    with matplotlib.rc_context(STYLE):
        entries = [dsc_bars(results, summaries, paper, out_dir, per_image=False),
                   dsc_bars(results, summaries, paper, out_dir, per_image=True),
                   complexity_scatter(results, summaries, paper, out_dir, "params"),
                   complexity_scatter(results, summaries, paper, out_dir, "flops"),
                   training_curves(results, out_dir)]
        grids, notes = qualitative_grids(results, data_root, out_dir)
    return [entry for entry in entries if entry is not None] + grids, notes
