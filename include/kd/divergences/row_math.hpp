// The vector-math vocabulary of kd's row math: what a divergence functor (kd/divergences/*.hpp) may call on its value type.
//
// A functor is written once over a value type V and calls only kd::rm::ops<V>:
//   V = double                   the reference driver (one entry at a time, double precision: the oracle)
//   V = float                    one CUDA thread, or any scalar float loop
//   V = xsimd::batch<float, A>   the SIMD driver; its specialization lives with the SIMD kernels
//                                (kd/detail/simd_math.hpp), so this header includes neither xsimd nor Eigen.
// ops<V> gives: value / mask / scalar types; exp (full range), exp_nonpos (arguments <= 0, -inf or NaN), expm1, log1p,
// abs, max (x86 maxps semantics: the second operand when either is NaN), fma(a,b,c) = a*b + c, fms = a*b - c,
// fnma = c - a*b, select(mask, a, b), is_ninf, any(mask), all(mask). A scalar splat is V(s) for every value type.
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
  static KD_ROW_INLINE bool all(bool m) noexcept { return m; }
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

// The mixture m = a x + (1 - a) y, a in (0, 1), seen from each side: wx = log x - log m and wy = log y - log m, from the
// log-ratio d = log x - log y alone (the driver forms d accurately: row_io.hpp, "log-ratios"). With L the log of the
// larger side's share, relative to the larger:
//   d >= 0:  log m = lx + L,  L = log(a + (1 - a) e^-d),   wx = -L,  wy = -d - L;
//   d <  0:  log m = ly + L,  L = log((1 - a) + a e^d),    wy = -L,  wx =  d - L;
// L is log1p(w expm1(-|d|)) (w the smaller side's weight) near d = 0 and logaddexp(log w_hi, log w - |d|) elsewhere (a
// sum of positives that cannot cancel; a tiny a), so wx and wy carry the relative rounding of d and of L only: accurate
// on a confident row's tail, where lx and ly are both ~ -gap and lx - lm formed from them would carry ~gap 2^-24
// absolute, and exactly 0 where d = 0. d = -inf (x = 0) gives wy = -log(1 - a), wx = -inf; d = +inf likewise; d = NaN
// (both sides -inf) gives NaN, which the functors mask. one_minus_a = 1 - a.
template <class V>
KD_ROW_INLINE void mix_offsets(const V& d, const V& a, const V& one_minus_a, const V& log_a, const V& log_1ma, V& wx,
                               V& wy) noexcept {
  using M = ops<V>;
  using S = scalar_t<V>;
  const auto x_hi = d >= V(S(0));
  const V ad = M::abs(d);
  const V w = M::select(x_hi, one_minus_a, a);                                 // the smaller side's weight
  const V log_wh = M::select(x_hi, log_a, log_1ma), log_w = M::select(x_hi, log_1ma, log_a);
  const V t = w * M::expm1(-ad);
  const auto near = t > V(S(-0.5));
  V L = M::log1p(t);
  if (!M::all(near)) {  // only where the smaller side's weight w exceeds 1/2 (beta away from 1/2): skipped otherwise
    const V u = log_w - ad;
    L = M::select(near, L, M::max(log_wh, u) + M::log1p(M::exp_nonpos(-M::abs(log_wh - u))));
  }
  const V hi = -L, lo = -ad - L;
  wx = M::select(x_hi, hi, lo);
  wy = M::select(x_hi, lo, hi);
}

// Split gradients. Every softmax gradient is g_j = prob_j (h_j - sum_i prob_i h_i): a part p_j = prob_j h_j made of the
// same terms as the functor's sums, plus a coefficient c = -sum_i prob_i h_i known only once the sums are finished. A
// functor that declares split_grad = true provides
//   accumulate_split(lx, ly, d, acc, mismatch, px, py)   accumulate's sums, and the parts px (x side), py (y side)
//   grad_coefs(cx, cy)                                  after finish: the coefficients, g_x = px + cx x, g_y = py + cy y
// and writes accumulate and grad through them (split_accumulate, grad_of_split below), so its math stays written once.
// Drivers may then store the parts during the sums pass and add c prob in the gradient pass: one exponential per side
// instead of the functor's terms again (detail/simd_divergence.hpp). Rounding: p and c prob are each rounded to the
// working precision before the sum, the same order as prob (h - c) with h and c each rounded once.
template <class F, class V>
KD_ROW_INLINE void split_accumulate(const F& f, const V& lx, const V& ly, const V& d, V* acc,
                                    mask_t<V>& mismatch) noexcept {
  V px, py;
  f.accumulate_split(lx, ly, d, acc, mismatch, px, py);
}
template <class F, class V>
KD_ROW_INLINE void grad_of_split(const F& f, const V& lx, const V& ly, const V& d, V& gx, V& gy) noexcept {
  using M = ops<V>;
  using S = scalar_t<V>;
  V acc[F::n_sums];
  for (int i = 0; i < F::n_sums; ++i) acc[i] = V(S(0));
  mask_t<V> mismatch(false);
  f.accumulate_split(lx, ly, d, acc, mismatch, gx, gy);  // the sums are discarded: the compiler drops them
  double cx = 0.0, cy = 0.0;
  f.grad_coefs(cx, cy);
  gx = M::fma(V(static_cast<S>(cx)), M::exp_nonpos(lx), gx);
  gy = M::fma(V(static_cast<S>(cy)), M::exp_nonpos(ly), gy);
}

// exp(a) - exp(b) given d = a - b, ea = exp(a), eb = exp(b) (a, b <= 0: log-probabilities). Where both probabilities
// are near 1 (a confident row's top token) ea - eb cancels to the rounding of each, up to 2^-24 absolute in float32;
// there it is formed as sign(d) e^hi (-expm1(-|d|)), e^hi = max(ea, eb): no cancellation and no overflow, accurate to
// the rounding of d (which the drivers form from row constants taken in double: row_io.hpp) and a few ulp of the
// result. Only lanes with max(ea, eb) > 1/2 take that form (at most two entries of a row), and a batch without such a
// lane pays one compare.
template <class V>
KD_ROW_INLINE V exp_diff(const V& d, const V& ea, const V& eb) noexcept {
  using M = ops<V>;
  using S = scalar_t<V>;
  const V hi = M::max(ea, eb);
  const auto near1 = hi > V(S(0.5));
  if (!M::any(near1)) return ea - eb;
  const V mag = -(hi * M::expm1(-M::abs(d)));
  return M::select(near1, M::select(d < V(S(0)), -mag, mag), ea - eb);
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
