"""Training: one (protocol, variant, seed) run, resumable, deterministic on CPU.

A checkpoint is written at the end of every epoch (model, optimizer, scheduler, every random
state); a rerun of the same command continues from it and ends with the same weights as an
uninterrupted run. Randomness per epoch (data order, augmentation) comes from generators seeded
by (seed, epoch), so resuming needs no generator state beyond the global torch RNG (DropPath).
"""
from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import pickle
import math
import random
import socket
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from segbench import manifest as run_manifest
from segbench.checkpoint import (CheckpointError, UnsafeCheckpointError, checkpoint_exists, load_checkpoint,
                                 save_checkpoint)
from segbench.config import variant_spec
from segbench.data import cache_file, load_cache
from segbench.io import atomic_write
from segbench.losses import BceDiceLoss
from segbench.metrics import PooledConfusion
from segbench.nn.selective_scan import resolve_backend, set_default_backend, torch_implementation
from segbench.registry import create_model, get_card, to_probabilities
from segbench.transforms import augment_batch, scale_input

LOG_COLUMNS = ["epoch", "steps", "lr", "train_loss", "val_loss", "val_dsc", "seconds"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunFolderBusyError(RuntimeError):
    """Another training is writing the same run folder."""


@contextlib.contextmanager
def run_folder_lock(out_dir: Path):
    """Hold ``out_dir`` for this process, so two trainings never write the same run folder. The kernel
    drops the lock when the process ends, however it ends (SIGKILL included), so a rerun is never
    blocked by a dead one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".train.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunFolderBusyError(
                f"{out_dir} is being written by another training ({holder}); two trainings must never share a "
                "run folder. Wait for that one to finish, or give this one another --out."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Temporary files (segbench.io names them .<name>.<random>.tmp) of a training that was killed while
    writing; safe to remove while this process holds the run folder."""
    for path in [*out_dir.glob(".*.tmp"), *(out_dir / "checkpoints").glob(".*.tmp")]:
        path.unlink(missing_ok=True)


def select_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} was asked for, but torch sees no CUDA device")
    return device


def configure_determinism(seed: int, deterministic: bool, num_threads: int | None) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if num_threads:
        torch.set_num_threads(num_threads)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def _epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 7 + stream)


def _to_batch(images: np.ndarray, masks: np.ndarray, device: torch.device):
    image_tensor = torch.from_numpy(images).permute(0, 3, 1, 2).to(device, non_blocking=True)
    mask_tensor = torch.from_numpy(masks).unsqueeze(1).to(device, non_blocking=True)
    return image_tensor, mask_tensor.float() / 255.0


def _forward(model, images, scaling: str, amp: bool, device: torch.device):
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
        return model(scale_input(images, scaling)).float()


@torch.no_grad()
def validate(model, card, criterion, images, masks, cfg, device) -> tuple[float, float]:
    if len(images) == 0:
        return float("nan"), float("nan")
    model.eval()
    train_cfg = cfg["train"]
    losses, pooled = [], PooledConfusion()
    for start in range(0, len(images), cfg["evaluate"]["batch_size"]):
        batch_images, batch_masks = _to_batch(images[start : start + cfg["evaluate"]["batch_size"]],
                                              masks[start : start + cfg["evaluate"]["batch_size"]], device)
        output = _forward(model, batch_images, train_cfg["input_scaling"], train_cfg["amp"], device)
        losses.append(float(criterion(output, batch_masks)) * len(batch_images))
        probabilities = to_probabilities(output, card)
        threshold = cfg["evaluate"]["threshold"]
        pooled.add((probabilities >= threshold).cpu().numpy(), (batch_masks >= 0.5).cpu().numpy())
    return sum(losses) / len(images), pooled.ratios()["dsc"]


def train_run(cfg: dict, protocol: str, variant: str, seed: int, out_dir: str | Path) -> Path:
    """Train one run into ``out_dir`` (model.pt, train_log.csv, manifest.json); resumes if possible."""
    out_dir = Path(out_dir)
    with run_folder_lock(out_dir):
        _remove_stale_temporaries(out_dir)
        return _train_locked(cfg, protocol, variant, seed, out_dir)


def _train_locked(cfg: dict, protocol: str, variant: str, seed: int, out_dir: Path) -> Path:
    train_cfg = cfg["train"]
    model_name, model_kwargs = variant_spec(cfg, variant)
    card = get_card(model_name)
    train_dataset = cfg["protocols"][protocol]["train"]

    configure_determinism(seed, train_cfg["deterministic"], train_cfg["num_threads"])
    set_default_backend(cfg["scan_backend"])
    device = select_device(train_cfg["device"])

    data_file = cache_file(cfg["data"]["root"], train_dataset, cfg["image_size"])
    _, train_images, train_masks = load_cache(data_file, "train")
    try:
        _, val_images, val_masks = load_cache(data_file, "val")
    except ValueError:
        val_images, val_masks = train_images[:0], train_masks[:0]
    if train_cfg["checkpoint"] == "best_val" and len(val_images) == 0:
        raise ValueError(f"train.checkpoint is best_val but {data_file} has no val split")

    pretrained_file = cfg["pretrained"].get(model_name)
    model = create_model(model_name, pretrained=pretrained_file, **model_kwargs)
    model.to(device)
    if train_cfg["channels_last"]:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=train_cfg["t_max"], eta_min=train_cfg["eta_min"]
    )
    criterion = BceDiceLoss(card.output, train_cfg["bce_weight"], train_cfg["dice_weight"])

    checkpoint_dir = out_dir / "checkpoints"
    state = _resume(checkpoint_dir, model, optimizer, scheduler)
    start_epoch, best = state["epoch"], state["best"]
    log_rows = state["log"]

    fixed_angle = None
    if train_cfg["rotation_angle"] == "fixed_per_run":
        fixed_angle = float(torch.rand(1, generator=_epoch_generator(seed, -1, 0))) * 360.0

    steps_per_epoch = math.ceil(len(train_images) / train_cfg["batch_size"])
    if train_cfg["max_steps_per_epoch"]:
        steps_per_epoch = min(steps_per_epoch, train_cfg["max_steps_per_epoch"])
    description = f"{protocol}/{variant}/seed{seed}"
    for epoch in range(start_epoch, train_cfg["epochs"]):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_images), generator=_epoch_generator(seed, epoch, 1)).numpy()
        augment_generator = _epoch_generator(seed, epoch, 2)
        total_loss = 0.0
        lr = optimizer.param_groups[0]["lr"]
        progress = tqdm(range(steps_per_epoch), desc=f"{description} epoch {epoch + 1}/{train_cfg['epochs']}",
                        leave=False, mininterval=2.0)
        for step in progress:
            index = np.sort(order[step * train_cfg["batch_size"] : (step + 1) * train_cfg["batch_size"]])
            images, masks = _to_batch(train_images[index], train_masks[index], device)
            images, masks = augment_batch(
                images.float(), masks, augment_generator,
                hflip=train_cfg["hflip"], vflip=train_cfg["vflip"], rotate=train_cfg["rotate"], fixed_angle=fixed_angle,
            )
            output = _forward(model, images, train_cfg["input_scaling"], train_cfg["amp"], device)
            loss = criterion(output, masks)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"{description}: loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                    f"the last good checkpoint ({checkpoint_dir / 'last.pt'}) is kept. Lower train.lr, "
                    f"check the input data, or set train.amp: false."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step_loss = loss.item()
            total_loss += step_loss
            progress.set_postfix(loss=f"{step_loss:.4f}")
        scheduler.step()
        val_loss, val_dsc = validate(model, card, criterion, val_images, val_masks, cfg, device)
        log_rows.append({
            "epoch": epoch + 1, "steps": steps_per_epoch, "lr": lr,
            "train_loss": total_loss / steps_per_epoch, "val_loss": val_loss, "val_dsc": val_dsc,
            "seconds": round(time.perf_counter() - started, 3),
        })
        if train_cfg["checkpoint"] == "best_val" and (best is None or val_loss < best["val_loss"]):
            best = {"epoch": epoch + 1, "val_loss": val_loss}
            save_checkpoint(checkpoint_dir / "best.pt", {"model": model.state_dict(), "epoch": epoch + 1})
        save_checkpoint(checkpoint_dir / "last.pt", {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch + 1,
            "torch_rng": torch.get_rng_state(), "best": best, "log": log_rows,
        })
        print(f"{description} epoch {epoch + 1}: train_loss {log_rows[-1]['train_loss']:.4f} "
              f"val_loss {val_loss:.4f} val_dsc {val_dsc:.4f}", flush=True)

    final_weights = model.state_dict()
    if train_cfg["checkpoint"] == "best_val":
        final_weights = load_checkpoint(checkpoint_dir / "best.pt")["model"]
    _write_outputs(out_dir, final_weights, log_rows, cfg, dict(
        protocol=protocol, variant=variant, model=model_name, model_kwargs=model_kwargs, seed=seed,
        train_dataset=train_dataset, data_file=data_file, device=device, best=best,
        scan_backend=_describe_scan(cfg["scan_backend"], device),
        pretrained_file=pretrained_file,
    ))
    return out_dir


def _describe_scan(requested: str, device: torch.device) -> str:
    """The selective scan that ran: "cuda", or "torch/kernel" (compiled CPU kernel) or "torch/chunked"."""
    probe = torch.empty(0, device=device)
    backend = resolve_backend(requested, probe)
    return f"torch/{torch_implementation(probe)}" if backend == "torch" else backend


def _resume(checkpoint_dir: Path, model, optimizer, scheduler) -> dict:
    last = checkpoint_dir / "last.pt"
    if not checkpoint_exists(last):
        return {"epoch": 0, "best": None, "log": []}
    try:
        state = load_checkpoint(last)
    except UnsafeCheckpointError:
        raise
    except CheckpointError as error:
        print(f"warning: {error}; starting this run from scratch", flush=True)
        return {"epoch": 0, "best": None, "log": []}
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    print(f"resuming from {last} after epoch {state['epoch']}", flush=True)
    return {"epoch": state["epoch"], "best": state["best"], "log": list(state["log"])}


def _write_outputs(out_dir: Path, weights: dict, log_rows: list, cfg: dict, run: dict) -> None:
    with atomic_write(out_dir / "train_log.csv", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(log_rows)
    # Through a buffer: torch.save names the records inside the file after the file it writes, and
    # the temporary name is random, so saving to it directly would give each run different bytes.
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    with atomic_write(out_dir / "model.pt", "wb") as handle:
        handle.write(buffer.getvalue())
    run_manifest.write(out_dir / "manifest.json", cfg, run, out_dir / "model.pt")


def load_trained(run_dir: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, card, manifest) of a finished run."""
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    model = create_model(manifest["model"], **manifest["model_kwargs"])
    try:
        weights = torch.load(run_dir / "model.pt", map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{run_dir / 'model.pt'} holds objects other than tensors; refusing to unpickle it (that could run code "
            "from the file). segbench writes plain state dicts: retrain the run or pull its results again."
        ) from None
    model.load_state_dict(weights)
    return model.to(device).eval(), get_card(manifest["model"]), manifest
