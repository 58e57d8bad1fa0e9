"""Selective scan on CPU: the torch backend against a well-written sequential recurrence.

Times forward+backward at the four VM-UNetV2 stage shapes for a 256x256 input (SS2D calls the
scan once per block with its 4 directions stacked: d = 4 * 2C channels, B/C in 4 groups, n = 16):

    stage 1: L = 64*64 = 4096, C = 96  -> d = 768
    stage 2: L = 32*32 = 1024, C = 192 -> d = 1536
    stage 3: L = 16*16 =  256, C = 384 -> d = 3072
    stage 4: L =  8*8  =   64, C = 768 -> d = 6144

The baseline is the textbook loop with the per-step tensors unbound once (``.unbind``), which
keeps autograd's backward linear in L (``x[..., i]`` indexing, as in mamba_ssm's
selective_scan_ref, makes it quadratic). It materialises (b, d, n, l) tensors and keeps one state
per step for backward, so its memory grows ~11 x b*d*n*l*4 bytes; rows whose batch-8 baseline
would exceed ``--baseline-memory-gb`` run baseline and torch backend at a smaller batch (same
batch for both: like with like), and the torch backend is also timed alone at batch 8.

Each measurement alternates baseline and candidates ``--repeats`` times and reports medians,
because other processes share the CPU; the ratio is what matters. "max rel err" is the largest,
over the output and the gradients of u, delta, A, B, C, D and delta_bias, of
max|candidate - baseline| / max|baseline|, both in float32.

Usage: python benchmarks/scan.py [--quick] [--markdown FILE] [--repeats N] [--threads N]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from render import cpu_model, publish  # noqa: E402  (benchmarks/render.py, beside this file)
from segbench.nn import selective_scan as scan  # noqa: E402

STAGES = [(1, 96, 64), (2, 192, 32), (3, 384, 16), (4, 768, 8)]  # stage, C, feature-map side
STATE = 16
GROUPS = 4
BATCH = 8
BASELINE_BYTES_PER_ELEMENT = 11 * 4  # measured peak of the baseline per (b, d, n, l) element


def sequential_scan(u, delta, A, B, C, D, delta_bias):
    """The baseline: one step at a time, per-step tensors unbound once."""
    batch, dim, _ = u.shape
    per_group = dim // B.shape[1]
    dt = F.softplus(delta + delta_bias[:, None])
    B = B.repeat_interleave(per_group, dim=1)
    C = C.repeat_interleave(per_group, dim=1)
    decay = torch.exp(dt.unsqueeze(2) * A.unsqueeze(-1))
    drive = (dt * u).unsqueeze(2) * B
    state = u.new_zeros(batch, dim, A.shape[1])
    outputs = []
    for decay_t, drive_t, c_t in zip(decay.unbind(-1), drive.unbind(-1), C.unbind(-1)):
        state = decay_t * state + drive_t
        outputs.append((state * c_t).sum(-1))
    return torch.stack(outputs, dim=-1) + u * D[:, None]


def torch_backend_scan(implementation):
    def run(u, delta, A, B, C, D, delta_bias):
        scan.set_torch_implementation(implementation)
        return scan.selective_scan_fn(u, delta, A, B, C, D, None, delta_bias, True, backend="torch")
    return run


def model_like_inputs(batch, dim, length, seed=0):
    """Inputs shaped and scaled like SS2D's at initialisation (S4D-real A, dt in [1e-3, 0.1])."""
    generator = torch.Generator().manual_seed(seed)
    dt_init = torch.exp(torch.rand(dim, generator=generator) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    tensors = {
        "u": torch.randn(batch, dim, length, generator=generator),
        "delta": torch.randn(batch, dim, length, generator=generator) * 0.1,
        "A": -torch.arange(1, STATE + 1, dtype=torch.float32).repeat(dim, 1),
        "B": torch.randn(batch, GROUPS, STATE, length, generator=generator),
        "C": torch.randn(batch, GROUPS, STATE, length, generator=generator),
        "D": torch.ones(dim),
        "delta_bias": dt_init + torch.log(-torch.expm1(-dt_init)),  # inverse softplus
    }
    weights = torch.randn(batch, dim, length, generator=generator)
    return tensors, weights


def forward_backward(function, tensors, weights):
    """Seconds for one forward+backward, the output and the gradients."""
    leaves = {name: t.detach().clone().requires_grad_() for name, t in tensors.items()}
    start = time.perf_counter()
    out = function(**leaves)
    (out * weights).sum().backward()
    seconds = time.perf_counter() - start
    return seconds, [out.detach()] + [leaves[name].grad for name in tensors]


def max_relative_error(candidate, baseline):
    return max(((c - b).abs().max() / b.abs().max()).item() for c, b in zip(candidate, baseline))


def baseline_batch(dim, length, memory_gb):
    per_sample = BASELINE_BYTES_PER_ELEMENT * dim * STATE * length
    return max(1, min(BATCH, int(memory_gb * 2**30 // per_sample)))


def measure_stage(stage, channels, side, repeats, memory_gb, candidates):
    length, dim = side * side, 4 * 2 * channels
    batch = baseline_batch(dim, length, memory_gb)
    tensors, weights = model_like_inputs(batch, dim, length)
    for function in candidates.values():  # warm-up: builds the kernel, fills allocator caches
        small, small_weights = model_like_inputs(1, dim, min(length, 64))
        forward_backward(function, small, small_weights)
    times = {name: [] for name in ["sequential", *candidates]}
    errors = {}
    for _ in range(repeats):
        seconds, reference = forward_backward(sequential_scan, tensors, weights)
        times["sequential"].append(seconds)
        for name, function in candidates.items():
            seconds, result = forward_backward(function, tensors, weights)
            times[name].append(seconds)
            errors[name] = max(errors.get(name, 0.0), max_relative_error(result, reference))
        del reference, result
    row = {"stage": stage, "C": channels, "L": length, "d": dim, "batch": batch,
           "median": {name: statistics.median(values) for name, values in times.items()}, "error": errors}
    if batch < BATCH:
        full, full_weights = model_like_inputs(BATCH, dim, length)
        main = next(iter(candidates))
        row["full_batch"] = statistics.median(forward_backward(candidates[main], full, full_weights)[0] for _ in range(repeats))
    return row


def render(rows, candidates, header_lines):
    names = list(candidates)
    columns = ["stage", "L", "d", "batch", "sequential (s)"]
    for name in names:
        columns += [f"{name} (s)", f"{name} speedup", f"{name} max rel err"]
    columns.append(f"{names[0]} at batch {BATCH} (s)")
    lines = [*header_lines, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [str(row["stage"]), str(row["L"]), str(row["d"]), str(row["batch"]), f"{row['median']['sequential']:.3f}"]
        for name in names:
            cells += [f"{row['median'][name]:.3f}", f"{row['median']['sequential'] / row['median'][name]:.1f}x", f"{row['error'][name]:.1e}"]
        cells.append(f"{row['full_batch']:.3f}" if "full_batch" in row else f"{row['median'][names[0]]:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, baseline at batch 1 (~30 s)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 3, quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--baseline-memory-gb", type=float, default=None,
                        help="largest memory the baseline may use per row (default 6, quick 0)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 3)
    memory_gb = args.baseline_memory_gb if args.baseline_memory_gb is not None else (0.0 if args.quick else 6.0)

    kernel_available, kernel_detail = scan.kernel_status()
    candidates = {}
    if kernel_available:
        candidates["torch backend (C++ kernel)"] = torch_backend_scan("kernel")
    candidates["torch backend (chunked)"] = torch_backend_scan("chunked")

    header = [
        f"Selective scan, forward+backward, float32, n={STATE}, {GROUPS} groups, delta_softplus, D skip, delta_bias.",
        f"CPU: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"medians of {repeats} alternating repeat(s).",
        f"C++ kernel: {kernel_detail if kernel_available else 'unavailable: ' + kernel_detail}.",
        f"Baseline: sequential recurrence, per-step tensors unbound once. Rows with batch < {BATCH} ran baseline and "
        f"candidates at that batch (the baseline's memory at batch {BATCH} is too large); the last column is the "
        f"first candidate alone at batch {BATCH}.",
        "max rel err = max over output and all gradients of max|candidate - baseline| / max|baseline|.",
    ]
    print("\n".join(header), flush=True)
    rows = []
    for stage, channels, side in STAGES:
        row = measure_stage(stage, channels, side, repeats, memory_gb, candidates)
        rows.append(row)
        times = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in row["median"].items())
        print(f"stage {stage}: L={row['L']} d={row['d']} batch={row['batch']}: {times}", flush=True)
    scan.set_torch_implementation("auto")
    table = render(rows, candidates, header)
    publish(table, args.markdown)


if __name__ == "__main__":
    main()
