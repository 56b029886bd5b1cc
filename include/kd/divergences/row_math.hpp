// The vector-math vocabulary of kd's row math: what a divergence functor (kd/divergences/*.hpp) may call on its value type.
//
// A functor is written once over a value type V and calls only kd::rm::ops<V>:
//   V = double                   the reference driver (one entry at a time, double precision: the oracle)
//   V = float                    one CUDA thread, or any scalar float loop
//   V = xsimd::batch<float, A>   the SIMD driver; its specialization lives with the SIMD kernels
//                                (kd/detail/simd_math.hpp), so this header includes neither xsimd nor Eigen.
// ops<V> gives: value / mask / scalar types; exp (full range), exp_nonpos (arguments <= 0, -inf or NaN), expm1, log1p,
// abs, max (x86 maxps semantics: the second operand when either is NaN), fma(a,b,c) = a*b + c, fms = a*b - c,
// fnma = c - a*b, select(mask, a, b), is_ninf. A scalar splat is V(s) for every value type.
//
// Functions are __host__ __device__ under nvcc (KD_HD) so the same functors compile into CUDA kernels.
#pragma once

#include <cmath>

#include "../version.hpp"

#if defined(__CUDACC__)
#define KD_HD __host__ __device__
#else
#define KD_HD
#endif

// Row math sits in every hot loop: force inlining (GCC otherwise calls small vector functions out of line in large
// translation units, with 64-byte arguments on the stack; measured 1.3 vs 0.83 ns per entry for forward KL).
#if defined(__CUDACC__)
#define KD_ROW_INLINE __host__ __device__ __forceinline__
#elif defined(__GNUC__) || defined(__clang__)
#define KD_ROW_INLINE inline __attribute__((always_inline))
#else
#define KD_ROW_INLINE inline
#endif

KD_BEGIN_NAMESPACE
namespace rm {

// +inf of a scalar type, usable in host and device code (std::numeric_limits is host-only under nvcc).
template <class S>
KD_ROW_INLINE constexpr S infinity() noexcept {
  return static_cast<S>(HUGE_VAL);
}

// Specialized for each value type a driver uses.
template <class V>
struct ops;

template <class S>
struct scalar_ops {
  using value = S;
  using mask = bool;
  using scalar = S;

  static KD_ROW_INLINE S exp(S x) noexcept { return std::exp(x); }
  static KD_ROW_INLINE S exp_nonpos(S x) noexcept { return std::exp(x); }
  static KD_ROW_INLINE S expm1(S x) noexcept { return std::expm1(x); }
  static KD_ROW_INLINE S log1p(S x) noexcept { return std::log1p(x); }
  static KD_ROW_INLINE S abs(S x) noexcept { return std::fabs(x); }
  static KD_ROW_INLINE S max(S a, S b) noexcept { return a > b ? a : b; }
  static KD_ROW_INLINE S fma(S a, S b, S c) noexcept { return a * b + c; }
  static KD_ROW_INLINE S fms(S a, S b, S c) noexcept { return a * b - c; }
  static KD_ROW_INLINE S fnma(S a, S b, S c) noexcept { return c - a * b; }
  static KD_ROW_INLINE S select(bool m, S a, S b) noexcept { return m ? a : b; }
  static KD_ROW_INLINE bool is_ninf(S x) noexcept { return x == -infinity<S>(); }
  static KD_ROW_INLINE bool any(bool m) noexcept { return m; }
};

template <>
struct ops<double> : scalar_ops<double> {};
template <>
struct ops<float> : scalar_ops<float> {};

// The scalar type of a value type (float lanes for SIMD batches): parameters and row constants are rounded to it once.
template <class V>
using scalar_t = typename ops<V>::scalar;
template <class V>
using mask_t = typename ops<V>::mask;

// log m for the mixture m = a x + (1 - a) y, a in (0, 1), from lx = log x and ly = log y, relative to the larger:
//   lx >= ly:  log m = lx + log1p((1 - a) expm1(ly - lx)),   else  log m = ly + log1p(a expm1(lx - ly)).
// lx - log m is then accurate to rounding of itself even where x and y are both near 1 (a confident row's top token;
// logaddexp(log a + lx, log(1 - a) + ly) would round lx away against log a). Exact (= lx) where lx == ly, both -inf
// included; a -inf side gives log of the other side's weight. one_minus_a = 1 - a.
template <class V>
KD_ROW_INLINE V log_mix(const V& lx, const V& ly, const V& a, const V& one_minus_a, const V& log_a,
                        const V& log_1ma) noexcept {
  using M = ops<V>;
  using S = scalar_t<V>;
  const auto x_hi = lx >= ly;
  const V hi = M::select(x_hi, lx, ly), lo = M::select(x_hi, ly, lx), w = M::select(x_hi, one_minus_a, a);
  const V log_wh = M::select(x_hi, log_a, log_1ma), log_w = M::select(x_hi, log_1ma, log_a);
  // log(wh + w e^(lo - hi)): near lo = hi as log1p(w expm1(lo - hi)); elsewhere (the hi side's weight dominates, e.g.
  // a tiny a) as logaddexp(log wh, log w + lo - hi), a sum of positives that cannot cancel.
  const V t = w * M::expm1(lo - hi);
  const V u = log_w + (lo - hi);
  const V far = M::max(log_wh, u) + M::log1p(M::exp_nonpos(-M::abs(log_wh - u)));
  const V r = hi + M::select(t > V(S(-0.5)), M::log1p(t), far);
  return M::select(lx == ly, lx, r);
}

// exp(a) - exp(b) given ea = exp(a), eb = exp(b) (a, b <= 0: log-probabilities). Where both probabilities are near 1
// (a confident row's top token) ea - eb cancels to the rounding of each, up to 2^-24 absolute in float32; there it is
// formed as expm1(a) - expm1(b), accurate to rounding of the difference. Only lanes with max(a, b) > -0.7 take that form
// (at most two entries of a row), and a batch without such a lane pays one compare.
template <class V>
KD_ROW_INLINE V exp_diff(const V& a, const V& b, const V& ea, const V& eb) noexcept {
  using M = ops<V>;
  using S = scalar_t<V>;
  const auto near1 = M::max(a, b) > V(S(-0.7));
  if (!M::any(near1)) return ea - eb;
  return M::select(near1, M::expm1(a) - M::expm1(b), ea - eb);
}

// sign(v) in {-1, 0, 1}.
template <class V>
KD_ROW_INLINE V sign(const V& v) noexcept {
  using M = ops<V>;
  using S = scalar_t<V>;
  return M::select(v > V(S(0)), V(S(1)), M::select(v < V(S(0)), V(S(-1)), V(S(0))));
}

}  // namespace rm
KD_END_NAMESPACE
