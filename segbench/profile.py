"""Model profiling: parameter counts, FLOPs (segbench.complexity) and inference speed."""
from __future__ import annotations

import statistics
import time

import torch

from segbench.complexity import count_flops, count_parameters
from segbench.manifest import describe_device, package_versions
from segbench.registry import create_model


def _time_forward(model, inputs: torch.Tensor, warmup: int, runs: int) -> float:
    """Median seconds of one forward pass after ``warmup`` passes (CUDA events on a GPU)."""
    with torch.inference_mode():
        for _ in range(warmup):
            model(inputs)
        timings = []
        for _ in range(runs):
            if inputs.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(inputs)
                end.record()
                torch.cuda.synchronize()
                timings.append(start.elapsed_time(end) / 1000.0)
            else:
                started = time.perf_counter()
                model(inputs)
                timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def largest_batch(model, size: int, device: torch.device, limit: int = 1024) -> int:
    """The largest power-of-two batch whose forward pass fits in GPU memory (1 on the CPU)."""
    if device.type != "cuda":
        return 1
    batch = 1
    while batch * 2 <= limit:
        try:
            with torch.inference_mode():
                model(torch.randn(batch * 2, 3, size, size, device=device))
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
        batch *= 2
    return batch


def profile_model(model_name: str, model_kwargs: dict, size: int, device: torch.device,
                  warmup: int, runs: int, amp: bool = False) -> dict:
    model = create_model(model_name, **model_kwargs).eval()
    result = {"model": model_name, "model_kwargs": model_kwargs, "size": size}
    parameters = count_parameters(model)
    result.update(params_total=parameters["total"], params_paper=parameters["paper"])
    result.update(count_flops(model, size))
    model.to(device)
    speeds = {}
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
        for batch in sorted({1, largest_batch(model, size, device)}):
            seconds = _time_forward(model, torch.randn(batch, 3, size, size, device=device), warmup, runs)
            speeds[str(batch)] = batch / seconds
    result.update(fps=speeds["1"], fps_by_batch=speeds, fps_batch=1, warmup=warmup, runs=runs,
                  device=describe_device(device), amp=amp, versions=package_versions())
    return result
