"""Selective scan (Mamba's S6 recurrence) with a CUDA backend and a pure-PyTorch backend.

Semantics follow mamba_ssm's ``selective_scan_fn``::

    dt    = softplus(delta + delta_bias)            (bias and softplus optional)
    x_t   = exp(dt_t * A) * x_{t-1} + dt_t * B_t * u_t,   x_{-1} = 0
    y_t   = <x_t, C_t> + D * u_t                    (D optional)
    out   = y * silu(z)                             (z optional)

Shapes: u, delta, z: (b, d, l); A: (d, n); B, C: (b, g, n, l) with d divisible by g (channel
block i of size d/g reads group i); D, delta_bias: (d,). The state x has shape (b, d, n).

Backends: ``cuda`` is mamba_ssm's kernel (GPU only, needs its compiled extension);
``torch`` runs anywhere; ``auto`` picks ``cuda`` when mamba_ssm imports and the tensors are on
a GPU, else ``torch``.

The torch backend is one ``torch.autograd.Function`` (``SelectiveScanFn``) so that
``torch.jit.trace`` (and therefore fvcore) records the whole scan as the single op
``FVCORE_OP_NAME``, counted by ``selective_scan_flop_jit``. Its inner recurrence has two
implementations (``set_torch_implementation``):

- ``kernel``: a small C++ loop (``csrc/selective_scan_cpu.cpp`` beside this module, shipped as
  package data) compiled with the system C++ compiler at first use and cached, called through
  ctypes on CPU tensors. It keeps the (b, d, n) state in registers and
  never materialises (b, d, n, l) tensors, which is what makes it fast and lean.
- ``chunked``: pure PyTorch, for GPUs without mamba_ssm and machines without a compiler. The
  sequence is cut into chunks of about sqrt(l) steps; a step loop runs inside all chunks at once,
  then a loop across chunks carries the states, so Python runs ~2*sqrt(l) steps instead of l.
  Only products of decays <= 1 appear, so nothing overflows.

Both compute in float32 (float64 for float64 inputs) and have hand-written backward passes.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import functools
import hashlib
import itertools
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "cuda", "torch")
TORCH_IMPLEMENTATIONS = ("auto", "kernel", "chunked")

_default_backend = "auto"
_torch_implementation = "auto"


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
    "Install mamba-ssm's CUDA kernel on a machine with nvcc and a CUDA build of torch: "
    "`pip install --no-build-isolation -e .[cuda]` (the pinned mamba-ssm==2.3.2.post1; see the "
    "README, 'Running at scale'), or set scan_backend: torch."
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


# --------------------------------------------------------------------------------------------
# The compiled CPU kernel of the torch backend: csrc/selective_scan_cpu.cpp, shipped as package
# data. Its opening comment gives the layout and the row ranges these calls pass.

_KERNEL_SOURCE_FILE = "csrc/selective_scan_cpu.cpp"  # relative to this package

# No -ffast-math: it links crtfastmath, which turns on flush-to-zero for the whole process.
# Reassociation alone lets the compiler vectorise the sums over the state index (so the kernel
# must not rely on rounding tricks such as (1 + e) - 1). -Wall -Wextra leave the object code
# unchanged (byte-identical with g++ 12); tests compile with them and -Werror.
_KERNEL_FLAGS = [
    "-O3", "-fPIC", "-std=c++17", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros",
    "-Wall", "-Wextra",
]


def _kernel_cache_dir() -> Path:
    root = os.environ.get("SEGBENCH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "segbench"
    )
    return Path(root) / "scan_kernel"


def _cpu_signature() -> str:
    """What -march=native depends on, so a shared cache never serves a binary to the wrong CPU."""
    try:
        flag_lines = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith(("flags", "Features"))]
        return flag_lines[0] if flag_lines else platform.processor()
    except OSError:
        return platform.processor()


def _kernel_source() -> str:
    return resources.files(__package__).joinpath(_KERNEL_SOURCE_FILE).read_text(encoding="utf-8")


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def _build_variants() -> list[tuple[list[str], list[str]]]:
    """(compile flags, link libraries) of each build to try, fastest first: native instructions
    and glibc's vector math, then native instructions, then plain."""
    variants = [(_KERNEL_FLAGS + ["-march=native"], ["-lm"]), (_KERNEL_FLAGS, ["-lm"])]
    if sys.platform.startswith("linux") and ctypes.util.find_library("mvec"):
        variants.insert(0, (_KERNEL_FLAGS + ["-march=native", "-DSEGBENCH_LIBMVEC"], ["-lmvec", "-lm"]))
    return variants


def _build_library(
    source_text: str, compiler: str, version: str, flags: list[str], libs: list[str],
) -> tuple[Path | None, str | None]:
    """Compile the kernel with these flags into the cache unless it is there; (path, None) or (None, error)."""
    key = hashlib.sha256("\n".join([source_text, " ".join(flags + libs), version, _cpu_signature()]).encode()).hexdigest()[:16]
    cache_dir = _kernel_cache_dir()
    library = cache_dir / f"selective_scan_cpu_{key}.so"
    if library.exists():
        return library, None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir) as build_dir:
            source = Path(build_dir) / "selective_scan_cpu.cpp"
            source.write_text(source_text, encoding="utf-8")
            objects = Path(build_dir) / "selective_scan_cpu.o"
            partial = Path(build_dir) / library.name
            # Compile and link separately so no math flag reaches the link step.
            for command in (
                [compiler, *flags, "-c", str(source), "-o", str(objects)],
                [compiler, "-shared", str(objects), "-o", str(partial), *libs],
            ):
                result = subprocess.run(command, capture_output=True, text=True, timeout=600)
                if result.returncode != 0:
                    return None, f"`{' '.join(command)}` failed:\n{result.stderr[-2000:]}"
            os.replace(partial, library)  # atomic: concurrent builders just replace each other
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"building {library} failed: {error}"
    return library, None


@functools.lru_cache(maxsize=1)
def _load_kernel():
    """Compile (once per source/compiler/CPU, cached on disk) and load the CPU kernel.

    Tries the fastest build first (native instructions, glibc's vector math), then plainer ones.
    Returns (ctypes library, None) or (None, why not). Never raises: the chunked pure-PyTorch
    implementation is the fallback, announced with a warning.
    """
    if os.environ.get("SEGBENCH_SCAN_KERNEL", "1") == "0":
        return None, "disabled by SEGBENCH_SCAN_KERNEL=0"
    compiler = _compiler()
    if not compiler:
        return None, "no C++ compiler found (install g++ or set CXX)"
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"C++ compiler {compiler!r} does not run: {error}"
    try:
        source_text = _kernel_source()
    except OSError as error:
        return None, (
            f"the kernel source {__package__}/{_KERNEL_SOURCE_FILE} cannot be read ({error}); reinstall segbench, "
            "whose package data must include nn/csrc/*.cpp"
        )
    failures = []
    for flags, libs in _build_variants():
        library, error = _build_library(source_text, compiler, version, flags, libs)
        if library is None:
            failures.append(error)
            continue
        try:
            lib = ctypes.CDLL(str(library))
        except OSError as error:
            failures.append(f"loading {library} failed: {error}")
            continue
        pointer, int64 = ctypes.c_void_p, ctypes.c_int64
        for suffix in ("f32", "f64"):
            forward = getattr(lib, f"scan_forward_{suffix}")
            forward.argtypes = [pointer] * 8 + [int64] * 7 + [pointer] * 3
            forward.restype = None
            backward = getattr(lib, f"scan_backward_{suffix}")
            backward.argtypes = [pointer] * 11 + [int64] * 7 + [pointer] * 8
            backward.restype = None
        return lib, None
    return None, "\n".join(failures)


def kernel_status() -> tuple[bool, str]:
    """(True, path of the compiled library) or (False, why the CPU kernel is unavailable)."""
    lib, why_not = _load_kernel()
    return (True, lib._name) if lib is not None else (False, why_not)


@functools.lru_cache(maxsize=1)
def _warn_kernel_missing(why_not: str) -> None:
    warnings.warn(
        f"segbench selective scan: the compiled CPU kernel is unavailable ({why_not}); using the "
        "slower chunked pure-PyTorch scan. Install g++ (or set CXX) for the fast CPU path.",
        RuntimeWarning,
        stacklevel=3,
    )


def set_torch_implementation(name: str) -> None:
    """Choose the torch backend's inner scan: "auto" (kernel on CPU when it builds, else
    chunked), "kernel" (error if unavailable or not on CPU) or "chunked"."""
    global _torch_implementation
    if name not in TORCH_IMPLEMENTATIONS:
        raise ValueError(f"unknown torch scan implementation {name!r}; expected one of {', '.join(TORCH_IMPLEMENTATIONS)}")
    _torch_implementation = name


def torch_implementation(tensor: torch.Tensor) -> str:
    """The inner scan the torch backend uses for inputs like ``tensor``: "kernel" or "chunked"."""
    if _torch_implementation == "chunked" or (_torch_implementation == "auto" and tensor.device.type != "cpu"):
        return "chunked"
    lib, why_not = _load_kernel()
    if _torch_implementation == "kernel":
        if lib is None:
            raise RuntimeError(f"the selective-scan CPU kernel was requested but is unavailable: {why_not}")
        if tensor.device.type != "cpu":
            raise RuntimeError(f"the selective-scan CPU kernel runs on CPU tensors; got {tensor.device}")
        return "kernel"
    if lib is None:
        _warn_kernel_missing(why_not)
        return "chunked"
    return "kernel"


def _row_ranges(rows: int, parts: int) -> list[tuple[int, int]]:
    parts = max(1, min(parts, rows))
    bounds = [rows * i // parts for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


@functools.lru_cache(maxsize=4)
def _thread_pool(pid: int, workers: int) -> concurrent.futures.ThreadPoolExecutor:
    """One pool per process (a forked child must not reuse its parent's dead threads)."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="segbench-scan")


def _run_parallel(calls) -> None:
    """Run ctypes calls (which release the GIL) on torch's number of intra-op threads."""
    workers = torch.get_num_threads()
    if workers <= 1 or len(calls) == 1:
        for call in calls:
            call()
        return
    for future in [_thread_pool(os.getpid(), workers).submit(call) for call in calls]:
        future.result()


def _pointer(tensor: torch.Tensor | None):
    return ctypes.c_void_p(tensor.data_ptr()) if tensor is not None else None


def _kernel_forward(u, delta, A, B, C, D, z, bias, softplus):
    """Returns out, last_state and the pre-gate output (kept for backward when z is given)."""
    lib, _ = _load_kernel()
    batch, dim, length = u.shape
    groups, n = B.shape[1], A.shape[1]
    Bt, Ct = B.transpose(2, 3).contiguous(), C.transpose(2, 3).contiguous()
    out = torch.empty_like(u)
    y_pre = torch.empty_like(u) if z is not None else None
    last_state = u.new_empty(batch, dim, n)
    forward = lib.scan_forward_f64 if u.dtype == torch.float64 else lib.scan_forward_f32
    inputs = [_pointer(t) for t in (u, delta, A, Bt, Ct, D, z, bias)]
    outputs = [_pointer(out), _pointer(y_pre), _pointer(last_state)]
    calls = [
        functools.partial(forward, *inputs, int(softplus), dim, groups, n, length, begin, end, *outputs)
        for begin, end in _row_ranges(batch * dim, 4 * torch.get_num_threads())
    ]
    _run_parallel(calls)
    return out, last_state, y_pre


def _kernel_backward(u, delta, A, B, C, D, z, bias, softplus, y_pre, grad_out, grad_last_state):
    """Returns the gradients of u, delta, A, B, C, D, z, bias (None for absent inputs)."""
    lib, _ = _load_kernel()
    batch, dim, length = u.shape
    groups, n = B.shape[1], A.shape[1]
    Bt, Ct = B.transpose(2, 3).contiguous(), C.transpose(2, 3).contiguous()
    per_group = dim // groups
    # Every (batch, group) block of rows is split into `splits` calls, each with its own gB/gC.
    splits = max(1, min(per_group, -(-torch.get_num_threads() // (batch * groups))))
    grad_u, grad_delta = torch.empty_like(u), torch.empty_like(u)
    grad_z = torch.empty_like(u) if z is not None else None
    grad_A_rows = u.new_empty(batch, dim, n)
    grad_D_rows = u.new_empty(batch, dim) if D is not None else None
    grad_bias_rows = u.new_empty(batch, dim) if bias is not None else None
    grad_Bt = u.new_zeros(batch, groups, splits, length, n)
    grad_Ct = u.new_zeros(batch, groups, splits, length, n)
    backward = lib.scan_backward_f64 if u.dtype == torch.float64 else lib.scan_backward_f32
    inputs = [_pointer(t) for t in (u, delta, A, Bt, Ct, D, z, bias, y_pre, grad_out, grad_last_state)]
    outputs = [_pointer(t) for t in (grad_u, grad_delta, grad_z, grad_A_rows, grad_D_rows, grad_bias_rows)]
    calls = []
    for b, g, part in itertools.product(range(batch), range(groups), range(splits)):
        first_row = b * dim + g * per_group
        begin, end = first_row + per_group * part // splits, first_row + per_group * (part + 1) // splits
        calls.append(functools.partial(
            backward, *inputs, int(softplus), dim, groups, n, length, begin, end, *outputs,
            _pointer(grad_Bt[b, g, part]), _pointer(grad_Ct[b, g, part]),
        ))
    _run_parallel(calls)
    grad_B, grad_C = (grad.sum(2).transpose(2, 3) for grad in (grad_Bt, grad_Ct))
    sum_rows = lambda rows: rows.sum(0) if rows is not None else None  # noqa: E731
    return (
        grad_u, grad_delta, grad_A_rows.sum(0), grad_B, grad_C, sum_rows(grad_D_rows), grad_z, sum_rows(grad_bias_rows),
    )


# --------------------------------------------------------------------------------------------
# The chunked pure-PyTorch implementation of the same core (forward and backward).
#
# Work tensors use the layout (T, b, channels, n, chunks): step j of every chunk is one
# contiguous slice, so an in-chunk loop is T in-place multiply-adds on whole slices, and a loop
# across chunks carries the states. Channels are processed in blocks to bound memory.

_CHUNKED_BLOCK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}


def _chunk_length(length: int) -> int:
    return max(1, math.ceil(math.sqrt(length)))


def _to_chunks(x: torch.Tensor, steps: int) -> torch.Tensor:
    """(..., l) -> contiguous (T, ..., chunks), zero-padding l to a multiple of T."""
    length = x.shape[-1]
    chunks = -(-length // steps)
    x = F.pad(x, (0, chunks * steps - length))
    return x.unflatten(-1, (chunks, steps)).movedim(-1, 0).contiguous()


def _from_chunks(x: torch.Tensor, length: int) -> torch.Tensor:
    """(T, ..., chunks) -> (..., l)."""
    return x.movedim(0, -1).flatten(-2)[..., :length]


def _across_chunks(chunk_start: torch.Tensor) -> torch.Tensor:
    """(..., chunks) view -> contiguous (chunks, ...) for the sequential loop across chunks."""
    return chunk_start.movedim(-1, 0).contiguous()


def _scan_chunks(decay: torch.Tensor, states: torch.Tensor):
    """h_t = decay_t h_{t-1} + drive_t, h_{-1} = 0, in place on ``states`` (holding drive).

    Returns the state entering each chunk (..., chunks), needed again by the backward pass.
    """
    steps = decay.shape[0]
    cumulative = torch.empty_like(decay)  # decay product from the chunk start to step j
    cumulative[0] = decay[0]
    for j in range(1, steps):
        states[j].addcmul_(decay[j], states[j - 1])
        torch.mul(cumulative[j - 1], decay[j], out=cumulative[j])
    chunk_decay, chunk_end = _across_chunks(cumulative[-1]), _across_chunks(states[-1])
    carry = torch.zeros_like(chunk_end)
    for c in range(1, carry.shape[0]):
        torch.addcmul(chunk_end[c - 1], chunk_decay[c - 1], carry[c - 1], out=carry[c])
    carry = carry.movedim(0, -1)
    states.addcmul_(cumulative, carry)
    return carry


def _reverse_scan_chunks(decay: torch.Tensor, adjoint: torch.Tensor) -> None:
    """lam_t = adjoint_t + decay_{t+1} lam_{t+1}, lam_{l} = 0, in place on ``adjoint``."""
    steps = decay.shape[0]
    cumulative = torch.empty_like(decay)  # decay product from step j+1 to the chunk end
    cumulative[-1] = 1
    for j in range(steps - 2, -1, -1):
        adjoint[j].addcmul_(decay[j + 1], adjoint[j + 1])
        torch.mul(cumulative[j + 1], decay[j + 1], out=cumulative[j])
    chunk_decay = _across_chunks(cumulative[0])
    next_decay, chunk_start = _across_chunks(decay[0]), _across_chunks(adjoint[0])
    carry = torch.zeros_like(chunk_start)  # decay_{start of next chunk} * lam_{start of next chunk}
    for c in range(carry.shape[0] - 2, -1, -1):
        carry[c] = next_decay[c + 1] * torch.addcmul(chunk_start[c + 1], chunk_decay[c + 1], carry[c + 1])
    adjoint.addcmul_(cumulative, carry.movedim(0, -1))


class _ChunkedInputs:
    """Chunked-layout copies of the inputs, shared by all channel blocks of one call."""

    def __init__(self, u, dt, A, B, C):
        self.length = u.shape[-1]
        self.steps = _chunk_length(self.length)
        self.per_group = u.shape[1] // B.shape[1]
        self.A = A
        self.u, self.dt = _to_chunks(u, self.steps), _to_chunks(dt, self.steps)  # (T, b, d, chunks)
        self.B, self.C = _to_chunks(B, self.steps), _to_chunks(C, self.steps)  # (T, b, g, n, chunks)

    def block(self, channels: slice):
        """decay, drive, B, C of one channel block as (T, b, c, n, chunks); group index per channel."""
        group_of = torch.arange(channels.start, channels.stop, device=self.A.device) // self.per_group
        dt = self.dt[:, :, channels].unsqueeze(3)
        decay = (dt * self.A[channels].unsqueeze(-1)).exp_()
        B, C = self.B.index_select(2, group_of), self.C.index_select(2, group_of)
        drive = (dt * self.u[:, :, channels].unsqueeze(3)) * B
        return decay, drive, B, C, group_of

    def last_index(self):
        return (self.length - 1) % self.steps, (self.length - 1) // self.steps


def _channel_blocks(u, n):
    batch, dim, length = u.shape
    budget = _CHUNKED_BLOCK_ELEMENTS.get(u.device.type, 1 << 24)
    width = max(1, min(dim, budget // max(1, batch * n * length)))
    return [slice(start, min(dim, start + width)) for start in range(0, dim, width)]


def _chunked_forward(u, dt, A, B, C):
    chunked = _ChunkedInputs(u, dt, A, B, C)
    y = torch.empty_like(u)
    last_state = u.new_empty(u.shape[0], u.shape[1], A.shape[1])
    step, chunk = chunked.last_index()
    for channels in _channel_blocks(u, A.shape[1]):
        decay, states, _, C_block, _ = chunked.block(channels)
        _scan_chunks(decay, states)
        y[:, channels] = _from_chunks((states * C_block).sum(3), chunked.length)
        last_state[:, channels] = states[step, ..., chunk]
    return y, last_state


def _chunked_backward(u, dt, A, B, C, grad_y, grad_last_state):
    chunked = _ChunkedInputs(u, dt, A, B, C)
    steps, length = chunked.steps, chunked.length
    grad_y_chunks = _to_chunks(grad_y, steps)
    grad_u, grad_dt, grad_A = torch.empty_like(u), torch.empty_like(u), torch.empty_like(A)
    grad_B_chunks, grad_C_chunks = torch.zeros_like(chunked.B), torch.zeros_like(chunked.C)
    step, chunk = chunked.last_index()
    for channels in _channel_blocks(u, A.shape[1]):
        decay, states, B_block, C_block, group_of = chunked.block(channels)
        state_before_chunk = _scan_chunks(decay, states)
        gy = grad_y_chunks[:, :, channels].unsqueeze(3)
        grad_C_chunks.index_add_(2, group_of, gy * states)
        adjoint = gy * C_block
        adjoint[step, ..., chunk] += grad_last_state[:, channels]
        _reverse_scan_chunks(decay, adjoint)
        # d loss / d (dt_t A) = lam_t * decay_t * h_{t-1}
        grad_exponent = torch.mul(adjoint, decay, out=decay)
        grad_exponent[1:] *= states[:-1]
        grad_exponent[0] *= state_before_chunk
        adjoint_B = (adjoint * B_block).sum(3)
        dt_block, u_block = chunked.dt[:, :, channels], chunked.u[:, :, channels]
        grad_dt[:, channels] = _from_chunks(
            (grad_exponent * A[channels].unsqueeze(-1)).sum(3) + u_block * adjoint_B, length
        )
        grad_u[:, channels] = _from_chunks(dt_block * adjoint_B, length)
        grad_A[channels] = (grad_exponent * dt_block.unsqueeze(3)).sum((0, 1, 4))
        grad_B_chunks.index_add_(2, group_of, adjoint * (dt_block * u_block).unsqueeze(3))
    return grad_u, grad_dt, grad_A, _from_chunks(grad_B_chunks, length), _from_chunks(grad_C_chunks, length)


def _chunked_scan_forward(u, delta, A, B, C, D, z, bias, softplus):
    """The chunked core with the delta bias/softplus, D skip and z gate around it in PyTorch."""
    pre = delta + bias[:, None] if bias is not None else delta
    y, last_state = _chunked_forward(u, F.softplus(pre) if softplus else pre, A, B, C)
    if D is not None:
        y = y + u * D[:, None]
    out = y * F.silu(z) if z is not None else y
    return out, last_state, y if z is not None else None


def _chunked_scan_backward(u, delta, A, B, C, D, z, bias, softplus, y_pre, grad_out, grad_last_state):
    pre = delta + bias[:, None] if bias is not None else delta
    grad_z = None
    if z is not None:
        sig = torch.sigmoid(z)
        grad_z = grad_out * y_pre * sig * (1 + z * (1 - sig))
        grad_out = grad_out * z * sig
    grad_u, grad_dt, grad_A, grad_B, grad_C = _chunked_backward(
        u, F.softplus(pre) if softplus else pre, A, B, C, grad_out.contiguous(), grad_last_state
    )
    grad_D = None
    if D is not None:
        grad_u = grad_u + grad_out * D[:, None]
        grad_D = (grad_out * u).sum((0, 2))
    grad_delta = torch.ops.aten.softplus_backward(grad_dt, pre, 1, 20) if softplus else grad_dt
    grad_bias = grad_delta.sum((0, 2)) if bias is not None else None
    return grad_u, grad_delta, grad_A, grad_B, grad_C, grad_D, grad_z, grad_bias


_IMPLEMENTATIONS = {
    "kernel": (_kernel_forward, _kernel_backward),
    "chunked": (_chunked_scan_forward, _chunked_scan_backward),
}


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


class SelectiveScanFn(torch.autograd.Function):
    """The torch backend as one autograd op (one ``prim::PythonOp`` in a jit trace).

    ``delta_bias`` arrives as a (d, 1) column so that its rank tells it apart from D in
    ``selective_scan_flop_jit``.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        if torch.jit.is_tracing():
            # A trace records this whole function as one op and replays it with real inputs,
            # so the shape-dependent Python inside cannot go stale; its TracerWarnings are noise.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                return SelectiveScanFn._forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        return SelectiveScanFn._forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus)

    @staticmethod
    def _forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        dtype = _compute_dtype(u)
        bias = delta_bias.reshape(-1) if delta_bias is not None else None
        inputs = [t.to(dtype).contiguous() if t is not None else None for t in (u, delta, A, B, C, D, z, bias)]
        implementation = torch_implementation(u)
        scan_forward, _ = _IMPLEMENTATIONS[implementation]
        out, last_state, y_pre = scan_forward(*inputs, delta_softplus)
        ctx.implementation = implementation
        ctx.delta_softplus = delta_softplus
        ctx.input_dtypes = [t.dtype if t is not None else None for t in (u, delta, A, B, C, D, z, delta_bias)]
        ctx.save_for_backward(*inputs, y_pre)
        return out.to(u.dtype), last_state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_last_state):
        *inputs, y_pre = ctx.saved_tensors
        dtype = inputs[0].dtype
        _, scan_backward = _IMPLEMENTATIONS[ctx.implementation]
        grads = scan_backward(
            *inputs, ctx.delta_softplus, y_pre,
            grad_out.to(dtype).contiguous(), grad_last_state.to(dtype).contiguous(),
        )
        grads = [
            g.to(input_dtype) if g is not None and needed else None
            for g, input_dtype, needed in zip(grads, ctx.input_dtypes, ctx.needs_input_grad)
        ]
        if grads[7] is not None:
            grads[7] = grads[7].unsqueeze(1)
        return (*grads, None)


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
    z (3-D) and delta_bias (passed as (d, 1), 2-D) were given (None arguments are not graph
    inputs), so their rank tells them apart. The cuda backend (mamba_ssm 2.3's own
    ``SelectiveScanFn``) traces under the same op name but with a 1-D delta_bias: its count is
    exact whenever D is given (as in VMamba); a call with delta_bias and no D would be counted
    with the D term.
    """
    b, d, l = inputs[0].type().sizes()
    n = inputs[2].type().sizes()[1]
    optional_ranks = [value.type().dim() for value in inputs[5:]]
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
    if not torch.jit.is_tracing():
        _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    if resolve_backend(backend, u) == "cuda":
        kernel, _ = _mamba_ssm_scan()
        return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    bias_column = delta_bias[:, None] if delta_bias is not None else None
    out, last_state = SelectiveScanFn.apply(u, delta, A, B, C, D, z, bias_column, delta_softplus)
    return (out, last_state) if return_last_state else out
