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

from segbench.config import ablation_cells, planned_runs
from segbench.report.paper import POOLED_METRICS


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
    return cfg


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise _malformed(path, "JSON", f"a parse error ({error})") from None
    if not isinstance(data, dict):
        raise _malformed(path, "a JSON object", type(data).__name__)
    return data


def _fraction(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


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
    return data


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
    return table[["id", "dice", "iou"]]


def _read_profile(path: Path) -> dict:
    data = _read_json(path)
    for key in ("params_total", "flops_g", "fps"):
        value = data.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise _malformed(path, f"a non-negative number {key}", repr(value))
    return data


def _read_train_log(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise _malformed(path, "a CSV with columns epoch,...,lr,train_loss,val_loss,val_dsc",
                         f"a parse error ({error})") from None
    if "epoch" not in table.columns:
        raise _malformed(path, "an epoch column", f"columns {', '.join(table.columns)}")
    for column in ("epoch", "lr", "train_loss", "val_loss", "val_dsc"):
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


def collect(results_dir: str | Path) -> Results:
    results_dir = Path(results_dir)
    cfg = load_run_config(results_dir)
    if cfg is None:
        note = (f"{results_dir}/run_config.yaml not found: no run of the workflow has been reported, "
                f"so only the paper's values are shown")
        return Results(None, pd.DataFrame(), {}, {}, {}, [], {}, [note])
    notes, metric_rows, per_image, train_logs, manifests, predictions = [], [], {}, {}, [], {}
    missing_evals: dict[tuple[str, str, str], list[int]] = {}
    missing_runs: dict[tuple[str, str], list[int]] = {}
    for run in planned_runs(cfg):
        run_dir = results_dir / run.protocol / run.variant / f"seed{run.seed}"
        log_path, manifest_path = run_dir / "train_log.csv", run_dir / "manifest.json"
        if log_path.exists():
            train_logs.setdefault((run.protocol, run.variant), {})[run.seed] = _read_train_log(log_path)
        else:
            missing_runs.setdefault((run.protocol, run.variant), []).append(run.seed)
        if manifest_path.exists():
            manifests.append({"path": str(manifest_path), **_read_json(manifest_path)})
        for test_set in cfg["protocols"][run.protocol]["test"]:
            eval_dir = run_dir / "eval" / test_set
            metrics_path = eval_dir / "metrics.json"
            if not metrics_path.exists():
                missing_evals.setdefault((run.protocol, run.variant, test_set), []).append(run.seed)
                continue
            data = _read_metrics(metrics_path, run.protocol, run.variant, run.seed, test_set)
            row = {"protocol": run.protocol, "variant": run.variant, "seed": run.seed, "test_set": test_set,
                   "n_images": data["n_images"], "dice_mean": data["per_image"]["dice_mean"],
                   "iou_mean": data["per_image"]["iou_mean"],
                   **{f"pooled_{key}": float(data["pooled"][key]) for key in POOLED_METRICS}}
            metric_rows.append(row)
            per_image_path = eval_dir / "per_image.csv"
            if per_image_path.exists():
                table = _read_per_image(per_image_path)
                if len(table) != data["n_images"]:
                    raise _malformed(per_image_path, f"{data['n_images']} rows (n_images of {metrics_path.name})",
                                     f"{len(table)} rows")
                if abs(table["dice"].mean() - data["per_image"]["dice_mean"]) > 1e-6 and len(table):
                    notes.append(f"{per_image_path}: mean Dice {table['dice'].mean():.6f} differs from "
                                 f"dice_mean {data['per_image']['dice_mean']:.6f} in {metrics_path.name}")
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
    profiles = {}
    # The workflow profiles the configured models; ablation cells are reported when a profile exists.
    optional = [variant for variant in ablation_cells(cfg) if variant not in cfg["models"]]
    for variant in list(cfg["models"]) + optional:
        path = results_dir / "profile" / f"{variant}.json"
        if path.exists():
            profiles[variant] = _read_profile(path)
        elif variant not in optional:
            notes.append(f"no complexity profile for {variant} ({path})")
    metrics = pd.DataFrame(metric_rows)
    return Results(cfg, metrics, per_image, profiles, train_logs, manifests, predictions, notes)
