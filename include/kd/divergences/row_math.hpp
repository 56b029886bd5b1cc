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

// log m for the mixture m = a x + (1 - a) y in log space (logaddexp of log a + lx and log(1 - a) + ly), exact (= lx)
// where lx == ly, both -inf included. log_a = log a, log_1ma = log(1 - a), a in (0, 1).
template <class V>
KD_ROW_INLINE V log_mix(const V& lx, const V& ly, const V& log_a, const V& log_1ma) noexcept {
  using M = ops<V>;
  const V u = lx + log_a, v = ly + log_1ma;
  const V m = M::max(u, v);
  const V r = m + M::log1p(M::exp_nonpos(-M::abs(u - v)));
  return M::select(lx == ly, lx, r);
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
