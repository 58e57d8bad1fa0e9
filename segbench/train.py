"""Training: one (protocol, variant, seed) run, resumable, deterministic on CPU, bound to its config.

A checkpoint is written at the end of every epoch (model, optimizer, scheduler, every random
state, and the run's fingerprint: segbench.fingerprint); a rerun of the same command continues
from it and ends with the same weights as an uninterrupted run, and a rerun with a different config
is refused instead of resumed. Randomness per epoch (data order, augmentation) comes from
generators seeded by (seed, epoch), so resuming needs no generator state beyond the global torch
RNG (DropPath).
"""
from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import os
import pickle
import random
import resource
import socket
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from segbench import manifest as run_manifest
from segbench.checkpoint import (CheckpointError, UnsafeCheckpointError, checkpoint_exists, load_checkpoint,
                                 save_checkpoint)
from segbench.config import ConfigError, variant_spec, variant_weights
from segbench.data import cache_file, load_cache
from segbench.fingerprint import check_same_run, run_fingerprint
from segbench.io import atomic_write, sha256_file
from segbench.losses import BceDiceLoss
from segbench.metrics import PooledConfusion
from segbench.nn.selective_scan import resolve_backend, set_default_backend, torch_implementation
from segbench.registry import check_output_kind, create_model, get_card, to_probabilities
from segbench.transforms import augment_batch, scale_input

LOG_COLUMNS = ["epoch", "steps", "lr", "train_loss", "val_loss", "val_dsc", "seconds", "images_per_second",
               "peak_memory_mb"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunFolderBusyError(RuntimeError):
    """Another training is writing the same run folder."""


@contextlib.contextmanager
def run_folder_lock(out_dir: Path):
    """Hold ``out_dir`` for this process, so two trainings never write the same run folder. The kernel
    drops the lock when the process ends, however it ends (SIGKILL included), so a rerun is never
    blocked by a dead one. The lock file is opened without following a symbolic link, so a link
    planted there can never make the lock truncate another file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir / ".train.lock"
    try:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise
        raise OSError(error.errno, f"{lock_path} is a symbolic link, not segbench's lock file; remove it and rerun",
                      str(lock_path)) from None
    with os.fdopen(descriptor, "r+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip() or "another process"
            raise RunFolderBusyError(
                f"{out_dir} is being written by another training ({holder}); two trainings must never share a "
                "run folder. Wait for that one to finish, or give this one another --out."
            ) from None
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
        raise ValueError(f"device {requested!r} was asked for (train.device / profile.device in the config), but "
                         f"torch sees no CUDA device here; set it to auto or cpu, or run on a GPU machine")
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


def epoch_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """The epoch's order cut into batches; a final batch of one image joins the batch before it, since
    batch norm cannot train on one image (every image is still seen once per epoch)."""
    batches = [np.sort(order[start : start + batch_size]) for start in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [np.sort(np.concatenate(batches[-2:]))]
    return batches


def _to_batch(images: np.ndarray, masks: np.ndarray, device: torch.device):
    image_tensor = torch.from_numpy(images).permute(0, 3, 1, 2).to(device, non_blocking=True)
    mask_tensor = torch.from_numpy(masks).unsqueeze(1).to(device, non_blocking=True)
    return image_tensor, mask_tensor.float() / 255.0


def training_batch(images: np.ndarray, masks: np.ndarray, index: np.ndarray, train_cfg: dict,
                   generator: torch.Generator, device: torch.device, fixed_angle: float | None = None):
    """One step's input: the cached images at ``index``, scaled as the model expects, then flipped and
    rotated together with their masks (the official order: scaling first, so rotation fills with the
    scaled minimum)."""
    batch_images, batch_masks = _to_batch(images[index], masks[index], device)
    return augment_batch(scale_input(batch_images, train_cfg["input_scaling"]), batch_masks, generator,
                         hflip=train_cfg["hflip"], vflip=train_cfg["vflip"], rotate=train_cfg["rotate"],
                         fixed_angle=fixed_angle)


def forward(model, inputs: torch.Tensor, amp: bool, device: torch.device):
    """The model on already scaled inputs; a list of heads stays a list (train mode, ``train_output="heads"``)."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
        output = model(inputs)
    return [head.float() for head in output] if isinstance(output, (list, tuple)) else output.float()


def recipe_loss(criterion, output, masks) -> torch.Tensor:
    """The recipe's loss; on a list of heads, the loss of each head, summed (as UNetV2's authors train)."""
    if isinstance(output, (list, tuple)):
        return sum(criterion(head, masks) for head in output)
    return criterion(output, masks)


@torch.no_grad()
def validate(model, card, criterion, images, masks, cfg, device) -> tuple[float, float]:
    if len(images) == 0:
        return float("nan"), float("nan")
    model.eval()
    train_cfg, batch_size = cfg["train"], cfg["evaluate"]["batch_size"]
    losses, pooled = [], PooledConfusion()
    for start in range(0, len(images), batch_size):
        batch_images, batch_masks = _to_batch(images[start : start + batch_size], masks[start : start + batch_size],
                                              device)
        output = forward(model, scale_input(batch_images, train_cfg["input_scaling"]), train_cfg["amp"], device)
        losses.append(float(criterion(output, batch_masks)) * len(batch_images))
        probabilities = to_probabilities(output, card)
        pooled.add((probabilities >= cfg["evaluate"]["threshold"]).cpu().numpy(), (batch_masks >= 0.5).cpu().numpy())
    return sum(losses) / len(images), pooled.ratios()["dsc"]


def _scheduler(optimizer, train_cfg: dict):
    """CosineAnnealingLR stepped per epoch; ``t_max: epochs`` anneals once over the run's own epochs."""
    t_max = train_cfg["epochs"] if train_cfg["t_max"] == "epochs" else train_cfg["t_max"]
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max, eta_min=train_cfg["eta_min"])


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """The process's peak memory so far: allocated CUDA memory on a GPU, resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_peak_rss"


def train_run(cfg: dict, protocol: str, variant: str, seed: int, out_dir: str | Path, restart: bool = False) -> Path:
    """Train one run into ``out_dir`` (model.pt, train_log.csv, manifest.json); resumes if possible.

    A checkpoint made with a different config is never resumed: an error names the differing keys,
    unless ``restart`` asks to discard it and train anew."""
    out_dir = Path(out_dir)
    if protocol not in cfg["protocols"]:
        raise ConfigError(f"unknown protocol {protocol!r}; the config defines {', '.join(cfg['protocols'])}")
    with run_folder_lock(out_dir):
        _remove_stale_temporaries(out_dir)
        return _train_locked(cfg, protocol, variant, seed, out_dir, restart)


def _train_locked(cfg: dict, protocol: str, variant: str, seed: int, out_dir: Path, restart: bool) -> Path:
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
    if len(train_images) < 2:
        raise ValueError(f"{data_file}: the train split holds {len(train_images)} image(s); training needs at least 2 "
                         f"(batch norm cannot learn from one image)")
    fingerprint = run_fingerprint(cfg, protocol, variant, seed)

    pretrained_file = variant_weights(cfg, variant)
    model = create_model(model_name, pretrained=pretrained_file, **model_kwargs)
    model.to(device)
    if train_cfg["channels_last"]:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])
    scheduler = _scheduler(optimizer, train_cfg)
    criterion = BceDiceLoss(card.output, train_cfg["bce_weight"], train_cfg["dice_weight"])

    checkpoint_dir = out_dir / "checkpoints"
    state = _resume(checkpoint_dir, model, optimizer, scheduler, fingerprint, restart)
    start_epoch, best = state["epoch"], state["best"]
    log_rows = state["log"]

    fixed_angle = None
    if train_cfg["rotation_angle"] == "fixed_per_run":
        fixed_angle = float(torch.rand(1, generator=_epoch_generator(seed, -1, 0))) * 360.0

    description = f"{protocol}/{variant}/seed{seed}"
    output_checked = start_epoch > 0
    for epoch in range(start_epoch, train_cfg["epochs"]):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_images), generator=_epoch_generator(seed, epoch, 1)).numpy()
        batches = epoch_batches(order, train_cfg["batch_size"])[: train_cfg["max_steps_per_epoch"] or None]
        augment_generator = _epoch_generator(seed, epoch, 2)
        total_loss, seen = 0.0, 0
        lr = optimizer.param_groups[0]["lr"]
        # no progress bar when the output is a log file: one line per epoch is what a log should hold
        progress = tqdm(batches, desc=f"{description} epoch {epoch + 1}/{train_cfg['epochs']}", leave=False,
                        mininterval=2.0, disable=None)
        for step, index in enumerate(progress):
            images, masks = training_batch(train_images, train_masks, index, train_cfg, augment_generator, device,
                                           fixed_angle)
            output = forward(model, images, train_cfg["amp"], device)
            if not output_checked:
                for head in output if isinstance(output, list) else [output]:
                    check_output_kind(model_name, head)
                output_checked = True
            loss = recipe_loss(criterion, output, masks)
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
            seen += len(index)
            progress.set_postfix(loss=f"{step_loss:.4f}")
        train_seconds = time.perf_counter() - started
        scheduler.step()
        val_loss, val_dsc = validate(model, card, criterion, val_images, val_masks, cfg, device)
        log_rows.append({
            "epoch": epoch + 1, "steps": len(batches), "lr": lr,
            "train_loss": total_loss / len(batches), "val_loss": val_loss, "val_dsc": val_dsc,
            "seconds": round(time.perf_counter() - started, 3),
            "images_per_second": round(seen / train_seconds, 3),
            "peak_memory_mb": round(peak_memory_mb(device)[0], 1),
        })
        if train_cfg["checkpoint"] == "best_val" and (best is None or val_loss < best["val_loss"]):
            best = {"epoch": epoch + 1, "val_loss": val_loss}
            save_checkpoint(checkpoint_dir / "best.pt", {"model": model.state_dict(), "epoch": epoch + 1})
        save_checkpoint(checkpoint_dir / "last.pt", {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch + 1,
            "torch_rng": torch.get_rng_state(), "best": best, "log": log_rows, "fingerprint": fingerprint,
        })
        print(f"{description} epoch {epoch + 1}/{train_cfg['epochs']}: lr {lr:.3g} train_loss "
              f"{log_rows[-1]['train_loss']:.4f} val_loss {val_loss:.4f} val_dsc {val_dsc:.4f} "
              f"({log_rows[-1]['seconds']:.1f} s)", flush=True)

    final_weights = model.state_dict()
    if train_cfg["checkpoint"] == "best_val":
        final_weights = load_checkpoint(checkpoint_dir / "best.pt")["model"]
    _write_outputs(out_dir, final_weights, log_rows, cfg, dict(
        protocol=protocol, variant=variant, model=model_name, model_kwargs=model_kwargs, seed=seed,
        train_dataset=train_dataset, data_file=data_file, device=device, best=best,
        scan_backend=_describe_scan(cfg["scan_backend"], device),
        pretrained_file=pretrained_file, fingerprint=fingerprint, cost=run_cost(log_rows, device),
    ))
    return out_dir


def run_cost(log_rows: list[dict], device: torch.device) -> dict:
    """What the run cost, from its epochs (a resumed run's epochs included)."""
    seconds = [row["seconds"] for row in log_rows]
    throughputs = [row.get("images_per_second") for row in log_rows if row.get("images_per_second")]
    memory = [row["peak_memory_mb"] for row in log_rows if row.get("peak_memory_mb") is not None]
    return {
        "wall_seconds": round(sum(seconds), 3),
        "seconds_per_epoch": round(sum(seconds) / len(seconds), 3) if seconds else None,
        "images_per_second": round(float(np.median(throughputs)), 3) if throughputs else None,
        "peak_memory_mb": max(memory) if memory else None,
        "peak_memory_kind": peak_memory_mb(device)[1],
        "epochs": len(log_rows),
    }


def _describe_scan(requested: str, device: torch.device) -> str:
    """The selective scan that ran: "cuda", or "torch/kernel" (compiled CPU kernel) or "torch/chunked"."""
    probe = torch.empty(0, device=device)
    backend = resolve_backend(requested, probe)
    return f"torch/{torch_implementation(probe)}" if backend == "torch" else backend


def _first_problem(error: BaseException) -> str:
    """The first line of torch's error that says what is wrong (not a header such as "Error(s) in loading
    state_dict for UNet:"), for a one-line message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return next((line for line in lines if not line.endswith(":")), lines[0] if lines else type(error).__name__)


_RESUME_KEYS = ("model", "optimizer", "scheduler", "epoch", "torch_rng", "best", "log")


def _discard_checkpoints(checkpoint_dir: Path) -> None:
    for path in checkpoint_dir.glob("*.pt*"):
        path.unlink()


def _resume(checkpoint_dir: Path, model, optimizer, scheduler, fingerprint: dict, restart: bool) -> dict:
    last = checkpoint_dir / "last.pt"
    fresh = {"epoch": 0, "best": None, "log": []}
    if restart:
        _discard_checkpoints(checkpoint_dir)
    if not checkpoint_exists(last):
        return fresh
    try:
        state = load_checkpoint(last)
    except UnsafeCheckpointError:
        raise
    except CheckpointError as error:
        print(f"warning: {error}; starting this run from scratch", flush=True)
        return fresh
    run_dir = checkpoint_dir.parent
    check_same_run(state.get("fingerprint") if isinstance(state, dict) else None, fingerprint,
                   f"{last}",
                   f"it is not resumed. To train this run anew with the current config, delete {checkpoint_dir} "
                   f"(or run segbench train ... --restart); to finish the old run, use its config "
                   f"({run_dir / 'manifest.json'} records it when it finished)")
    missing = [key for key in _RESUME_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{last}: expected a segbench checkpoint with {', '.join(_RESUME_KEYS)}, found no "
                              f"{', '.join(missing)}; delete {checkpoint_dir} to train this run anew")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{last} does not fit this model and optimizer ({_first_problem(error)}); delete "
                              f"{checkpoint_dir} to train this run anew") from None
    print(f"resuming from {last} after epoch {state['epoch']}", flush=True)
    return {"epoch": state["epoch"], "best": state["best"], "log": list(state["log"])}


def _write_outputs(out_dir: Path, weights: dict, log_rows: list, cfg: dict, run: dict) -> None:
    with atomic_write(out_dir / "train_log.csv", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS, restval="")
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
    """(model in eval mode, card, manifest) of a finished run; the weights must be the ones its manifest describes."""
    run_dir = Path(run_dir)
    manifest_path, weights_path = run_dir / "manifest.json", run_dir / "model.pt"
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{manifest_path} is not valid JSON ({error}); retrain the run") from None
    if not weights_path.exists():
        raise FileNotFoundError(f"{weights_path} does not exist; train the run first (segbench train)")
    found = sha256_file(weights_path)
    if found != manifest.get("weights_sha256"):
        raise ValueError(f"{weights_path} is not the file {manifest_path} describes (sha256 {found[:12]}..., manifest "
                         f"{str(manifest.get('weights_sha256'))[:12]}...): it was replaced, cut short or damaged; "
                         f"retrain the run or restore both files together")
    model = create_model(manifest["model"], **manifest["model_kwargs"])
    try:
        weights = torch.load(weights_path, map_location=device, weights_only=True)
        model.load_state_dict(weights)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{weights_path} holds objects other than tensors; refusing to unpickle it (that could run code "
            "from the file). segbench writes plain state dicts: retrain the run or pull its results again."
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{weights_path} cannot be loaded into {manifest['model']} with {manifest['model_kwargs']} "
                         f"({_first_problem(error)}); retrain the run") from None
    return model.to(device).eval(), get_card(manifest["model"]), manifest
