// The CPU kernel of segbench's selective scan (segbench/nn/selective_scan.py compiles it with the
// system C++ compiler at first use, caches the library and calls it through ctypes).
//
// The whole scan (delta bias and softplus, D skip, z gate) is fused per (batch, channel) row, so
// no (b, d, l) temporaries are made in PyTorch. B and C arrive transposed to (b, g, l, n) so the
// state index is the contiguous inner loop. A call handles rows [row_begin, row_end). gB/gC are
// sums over the channels of a group, so a backward call takes rows of one (batch, group) only and
// adds into its own (l, n) gB/gC buffers; per-channel gradients (A, D, delta_bias) come out per
// row and are summed over the batch in PyTorch.

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
