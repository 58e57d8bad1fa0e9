"""Selective scan (Mamba's S6 recurrence) with a CUDA backend and a pure-PyTorch backend.

Semantics follow mamba_ssm's ``selective_scan_fn``::

    delta = softplus(delta + delta_bias)            (bias and softplus optional)
    x_t   = exp(delta_t * A) * x_{t-1} + delta_t * B_t * u_t
    y_t   = <x_t, C_t> + D * u_t                    (D optional)
    out   = y * silu(z)                             (z optional)

Shapes: u, delta, z: (b, d, l); A: (d, n); B, C: (b, g, n, l) with d divisible by g (channel
block i of size d/g reads group i); D, delta_bias: (d,). The state x has shape (b, d, n).

Backends: ``cuda`` is mamba_ssm's kernel (GPU only, needs its compiled extension);
``torch`` runs anywhere; ``auto`` picks ``cuda`` when mamba_ssm imports and the tensors are on
a GPU, else ``torch``. The torch backend is one ``torch.autograd.Function`` so that
``torch.jit.trace`` (and therefore fvcore) records the whole scan as a single op
``FVCORE_OP_NAME``, counted by ``selective_scan_flop_jit``.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "cuda", "torch")

_default_backend = "auto"


def _check_backend_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(
            f"unknown selective-scan backend {name!r}; expected one of {', '.join(BACKENDS)} "
            "(config key `scan_backend`)"
        )
    return name


def set_default_backend(name: str) -> None:
    """Set the backend that ``backend="auto"`` calls resolve against (config key ``scan_backend``)."""
    global _default_backend
    _default_backend = _check_backend_name(name)


def get_default_backend() -> str:
    return _default_backend


@functools.lru_cache(maxsize=1)
def _mamba_ssm_scan():
    """Return (mamba_ssm's selective_scan_fn, None) or (None, why it cannot be imported)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as error:  # ImportError, or an OSError from a broken compiled extension
        return None, f"{type(error).__name__}: {error}"
    return selective_scan_fn, None


def cuda_backend_available() -> bool:
    return _mamba_ssm_scan()[0] is not None


_INSTALL_HINT = (
    "Install the CUDA kernel with `pip install -e .[cuda]` (mamba-ssm) on a machine with nvcc "
    "and a CUDA build of torch (see the README, 'GPU / mamba-ssm'), or use scan_backend: torch."
)


def resolve_backend(backend: str, tensor: torch.Tensor) -> str:
    """Return the backend that will actually run ("cuda" or "torch") for inputs like ``tensor``.

    ``auto`` resolves to the default backend (``set_default_backend``) first. An explicit
    ``cuda`` request that cannot be honoured raises RuntimeError; it never falls back.
    """
    _check_backend_name(backend)
    if backend == "auto":
        backend = _default_backend
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "cuda" if tensor.is_cuda and cuda_backend_available() else "torch"
    kernel, why_missing = _mamba_ssm_scan()
    if kernel is None:
        raise RuntimeError(
            "selective-scan backend 'cuda' was requested but mamba_ssm's kernel cannot be "
            f"imported (`from mamba_ssm.ops.selective_scan_interface import selective_scan_fn` "
            f"failed with {why_missing}; `import mamba_ssm` needs its compiled extension "
            f"`selective_scan_cuda`). {_INSTALL_HINT}"
        )
    if not tensor.is_cuda:
        raise RuntimeError(
            f"selective-scan backend 'cuda' was requested but the inputs are on {tensor.device}; "
            "mamba_ssm's kernel runs only on CUDA tensors. Move the model to a GPU or use "
            "scan_backend: torch (or auto)."
        )
    return "cuda"


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _scan_reference_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """Differentiable scan in the compute dtype; returns (out, last_state)."""
    dtype = _compute_dtype(u)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    if delta_bias is not None:  # (d, 1), see selective_scan_flop_jit
        delta = delta + delta_bias.to(dtype)
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    groups = B.shape[1]
    B = B.repeat_interleave(dim // groups, dim=1)
    C = C.repeat_interleave(dim // groups, dim=1)
    decay = torch.exp(delta.unsqueeze(2) * A.unsqueeze(-1))  # (b, d, n, l)
    drive = (delta * u).unsqueeze(2) * B  # (b, d, n, l)
    state = u.new_zeros(batch, dim, A.shape[1])
    outputs = []
    for decay_t, drive_t, c_t in zip(decay.unbind(-1), drive.unbind(-1), C.unbind(-1)):
        state = decay_t * state + drive_t
        outputs.append((state * c_t).sum(-1))
    y = torch.stack(outputs, dim=-1)
    if D is not None:
        y = y + u * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y, state


class SelectiveScanFn(torch.autograd.Function):
    """The torch backend as one autograd op; backward recomputes the forward graph."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        ctx.delta_softplus = delta_softplus
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        with torch.no_grad():
            out, last_state = _scan_reference_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        return out.to(u.dtype), last_state

    @staticmethod
    def backward(ctx, grad_out, grad_last_state):
        inputs = ctx.saved_tensors
        needs = ctx.needs_input_grad[: len(inputs)]
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(need) if t is not None else None for t, need in zip(inputs, needs)]
            out, last_state = _scan_reference_torch(*leaves, ctx.delta_softplus)
            wrt = [t for t, need in zip(leaves, needs) if need and t is not None]
            grads = iter(torch.autograd.grad((out, last_state), wrt, (grad_out, grad_last_state), allow_unused=True))
        result = [next(grads) if need and t is not None else None for t, need in zip(leaves, needs)]
        return (*result, None)


FVCORE_OP_NAME = "prim::PythonOp.SelectiveScanFn"


def selective_scan_flops(b: int, l: int, d: int, n: int, with_d: bool = True, with_z: bool = False) -> int:
    """VMamba's scan cost (csms6s.py ``flops_selective_scan_fn``): 9*B*L*D*N, +B*D*L each for D and z."""
    flops = 9 * b * l * d * n
    if with_d:
        flops += b * d * l
    if with_z:
        flops += b * d * l
    return flops


def selective_scan_flop_jit(inputs, outputs) -> int:
    """fvcore op handle for ``FVCORE_OP_NAME``.

    The traced op's tensor inputs are u, delta, A, B, C followed by whichever of D (1-D),
    z (3-D) and delta_bias (passed as (d, 1), 2-D) were given, so their rank tells them apart.
    """
    b, d, l = inputs[0].type().sizes()
    n = inputs[2].type().sizes()[1]
    optional_ranks = [value.type().dim() for value in inputs[5:] if value.type().kind() == "TensorType"]
    return selective_scan_flops(b, l, d, n, with_d=1 in optional_ranks, with_z=3 in optional_ranks)


def _check_shapes(u, delta, A, B, C, D, z, delta_bias):
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"selective_scan_fn: u and delta must both be (b, d, l); got {tuple(u.shape)} and {tuple(delta.shape)}")
    batch, dim, length = u.shape
    if A.dim() != 2 or A.shape[0] != dim or A.is_complex():
        raise ValueError(f"selective_scan_fn: A must be real (d, n) = ({dim}, n); got {tuple(A.shape)} {A.dtype}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 4 or t.shape[0] != batch or t.shape[2] != n or t.shape[3] != length or dim % t.shape[1]:
            raise ValueError(
                f"selective_scan_fn: {name} must be (b, g, n, l) = ({batch}, g, {n}, {length}) with d={dim} "
                f"divisible by g; got {tuple(t.shape)}"
            )
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise ValueError(f"selective_scan_fn: {name} must be ({dim},); got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan_fn: z must be (b, d, l) like u; got {tuple(z.shape)}")


def selective_scan_fn(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    return_last_state=False, backend="auto",
):
    """mamba_ssm's ``selective_scan_fn`` with a backend switch (see the module docstring).

    Returns ``out`` (b, d, l) in u's dtype, and also ``last_state`` (b, d, n) when
    ``return_last_state``. Computation is in float32 (float64 for float64 inputs).
    """
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    if resolve_backend(backend, u) == "cuda":
        kernel, _ = _mamba_ssm_scan()
        return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    bias_column = delta_bias[:, None] if delta_bias is not None else None
    out, last_state = SelectiveScanFn.apply(u, delta, A, B, C, D, z, bias_column, delta_softplus)
    return (out, last_state) if return_last_state else out
