"""CPU speed of every registered model, side by side in one run.

Per model (``segbench.registry.list_models()``):
- forward (eval, inference mode) and forward+backward (train mode, sum of the output) at 1x3x256x256,
  at the registry defaults (the paper sizes), random init;
- training images/second at the smoke size: config/smoke.yaml's model_args, image_size and batch
  size (64x64, batch 8), one full step as segbench.train runs it (batch from uint8 arrays, augmentation,
  input scaling, forward, BCE+Dice, backward, AdamW).

The machine is shared, so the models are interleaved: every round times each model once per
measurement, and the table reports the best and the median over rounds, plus ratios against UNetV2.
Target (issue 7): VM-UNetV2's forward+backward within 3x of UNetV2's.

Usage: python benchmarks/models.py [--quick] [--rounds N] [--threads N] [--markdown FILE]
``--quick`` (tests): card test_kwargs at 64x64 instead of the paper sizes, one round.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from render import machine_lines, publish  # noqa: E402  (benchmarks/render.py, beside this file)
from segbench.config import load_config  # noqa: E402
from segbench.losses import BceDiceLoss  # noqa: E402
from segbench.nn import selective_scan as scan  # noqa: E402
from segbench.registry import create_model, get_card, list_models  # noqa: E402
from segbench.train import forward, recipe_loss, training_batch  # noqa: E402

REFERENCE = "unetv2"
TARGET_MODEL, TARGET_RATIO = "vmunetv2", 3.0


def _seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


class ModelBench:
    """One model's three measurements; each call times one repetition."""

    def __init__(self, name: str, paper_kwargs: dict, smoke_kwargs: dict, size: int, smoke_size: int,
                 smoke_batch: int, train_cfg: dict):
        torch.manual_seed(0)
        self.name = name
        self.model = create_model(name, **paper_kwargs)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.inputs = torch.rand(1, 3, size, size) * 255
        self.smoke_model = create_model(name, **smoke_kwargs)
        self.optimizer = torch.optim.AdamW(self.smoke_model.parameters(), lr=1e-3, weight_decay=0.01)
        self.criterion = BceDiceLoss(get_card(name).output)
        generator = np.random.default_rng(0)
        self.images = generator.integers(0, 256, (4 * smoke_batch, smoke_size, smoke_size, 3), dtype=np.uint8)
        self.masks = (generator.random((4 * smoke_batch, smoke_size, smoke_size)) > 0.5).astype(np.uint8) * 255
        self.batch = smoke_batch
        self.train_cfg = train_cfg
        self.step_index = 0
        self.augment_generator = torch.Generator().manual_seed(0)

    def forward(self) -> float:
        self.model.eval()
        with torch.inference_mode():
            return _seconds(lambda: self.model(self.inputs))

    def forward_backward(self) -> float:
        self.model.train()

        def run():
            self.model.zero_grad(set_to_none=True)
            output = forward(self.model, self.inputs, False, torch.device("cpu"))
            sum(head.sum() for head in (output if isinstance(output, list) else [output])).backward()

        return _seconds(run)

    def train_step(self) -> float:
        self.smoke_model.train()
        start = (self.step_index % 4) * self.batch
        self.step_index += 1
        index = np.arange(start, start + self.batch)

        def run():
            images, masks = training_batch(self.images, self.masks, index, self.train_cfg, self.augment_generator,
                                           torch.device("cpu"))
            loss = recipe_loss(self.criterion, forward(self.smoke_model, images, False, torch.device("cpu")), masks)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()

        return _seconds(run)


MEASUREMENTS = ("forward", "forward_backward", "train_step")


def run_rounds(benches: list[ModelBench], rounds: int) -> dict:
    times = {bench.name: {m: [] for m in MEASUREMENTS} for bench in benches}
    for bench in benches:  # warm-up: first-call allocations, the scan kernel's build and load
        for measurement in MEASUREMENTS:
            getattr(bench, measurement)()
    for round_index in range(rounds):
        for bench in benches:
            for measurement in MEASUREMENTS:
                times[bench.name][measurement].append(getattr(bench, measurement)())
        summary = ", ".join(f"{name} {statistics.median(t['forward_backward']):.2f} s" for name, t in times.items())
        print(f"round {round_index + 1}/{rounds}: fwd+bwd medians so far: {summary}", flush=True)
    return times


def _cell(values: list[float], scale: float = 1000.0) -> str:
    best, median = min(values) * scale, statistics.median(values) * scale
    return f"{best:.0f}" if len(values) == 1 else f"{best:.0f} / {median:.0f}"


def render(benches: list[ModelBench], times: dict, header: list[str], batch: int) -> str:
    """Best (min) and median per cell; ratios from the best times, the medians' ratio in brackets.

    On a shared machine a slow repetition means another process took the cores; the best of the
    interleaved rounds is the steadier estimate of what the model costs, the median shows the spread.
    """
    columns = ["model", "params (M)", "fwd ms best / median", "fwd+bwd ms best / median", f"fwd / {REFERENCE}",
               f"fwd+bwd / {REFERENCE}", f"train img/s (smoke, batch {batch}) best / median", f"train / {REFERENCE}"]
    best = {name: {m: min(v) for m, v in t.items()} for name, t in times.items()}
    median = {name: {m: statistics.median(v) for m, v in t.items()} for name, t in times.items()}

    def ratio(name, measurement, inverse=False):
        if REFERENCE not in best:
            return "-"
        values = [table[name][measurement] / table[REFERENCE][measurement] for table in (best, median)]
        values = [1 / value for value in values] if inverse else values
        return f"{values[0]:.2f}x" if len(times[name][measurement]) == 1 else f"{values[0]:.2f}x ({values[1]:.2f}x)"

    lines = [*header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for bench in benches:
        rates = [bench.batch / t for t in times[bench.name]["train_step"]]
        rate_cell = f"{max(rates):.1f}" if len(rates) == 1 else f"{max(rates):.1f} / {statistics.median(rates):.1f}"
        lines.append("| " + " | ".join([
            bench.name, f"{bench.params / 1e6:.2f}", _cell(times[bench.name]["forward"]),
            _cell(times[bench.name]["forward_backward"]), ratio(bench.name, "forward"),
            ratio(bench.name, "forward_backward"), rate_cell, ratio(bench.name, "train_step", inverse=True),
        ]) + " |")
    if REFERENCE in best and TARGET_MODEL in best:
        values = [table[TARGET_MODEL]["forward_backward"] / table[REFERENCE]["forward_backward"] for table in (best, median)]
        verdict = "met" if values[0] <= TARGET_RATIO else "NOT met"
        lines += ["", f"Target: {TARGET_MODEL} forward+backward within {TARGET_RATIO:.0f}x of {REFERENCE}'s: "
                      f"{values[0]:.2f}x from the best times ({values[1]:.2f}x from the medians), {verdict}."]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="card test_kwargs at 64x64, one round (for tests)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5, quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--models", nargs="*", default=None, help="subset of registered models (default: all)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (1 if args.quick else 5)
    smoke = load_config(ROOT / "config" / "smoke.yaml")  # validated: the train section's defaults filled
    smoke_size, smoke_batch = smoke["image_size"], smoke["train"]["batch_size"]
    size = 64 if args.quick else 256
    names = args.models or list_models()
    scan.set_default_backend("torch")

    benches = []
    for name in names:
        paper_kwargs = get_card(name).test_kwargs if args.quick else {}
        benches.append(ModelBench(name, paper_kwargs, smoke.get("model_args", {}).get(name, {}), size,
                                  smoke_size, smoke_batch, smoke["train"]))
        print(f"built {name}", flush=True)
    scan_inner = scan.torch_implementation(torch.empty(0))
    header = [
        f"Forward (eval, inference mode) and forward+backward (train mode) at 1x3x{size}x{size}, "
        f"{'card test_kwargs (--quick)' if args.quick else 'registry defaults = paper sizes'}, random init; "
        f"training images/s at the smoke size (config/smoke.yaml model_args, {smoke_size}x{smoke_size}, "
        f"batch {smoke_batch}, one full segbench.train step with AdamW).",
        *machine_lines(torch.get_num_threads()),
        f"torch {torch.__version__}; selective scan: torch backend, {scan_inner} "
        f"({scan.kernel_status()[1] if scan_inner == 'kernel' else 'compiled CPU kernel unavailable'}); "
        f"{rounds} interleaved round(s) after one warm-up: best (min) and median per cell.",
    ]
    print("\n".join(header), flush=True)
    times = run_rounds(benches, rounds)
    table = render(benches, times, header, smoke_batch)
    publish(table, args.markdown)


if __name__ == "__main__":
    main()
