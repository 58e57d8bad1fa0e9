"""Training data path against the training step it feeds, on the CPU at batch 8.

The data path is what segbench.train runs before each forward pass: the resized uint8 cache read
once (segbench.data.load_cache), then per step a sorted slice of a seeded permutation
(segbench.train.epoch_batches) and segbench.train.training_batch (numpy indexing, scaling, flips and
rotation on the batched tensors). The step is one VM-UNetV2 training step on a prepared batch (forward, BCE+Dice,
backward, AdamW), at the smoke size (config/smoke.yaml widths, 64x64) and at the paper size (registry
defaults, 256x256). Target (issue 7): the data path delivers >= 5x the images/second the step consumes.

The cache is built in a temporary folder by the segbench data CLI (prepare --source synthetic, split,
cache), as the workflow builds it. Data path and step alternate in rounds (the machine is shared);
the table reports medians.

Usage: python benchmarks/loader.py [--quick] [--rounds N] [--threads N] [--markdown FILE]
``--quick`` (tests): the smoke size only, a small cache, one round.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from render import machine_lines, publish  # noqa: E402  (benchmarks/render.py, beside this file)
from segbench.data import load_cache  # noqa: E402
from segbench.losses import BceDiceLoss  # noqa: E402
from segbench.nn import selective_scan as scan  # noqa: E402
from segbench.registry import create_model, get_card  # noqa: E402
from segbench.train import _epoch_generator, epoch_batches, forward, training_batch  # noqa: E402

DATASET = "isic17"
MODEL = "vmunetv2"
TARGET_RATIO = 5.0
CPU = torch.device("cpu")


def build_cache(root: Path, sizes: list[int], n_train: int, n_test: int) -> dict[int, Path]:
    """Prepare, split and cache a synthetic dataset with the segbench data CLI; {size: cache file}."""
    def data(*arguments):
        command = [sys.executable, "-m", "segbench.data.cli", "data", *map(str, arguments), "--root", str(root),
                   "--no-progress"]
        completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if completed.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({completed.returncode}):\n{completed.stderr}")
        print(completed.stdout.strip(), flush=True)

    data("prepare", DATASET, "--source", "synthetic", "--n-train", n_train, "--n-test", n_test,
         "--min-side", 300, "--max-side", 400)
    data("split", DATASET)
    for size in sizes:
        data("cache", DATASET, "--size", size)
    return {size: root / "cache" / f"{DATASET}_{size}.npz" for size in sizes}


class DataPath:
    """segbench.train's per-step data work, one epoch order after another."""

    def __init__(self, cache_file: Path, batch: int, train_cfg: dict):
        started = time.perf_counter()
        _, self.images, self.masks = load_cache(cache_file, "train")
        self.load_seconds = time.perf_counter() - started
        self.batch, self.train_cfg = batch, train_cfg
        self.epoch, self.step, self.steps_per_epoch = 0, 0, len(self.images) // batch
        self._new_epoch()

    def _new_epoch(self) -> None:
        order = torch.randperm(len(self.images), generator=_epoch_generator(0, self.epoch, 1)).numpy()
        self.batches = epoch_batches(order, self.batch)[: self.steps_per_epoch]
        self.generator = _epoch_generator(0, self.epoch, 2)
        self.epoch, self.step = self.epoch + 1, 0

    def next_batch(self):
        if self.step == self.steps_per_epoch:
            self._new_epoch()
        index = self.batches[self.step]
        self.step += 1
        return training_batch(self.images, self.masks, index, self.train_cfg, self.generator, CPU)

    def time_steps(self, steps: int) -> list[float]:
        timings = []
        for _ in range(steps):
            started = time.perf_counter()
            self.next_batch()
            timings.append(time.perf_counter() - started)
        return timings


class TrainStep:
    """One VM-UNetV2 training step on a fixed, already prepared batch."""

    def __init__(self, model_kwargs: dict, batch_images, batch_masks):
        torch.manual_seed(0)
        self.model = create_model(MODEL, **model_kwargs).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.01)
        self.criterion = BceDiceLoss(get_card(MODEL).output)
        self.images, self.masks = batch_images, batch_masks

    def time_step(self) -> float:
        started = time.perf_counter()
        loss = self.criterion(forward(self.model, self.images, False, CPU), self.masks)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - started


def measure(label: str, cache_file: Path, model_kwargs: dict, batch: int, train_cfg: dict, rounds: int,
            loader_steps: int) -> dict:
    data_path = DataPath(cache_file, batch, train_cfg)
    step = TrainStep(model_kwargs, *data_path.next_batch())
    data_path.time_steps(2)
    step.time_step()  # warm-up: allocations, the scan kernel's first load
    loader_times, step_times = [], []
    for _ in range(rounds):
        loader_times += data_path.time_steps(loader_steps)
        step_times.append(step.time_step())
    loader_rate = batch / statistics.median(loader_times)
    step_rate = batch / statistics.median(step_times)
    row = dict(label=label, size=data_path.images.shape[1], n_train=len(data_path.images),
               load_seconds=data_path.load_seconds, loader_ms=statistics.median(loader_times) * 1000,
               loader_rate=loader_rate, step_ms=statistics.median(step_times) * 1000, step_rate=step_rate,
               ratio=loader_rate / step_rate, loader_samples=len(loader_times), step_samples=len(step_times))
    print(f"{label}: data path {loader_rate:.0f} img/s, step {step_rate:.1f} img/s, ratio {row['ratio']:.0f}x",
          flush=True)
    return row


def render(rows: list[dict], header: list[str], batch: int) -> str:
    columns = ["training step measured", "cache", "load_cache once (s)", "data path ms/batch", "data path img/s",
               "step ms", "step img/s", "ratio", f"target >= {TARGET_RATIO:.0f}x"]
    lines = [*header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join([
            row["label"], f"{row['n_train']} x {row['size']}x{row['size']}", f"{row['load_seconds']:.3f}",
            f"{row['loader_ms']:.1f}", f"{row['loader_rate']:.0f}", f"{row['step_ms']:.0f}",
            f"{row['step_rate']:.1f}", f"{row['ratio']:.0f}x", "met" if row["ratio"] >= TARGET_RATIO else "NOT met",
        ]) + " |")
    lines += ["", f"Batch {batch}. Rates are medians: data path over every timed batch, step over the rounds."]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke size only, small cache, one round (for tests)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 5, quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (1 if args.quick else 5)
    smoke = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    from segbench.config import validate_config  # fills the train defaults (flips, rotation, input scaling)

    train_cfg = validate_config(smoke, "config/smoke.yaml")["train"]
    batch, smoke_size = train_cfg["batch_size"], smoke["image_size"]
    sizes = [smoke_size] if args.quick else [smoke_size, 256]
    scan.set_default_backend("torch")

    with tempfile.TemporaryDirectory(prefix="segbench_loader_") as temporary:
        caches = build_cache(Path(temporary), sizes, n_train=16 if args.quick else 96, n_test=4 if args.quick else 24)
        header = [
            f"Data path = segbench.train's batching (load_cache, seeded order, _to_batch) + "
            f"segbench.transforms.augment_batch (hflip {train_cfg['hflip']}, vflip {train_cfg['vflip']}, "
            f"rotate {train_cfg['rotate']}); step = one {MODEL} training step (forward, BCE+Dice, backward, "
            f"AdamW) on a prepared batch. Synthetic {DATASET} cache built by `segbench data prepare/split/cache`.",
            *machine_lines(torch.get_num_threads()),
            f"torch {torch.__version__}; selective scan: torch backend ({scan.torch_implementation(torch.empty(0))}).",
        ]
        print("\n".join(header), flush=True)
        rows = [measure(f"{MODEL} smoke widths, {smoke_size}x{smoke_size}", caches[smoke_size],
                        smoke["model_args"][MODEL], batch, train_cfg, rounds, loader_steps=10)]
        if 256 in caches:
            rows.append(measure(f"{MODEL} paper size, 256x256", caches[256], {}, batch, train_cfg, rounds,
                                loader_steps=10))
    table = render(rows, header, batch)
    publish(table, args.markdown)


if __name__ == "__main__":
    main()
