"""Figures (PNG and PDF) with no date or version stamps, so the same results give the same files.

matplotlib's object API (``Figure``) is used instead of pyplot: no global backend or figure state.
Every figure of segbench.report.files.figures(cfg) is written, with a note in its panels where its
results are missing, so the list of files depends on the config only.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from PIL import Image

from segbench.io import atomic_path
from segbench.report.analysis import Cost, Summary
from segbench.report.collect import Results
from segbench.report.files import qualitative_stems
from segbench.report.paper import MODEL_ORDER, dataset_label
from segbench.report.render import NOT_COMPARABLE

PNG_METADATA = {"Software": None}
PDF_METADATA = {"Creator": None, "Producer": None, "CreationDate": None}
STYLE = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
         "ytick.labelsize": 7, "pdf.compression": 6, "svg.hashsalt": "segbench"}
LR_VISIBLE_CHANGE = 0.05  # a learning rate whose range is under 5% of its maximum looks flat: no panel
OVERLAY_COLOURS = {"true positive": (255, 255, 255), "false positive": (220, 40, 40), "false negative": (40, 90, 230)}


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


def _panels(count: int, width: float = 2.6, height: float = 2.4):
    rows, columns = _grid(count)
    fig = Figure(figsize=(width * columns, height * rows + 0.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for axis in axes[count:]:
        axis.set_visible(False)
    return fig, axes


def _empty(axis, text: str) -> None:
    axis.text(0.5, 0.5, text, ha="center", va="center", transform=axis.transAxes, fontsize=7, color="dimgray",
              wrap=True)


def _ordered_models(models: list[str]) -> list[str]:
    return [m for m in MODEL_ORDER if m in models] + [m for m in models if m not in MODEL_ORDER]


def _ordered_variants(results: Results, protocol: str) -> list[str]:
    order = _ordered_models(results.main_variants)
    return sorted(results.variants(protocol), key=lambda v: (order.index(results.base_model(v)),
                                                            results.is_scratch_variant(v)))


def _colour(results: Results, variant: str):
    models = _ordered_models(results.main_variants)
    base = results.base_model(variant)
    return matplotlib.colormaps["tab10"](models.index(base) % 10 if base in models else 9)


def _paper_value(paper: dict, dataset: str, model: str, metric: str, table: int | None = None):
    for number in ([table] if table else [1, 2]):
        row = paper.get((number, dataset, model, "", None, metric))
        if row:
            return row["value"]
    return None


def _figure_legend(fig: Figure, handles: list, labels: list[str]) -> None:
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5))


def dsc_bars(results: Results, summaries: dict, paper: dict, out_dir: Path, per_image: bool) -> None:
    test_sets = results.test_sets()
    fig, axes = _panels(len(test_sets))
    for axis, (protocol, test_set) in zip(axes, test_sets):
        variants = _ordered_variants(results, protocol)
        positions = np.arange(len(variants))
        means, lower, upper = [], [], []
        for variant in variants:
            summary: Summary | None = summaries.get((protocol, test_set, variant))
            if summary is None:
                means.append(np.nan), lower.append(0.0), upper.append(0.0)
            elif per_image:
                dice = summary.seed_averaged_dice
                mean = 100 * dice.mean() if not dice.empty else np.nan
                low, high = (100 * v for v in summary.dice_ci)
                means.append(mean)
                lower.append(0.0 if math.isnan(low) else mean - low)
                upper.append(0.0 if math.isnan(high) else high - mean)
            else:
                estimate = summary.pooled["dsc"]
                means.append(100 * estimate.mean)
                spread = 0.0 if math.isnan(estimate.sd) else 100 * estimate.sd
                lower.append(spread), upper.append(spread)
        axis.bar(positions, means, yerr=[lower, upper], capsize=2,
                 color=[_colour(results, v) for v in variants],
                 hatch=["//" if results.is_scratch_variant(v) else "" for v in variants], edgecolor="black",
                 linewidth=0.4)
        if not per_image:
            paper_values = [_paper_value(paper, test_set, v, "dsc") if v == results.base_model(v) else None
                            for v in variants]
            shown = [(x, v) for x, v in zip(positions, paper_values) if v is not None]
            if shown:
                axis.scatter([x for x, _ in shown], [v for _, v in shown], marker="x", color="black", zorder=3)
        if all(math.isnan(m) for m in means):
            _empty(axis, "no results yet")
        axis.set_title(dataset_label(test_set))
        axis.set_xticks(positions, [results.label(v) for v in variants], rotation=45, ha="right")
        axis.set_ylim(0, 100)
        axis.set_ylabel("per-image Dice (%)" if per_image else "pooled DSC (%)")
    handles = [Patch(facecolor="white", edgecolor="black", label="pretrained or only run"),
               Patch(facecolor="white", edgecolor="black", hatch="//", label="from scratch")]
    if not per_image:
        handles.append(Line2D([], [], marker="x", color="black", linestyle="", label="paper"))
    _figure_legend(fig, handles, [h.get_label() for h in handles])
    _banner(fig, results)
    _save(fig, out_dir, "figures/dice_per_image_bars" if per_image else "figures/dsc_pooled_bars")


def complexity_scatter(results: Results, summaries: dict, paper: dict, out_dir: Path, quantity: str) -> None:
    """quantity: 'params' (params_paper, millions) or 'flops' (macs_no_scan_g), both counted as the paper does."""
    test_sets = results.test_sets()
    key = "params_paper" if quantity == "params" else "macs_no_scan_g"
    scale = 1e-6 if quantity == "params" else 1.0
    fig, axes = _panels(len(test_sets))
    model_handles = {}
    for axis, (protocol, test_set) in zip(axes, test_sets):
        drawn = False
        for variant in _ordered_variants(results, protocol):
            profile, summary = results.profile(variant), summaries.get((protocol, test_set, variant))
            colour = _colour(results, variant)
            scratch = results.is_scratch_variant(variant)
            if profile is not None and profile.get(key) is not None and summary is not None:
                estimate = summary.pooled["dsc"]
                axis.errorbar(float(profile[key]) * scale, 100 * estimate.mean,
                              yerr=0.0 if math.isnan(estimate.sd) else 100 * estimate.sd,
                              fmt="^" if scratch else "o", color=colour, capsize=2)
                drawn = True
                model_handles.setdefault(results.label(results.base_model(variant)),
                                         Line2D([], [], marker="s", color=colour, linestyle=""))
            paper_x = paper.get((3, "", variant, "", None, quantity))
            paper_y = _paper_value(paper, test_set, variant, "dsc")
            if not scratch and paper_x and paper_y is not None:
                axis.scatter(paper_x["value"], paper_y, marker="o", facecolors="none", edgecolors=colour)
                drawn = True
                model_handles.setdefault(results.label(variant), Line2D([], [], marker="s", color=colour, linestyle=""))
        if not drawn:
            _empty(axis, "no profiles or results yet")
        axis.set_title(dataset_label(test_set))
        axis.set_xlabel("params (M, paper's counting)" if quantity == "params" else "GFLOPs (MACs without scan)")
        axis.set_ylabel("pooled DSC (%)")
    handles = list(model_handles.values()) + [
        Line2D([], [], marker="o", color="dimgray", linestyle="", label="ours, pretrained or only run (filled)"),
        Line2D([], [], marker="^", color="dimgray", linestyle="", label="ours, from scratch (filled)"),
        Line2D([], [], marker="o", markerfacecolor="none", markeredgecolor="dimgray", linestyle="",
               label="paper (hollow)")]
    _figure_legend(fig, handles, list(model_handles) + [h.get_label() for h in handles[len(model_handles):]])
    _banner(fig, results)
    _save(fig, out_dir, f"figures/{quantity}_vs_dsc")


def cost_scatter(results: Results, summaries: dict, costs: dict[tuple[str, str], Cost], out_dir: Path) -> None:
    """Pooled DSC against measured training wall time per run (log axis)."""
    test_sets = results.test_sets()
    fig, axes = _panels(len(test_sets))
    model_handles = {}
    devices = sorted({device for cost in costs.values() for device in cost.devices})
    where = f" on {devices[0]}" if len(devices) == 1 else " (devices differ: Table 3)" if devices else ""
    for axis, (protocol, test_set) in zip(axes, test_sets):
        drawn = False
        for variant in _ordered_variants(results, protocol):
            cost, summary = costs.get((protocol, variant)), summaries.get((protocol, test_set, variant))
            if cost is None or summary is None or math.isnan(cost.wall_seconds.mean):
                continue
            colour = _colour(results, variant)
            estimate = summary.pooled["dsc"]
            axis.errorbar(cost.wall_seconds.mean, 100 * estimate.mean,
                          xerr=0.0 if math.isnan(cost.wall_seconds.sd) else cost.wall_seconds.sd,
                          yerr=0.0 if math.isnan(estimate.sd) else 100 * estimate.sd,
                          fmt="^" if results.is_scratch_variant(variant) else "o", color=colour, capsize=2)
            drawn = True
            model_handles.setdefault(results.label(results.base_model(variant)),
                                     Line2D([], [], marker="s", color=colour, linestyle=""))
        if drawn:
            axis.set_xscale("log")
        else:
            _empty(axis, "no measured cost yet")
        axis.set_title(dataset_label(test_set))
        axis.set_xlabel(f"training time per run (s){where}")
        axis.set_ylabel("pooled DSC (%)")
    handles = list(model_handles.values()) + [
        Line2D([], [], marker="o", color="dimgray", linestyle="", label="pretrained or only run"),
        Line2D([], [], marker="^", color="dimgray", linestyle="", label="from scratch")]
    _figure_legend(fig, handles, list(model_handles) + [h.get_label() for h in handles[len(model_handles):]])
    _banner(fig, results)
    _save(fig, out_dir, "figures/dsc_vs_training_cost")


def _per_epoch(logs: list, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, mean over seeds, SD over seeds; nan with one seed) of the last logged value of each epoch."""
    series = [log.groupby("epoch")[column].last() for log in logs]
    epochs = sorted(set().union(*(s.index for s in series)))
    stacked = np.vstack([s.reindex(epochs).to_numpy(dtype=float) for s in series])
    with warnings.catch_warnings():  # an epoch only some seeds reached: nan, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(epochs, dtype=float), np.nanmean(stacked, axis=0), np.nanstd(stacked, axis=0, ddof=1)


def lr_changes(results: Results) -> bool:
    rates = [log["lr"].dropna().to_numpy(dtype=float) for logs in results.train_logs.values()
             for log in logs.values() if "lr" in log.columns]
    rates = [r for r in rates if r.size]
    return any(r.max() > 0 and (r.max() - r.min()) / r.max() > LR_VISIBLE_CHANGE for r in rates)


def training_curves(results: Results, out_dir: Path) -> None:
    protocols = list((results.cfg or {}).get("protocols", {}))
    quantities = [("train_loss", "training loss", "linear"), ("val_dsc", "validation DSC", "linear")]
    if lr_changes(results):
        quantities.append(("lr", "learning rate", "linear"))
    fig = Figure(figsize=(3.0 * len(protocols), 2.0 * len(quantities) + 1.0), layout="constrained")
    axes = fig.subplots(len(quantities), len(protocols), squeeze=False)
    model_handles = {}
    for column_index, protocol in enumerate(protocols):
        for row_index, (column, label, scale) in enumerate(quantities):
            axis = axes[row_index][column_index]
            drawn = False
            for variant in _ordered_variants(results, protocol):
                logs = [log for log in results.train_logs.get((protocol, variant), {}).values()
                        if column in log.columns]
                if not logs:
                    continue
                epochs, mean, sd = _per_epoch(logs, column)
                colour = _colour(results, variant)
                style = "--" if results.is_scratch_variant(variant) else "-"
                axis.plot(epochs, mean, color=colour, linestyle=style, linewidth=1,
                          marker="o" if len(epochs) <= 30 else None, markersize=2)  # short runs stay visible
                if not np.all(np.isnan(sd)):
                    axis.fill_between(epochs, mean - sd, mean + sd, color=colour, alpha=0.2, linewidth=0)
                drawn = True
                model_handles.setdefault(results.label(results.base_model(variant)),
                                         Line2D([], [], color=colour, linewidth=1.5))
            if not drawn:
                _empty(axis, "no training logs yet")
            if row_index == 0:
                axis.set_title(f"{protocol} protocol")
            axis.set_yscale(scale)
            if column == "lr":
                axis.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
            axis.set_ylabel(label)
            axis.set_xlabel("epoch")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = list(model_handles.values()) + [Line2D([], [], color="dimgray", linestyle="--", linewidth=1)]
    _figure_legend(fig, handles, list(model_handles) + ["from scratch (dashed)"])
    _banner(fig, results)
    _save(fig, out_dir, "figures/training_curves")


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
    picture[predicted & truth] = OVERLAY_COLOURS["true positive"]
    picture[predicted & ~truth] = OVERLAY_COLOURS["false positive"]
    picture[~predicted & truth] = OVERLAY_COLOURS["false negative"]
    return picture


def _overlay_legend(fig: Figure) -> None:
    handles = [Patch(facecolor=np.array(rgb) / 255, edgecolor="black", linewidth=0.5, label=name)
               for name, rgb in OVERLAY_COLOURS.items()]
    handles.append(Patch(facecolor="black", edgecolor="black", linewidth=0.5, label="true negative"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))


def qualitative_grids(results: Results, data_root: Path, out_dir: Path) -> list[str]:
    count = int(results.report_setting("qualitative_n", 4))
    threshold = ((results.cfg or {}).get("evaluate") or {}).get("threshold", 0.5)
    notes, cache = [], {}
    for protocol, test_set, stem in qualitative_stems(results.cfg):
        chosen = {}
        for variant in _ordered_variants(results, protocol):
            seeds = sorted(seed for (p, v, seed, t) in results.predictions
                           if (p, v, t) == (protocol, variant, test_set))
            if seeds:
                with np.load(results.predictions[(protocol, variant, seeds[0], test_set)]) as data:
                    chosen[variant] = (seeds[0], dict(zip(map(str, data["ids"]), data["probabilities"])))
        first = next(iter(chosen.values()))[1] if chosen else {}
        ids = [i for i in first if all(i in predictions for _, predictions in chosen.values())][:count]
        if not ids:
            fig = Figure(figsize=(4.0, 1.6), layout="constrained")
            axis = fig.subplots()
            axis.set_axis_off()
            _empty(axis, f"{dataset_label(test_set)} ({protocol} protocol): no saved predictions yet "
                         f"(evaluate.save_predictions, or the runs are missing)")
            _banner(fig, results)
            _save(fig, out_dir, stem)
            continue
        size = next(iter(first.values())).shape[0]
        fig = Figure(figsize=(1.5 * (2 + len(chosen)), 1.5 * len(ids) + 1.0), layout="constrained")
        axes = fig.subplots(len(ids), 2 + len(chosen), squeeze=False)
        for row, image_id in enumerate(ids):
            pair = _load_pair(data_root, test_set, image_id, size, cache)
            if pair is None:
                notes.append(f"{dataset_label(test_set)} image {image_id}: not found under {data_root}/processed "
                             f"or {data_root}/cache; its image and ground truth panels are blank")
            panels = [(pair[0] if pair else None, "image"), (pair[1] if pair else None, "ground truth")]
            for variant, (seed, predictions) in chosen.items():
                panels.append((_overlay(predictions[image_id], pair[1] if pair else None, threshold),
                               f"{results.label(variant)}\nseed {seed}"))
            for column, (picture, title) in enumerate(panels):
                axis = axes[row][column]
                axis.set_xticks([]), axis.set_yticks([])
                if picture is not None:
                    axis.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1 if
                                picture.dtype == bool else 255, interpolation="nearest")
                if row == 0:
                    axis.set_title(title, fontsize=7)
            axes[row][0].set_ylabel(image_id, fontsize=6)
        _overlay_legend(fig)
        _banner(fig, results)
        _save(fig, out_dir, stem)
    return notes


def make_figures(results: Results, summaries: dict, paper: dict, costs: dict, data_root: Path,
                 out_dir: Path) -> list[str]:
    """Write every figure of segbench.report.files.figures(results.cfg); returns notes on missing inputs."""
    if results.cfg is None:
        return []
    with matplotlib.rc_context(STYLE):
        dsc_bars(results, summaries, paper, out_dir, per_image=False)
        dsc_bars(results, summaries, paper, out_dir, per_image=True)
        complexity_scatter(results, summaries, paper, out_dir, "params")
        complexity_scatter(results, summaries, paper, out_dir, "flops")
        cost_scatter(results, summaries, costs, out_dir)
        training_curves(results, out_dir)
        return qualitative_grids(results, data_root, out_dir)
