"""GPU check (issue 7): scan equivalence, model FPS and VM-UNetV2 training steps on one CUDA GPU.

Run by ``scripts/gpu_check.sh`` on a lent GPU machine, inside a fixed time budget: the sections run
in order of importance and each one stops (and says so in the table) when the budget runs out.

1. scan: ``selective_scan_fn`` with backend "cuda" (mamba_ssm's kernel) against backend "torch",
   both float32 on the GPU, and both against the torch backend in float64, at the four VM-UNetV2
   stage shapes for a 256x256 input; forward output and the gradients of every input. Error =
   max|x - ref| / max|ref|, the largest over output and gradients. Plus VM-UNetV2 end to end:
   the same weights and input through both backends.
2. train: VM-UNetV2 (paper size) steps on synthetic 256x256 images, batch 16, bf16 autocast, through
   segbench.train's own batching/augmentation/forward; steps/s after warm-up and the loss going down.
3. fps: every registered model (registry defaults = paper sizes) at 1x3x256x256 and at the largest
   power-of-two batch that fits (or that runs a forward pass within a time cap), bf16 autocast off
   and on, both scan backends for the VM models, channels-last for the CNNs; CUDA events, median
   after warm-up (segbench.profile._time_forward).
4. train_run: segbench.train.train_run itself on the device (amp, channels-last, cudnn.benchmark) for
   two short epochs of VM-UNetV2 at smoke widths on a prepared synthetic cache.

``--cpu-dry-run`` runs every section on the CPU at toy sizes (model card test_kwargs, 64x64, a few
steps); CUDA-only parts are skipped with a message. It exists so that the single device call
cannot fail on a typo.

Writes OUT/gpu_check.md (one table) and OUT/gpu_check.json after every section, so a run cut off
by its limit still leaves what it measured.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from segbench.data.synthetic import SyntheticSettings, generate
from segbench.io import atomic_write
from segbench.losses import BceDiceLoss
from segbench.nn import selective_scan as scan
from segbench.nn.vmamba import SS2D
from segbench.profile import _time_forward
from segbench.registry import create_model, get_card, list_models
from segbench.train import _forward, _to_batch
from segbench.transforms import augment_batch

STAGES = [(1, 96, 64), (2, 192, 32), (3, 384, 16), (4, 768, 8)]  # stage, C, feature-map side at 256x256
DRY_STAGES = [(1, 8, 16), (2, 16, 8)]
STATE = 16
DIRECTIONS = 4
FPS_ORDER = ["vmunetv2", "unetv2", "vmunet", "unet", "unetpp"]  # the paper's comparison first
SCAN_TOLERANCE = 1e-3  # float32 vs float32 / float64, max-abs relative to max-abs


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


class Report:
    """One table (check, subject, configuration, batch, result, note) plus a header; rewritten after each row."""

    COLUMNS = ["check", "subject", "configuration", "batch", "result", "note"]

    def __init__(self, out_dir: Path, header: dict):
        self.out_dir = out_dir
        self.header = header
        self.rows: list[dict] = []
        self.data: dict = {"header": header, "scan": [], "train": [], "fps": [], "skipped": []}

    def row(self, check: str, subject: str, configuration: str, batch, result: str, note: str = "", **data) -> None:
        entry = dict(check=check, subject=subject, configuration=configuration, batch=batch, result=result, note=note)
        self.rows.append(entry)
        self.data.setdefault(check, []).append({**entry, **data})
        print(" | ".join(str(entry[c]) for c in self.COLUMNS), flush=True)
        self.write()

    def skip(self, check: str, what: str, why: str) -> None:
        self.row(check, what, "-", "-", "skipped", why)

    def write(self) -> None:
        lines = ["# GPU check (scripts/gpu_check.sh)", ""]
        lines += [f"- {key}: {value}" for key, value in self.header.items()]
        lines += ["", "| " + " | ".join(self.COLUMNS) + " |", "|" + "---|" * len(self.COLUMNS)]
        lines += ["| " + " | ".join(str(row[c]) for c in self.COLUMNS) + " |" for row in self.rows]
        with atomic_write(self.out_dir / "gpu_check.md") as handle:
            handle.write("\n".join(lines) + "\n")
        with atomic_write(self.out_dir / "gpu_check.json") as handle:
            json.dump(self.data, handle, indent=1, default=str)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- 1. scan equivalence

def _scan_inputs(batch: int, channels: int, side: int, device: torch.device, generator: torch.Generator) -> dict:
    """Inputs shaped and scaled as SS2D feeds them at one stage (4 directions stacked, d = 4 * 2C)."""
    dim, length = DIRECTIONS * 2 * channels, side * side

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator) * scale).to(device)

    dt = torch.exp(torch.rand(dim, generator=generator) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    a_log = torch.log(torch.arange(1, STATE + 1, dtype=torch.float32)).repeat(dim, 1)
    return dict(
        u=randn(batch, dim, length), delta=randn(batch, dim, length, scale=0.5),
        A=(-torch.exp(a_log + torch.randn(dim, STATE, generator=generator) * 0.1)).to(device),
        B=randn(batch, DIRECTIONS, STATE, length), C=randn(batch, DIRECTIONS, STATE, length),
        D=randn(dim, scale=0.5) + 1.0, delta_bias=(dt + torch.log(-torch.expm1(-dt))).to(device),
    )


def _scan_with_grads(inputs: dict, grad_out: torch.Tensor, backend: str, dtype: torch.dtype) -> dict:
    leaves = {name: value.detach().to(dtype).requires_grad_(True) for name, value in inputs.items()}
    out = scan.selective_scan_fn(**leaves, delta_softplus=True, backend=backend)
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out.to(dtype))
    return {"out": out.detach(), **{f"d{name}": grad for name, grad in zip(leaves, grads)}}


def _max_relative_error(candidate: dict, reference: dict) -> tuple[float, str]:
    worst, worst_name = 0.0, ""
    for name, ref in reference.items():
        ref = ref.double()
        error = float((candidate[name].double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
        if not math.isfinite(error) or error > worst:
            worst, worst_name = (error if math.isfinite(error) else float("inf")), name
    return worst, worst_name


def check_scan(report: Report, device: torch.device, dry: bool, budget: Budget) -> None:
    cuda_ok = device.type == "cuda" and scan.cuda_backend_available()
    if not cuda_ok:
        why = "no CUDA device (dry run)" if device.type != "cuda" else f"mamba_ssm kernel unavailable: {scan._mamba_ssm_scan()[1]}"
        report.skip("scan", "cuda vs torch", why)
    generator = torch.Generator().manual_seed(0)
    batch = 1 if dry else 2
    for stage, channels, side in DRY_STAGES if dry else STAGES:
        if budget.left() < 30:
            report.skip("scan", f"stage {stage}", "time budget")
            break
        inputs = _scan_inputs(batch, channels, side, device, generator)
        grad_out = torch.randn(inputs["u"].shape, generator=generator).to(device)
        shape = f"b={batch} d={inputs['u'].shape[1]} n={STATE} L={side * side} (stage {stage})"
        reference = _scan_with_grads(inputs, grad_out, "torch", torch.float64)
        results = {"torch": _scan_with_grads(inputs, grad_out, "torch", torch.float32)}
        if cuda_ok:
            results["cuda"] = _scan_with_grads(inputs, grad_out, "cuda", torch.float32)
            error, name = _max_relative_error(results["cuda"], results["torch"])
            report.row("scan", "cuda vs torch (fp32)", shape, batch, f"{error:.2e}",
                       f"worst: {name}; {'ok' if error <= SCAN_TOLERANCE else 'ABOVE ' + str(SCAN_TOLERANCE)}",
                       error=error, stage=stage)
        for backend, result in results.items():
            error, name = _max_relative_error(result, reference)
            report.row("scan", f"{backend} (fp32) vs torch (fp64)", shape, batch, f"{error:.2e}", f"worst: {name}",
                       error=error, stage=stage, backend=backend)
        del inputs, reference, results
        _release(device)
    if cuda_ok and budget.left() > 60:
        _check_model_backends(report, device, dry)


def _check_model_backends(report: Report, device: torch.device, dry: bool) -> None:
    kwargs = get_card("vmunetv2").test_kwargs if dry else {}
    size = 64 if dry else 256
    torch.manual_seed(0)
    model = create_model("vmunetv2", **kwargs).to(device).eval()
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device) * 255
    outputs = {}
    with torch.inference_mode():
        for backend in ("cuda", "torch"):
            scan.set_default_backend(backend)
            outputs[backend] = model(images).float()
    scan.set_default_backend("auto")
    difference = float((outputs["cuda"] - outputs["torch"]).abs().max())
    report.row("scan", "vmunetv2 output, cuda vs torch", f"{size}x{size}, fp32, eval", 2, f"{difference:.2e}",
               "max abs difference of probabilities", error=difference)
    del model
    _release(device)


# ---------------------------------------------------------------- 2. training steps

def _synthetic_images(size: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    settings = SyntheticSettings(seed=0, n_train=count - count // 4, n_test=count // 4, min_side=size, max_side=size)
    pairs = list(generate("isic17", settings))
    return np.stack([image for _, image, _ in pairs]), np.stack([mask for _, _, mask in pairs])


def _train_steps(model, criterion, images, masks, device, batch: int, steps: int, warmup: int, amp: bool,
                 budget: Budget, reserve: float, read_loss_each_step: bool) -> dict:
    """``read_loss_each_step``: float(loss) after every step (a host-device sync), as segbench.train does."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    losses, started, timed_steps = [], None, 0
    model.train()
    for step in range(steps):
        if step == warmup:
            _synchronize(device)
            started = time.perf_counter()
        if step > warmup and budget.left() < reserve:
            break
        index = np.sort(torch.randint(len(images), (batch,), generator=generator).numpy())
        batch_images, batch_masks = _to_batch(images[index], masks[index], device)
        batch_images, batch_masks = augment_batch(batch_images.float(), batch_masks, generator)
        output = _forward(model, batch_images, "minmax255", amp, device)
        loss = criterion(output, batch_masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()) if read_loss_each_step else loss.detach())
        timed_steps += step >= warmup
    _synchronize(device)
    seconds = time.perf_counter() - started if started is not None else float("nan")
    losses = [float(value) for value in losses]
    return {"steps": len(losses), "timed_steps": timed_steps, "seconds": seconds,
            "steps_per_s": timed_steps / seconds if timed_steps else float("nan"), "losses": losses}


def check_training(report: Report, device: torch.device, dry: bool, budget: Budget) -> None:
    size, batch, steps, warmup = (64, 2, 4, 1) if dry else (256, 16, 200, 10)
    kwargs = get_card("vmunetv2").test_kwargs if dry else {}
    images, masks = _synthetic_images(size, 8 if dry else 64)
    amp = device.type == "cuda"
    backends = ["cuda", "torch"] if device.type == "cuda" and scan.cuda_backend_available() else ["torch"]
    short = min(steps, 4 if dry else 30)
    # (scan backend, steps, read the loss every step): the full run, the other backend, train.py's per-step sync
    plans = [(backends[0], steps, False)] + [(backend, short, False) for backend in backends[1:]]
    plans.append((backends[0], short, True))
    for backend, backend_steps, read_loss_each_step in plans:
        if budget.left() < 60:
            report.skip("train", f"vmunetv2 {backend} scan", "time budget")
            continue
        scan.set_default_backend(backend)
        torch.manual_seed(0)
        model = create_model("vmunetv2", **kwargs).to(device)
        criterion = BceDiceLoss(get_card("vmunetv2").output)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        plan_warmup = warmup if backend_steps == steps else min(warmup, 5)
        result = _train_steps(model, criterion, images, masks, device, batch, backend_steps, plan_warmup, amp, budget,
                              reserve=45, read_loss_each_step=read_loss_each_step)
        losses = result["losses"]
        window = max(1, min(20, len(losses) // 4))
        first, last = float(np.mean(losses[:window])), float(np.mean(losses[-window:]))
        finite = all(math.isfinite(value) for value in losses)
        memory = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
        configuration = (f"{'paper size' if not dry else 'test_kwargs'}, {size}x{size}, "
                         f"{'bf16 autocast' if amp else 'fp32'}, {backend} scan, AdamW 1e-3"
                         + (", float(loss) every step (as segbench.train)" if read_loss_each_step else ""))
        report.row("train", "vmunetv2", configuration, batch,
                   f"{result['steps_per_s']:.2f} steps/s ({result['steps_per_s'] * batch:.1f} img/s)",
                   f"{result['steps']} steps ({plan_warmup} warm-up untimed); loss {first:.4f} -> {last:.4f} "
                   f"(mean of first/last {window}){'' if finite else '; NON-FINITE LOSS'}{memory}",
                   **result, loss_first=first, loss_last=last)
        del model, criterion
        _release(device)
    scan.set_default_backend("auto")


# ---------------------------------------------------------------- 3. FPS

def _timed_forward(model, inputs: torch.Tensor, device: torch.device) -> float:
    _synchronize(device)
    started = time.perf_counter()
    with torch.inference_mode():
        model(inputs)
    _synchronize(device)
    return time.perf_counter() - started


def _largest_batch(model, size: int, device: torch.device, limit: int, time_cap: float, channels_last: bool):
    """Largest power-of-two batch (<= limit) whose fp32 forward fits and runs within ``time_cap`` seconds.

    A slow first pass at a new shape is timed again: cudnn.benchmark's autotuning is not the model's speed
    (the first GPU run, commit 0c9a65a, stopped UNetV2 at batch 2 on a 5.5 s autotuning pass).
    """
    batch, why = 1, f"limit {limit}"
    while batch * 2 <= limit:
        try:
            inputs = _input(batch * 2, size, device, channels_last)
            elapsed = _timed_forward(model, inputs, device)
            if elapsed > time_cap:
                elapsed = _timed_forward(model, inputs, device)
        except torch.OutOfMemoryError:
            why = f"batch {batch * 2} out of memory"
            break
        except RuntimeError as error:  # e.g. a kernel's 32-bit index limit at huge batches
            why = f"batch {batch * 2} failed: {str(error).splitlines()[0][:80]}"
            break
        finally:
            inputs = None
            _release(device)
        batch *= 2
        if elapsed > time_cap:
            why = f"batch {batch} took {elapsed:.2f} s > {time_cap} s cap (not a memory limit)"
            break
    return batch, why


def _input(batch: int, size: int, device: torch.device, channels_last: bool) -> torch.Tensor:
    inputs = torch.rand(batch, 3, size, size, device=device) * 255
    return inputs.contiguous(memory_format=torch.channels_last) if channels_last else inputs


def _fps_settings(model_name: str, model, device: torch.device) -> list[dict]:
    is_vm = any(isinstance(module, SS2D) for module in model.modules())
    amp_choices = [False, True] if device.type == "cuda" else [False]
    if is_vm:
        backends = ["cuda", "torch"] if device.type == "cuda" and scan.cuda_backend_available() else ["torch"]
        return [dict(backend=b, amp=a, channels_last=False) for b in backends for a in amp_choices]
    settings = [dict(backend=None, amp=a, channels_last=False) for a in amp_choices]
    settings.append(dict(backend=None, amp=amp_choices[-1], channels_last=True))
    return settings


def check_fps(report: Report, device: torch.device, dry: bool, budget: Budget) -> None:
    size = 64 if dry else 256
    limit, time_cap = (2, 5.0) if dry else (1024, 1.0)
    names = [name for name in FPS_ORDER if name in list_models()]
    names += [name for name in list_models() if name not in names]
    for model_name in names:
        if budget.left() < 20:
            report.skip("fps", model_name, "time budget")
            continue
        torch.manual_seed(0)
        model = create_model(model_name, **(get_card(model_name).test_kwargs if dry else {})).to(device).eval()
        max_batches: dict = {}
        for setting in _fps_settings(model_name, model, device):
            label = ", ".join(filter(None, [
                f"{setting['backend']} scan" if setting["backend"] else "",
                "bf16 autocast" if setting["amp"] else "fp32",
                "channels-last" if setting["channels_last"] else "",
            ]))
            if budget.left() < 15:
                report.skip("fps", model_name, f"{label}: time budget")
                continue
            if setting["backend"]:
                scan.set_default_backend(setting["backend"])
            model.to(memory_format=torch.channels_last if setting["channels_last"] else torch.contiguous_format)
            key = (setting["backend"], setting["channels_last"])
            if key not in max_batches:
                max_batches[key] = _largest_batch(model, size, device, limit, time_cap, setting["channels_last"])
            max_batch, why = max_batches[key]
            for batch in sorted({1, max_batch}):
                if budget.left() < 10:
                    break
                warmup, runs = ((1, 2) if dry else (10, 30)) if batch == 1 else ((1, 2) if dry else (2, 5))
                try:
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=setting["amp"]):
                        seconds = _time_forward(model, _input(batch, size, device, setting["channels_last"]),
                                                warmup, runs)
                except torch.OutOfMemoryError:
                    report.row("fps", model_name, label, batch, "out of memory", "")
                    continue
                finally:
                    _release(device)
                report.row("fps", model_name, label, batch, f"{batch / seconds:.1f} img/s",
                           f"{seconds * 1000:.2f} ms/batch (median of {runs} after {warmup} warm-up)"
                           + (f"; max batch: {why}" if batch > 1 else ""),
                           fps=batch / seconds, seconds=seconds, warmup=warmup, runs=runs, **setting)
        scan.set_default_backend("auto")
        del model
        _release(device)


# ---------------------------------------------------------------- 4. segbench.train itself

def check_train_run(report: Report, device: torch.device, dry: bool, budget: Budget) -> None:
    """segbench.train.train_run on the device with amp and channels-last, on a prepared synthetic cache."""
    import tempfile

    import yaml

    from segbench.config import validate_config
    from segbench.data.cache import build_cache
    from segbench.data.prepare import prepare_synthetic
    from segbench.data.splits import write_split
    from segbench.train import train_run

    if budget.left() < 60:
        report.skip("train_run", "vmunetv2 (smoke widths)", "time budget")
        return
    size = 64 if dry else 256
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary) / "data"
        cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "smoke.yaml").read_text())
        cfg["image_size"] = size
        cfg["data"]["root"] = str(root)
        cfg["train"].update(device=device.type, amp=device.type == "cuda", channels_last=True,
                            deterministic=False, epochs=2, num_threads=None)
        cfg = validate_config(cfg, "gpu_check's copy of config/smoke.yaml")
        settings = SyntheticSettings(**cfg["data"]["synthetic"])
        processed = root / "processed" / "isic17"
        prepare_synthetic("isic17", settings, processed, progress=False)
        write_split("isic17", processed, root / "splits" / "isic17.csv")
        build_cache("isic17", processed, root / "splits" / "isic17.csv", size, root / "cache" / f"isic17_{size}.npz",
                    progress=False)
        started = time.perf_counter()
        run_dir = train_run(cfg, "isic17", "vmunetv2", 0, Path(temporary) / "run")
        seconds = time.perf_counter() - started
        manifest = json.loads((run_dir / "manifest.json").read_text())
        log = (run_dir / "train_log.csv").read_text().strip().splitlines()
    report.row("train_run", "vmunetv2 (smoke widths)",
               f"{size}x{size}, amp={cfg['train']['amp']}, channels_last=True, deterministic=False", cfg["train"]["batch_size"],
               f"finished in {seconds:.1f} s", f"{len(log) - 1} epochs logged; scan backend "
               f"{manifest.get('scan_backend', manifest.get('run', {}).get('scan_backend', '?'))}; last row: {log[-1]}")


# ---------------------------------------------------------------- main

def _header(device: torch.device, mamba_build: str) -> dict:
    header = {"date (UTC)": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "host": platform.node(),
              "python": platform.python_version(), "torch": torch.__version__}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        header.update(device=f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB, "
                             f"{properties.multi_processor_count} SMs, capability {properties.major}.{properties.minor}",
                      cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    else:
        header.update(device=f"CPU dry run ({platform.machine()}, {torch.get_num_threads()} threads): toy sizes, "
                             "numbers mean nothing")
    header["mamba-ssm selective_scan_cuda build"] = mamba_build
    header["cuda scan backend"] = ("available" if scan.cuda_backend_available()
                                   else f"unavailable ({scan._mamba_ssm_scan()[1]})")
    header["settings"] = ("cudnn.benchmark on; fp32 matmul precision 'highest' (torch default, no TF32); "
                          "models at registry defaults (= paper sizes), random init, 256x256"
                          if device.type == "cuda" else "models at card test_kwargs, 64x64")
    return header


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="every section on the CPU at toy sizes")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    parser.add_argument("--budget-s", type=float, default=400.0, help="stop starting new work after this long")
    parser.add_argument("--mamba-build", default="not attempted", help="one line: how the kernel build went")
    parser.add_argument("--sections", default="scan,train,fps,train_run")
    args = parser.parse_args()

    budget = Budget(args.budget_s)
    if args.cpu_dry_run:
        device = torch.device("cpu")
        torch.set_num_threads(min(2, torch.get_num_threads()))
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check.py: torch sees no CUDA device; use --cpu-dry-run to test on a CPU")
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
    args.out.mkdir(parents=True, exist_ok=True)
    report = Report(args.out, _header(device, args.mamba_build))
    report.write()
    checks = {"scan": check_scan, "train": check_training, "fps": check_fps, "train_run": check_train_run}
    for section in args.sections.split(","):
        started = time.perf_counter()
        try:
            checks[section](report, device, args.cpu_dry_run, budget)
        except Exception as error:  # one broken section must not cost the others their device time
            traceback.print_exc()
            report.row(section, "section failed", "-", "-", "ERROR", f"{type(error).__name__}: {str(error)[:200]}")
        report.data.setdefault("section_seconds", {})[section] = round(time.perf_counter() - started, 1)
        print(f"== section {section}: {time.perf_counter() - started:.1f} s, {budget.left():.0f} s of budget left",
              flush=True)
        report.write()
    print(f"\nwrote {args.out / 'gpu_check.md'} and {args.out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
