"""Run manifests (nnU-Net's debug.json habit): everything needed to say how a number was made."""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

import torch

from segbench.fingerprint import digest
from segbench.io import sha256_file, write_json

_PACKAGES = ("torch", "torchvision", "timm", "segmentation-models-pytorch", "fvcore", "numpy",
             "snakemake", "dvc", "mamba-ssm")


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parent).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def write(path: Path, cfg: dict, run: dict, weights_file: Path) -> None:
    split_file = Path(cfg["data"]["root"]) / "splits" / f"{run['train_dataset']}.csv"
    pretrained = run.get("pretrained_file")
    write_json(path, {
        "protocol": run["protocol"], "variant": run["variant"], "model": run["model"],
        "model_kwargs": run["model_kwargs"], "seed": run["seed"], "train_dataset": run["train_dataset"],
        "git_sha": git_sha(),
        "config": cfg,
        "data": {
            "cache_file": str(run["data_file"]), "cache_sha256": sha256_file(run["data_file"]),
            "split_file": str(split_file), "split_sha256": sha256_file(split_file) if split_file.exists() else None,
        },
        "init": "pretrained" if pretrained else "scratch",
        "pretrained": {"file": pretrained, "sha256": sha256_file(pretrained)} if pretrained else None,
        "fingerprint": run["fingerprint"],
        "fingerprint_sha256": digest(run["fingerprint"]),
        "cost": run["cost"],
        "weights_sha256": sha256_file(weights_file),
        "selected_checkpoint": run["best"] if cfg["train"]["checkpoint"] == "best_val" else "last",
        "device": describe_device(run["device"]),
        "scan_backend": run["scan_backend"],
        "determinism": {
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "num_threads": torch.get_num_threads(),
        },
        "versions": package_versions(),
    })
