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
import itertools
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
# The compiled CPU kernel of the torch backend: the whole scan (delta bias and softplus, D skip,
# z gate) fused per (batch, channel) row, so no (b, d, l) temporaries are made in PyTorch.
# B and C arrive transposed to (b, g, l, n) so the state index is the contiguous inner loop.
# A call handles rows [row_begin, row_end). gB/gC are sums over the channels of a group, so a
# backward call takes rows of one (batch, group) only and adds into its own (l, n) gB/gC buffers;
# per-channel gradients (A, D, delta_bias) come out per row and are summed over the batch in
# PyTorch.

_KERNEL_SOURCE = r"""
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef SEGBENCH_LIBMVEC
// glibc's libmvec has vector exp/log; declaring them lets the compiler vectorise the loops
// without -ffast-math (which would also flush denormals process-wide).
extern "C" {
__attribute__((simd("notinbranch"))) float expf(float) noexcept;
__attribute__((simd("notinbranch"))) double exp(double) noexcept;
__attribute__((simd("notinbranch"))) float logf(float) noexcept;
__attribute__((simd("notinbranch"))) double log(double) noexcept;
}
#endif

// Loops over the state index must stay loops: with n = 16 known at compile time, GCC unrolls
// them completely before vectorising and then calls the scalar exp 16 times.
#define STATE_LOOP _Pragma("GCC unroll 1") for

namespace {

inline float exp_(float v) { return expf(v); }
inline double exp_(double v) { return exp(v); }
inline float log_(float v) { return logf(v); }
inline double log_(double v) { return log(v); }

struct Shape { int64_t dim, groups, n, l; };

struct Inputs {
  const void *u, *delta, *A, *Bt, *Ct, *D, *z, *bias;
  int64_t softplus;
};

// dt = softplus(delta + bias) with torch's threshold 20; d_soft = d dt / d (delta + bias).
// Computed in double whatever T is: log1p(e) is a series below e = 0.01 (error < 1e-20 relative)
// and log(1 + e) above, where rounding 1 + e costs at most ~1e-14 relative. libmvec has vector
// exp and log but not log1p on every glibc.
template <typename T>
void step_sizes(const T* __restrict__ delta, T bias, bool softplus, int64_t l, T* __restrict__ dt,
                T* __restrict__ d_soft) {
  if (!softplus) {
    for (int64_t t = 0; t < l; ++t) dt[t] = delta[t] + bias;
    return;
  }
  for (int64_t t = 0; t < l; ++t) {
    const double v = double(delta[t]) + double(bias), e = exp(v);
    double series = 1.0 / 11;
    for (int i = 10; i >= 1; --i) series = 1.0 / i - e * series;
    const double log1p_e = e < 0.01 ? e * series : log(1.0 + e);
    dt[t] = T(v > 20 ? v : log1p_e);
    if (d_soft) d_soft[t] = T(v > 20 ? 1.0 : e / (1.0 + e));
  }
}

template <typename T, int NS>
void forward_rows(const Inputs& in, Shape s, int64_t row_begin, int64_t row_end,
                  T* __restrict__ out, T* __restrict__ y_pre, T* __restrict__ last_state) {
  const int64_t n = NS ? NS : s.n;
  const int64_t l = s.l, per_group = s.dim / s.groups;
  const T *u = (const T*)in.u, *delta = (const T*)in.delta, *A = (const T*)in.A;
  const T *Bt = (const T*)in.Bt, *Ct = (const T*)in.Ct, *D = (const T*)in.D, *z = (const T*)in.z;
  const T* bias = (const T*)in.bias;
  std::vector<T> x(n), dt_buffer(l);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t b = r / s.dim, d = r % s.dim, g = d / per_group;
    const T* __restrict__ Ar = A + d * n;
    const T* __restrict__ Bg = Bt + (b * s.groups + g) * l * n;
    const T* __restrict__ Cg = Ct + (b * s.groups + g) * l * n;
    const T* __restrict__ ur = u + r * l;
    T* __restrict__ dt = dt_buffer.data();
    T* __restrict__ yr = out + r * l;
    T* __restrict__ xs = x.data();
    step_sizes<T>(delta + r * l, bias ? bias[d] : T(0), in.softplus, l, dt, nullptr);
    std::memset(xs, 0, sizeof(T) * n);
    for (int64_t t = 0; t < l; ++t) {
      const T step = dt[t], drive = step * ur[t];
      const T* __restrict__ Bp = Bg + t * n;
      const T* __restrict__ Cp = Cg + t * n;
      T acc = 0;
      STATE_LOOP (int64_t k = 0; k < n; ++k) {
        xs[k] = exp_(step * Ar[k]) * xs[k] + drive * Bp[k];
        acc += Cp[k] * xs[k];
      }
      yr[t] = acc;
    }
    std::memcpy(last_state + r * n, xs, sizeof(T) * n);
    const T skip = D ? D[d] : T(0);
    for (int64_t t = 0; t < l; ++t) yr[t] += skip * ur[t];
    if (z) {
      const T* __restrict__ zr = z + r * l;
      T* __restrict__ yp = y_pre + r * l;
      for (int64_t t = 0; t < l; ++t) {
        yp[t] = yr[t];
        yr[t] = yr[t] * zr[t] / (T(1) + exp_(-zr[t]));
      }
    }
  }
}

// A separate function so that the restrict qualifiers tell the compiler the two state rows
// never overlap; written inline, the loop was versioned and mostly ran with scalar exp.
template <typename T, int NS>
inline void state_step(int64_t n_, T step, T drive, const T* __restrict__ Ar, const T* __restrict__ Bp,
                       const T* __restrict__ previous, T* __restrict__ next) {
  const int64_t n = NS ? NS : n_;
  STATE_LOOP (int64_t k = 0; k < n; ++k) next[k] = exp_(step * Ar[k]) * previous[k] + drive * Bp[k];
}

// Per row: recompute the states forward (stored), then run the adjoint backward in time:
// lam_t = gy_t C_t + exp(dt_{t+1} A) lam_{t+1}, starting from the gradient of the last state.
template <typename T, int NS>
void backward_rows(const Inputs& in, const T* __restrict__ y_pre, const T* __restrict__ grad_out,
                   const T* __restrict__ grad_last, Shape s, int64_t row_begin, int64_t row_end,
                   T* __restrict__ gu, T* __restrict__ gdelta, T* __restrict__ gz, T* __restrict__ gA_rows,
                   T* __restrict__ gD_rows, T* __restrict__ gbias_rows, T* __restrict__ gBg,
                   T* __restrict__ gCg) {
  const int64_t n = NS ? NS : s.n;
  const int64_t l = s.l, per_group = s.dim / s.groups;
  constexpr int64_t flush_every = 64;  // gA sums in T for this many steps, then in double
  const T *u = (const T*)in.u, *delta = (const T*)in.delta, *A = (const T*)in.A;
  const T *Bt = (const T*)in.Bt, *Ct = (const T*)in.Ct, *D = (const T*)in.D, *z = (const T*)in.z;
  const T* bias = (const T*)in.bias;
  std::vector<T> states(l * n), lam(n), gA_block(n), dt_buffer(l), soft_buffer(l), gy_buffer(l);
  std::vector<double> gA(n);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t b = r / s.dim, d = r % s.dim, g = d / per_group;
    const T* __restrict__ Ar = A + d * n;
    const int64_t group_offset = (b * s.groups + g) * l * n;
    const T* __restrict__ Bg = Bt + group_offset;
    const T* __restrict__ Cg = Ct + group_offset;
    const T* __restrict__ ur = u + r * l;
    const T* __restrict__ gout = grad_out + r * l;
    T* __restrict__ dt = dt_buffer.data();
    T* __restrict__ soft = soft_buffer.data();
    T* __restrict__ gy = gy_buffer.data();
    T* __restrict__ gur = gu + r * l;
    T* __restrict__ gdr = gdelta + r * l;
    step_sizes<T>(delta + r * l, bias ? bias[d] : T(0), in.softplus, l, dt, soft);

    if (z) {
      const T* __restrict__ zr = z + r * l;
      const T* __restrict__ yp = y_pre + r * l;
      T* __restrict__ gzr = gz + r * l;
      for (int64_t t = 0; t < l; ++t) {
        const T sig = T(1) / (T(1) + exp_(-zr[t]));
        gy[t] = gout[t] * zr[t] * sig;
        gzr[t] = gout[t] * yp[t] * sig * (T(1) + zr[t] * (T(1) - sig));
      }
    } else {
      std::memcpy(gy, gout, sizeof(T) * l);
    }
    if (D) {
      double gD = 0;
      for (int64_t t = 0; t < l; ++t) gD += double(gy[t] * ur[t]);
      gD_rows[r] = T(gD);
    }
    const T skip = D ? D[d] : T(0);

    T* __restrict__ x = states.data();
    for (int64_t k = 0; k < n; ++k) x[k] = dt[0] * ur[0] * Bg[k];
    for (int64_t t = 1; t < l; ++t) {
      state_step<T, NS>(n, dt[t], dt[t] * ur[t], Ar, Bg + t * n, x + (t - 1) * n, x + t * n);
    }

    T* __restrict__ lm = lam.data();
    T* __restrict__ gAb = gA_block.data();
    for (int64_t k = 0; k < n; ++k) {
      lm[k] = grad_last ? grad_last[r * n + k] : T(0);
      gA[k] = 0;
      gAb[k] = 0;
    }
    double gbias = 0;
    for (int64_t t = l - 1; t >= 0; --t) {
      const T grad = gy[t], step = dt[t], drive = step * ur[t];
      const T* __restrict__ Bp = Bg + t * n;
      const T* __restrict__ Cp = Cg + t * n;
      const T* __restrict__ xt = x + t * n;
      T* __restrict__ gBp = gBg + t * n;
      T* __restrict__ gCp = gCg + t * n;
      T sum_decay = 0, sum_drive = 0;
      if (t > 0) {
        const T* __restrict__ xp = xt - n;
        STATE_LOOP (int64_t k = 0; k < n; ++k) {
          const T decay = exp_(step * Ar[k]);
          const T lk = lm[k] + grad * Cp[k];
          const T g_exponent = lk * xp[k] * decay;  // d loss / d (dt_t * A_k)
          sum_decay += g_exponent * Ar[k];
          gAb[k] += g_exponent * step;
          sum_drive += lk * Bp[k];
          gBp[k] += lk * drive;
          gCp[k] += grad * xt[k];
          lm[k] = lk * decay;
        }
      } else {
        STATE_LOOP (int64_t k = 0; k < n; ++k) {
          const T lk = lm[k] + grad * Cp[k];
          sum_drive += lk * Bp[k];
          gBp[k] += lk * drive;
          gCp[k] += grad * xt[k];
        }
      }
      if (t % flush_every == 0) {
        for (int64_t k = 0; k < n; ++k) { gA[k] += double(gAb[k]); gAb[k] = 0; }
      }
      const T g_step = sum_decay + ur[t] * sum_drive;
      const T g_pre = in.softplus ? g_step * soft[t] : g_step;
      gdr[t] = g_pre;
      gbias += double(g_pre);
      gur[t] = step * sum_drive + grad * skip;
    }
    for (int64_t k = 0; k < n; ++k) gA_rows[r * n + k] = T(gA[k]);
    if (gbias_rows) gbias_rows[r] = T(gbias);
  }
}

}  // namespace

#define SEGBENCH_EXPORT(T, suffix)                                                                  \
  extern "C" void scan_forward_##suffix(                                                            \
      const T* u, const T* delta, const T* A, const T* Bt, const T* Ct, const T* D, const T* z,     \
      const T* bias, int64_t softplus, int64_t dim, int64_t groups, int64_t n, int64_t l,           \
      int64_t r0, int64_t r1, T* out, T* y_pre, T* last_state) {                                    \
    const Inputs in{u, delta, A, Bt, Ct, D, z, bias, softplus};                                     \
    const Shape s{dim, groups, n, l};                                                               \
    if (n == 16) forward_rows<T, 16>(in, s, r0, r1, out, y_pre, last_state);                        \
    else forward_rows<T, 0>(in, s, r0, r1, out, y_pre, last_state);                                 \
  }                                                                                                 \
  extern "C" void scan_backward_##suffix(                                                           \
      const T* u, const T* delta, const T* A, const T* Bt, const T* Ct, const T* D, const T* z,     \
      const T* bias, const T* y_pre, const T* grad_out, const T* grad_last, int64_t softplus,       \
      int64_t dim, int64_t groups, int64_t n, int64_t l, int64_t r0, int64_t r1, T* gu, T* gdelta,  \
      T* gz, T* gA, T* gD, T* gbias, T* gBt, T* gCt) {                                              \
    const Inputs in{u, delta, A, Bt, Ct, D, z, bias, softplus};                                     \
    const Shape s{dim, groups, n, l};                                                               \
    if (n == 16)                                                                                    \
      backward_rows<T, 16>(in, y_pre, grad_out, grad_last, s, r0, r1, gu, gdelta, gz, gA, gD,       \
                           gbias, gBt, gCt);                                                        \
    else                                                                                            \
      backward_rows<T, 0>(in, y_pre, grad_out, grad_last, s, r0, r1, gu, gdelta, gz, gA, gD, gbias, \
                          gBt, gCt);                                                                \
  }

SEGBENCH_EXPORT(float, f32)
SEGBENCH_EXPORT(double, f64)
"""

# No -ffast-math: it links crtfastmath, which turns on flush-to-zero for the whole process.
# Reassociation alone lets the compiler vectorise the sums over the state index (so the kernel
# must not rely on rounding tricks such as (1 + e) - 1).
_KERNEL_FLAGS = [
    "-O3", "-fPIC", "-std=c++17", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros",
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


def _build_library(compiler: str, version: str, flags: list[str], libs: list[str]) -> tuple[Path | None, str | None]:
    """Compile the kernel with these flags into the cache unless it is there; (path, None) or (None, error)."""
    key = hashlib.sha256("\n".join([_KERNEL_SOURCE, " ".join(flags + libs), version, _cpu_signature()]).encode()).hexdigest()[:16]
    cache_dir = _kernel_cache_dir()
    library = cache_dir / f"selective_scan_cpu_{key}.so"
    if library.exists():
        return library, None
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
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not compiler:
        return None, "no C++ compiler found (install g++ or set CXX)"
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"C++ compiler {compiler!r} does not run: {error}"
    variants = [(_KERNEL_FLAGS + ["-march=native"], ["-lm"]), (_KERNEL_FLAGS, ["-lm"])]
    if sys.platform.startswith("linux") and ctypes.util.find_library("mvec"):
        variants.insert(0, (_KERNEL_FLAGS + ["-march=native", "-DSEGBENCH_LIBMVEC"], ["-lmvec", "-lm"]))
    failures = []
    for flags, libs in variants:
        library, error = _build_library(compiler, version, flags, libs)
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
