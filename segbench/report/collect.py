"""Read the results tree (docs/ARCHITECTURE.md) into memory, checking every file it reads.

A file that is absent leaves its cells empty and adds a note; a file that is present but does not
have the documented format stops the report with an error naming the file.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from segbench.config import ConfigError, Run, ablation_cells, planned_runs, scratch_variant, variant_spec, \
    variant_weights
from segbench.report.paper import (
    BOUNDARY_METRICS, POOLED_METRICS, TOOLBOX_METRICS, depth_key, depth_label, model_label,
)

INITS = ("pretrained", "scratch")
COST_NUMBERS = ("wall_seconds", "seconds_per_epoch", "images_per_second", "peak_memory_mb", "epochs")
MEMORY_KINDS = {"cuda_max_allocated": "GPU, torch max allocated", "cpu_peak_rss": "CPU, peak resident set"}
# per_image.csv columns beyond id,dice,iou: confusion counts (per-image Acc/Sen/Spe) and the newer metrics
COUNT_COLUMNS = ("tp", "fp", "fn", "tn")
NEW_PER_IMAGE_COLUMNS = ("mean_dice", "mean_iou", "wfm", "s_measure", "mean_em", "max_em", "mae", "hd95", "nsd")


class ReportInputError(ValueError):
    """A results file exists but is malformed; the message names it and says what to do."""


def _malformed(path: Path, expected: str, found: str) -> ReportInputError:
    return ReportInputError(
        f"{path}: expected {expected}, found {found}. The file is damaged or was written by another "
        f"version of segbench: delete it and rerun the workflow to rebuild it."
    )


@dataclasses.dataclass
class Results:
    cfg: dict | None
    # one row per (protocol, variant, seed, test_set): pooled_<metric>, dice_mean, iou_mean, n_images
    metrics: pd.DataFrame
    # (protocol, variant, test_set) -> {seed: DataFrame[id, dice, iou]}
    per_image: dict[tuple[str, str, str], dict[int, pd.DataFrame]]
    profiles: dict[str, dict]
    # (protocol, variant) -> {seed: DataFrame of train_log.csv}
    train_logs: dict[tuple[str, str], dict[int, pd.DataFrame]]
    manifests: list[dict]
    # (protocol, variant, seed, test_set) -> predictions.npz
    predictions: dict[tuple[str, str, int, str], Path]
    notes: list[str]
    # every run the config plans (segbench.config.planned_runs), and (protocol, variant, seed) -> manifest.json
    runs: list[Run] = dataclasses.field(default_factory=list)
    manifest_index: dict[tuple[str, str, int], dict] = dataclasses.field(default_factory=dict)

    @property
    def comparable_to_paper(self) -> bool:
        """False marks every table and figure; without results there is nothing of ours to mark."""
        return self.cfg is None or bool(self.cfg.get("comparable_to_paper", True))

    def report_setting(self, key: str, default):
        return ((self.cfg or {}).get("report") or {}).get(key, default)

    @property
    def main_variants(self) -> list[str]:
        return list((self.cfg or {}).get("models", []))

    @property
    def ablation(self) -> dict[str, dict]:
        return ablation_cells(self.cfg) if self.cfg else {}

    def test_sets(self) -> list[tuple[str, str]]:
        """(protocol, test_set) pairs of the config, in config order."""
        protocols = (self.cfg or {}).get("protocols", {})
        return [(protocol, test_set) for protocol, spec in protocols.items() for test_set in spec["test"]]

    def expected_seeds(self, protocol: str, variant: str) -> list[int]:
        return [run.seed for run in self.runs if (run.protocol, run.variant) == (protocol, variant)]

    def planned(self, protocol: str | None, variant: str | None) -> bool:
        return any((run.protocol, run.variant) == (protocol, variant) for run in self.runs)

    def base_model(self, variant: str) -> str:
        """The registered model a variant is built from (an ablation cell or a scratch run: its model)."""
        try:
            return variant_spec(self.cfg, variant)[0] if self.cfg else variant
        except ConfigError:
            return variant

    def is_scratch_variant(self, variant: str) -> bool:
        model = self.base_model(variant)
        return variant != model and variant == scratch_variant(model)

    def variants(self, protocol: str | None) -> list[str]:
        """The models of Tables 1-2 on one protocol, each followed by its from-scratch run where planned."""
        out = []
        for model in self.main_variants:
            out.append(model)
            if self.planned(protocol, scratch_variant(model)):
                out.append(scratch_variant(model))
        return out

    def init(self, variant: str) -> str:
        """pretrained or scratch, from the config (the manifests are checked against it in collect)."""
        if self.cfg is None or self.is_scratch_variant(variant):
            return "scratch"
        return "pretrained" if variant_weights(self.cfg, variant) else "scratch"

    def label(self, variant: str) -> str:
        if self.is_scratch_variant(variant):
            return f"{model_label(self.base_model(variant))} (scratch)"
        cell = self.ablation.get(variant)
        if cell:
            return (f"{model_label(self.base_model(variant))} {depth_label(depth_key(cell['depths']))} "
                    f"{'with' if cell['deep_supervision'] else 'without'} deep supervision")
        return model_label(variant)

    def profile(self, variant: str) -> dict | None:
        """A scratch run has its base model's architecture, so its profile."""
        return self.profiles.get(variant) or (self.profiles.get(self.base_model(variant))
                                              if self.is_scratch_variant(variant) else None)

    def manifests_of(self, protocol: str, variant: str) -> dict[int, dict]:
        return {seed: manifest for (p, v, seed), manifest in sorted(self.manifest_index.items())
                if (p, v) == (protocol, variant)}


def load_run_config(results_dir: Path) -> dict | None:
    path = results_dir / "run_config.yaml"
    if not path.exists():
        return None
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise _malformed(path, "YAML", f"a parse error ({error})") from None
    if not isinstance(cfg, dict):
        raise _malformed(path, "a mapping", type(cfg).__name__)
    missing = [key for key in ("protocols", "models", "seeds") if key not in cfg]
    if missing:
        raise _malformed(path, "the validated run config with protocols, models and seeds",
                         f"no {', '.join(missing)}")
    for key, empty in (("from_scratch", []), ("pretrained", {}), ("model_args", {})):
        cfg.setdefault(key, empty)  # written before these keys existed: their schema defaults
    return cfg


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise _malformed(path, "JSON", f"a parse error ({error})") from None
    if not isinstance(data, dict):
        raise _malformed(path, "a JSON object", type(data).__name__)
    return data


def _fraction(value, limit: float = 1.0) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= limit


# The PraNet toolbox's E-measure divides by N - 1 pixels, so a perfect map scores N / (N - 1) > 1
# (16/15 on a 4x4 image); per row the bound is 1 + 1/(height*width - 1), per test set the smallest image's.
E_MEASURES = ("mean_em", "max_em")
SMALLEST_E_BOUND = 1 + 1 / 3


def _read_metrics(path: Path, protocol: str, variant: str, seed: int, test_set: str) -> dict:
    data = _read_json(path)
    pooled, per_image = data.get("pooled"), data.get("per_image")
    if not isinstance(pooled, dict) or not all(_fraction(pooled.get(key)) for key in POOLED_METRICS):
        raise _malformed(path, f"'pooled' with fractions in [0, 1] for {', '.join(POOLED_METRICS)}",
                         repr(pooled))
    if not isinstance(per_image, dict) or not all(_fraction(per_image.get(key)) for key in ("dice_mean", "iou_mean")):
        raise _malformed(path, "'per_image' with fractions dice_mean and iou_mean", repr(per_image))
    if not isinstance(data.get("n_images"), int) or data["n_images"] < 0:
        raise _malformed(path, "an integer n_images", repr(data.get("n_images")))
    for key, expected in (("protocol", protocol), ("variant", variant), ("seed", seed), ("test_set", test_set)):
        if key in data and data[key] != expected:
            raise _malformed(path, f"{key} {expected!r} (from its path)", repr(data[key]))
    toolbox, boundary = data.get("toolbox"), data.get("boundary")
    if toolbox is not None and (not isinstance(toolbox, dict)
                                or not all(_fraction(toolbox.get(key), SMALLEST_E_BOUND if key in E_MEASURES else 1.0)
                                           for key in TOOLBOX_METRICS)):
        raise _malformed(path, f"'toolbox' with fractions in [0, 1] for {', '.join(TOOLBOX_METRICS)}", repr(toolbox))
    if boundary is not None:
        hd95, tolerance, undefined = (boundary.get(key) if isinstance(boundary, dict) else None
                                      for key in ("hd95", "nsd_tolerance_px", "n_boundary_undefined"))
        if not (isinstance(boundary, dict) and (hd95 is None or _non_negative(hd95))
                and (boundary.get("nsd") is None or _fraction(boundary["nsd"])) and _non_negative(tolerance)
                and isinstance(undefined, int) and not isinstance(undefined, bool) and undefined >= 0):
            raise _malformed(path, "'boundary' with hd95 >= 0 (pixels, or null), nsd in [0, 1] (or null), "
                                   "nsd_tolerance_px >= 0 and an integer n_boundary_undefined", repr(boundary))
    return data


def _non_negative(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value >= 0)


def _number_or_nan(value) -> float:
    return float(value) if _non_negative(value) else math.nan


def _read_per_image(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype={"id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise _malformed(path, "a CSV with columns id,dice,iou,...", f"a parse error ({error})") from None
    missing = [column for column in ("id", "dice", "iou") if column not in table.columns]
    if missing:
        raise _malformed(path, "columns id,dice,iou,tp,fp,fn,tn,height,width,mask_empty",
                         f"no column {', '.join(missing)}")
    for column in ("dice", "iou"):
        values = pd.to_numeric(table[column], errors="coerce")
        if values.isna().any() or not values.between(0.0, 1.0).all():
            raise _malformed(path, f"{column} values in [0, 1] on every row", "a missing or out-of-range value")
        table[column] = values.astype(float)
    if table["id"].isna().any() or table["id"].duplicated().any():
        raise _malformed(path, "one row per image id", "an empty or repeated id")
    extra = [column for column in COUNT_COLUMNS + NEW_PER_IMAGE_COLUMNS if column in table.columns]
    for column in extra:
        # empty cells are allowed in the newer columns (e.g. HD95 of an image without a boundary)
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() & table[column].notna() | (values < 0)
        if column in E_MEASURES and {"height", "width"} <= set(table.columns):
            pixels = pd.to_numeric(table["height"], errors="coerce") * pd.to_numeric(table["width"], errors="coerce")
            bad |= values > 1 + 1 / (pixels - 1).clip(lower=1)
        elif column not in ("hd95",) + COUNT_COLUMNS:
            bad |= values > 1
        if column in COUNT_COLUMNS:
            bad |= values.isna()
        if bad.any():
            raise _malformed(path, f"{column} values that are non-negative numbers"
                             + ("" if column in ("hd95",) + COUNT_COLUMNS else " in [0, 1]"),
                             f"{table[column][bad].iloc[0]!r} on row {int(bad.idxmax()) + 2}")
        table[column] = values.astype(float)
    return table[["id", "dice", "iou"] + extra]


def _read_profile(path: Path) -> dict:
    data = _read_json(path)
    for key in ("params_total", "flops_g", "fps"):
        value = data.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise _malformed(path, f"a non-negative number {key}", repr(value))
    return data


def _read_manifest(path: Path) -> dict:
    data = _read_json(path)
    if data.get("init") is not None and data["init"] not in INITS:
        raise _malformed(path, f"init {' or '.join(INITS)}", repr(data["init"]))
    cost = data.get("cost")
    if cost is not None:
        if not isinstance(cost, dict) or not all(cost.get(key) is None or _non_negative(cost[key])
                                                 for key in COST_NUMBERS):
            raise _malformed(path, f"'cost' with non-negative numbers (or null) {', '.join(COST_NUMBERS)}", repr(cost))
        if cost.get("peak_memory_kind") not in (None, *MEMORY_KINDS):
            raise _malformed(path, f"cost.peak_memory_kind {' or '.join(MEMORY_KINDS)}",
                             repr(cost.get("peak_memory_kind")))
    return data


def _read_train_log(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise _malformed(path, "a CSV with columns epoch,...,lr,train_loss,val_loss,val_dsc",
                         f"a parse error ({error})") from None
    if "epoch" not in table.columns:
        raise _malformed(path, "an epoch column", f"columns {', '.join(table.columns)}")
    for column in ("epoch", "lr", "train_loss", "val_loss", "val_dsc", "images_per_second", "peak_memory_mb"):
        if column in table.columns:
            table[column] = pd.to_numeric(table[column], errors="coerce")
    return table


def _check_predictions(path: Path) -> None:
    try:
        with np.load(path) as data:
            keys = set(data.files)
            if not {"ids", "probabilities"} <= keys:
                raise _malformed(path, "arrays ids and probabilities", f"arrays {sorted(keys)}")
            probabilities = data["probabilities"]
            if probabilities.dtype != np.uint8 or probabilities.ndim != 3 or len(data["ids"]) != len(probabilities):
                raise _malformed(path, "uint8 probabilities (N, S, S) and N ids",
                                 f"{probabilities.dtype} {probabilities.shape} and {len(data['ids'])} ids")
    except (OSError, ValueError) as error:
        if isinstance(error, ReportInputError):
            raise
        raise _malformed(path, "an .npz archive", f"an unreadable file ({error})") from None


def _missing_note(what: str, seeds: list[int]) -> str:
    return f"no results for {what} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"


def _metric_row(data: dict, run: Run, test_set: str) -> dict:
    toolbox, boundary = data.get("toolbox") or {}, data.get("boundary") or {}
    return {"protocol": run.protocol, "variant": run.variant, "seed": run.seed, "test_set": test_set,
            "n_images": data["n_images"], "dice_mean": data["per_image"]["dice_mean"],
            "iou_mean": data["per_image"]["iou_mean"],
            **{f"pooled_{key}": float(data["pooled"][key]) for key in POOLED_METRICS},
            **{f"toolbox_{key}": _number_or_nan(toolbox.get(key)) for key in TOOLBOX_METRICS},
            **{f"boundary_{key}": _number_or_nan(boundary.get(key)) for key in BOUNDARY_METRICS},
            "nsd_tolerance_px": _number_or_nan(boundary.get("nsd_tolerance_px")),
            "n_boundary_undefined": boundary.get("n_boundary_undefined", math.nan)}


def _older_files_note(paths: list[str], what: str, consequence: str, rule: str = "evaluate") -> str:
    return (f"{len(paths)} {what} (first: {paths[0]}; written by an older segbench): {consequence}. Rerun the "
            f"workflow's {rule} rule to fill them.")


def _expected_fingerprint(cfg: dict, run: Run, recorded: dict) -> tuple[dict, list[str]]:
    """The fingerprint the config implies for ``run``; file hashes that cannot be computed here (the data or
    weights are not on this machine, e.g. pulled results) are taken as recorded and named."""
    from segbench.fingerprint import run_fingerprint

    expected = run_fingerprint(cfg, run.protocol, run.variant, run.seed)
    unverified = []
    for section, keys in (("train_data", ("cache_sha256", "split_sha256")), ("pretrained", ("sha256",))):
        mine, theirs = expected.get(section), (recorded or {}).get(section)
        if isinstance(mine, dict) and isinstance(theirs, dict):
            for key in keys:
                if mine.get(key) is None and theirs.get(key) is not None:
                    mine[key] = theirs[key]
                    unverified.append(f"{section}.{key}")
    return expected, unverified


def _stale_run(cfg: dict, run: Run, manifest: dict) -> str | None:
    """Why a run's manifest does not describe the run this config asks for (None: it does)."""
    from segbench.fingerprint import differences

    recorded = manifest.get("fingerprint")
    if recorded is None:
        return f"{manifest['path']} records no config fingerprint (an older segbench)"
    expected, _ = _expected_fingerprint(cfg, run, recorded)
    changed = differences(recorded, expected)
    if changed:
        return f"{manifest['path']} was trained with another config ({'; '.join(changed[:3])})"
    return None


def _init_notes(results: "Results") -> list[str]:
    """A manifest whose recorded start (init, pretrained file) disagrees with what the config plans."""
    notes = []
    for (protocol, variant, seed), manifest in sorted(results.manifest_index.items()):
        recorded = manifest.get("init") or ("pretrained" if manifest.get("pretrained") else None)
        if recorded is not None and recorded != results.init(variant):
            notes.append(f"{manifest['path']}: the run started from {recorded} weights, but the config plans "
                         f"{results.init(variant)} for {variant}; its rows are labelled as the config says.")
    return notes


def collect(results_dir: str | Path) -> Results:
    results_dir = Path(results_dir)
    cfg = load_run_config(results_dir)
    if cfg is None:
        note = (f"{results_dir}/run_config.yaml not found: no run of the workflow has been reported, "
                f"so only the paper's values are shown")
        return Results(None, pd.DataFrame(), {}, {}, {}, [], {}, [note])
    notes, metric_rows, per_image, train_logs, manifests, predictions = [], [], {}, {}, [], {}
    manifest_index = {}
    missing_evals: dict[tuple[str, str, str], list[int]] = {}
    missing_runs: dict[tuple[str, str], list[int]] = {}
    older = {"toolbox": [], "boundary": [], "per_image": [], "cost": []}
    runs = planned_runs(cfg)
    for run in runs:
        run_dir = results_dir / run.protocol / run.variant / f"seed{run.seed}"
        log_path, manifest_path = run_dir / "train_log.csv", run_dir / "manifest.json"
        if log_path.exists():
            train_logs.setdefault((run.protocol, run.variant), {})[run.seed] = _read_train_log(log_path)
        else:
            missing_runs.setdefault((run.protocol, run.variant), []).append(run.seed)
        run_fingerprint = None
        if manifest_path.exists():
            manifest = {"path": str(manifest_path), **_read_manifest(manifest_path)}
            stale = _stale_run(cfg, run, manifest)
            if stale:
                # a result that describes another run than the one the table names is never shown
                notes.append(f"{stale}: {run.variant} seed {run.seed} ({run.protocol}) is left out of every table; "
                             f"rerun the workflow with this config to retrain it")
                missing_runs.setdefault((run.protocol, run.variant), []).append(run.seed)
                continue
            manifests.append(manifest)
            manifest_index[(run.protocol, run.variant, run.seed)] = manifest
            run_fingerprint = manifest.get("fingerprint_sha256")
            if manifest.get("cost") is None:
                older["cost"].append(str(manifest_path))
        for test_set in cfg["protocols"][run.protocol]["test"]:
            eval_dir = run_dir / "eval" / test_set
            metrics_path = eval_dir / "metrics.json"
            if not metrics_path.exists():
                missing_evals.setdefault((run.protocol, run.variant, test_set), []).append(run.seed)
                continue
            data = _read_metrics(metrics_path, run.protocol, run.variant, run.seed, test_set)
            if data.get("fingerprint_sha256") != run_fingerprint:
                notes.append(f"{metrics_path} scores another model than the {run_dir / 'model.pt'} beside it (run "
                             f"fingerprint {str(data.get('fingerprint_sha256'))[:12]} vs "
                             f"{str(run_fingerprint)[:12]}): left out; rerun the workflow to evaluate it again")
                missing_evals.setdefault((run.protocol, run.variant, test_set), []).append(run.seed)
                continue
            for block in ("toolbox", "boundary"):
                if data.get(block) is None:
                    older[block].append(str(metrics_path))
            metric_rows.append(_metric_row(data, run, test_set))
            per_image_path = eval_dir / "per_image.csv"
            if per_image_path.exists():
                table = _read_per_image(per_image_path)
                if len(table) != data["n_images"]:
                    raise _malformed(per_image_path, f"{data['n_images']} rows (n_images of {metrics_path.name})",
                                     f"{len(table)} rows")
                if abs(table["dice"].mean() - data["per_image"]["dice_mean"]) > 1e-6 and len(table):
                    notes.append(f"{per_image_path}: mean Dice {table['dice'].mean():.6f} differs from "
                                 f"dice_mean {data['per_image']['dice_mean']:.6f} in {metrics_path.name}")
                if not set(NEW_PER_IMAGE_COLUMNS) <= set(table.columns):
                    older["per_image"].append(str(per_image_path))
                per_image.setdefault((run.protocol, run.variant, test_set), {})[run.seed] = table
            else:
                notes.append(f"{per_image_path} is missing: per-image statistics of this run are left out")
            predictions_path = eval_dir / "predictions.npz"
            if predictions_path.exists():
                _check_predictions(predictions_path)
                predictions[(run.protocol, run.variant, run.seed, test_set)] = predictions_path
    for (protocol, variant, test_set), seeds in missing_evals.items():
        notes.append(_missing_note(f"{variant} on {test_set} ({protocol} protocol)", seeds))
    for (protocol, variant), seeds in missing_runs.items():
        notes.append(_missing_note(f"the training log of {variant} ({protocol} protocol)", seeds))
    for block, paths in (("toolbox", older["toolbox"]), ("boundary", older["boundary"])):
        if paths:
            notes.append(_older_files_note(paths, f"metrics.json files have no '{block}' block",
                                           f"their {'PraNet-toolbox' if block == 'toolbox' else 'HD95 and NSD'} "
                                           f"cells are empty"))
    if older["per_image"]:
        notes.append(_older_files_note(older["per_image"], "per_image.csv files lack the columns "
                                       + ",".join(NEW_PER_IMAGE_COLUMNS), "their per-image toolbox and boundary "
                                       "scores are left out (Dice, IoU and the paired tests are unaffected)"))
    if older["cost"]:
        notes.append(_older_files_note(older["cost"], "manifest.json files have no 'cost' block",
                                       "their training-cost cells are empty", "train"))
    profiles = {}
    # The workflow profiles the configured models; ablation cells are reported when a profile exists.
    optional = [variant for variant in ablation_cells(cfg) if variant not in cfg["models"]]
    for variant in list(cfg["models"]) + optional:
        path = results_dir / "profile" / f"{variant}.json"
        if path.exists():
            profile = _read_profile(path)
            model, kwargs = variant_spec(cfg, variant)
            if (cfg.get("profile") or {}).get("configuration") == "default":
                kwargs = {}
            if (profile.get("model"), profile.get("model_kwargs", kwargs)) != (model, kwargs):
                notes.append(f"{path} profiles {profile.get('model')} with {profile.get('model_kwargs')}, not the "
                             f"configured {model} with {kwargs}: left out; rerun the workflow's profile rule")
                continue
            profiles[variant] = profile
        elif variant not in optional:
            notes.append(f"no complexity profile for {variant} ({path})")
    metrics = pd.DataFrame(metric_rows)
    results = Results(cfg, metrics, per_image, profiles, train_logs, manifests, predictions, notes, runs,
                      manifest_index)
    results.notes.extend(_init_notes(results))
    return results
