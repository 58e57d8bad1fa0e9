"""Parameter and FLOP counts, both the true ones and the ones the papers printed.

The VM-UNet(V2) papers' Params/GFLOPs columns come from ``thop.profile`` at 1x3x256x256
(``reference-facts.md`` section 2). thop hooks *leaf modules of known types* (Conv, Linear, norms,
pooling, upsample) that run in the forward; it misses parameters held directly by a composite
module (SS2D's ``x_proj_weight``, ``dt_projs_*``, ``A_logs``, ``Ds``), functional ops (einsum,
``F.interpolate``, attention matmuls) and the selective scan, and it never counts an unused module.

- ``count_parameters``: ``total`` (every parameter) and ``paper`` (thop's rule).
- ``count_flops``: one fvcore trace gives ``flops_g``, fvcore's total with the selective scan
  counted by its op handle (fvcore's convention: one multiply-add = one flop, so these are GMACs),
  and ``macs_no_scan_g``, the same trace counted with thop's per-module formulas on the leaf
  modules thop would hook (what the papers call GFLOPs).
"""
from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from math import prod
from typing import Callable

import torch
from torch import nn

from segbench.nn.selective_scan import FVCORE_OP_NAME, selective_scan_flop_jit

# Module types thop 0.1.1 has counting rules for (those present in the benchmark's models).
_THOP_CONV = (nn.modules.conv._ConvNd,)
_THOP_NORM = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
_THOP_ZERO = (nn.ReLU, nn.ReLU6, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd, nn.Dropout, nn.ZeroPad2d)
THOP_MODULE_TYPES = (
    *_THOP_CONV,
    nn.Linear,
    *_THOP_NORM,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.Upsample,
    *_THOP_ZERO,
)

# fvcore prints these per trace although the counts are meant to skip them.
_IGNORED_OPS = (
    "aten::add", "aten::add_", "aten::mul", "aten::mul_", "aten::sub", "aten::div", "aten::neg", "aten::exp",
    "aten::silu", "aten::sigmoid", "aten::relu", "aten::relu_", "aten::gelu", "aten::softmax", "aten::flip",
    "aten::mean", "aten::max", "aten::adaptive_max_pool2d", "aten::max_pool2d", "aten::ones_like",
    "aten::repeat",
)


def _shape(value) -> list[int] | None:
    return value.type().sizes() if value.isCompleteTensor() else None


def _thop_conv(inputs, outputs) -> int:
    """thop: output elements x (in_channels / groups) x kernel area, for plain and transposed convs."""
    in_channels = _shape(inputs[0])[1]
    kernel = _shape(inputs[1])[2:]
    groups = inputs[8].toIValue()
    return prod(_shape(outputs[0])) * (in_channels // groups) * prod(kernel)


def _thop_linear(inputs, outputs) -> int:
    return _shape(inputs[0])[-1] * prod(_shape(outputs[0]))


def _thop_norm(affine_index: int) -> Callable:
    """thop: 2 per input element, doubled when the norm has an affine weight."""

    def count(inputs, outputs) -> int:
        affine = _shape(inputs[affine_index]) is not None
        return 2 * prod(_shape(inputs[0])) * (2 if affine else 1)

    return count


def _thop_adaptive_avg_pool(inputs, outputs) -> int:
    in_size, out_size = _shape(inputs[0])[2:], _shape(outputs[0])[2:]
    window = prod(i // o for i, o in zip(in_size, out_size))
    return (window + 1) * prod(_shape(outputs[0]))


def _thop_avg_pool(inputs, outputs) -> int:
    return prod(_shape(outputs[0]))


def _thop_upsample_bilinear(inputs, outputs) -> int:
    return 11 * prod(_shape(outputs[0]))


_THOP_HANDLES: dict[str, Callable] = {
    "aten::_convolution": _thop_conv,
    "aten::linear": _thop_linear,
    "aten::layer_norm": _thop_norm(2),
    "aten::batch_norm": _thop_norm(1),
    "aten::instance_norm": _thop_norm(1),
    "aten::adaptive_avg_pool2d": _thop_adaptive_avg_pool,
    "aten::avg_pool2d": _thop_avg_pool,
    "aten::upsample_bilinear2d": _thop_upsample_bilinear,
}


def _fvcore_attention(inputs, outputs) -> int:
    """Fused attention (timm's PVT uses it) as fvcore counts the explicit form upstream runs:
    q @ k^T and attn @ v, one multiply-add per flop."""
    query, key, value = (_shape(t) for t in inputs[:3])
    return prod(query[:-1]) * key[-2] * (query[-1] + value[-1])


def _combined_handle(fvcore_handle: Callable | None, thop_handle: Callable | None) -> Callable:
    """One handle counting both conventions, so that a single trace serves both."""

    def count(inputs, outputs) -> Counter:
        result = Counter()
        if fvcore_handle is not None:
            counted = fvcore_handle(inputs, outputs)
            result["fvcore"] = sum(counted.values()) if isinstance(counted, Counter) else counted
        if thop_handle is not None:
            result["thop"] = thop_handle(inputs, outputs)
        return result

    return count


def _leaves(model: nn.Module):
    return ((name, module) for name, module in model.named_modules() if next(module.children(), None) is None)


def _executed_leaves(model: nn.Module, size: int) -> set[nn.Module]:
    """Leaf modules that one forward pass at 1x3xsize x size runs."""
    executed: set[nn.Module] = set()
    leaves = [module for _, module in _leaves(model)]
    handles = [leaf.register_forward_hook(lambda module, args, output: executed.add(module)) for leaf in leaves]
    parameter = next(model.parameters())
    try:
        with _eval_mode(model), torch.no_grad():
            model(torch.zeros(1, 3, size, size, dtype=parameter.dtype, device=parameter.device))
    finally:
        for handle in handles:
            handle.remove()
    return executed


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def count_parameters(model: nn.Module, size: int = 256) -> dict[str, int]:
    """``total``: all parameters. ``paper``: thop's count, i.e. the parameters of leaf modules of
    known types that run in a forward pass (one pass at ``size`` finds them; 256 as the papers, and
    deep nets such as the 7-stage ResEnc U-Net need an input of at least 128)."""
    executed = _executed_leaves(model, size)
    paper = sum(
        p.numel()
        for _, module in _leaves(model)
        if module in executed and isinstance(module, THOP_MODULE_TYPES)
        for p in module.parameters(recurse=False)
    )
    return {"total": sum(p.numel() for p in model.parameters()), "paper": paper}


class _LeafOutputsAlive(nn.Module):
    """Returns every leaf module's output beside the model's, so that ``torch.jit.trace`` keeps
    computations whose results the model discards (VM-UNetV2's last stage, unused heads): thop
    counts every module that runs, a trace drops dead code."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs: list[torch.Tensor] = []

        def keep(module, args, output):
            outputs.extend(t for t in (output if isinstance(output, (tuple, list)) else [output]) if isinstance(t, torch.Tensor))

        handles = [leaf.register_forward_hook(keep) for _, leaf in _leaves(self.model)]
        try:
            result = self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        return (result, *outputs)


def _by_module_and_operator(model: nn.Module, inputs: torch.Tensor) -> dict[str, Counter]:
    with warnings.catch_warnings():
        # fvcore's own modules use torch.jit.script at import, which torch now flags as deprecated
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*deprecated")
        from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, inputs)
    defaults = dict(analysis._op_handles)
    for kind in set(defaults) | set(_THOP_HANDLES):
        analysis.set_op_handle(kind, _combined_handle(defaults.get(kind), _THOP_HANDLES.get(kind)))
    analysis.set_op_handle(FVCORE_OP_NAME, _combined_handle(selective_scan_flop_jit, None))
    analysis.set_op_handle("aten::scaled_dot_product_attention", _combined_handle(_fvcore_attention, None))
    analysis.set_op_handle(*[item for op in _IGNORED_OPS for item in (op, None)])
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return analysis.by_module_and_operator()


def count_flops(model: nn.Module, size: int = 256, device: str | torch.device = "cpu") -> dict[str, float]:
    """Count one forward pass at 1x3xsize x size on ``device`` (the model is moved there; it runs
    in eval mode and its train/eval mode is restored afterwards). Two fvcore traces:

    ``flops_g``: fvcore's total in G with the selective scan included (VMamba's 9*B*L*D*N + B*D*L);
    fvcore counts one multiply-add as one flop. As with any fvcore count, the jit trace drops work
    whose result is unused (for VM-UNetV2 the tail of its discarded last stage and heads 0-1).
    ``macs_no_scan_g``: thop-style GMACs: thop's formulas on the leaf modules thop hooks, every
    module that runs included, no scan, einsum or functional op; the papers' "GFLOPs".
    """
    model.to(device)
    parameter = next(model.parameters())
    inputs = torch.zeros(1, 3, size, size, dtype=parameter.dtype, device=device)
    with _eval_mode(model), torch.no_grad():
        fvcore_total = _by_module_and_operator(model, inputs)[""]["fvcore"]
        with_dead_code = _by_module_and_operator(_LeafOutputsAlive(model), inputs)
    thop_macs = sum(
        with_dead_code[f"model.{name}"]["thop"] for name, module in _leaves(model) if isinstance(module, THOP_MODULE_TYPES)
    )
    return {"flops_g": fvcore_total / 1e9, "macs_no_scan_g": thop_macs / 1e9}
