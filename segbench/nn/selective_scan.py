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

- ``kernel``: a small C++ loop (source below) compiled with the system C++ compiler at first use
  and cached, called through ctypes on CPU tensors. It keeps the (b, d, n) state in registers and
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
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
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


# --------------------------------------------------------------------------------------------
# The compiled CPU kernel of the torch backend.
#
# core forward:  x_t = exp(dt_t A) x_{t-1} + dt_t u_t B_t;  y_t = <C_t, x_t>
# core backward: lam_t = gy_t C_t + exp(dt_{t+1} A) lam_{t+1}  (+ grad of the last state at t=l-1)
# B and C arrive transposed to (b, g, l, n) so the state index is the contiguous inner loop.
# Rows are (batch, channel) pairs; a call handles rows [row_begin, row_end). gB/gC are summed over
# the channels of a group, so every concurrent call gets its own gB/gC buffer.

_KERNEL_SOURCE = r"""
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef SEGBENCH_LIBMVEC
// glibc's libmvec has vector exp; declaring it lets the compiler vectorise the state loop
// without -ffast-math (which would also flush denormals process-wide).
extern "C" {
__attribute__((simd("notinbranch"))) float expf(float) noexcept;
__attribute__((simd("notinbranch"))) double exp(double) noexcept;
}
#endif

namespace {

inline float exp_(float v) { return expf(v); }
inline double exp_(double v) { return exp(v); }

struct Shape { int64_t dim, groups, n, l; };

template <typename T, int NS>
void forward_rows(const T* u, const T* dt, const T* A, const T* Bt, const T* Ct, Shape s,
                  int64_t row_begin, int64_t row_end, T* y, T* last_state) {
  const int64_t n = NS ? NS : s.n;
  const int64_t l = s.l, per_group = s.dim / s.groups;
  std::vector<T> x(n);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t b = r / s.dim, d = r % s.dim, g = d / per_group;
    const T* Ar = A + d * n;
    const T* Bg = Bt + (b * s.groups + g) * l * n;
    const T* Cg = Ct + (b * s.groups + g) * l * n;
    const T* ur = u + r * l;
    const T* dtr = dt + r * l;
    T* yr = y + r * l;
    T* xs = x.data();
    std::memset(xs, 0, sizeof(T) * n);
    for (int64_t t = 0; t < l; ++t) {
      const T step = dtr[t], drive = step * ur[t];
      const T* Bp = Bg + t * n;
      const T* Cp = Cg + t * n;
      T acc = 0;
      for (int64_t k = 0; k < n; ++k) {
        xs[k] = exp_(step * Ar[k]) * xs[k] + drive * Bp[k];
        acc += Cp[k] * xs[k];
      }
      yr[t] = acc;
    }
    std::memcpy(last_state + r * n, xs, sizeof(T) * n);
  }
}

template <typename T, int NS>
void backward_rows(const T* u, const T* dt, const T* A, const T* Bt, const T* Ct, const T* gy,
                   const T* glast, Shape s, int64_t row_begin, int64_t row_end,
                   T* gu, T* gdt, T* gA_rows, T* gBt, T* gCt) {
  const int64_t n = NS ? NS : s.n;
  const int64_t l = s.l, per_group = s.dim / s.groups;
  std::vector<T> decay(l * n), states(l * n), lam(n);
  std::vector<double> gA(n);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t b = r / s.dim, d = r % s.dim, g = d / per_group;
    const T* Ar = A + d * n;
    const int64_t group_offset = (b * s.groups + g) * l * n;
    const T* Bg = Bt + group_offset;
    const T* Cg = Ct + group_offset;
    T* gBg = gBt + group_offset;
    T* gCg = gCt + group_offset;
    const T* ur = u + r * l;
    const T* dtr = dt + r * l;
    const T* gyr = gy + r * l;
    T* x = states.data();
    T* a = decay.data();
    for (int64_t k = 0; k < n; ++k) {
      a[k] = exp_(dtr[0] * Ar[k]);
      x[k] = dtr[0] * ur[0] * Bg[k];
    }
    for (int64_t t = 1; t < l; ++t) {
      const T step = dtr[t], drive = step * ur[t];
      const T* Bp = Bg + t * n;
      T* at = a + t * n;
      T* xt = x + t * n;
      const T* xp = xt - n;
      for (int64_t k = 0; k < n; ++k) {
        at[k] = exp_(step * Ar[k]);
        xt[k] = at[k] * xp[k] + drive * Bp[k];
      }
    }
    T* lm = lam.data();
    for (int64_t k = 0; k < n; ++k) { lm[k] = glast ? glast[r * n + k] : T(0); gA[k] = 0; }
    for (int64_t t = l - 1; t >= 0; --t) {
      const T grad = gyr[t], step = dtr[t], drive = step * ur[t];
      const T* Bp = Bg + t * n;
      const T* Cp = Cg + t * n;
      const T* at = a + t * n;
      const T* xt = x + t * n;
      T* gBp = gBg + t * n;
      T* gCp = gCg + t * n;
      T sum_decay = 0, sum_drive = 0;
      if (t > 0) {
        const T* xp = xt - n;
        for (int64_t k = 0; k < n; ++k) {
          const T lk = lm[k] + grad * Cp[k];
          const T g_exponent = lk * xp[k] * at[k];  // d loss / d (dt_t * A_k)
          sum_decay += g_exponent * Ar[k];
          gA[k] += double(g_exponent * step);
          sum_drive += lk * Bp[k];
          gBp[k] += lk * drive;
          gCp[k] += grad * xt[k];
          lm[k] = lk * at[k];
        }
      } else {
        for (int64_t k = 0; k < n; ++k) {
          const T lk = lm[k] + grad * Cp[k];
          sum_drive += lk * Bp[k];
          gBp[k] += lk * drive;
          gCp[k] += grad * xt[k];
        }
      }
      gdt[r * l + t] = sum_decay + ur[t] * sum_drive;
      gu[r * l + t] = step * sum_drive;
    }
    for (int64_t k = 0; k < n; ++k) gA_rows[r * n + k] = T(gA[k]);
  }
}

template <typename T>
void forward_dispatch(const T* u, const T* dt, const T* A, const T* Bt, const T* Ct, Shape s,
                      int64_t r0, int64_t r1, T* y, T* last) {
  if (s.n == 16) forward_rows<T, 16>(u, dt, A, Bt, Ct, s, r0, r1, y, last);
  else forward_rows<T, 0>(u, dt, A, Bt, Ct, s, r0, r1, y, last);
}

template <typename T>
void backward_dispatch(const T* u, const T* dt, const T* A, const T* Bt, const T* Ct, const T* gy,
                       const T* glast, Shape s, int64_t r0, int64_t r1,
                       T* gu, T* gdt, T* gA, T* gBt, T* gCt) {
  if (s.n == 16) backward_rows<T, 16>(u, dt, A, Bt, Ct, gy, glast, s, r0, r1, gu, gdt, gA, gBt, gCt);
  else backward_rows<T, 0>(u, dt, A, Bt, Ct, gy, glast, s, r0, r1, gu, gdt, gA, gBt, gCt);
}

}  // namespace

#define SEGBENCH_EXPORT(T, suffix)                                                                 \
  extern "C" void scan_forward_##suffix(const T* u, const T* dt, const T* A, const T* Bt,          \
      const T* Ct, int64_t dim, int64_t groups, int64_t n, int64_t l, int64_t r0, int64_t r1,      \
      T* y, T* last) {                                                                             \
    forward_dispatch<T>(u, dt, A, Bt, Ct, Shape{dim, groups, n, l}, r0, r1, y, last);             \
  }                                                                                                \
  extern "C" void scan_backward_##suffix(const T* u, const T* dt, const T* A, const T* Bt,         \
      const T* Ct, const T* gy, const T* glast, int64_t dim, int64_t groups, int64_t n, int64_t l, \
      int64_t r0, int64_t r1, T* gu, T* gdt, T* gA, T* gBt, T* gCt) {                              \
    backward_dispatch<T>(u, dt, A, Bt, Ct, gy, glast, Shape{dim, groups, n, l}, r0, r1,           \
                         gu, gdt, gA, gBt, gCt);                                                   \
  }

SEGBENCH_EXPORT(float, f32)
SEGBENCH_EXPORT(double, f64)
"""

# No -ffast-math: it links crtfastmath, which turns on flush-to-zero for the whole process.
# Reassociation alone lets the compiler vectorise the sums over the state index.
_KERNEL_FLAGS = [
    "-O3", "-march=native", "-fPIC", "-std=c++17", "-fno-math-errno", "-fno-trapping-math",
    "-fassociative-math", "-fno-signed-zeros",
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


@functools.lru_cache(maxsize=1)
def _load_kernel():
    """Compile (once per source/compiler/CPU, cached on disk) and load the CPU kernel.

    Returns (ctypes library, None) or (None, why not). Never raises: the chunked pure-PyTorch
    implementation is the fallback, announced with a warning.
    """
    if os.environ.get("SEGBENCH_SCAN_KERNEL", "1") == "0":
        return None, "disabled by SEGBENCH_SCAN_KERNEL=0"
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not compiler:
        return None, "no C++ compiler found (install g++ or set CXX)"
    use_libmvec = sys.platform.startswith("linux") and ctypes.util.find_library("mvec") is not None
    flags = _KERNEL_FLAGS + (["-DSEGBENCH_LIBMVEC"] if use_libmvec else [])
    libs = ["-lmvec", "-lm"] if use_libmvec else ["-lm"]
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"C++ compiler {compiler!r} does not run: {error}"
    key = hashlib.sha256("\n".join([_KERNEL_SOURCE, " ".join(flags + libs), version, _cpu_signature()]).encode()).hexdigest()[:16]
    cache_dir = _kernel_cache_dir()
    library = cache_dir / f"selective_scan_cpu_{key}.so"
    if not library.exists():
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache_dir) as build_dir:
                source = Path(build_dir) / "selective_scan_cpu.cpp"
                source.write_text(_KERNEL_SOURCE)
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
                os.replace(partial, library)
        except (OSError, subprocess.SubprocessError) as error:
            return None, f"building {library} failed: {error}"
    try:
        lib = ctypes.CDLL(str(library))
    except OSError as error:
        return None, f"loading {library} failed: {error}"
    pointer, int64 = ctypes.c_void_p, ctypes.c_int64
    for suffix in ("f32", "f64"):
        forward = getattr(lib, f"scan_forward_{suffix}")
        forward.argtypes = [pointer] * 5 + [int64] * 6 + [pointer] * 2
        forward.restype = None
        backward = getattr(lib, f"scan_backward_{suffix}")
        backward.argtypes = [pointer] * 7 + [int64] * 6 + [pointer] * 5
        backward.restype = None
    return lib, None


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
    if _torch_implementation == "chunked":
        return "chunked"
    lib, why_not = _load_kernel()
    if _torch_implementation == "kernel":
        if lib is None:
            raise RuntimeError(f"the selective-scan CPU kernel was requested but is unavailable: {why_not}")
        if tensor.device.type != "cpu":
            raise RuntimeError(f"the selective-scan CPU kernel runs on CPU tensors; got {tensor.device}")
        return "kernel"
    if tensor.device.type != "cpu":
        return "chunked"
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


def _kernel_forward(u, dt, A, B, C):
    lib, _ = _load_kernel()
    batch, dim, length = u.shape
    groups, n = B.shape[1], A.shape[1]
    Bt, Ct = B.transpose(2, 3).contiguous(), C.transpose(2, 3).contiguous()
    y = torch.empty_like(u)
    last_state = u.new_empty(batch, dim, n)
    forward = lib.scan_forward_f64 if u.dtype == torch.float64 else lib.scan_forward_f32
    inputs = [_pointer(t) for t in (u, dt, A, Bt, Ct)]
    outputs = [_pointer(y), _pointer(last_state)]
    calls = [
        functools.partial(forward, *inputs, dim, groups, n, length, begin, end, *outputs)
        for begin, end in _row_ranges(batch * dim, 4 * torch.get_num_threads())
    ]
    _run_parallel(calls)
    return y, last_state


def _kernel_backward(u, dt, A, B, C, grad_y, grad_last_state):
    lib, _ = _load_kernel()
    batch, dim, length = u.shape
    groups, n = B.shape[1], A.shape[1]
    Bt, Ct = B.transpose(2, 3).contiguous(), C.transpose(2, 3).contiguous()
    ranges = _row_ranges(batch * dim, torch.get_num_threads())
    grad_u, grad_dt = torch.empty_like(u), torch.empty_like(u)
    grad_A_rows = u.new_empty(batch, dim, n)
    grad_Bt = u.new_zeros(len(ranges), batch, groups, length, n)
    grad_Ct = u.new_zeros(len(ranges), batch, groups, length, n)
    backward = lib.scan_backward_f64 if u.dtype == torch.float64 else lib.scan_backward_f32
    inputs = [_pointer(t) for t in (u, dt, A, Bt, Ct, grad_y, grad_last_state)]
    calls = [
        functools.partial(
            backward, *inputs, dim, groups, n, length, begin, end,
            _pointer(grad_u), _pointer(grad_dt), _pointer(grad_A_rows), _pointer(grad_Bt[i]), _pointer(grad_Ct[i]),
        )
        for i, (begin, end) in enumerate(ranges)
    ]
    _run_parallel(calls)
    grad_B = grad_Bt.sum(0).transpose(2, 3)
    grad_C = grad_Ct.sum(0).transpose(2, 3)
    return grad_u, grad_dt, grad_A_rows.sum(0), grad_B, grad_C


# --------------------------------------------------------------------------------------------
# The chunked pure-PyTorch implementation of the same core (forward and backward).
#
# Work tensors use the layout (T, b, channels, n, chunks): step j of every chunk is one
# contiguous slice, so the in-chunk loop is T in-place multiply-adds on whole slices.

_CHUNKED_BLOCK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}


def _chunk_length(length: int) -> int:
    return max(1, math.ceil(math.sqrt(length)))


def _to_chunks(x: torch.Tensor, steps: int) -> torch.Tensor:
    """(..., l) -> (T, ..., chunks) view, padding l with zeros to a multiple of T."""
    length = x.shape[-1]
    chunks = -(-length // steps)
    x = F.pad(x, (0, chunks * steps - length))
    return x.unflatten(-1, (chunks, steps)).movedim(-1, 0)


def _from_chunks(x: torch.Tensor, length: int) -> torch.Tensor:
    """(T, ..., chunks) -> (..., l)."""
    return x.movedim(0, -1).flatten(-2)[..., :length]


def _chunked_linear_scan(decay: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
    """h_t = decay_t * h_{t-1} + drive_t along the chunked layout (T, ..., chunks), h_{-1} = 0.

    Overwrites ``drive`` with h and ``decay`` with the in-chunk cumulative decay.
    """
    steps = decay.shape[0]
    for j in range(1, steps):
        drive[j].addcmul_(decay[j], drive[j - 1])
    decay.cumprod_(0)
    chunk_decay = decay[-1].movedim(-1, 0).contiguous()
    chunk_end = drive[-1].movedim(-1, 0).contiguous()
    carry = torch.zeros_like(chunk_end)
    for c in range(1, carry.shape[0]):
        torch.addcmul(chunk_end[c - 1], chunk_decay[c - 1], carry[c - 1], out=carry[c])
    drive.addcmul_(decay, carry.movedim(0, -1))
    return drive


def _chunked_block_inputs(u, dt, A, B, C, channels, steps):
    """Chunked-layout decay, drive and C for one channel block."""
    per_group = u.shape[1] // B.shape[1]
    group_of = torch.arange(channels.start, channels.stop, device=u.device) // per_group
    dt_c = _to_chunks(dt[:, channels], steps).unsqueeze(3)  # (T, b, c, 1, chunks)
    drive_c = _to_chunks(dt[:, channels] * u[:, channels], steps).unsqueeze(3)
    A_c = A[channels].unsqueeze(-1)  # (c, n, 1)
    B_c = _to_chunks(B.index_select(1, group_of), steps)  # (T, b, c, n, chunks)
    C_c = _to_chunks(C.index_select(1, group_of), steps)
    shape = B_c.shape
    decay = torch.mul(dt_c, A_c, out=u.new_empty(shape)).exp_()
    drive = torch.mul(drive_c, B_c, out=u.new_empty(shape))
    return decay, drive, dt_c, A_c, B_c, C_c, group_of


def _channel_blocks(u, n):
    batch, dim, length = u.shape
    budget = _CHUNKED_BLOCK_ELEMENTS.get(u.device.type, 1 << 24)
    width = max(1, min(dim, budget // max(1, batch * n * length)))
    return [slice(start, min(dim, start + width)) for start in range(0, dim, width)]


def _chunked_forward(u, dt, A, B, C):
    batch, dim, length = u.shape
    steps = _chunk_length(length)
    y = torch.empty_like(u)
    last_state = u.new_empty(batch, dim, A.shape[1])
    for channels in _channel_blocks(u, A.shape[1]):
        decay, drive, _, _, _, C_c, _ = _chunked_block_inputs(u, dt, A, B, C, channels, steps)
        states = _chunked_linear_scan(decay, drive)
        y[:, channels] = _from_chunks((states * C_c).sum(3), length)
        last_state[:, channels] = _from_chunks(states, length)[..., -1]
    return y, last_state


def _chunked_backward(u, dt, A, B, C, grad_y, grad_last_state):
    batch, dim, length = u.shape
    steps = _chunk_length(length)
    grad_u, grad_dt = torch.empty_like(u), torch.empty_like(u)
    grad_A, grad_B, grad_C = torch.empty_like(A), torch.zeros_like(B), torch.zeros_like(C)
    reversed_time = slice(None, None, -1)
    for channels in _channel_blocks(u, A.shape[1]):
        decay, drive, dt_c, A_c, B_c, C_c, group_of = _chunked_block_inputs(u, dt, A, B, C, channels, steps)
        step_decay = decay.clone()
        states = _from_chunks(_chunked_linear_scan(decay, drive), length)  # (b, c, n, l)
        step_decay = _from_chunks(step_decay, length)
        gy = grad_y[:, channels].unsqueeze(2)  # (b, c, 1, l)
        C_block = _from_chunks(C_c, length)
        # Adjoint: lam_t = gy_t C_t + a_{t+1} lam_{t+1}, a reversed linear scan.
        adjoint_drive = gy * C_block
        adjoint_drive[..., -1] += grad_last_state[:, channels]
        next_decay = F.pad(step_decay[..., 1:], (0, 1))
        lam = _chunked_linear_scan(
            _to_chunks(next_decay.flip(-1), steps).contiguous(),
            _to_chunks(adjoint_drive.flip(-1), steps).contiguous(),
        )
        lam = _from_chunks(lam, length).flip(-1)
        previous = F.pad(states[..., :-1], (1, 0))
        g_exponent = lam * previous * step_decay  # d loss / d (dt_t A)
        dt_block, u_block = dt[:, channels], u[:, channels]
        B_block = _from_chunks(B_c, length)
        lam_B = (lam * B_block).sum(2)
        grad_dt[:, channels] = (g_exponent * A[channels].unsqueeze(-1)).sum(2) + u_block * lam_B
        grad_u[:, channels] = dt_block * lam_B
        grad_A[channels] = (g_exponent * dt_block.unsqueeze(2)).sum((0, 3))
        grad_B.index_add_(1, group_of, lam * (dt_block * u_block).unsqueeze(2))
        grad_C.index_add_(1, group_of, gy * states)
    return grad_u, grad_dt, grad_A, grad_B, grad_C


def _core(implementation):
    return (_kernel_forward, _kernel_backward) if implementation == "kernel" else (_chunked_forward, _chunked_backward)


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
        cast = lambda t: t.to(dtype).contiguous() if t is not None else None  # noqa: E731
        u_, delta_, A_, B_, C_, D_, z_, bias_ = (cast(t) for t in (u, delta, A, B, C, D, z, delta_bias))
        pre = delta_ + bias_ if bias_ is not None else delta_
        dt = F.softplus(pre) if delta_softplus else pre
        implementation = torch_implementation(u)
        core_forward, _ = _core(implementation)
        y_scan, last_state = core_forward(u_, dt, A_, B_, C_)
        y = y_scan + u_ * D_[:, None] if D_ is not None else y_scan
        out = y * F.silu(z_) if z_ is not None else y
        ctx.implementation = implementation
        ctx.delta_softplus = delta_softplus
        ctx.input_dtypes = [t.dtype if t is not None else None for t in (u, delta, A, B, C, D, z, delta_bias)]
        ctx.save_for_backward(u_, pre, A_, B_, C_, D_, z_, y if z_ is not None else None)
        return out.to(u.dtype), last_state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_last_state):
        u, pre, A, B, C, D, z, y = ctx.saved_tensors
        dtype = u.dtype
        grad_out = grad_out.to(dtype)
        grad_last_state = grad_last_state.to(dtype).contiguous()
        dt = F.softplus(pre) if ctx.delta_softplus else pre
        grad_z = None
        if z is not None:
            gate = F.silu(z)
            sig = torch.sigmoid(z)
            grad_z = grad_out * y * sig * (1 + z * (1 - sig))
            grad_y = grad_out * gate
        else:
            grad_y = grad_out
        grad_y = grad_y.contiguous()
        _, core_backward = _core(ctx.implementation)
        grad_u, grad_dt, grad_A, grad_B, grad_C = core_backward(u, dt, A, B, C, grad_y, grad_last_state)
        grad_D = None
        if D is not None:
            grad_u = grad_u + grad_y * D[:, None]
            grad_D = (grad_y * u).sum((0, 2))
        grad_pre = torch.ops.aten.softplus_backward(grad_dt, pre, 1, 20) if ctx.delta_softplus else grad_dt
        grad_bias = grad_pre.sum((0, 2)).unsqueeze(1) if ctx.input_dtypes[7] is not None else None
        grads = [grad_u, grad_pre, grad_A, grad_B, grad_C, grad_D, grad_z, grad_bias]
        grads = [
            g.to(input_dtype) if g is not None and needed else None
            for g, input_dtype, needed in zip(grads, ctx.input_dtypes, ctx.needs_input_grad)
        ]
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
    inputs), so their rank tells them apart.
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
