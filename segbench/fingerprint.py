"""What a trained run depends on, so that no result can silently describe another run.

A run's fingerprint lists every config value its weights depend on (model and arguments, the
recipe, the input size, the seed) and the sha256 of every file it reads (the training cache, the
split file, the pretrained weights). Training refuses to resume a checkpoint whose fingerprint
differs, evaluation refuses a run whose manifest disagrees with the config it is given, and the
report leaves out any result whose fingerprint is not the one the reported config implies.
Settings that change how fast a run goes but not what it learns are left out.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from segbench.config import variant_spec, variant_weights
from segbench.data import cache_file
from segbench.io import sha256_file

# train.* keys that select the hardware or the speed of a run, not its recipe
OPERATIONAL_TRAIN_KEYS = frozenset({"device", "num_threads", "deterministic", "channels_last"})


class FingerprintMismatchError(ValueError):
    """A run's stored fingerprint differs from the one the current config implies."""


@functools.lru_cache(maxsize=64)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def _hash_or_none(path: str | Path | None) -> str | None:
    if path is None or not Path(path).exists():
        return None
    status = Path(path).stat()
    return _file_hash(str(path), status.st_size, status.st_mtime_ns)


def run_fingerprint(cfg: dict, protocol: str, variant: str, seed: int) -> dict:
    """The inputs of one (protocol, variant, seed) training, as plain data."""
    model, model_kwargs = variant_spec(cfg, variant)
    train_dataset = cfg["protocols"][protocol]["train"]
    root = Path(cfg["data"]["root"])
    weights = variant_weights(cfg, variant)
    return {
        "protocol": protocol, "variant": variant, "seed": seed, "model": model, "model_kwargs": model_kwargs,
        "image_size": cfg["image_size"],
        "train": {key: value for key, value in sorted(cfg["train"].items()) if key not in OPERATIONAL_TRAIN_KEYS},
        "train_data": {
            "dataset": train_dataset,
            "cache_sha256": _hash_or_none(cache_file(root, train_dataset, cfg["image_size"])),
            "split_sha256": _hash_or_none(root / "splits" / f"{train_dataset}.csv"),
        },
        "pretrained": {"file": weights, "sha256": _hash_or_none(weights)} if weights else None,
    }


def digest(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, as ``key: old -> new``."""
    found = []
    for key in sorted(set(old) | set(new), key=str):
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            found += differences(before, after, f"{prefix}{key}.")
        elif before != after:
            found.append(f"{prefix}{key}: {json.dumps(before)} -> {json.dumps(after)}")
    return found


def check_same_run(stored: dict | None, current: dict, what: str, remedy: str) -> None:
    """Raise a one-line FingerprintMismatchError when ``stored`` is not ``current``."""
    if stored is None:
        raise FingerprintMismatchError(f"{what} records no config fingerprint (written by an older segbench), so it "
                                       f"cannot be shown to match this config; {remedy}")
    changed = differences(stored, current)
    if changed:
        shown = "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")
        raise FingerprintMismatchError(f"{what} was made with a different config ({shown}); {remedy}")


def check_manifest(cfg: dict, manifest: dict, run_dir: str | Path) -> None:
    """An evaluation must use the config its run was trained with (else its numbers describe neither)."""
    current = run_fingerprint(cfg, manifest["protocol"], manifest["variant"], manifest["seed"])
    check_same_run(manifest.get("fingerprint"), current, f"{Path(run_dir) / 'manifest.json'}",
                   "evaluate it with the config it was trained with, or retrain it with this one")
