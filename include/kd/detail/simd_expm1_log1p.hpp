// Vector expm1 and log1p for the SIMD backend, without divisions: written once over xsimd architectures (Arch is in
// every signature, so kernels compiled for different instruction sets never share a symbol).
//
//   kd::detail::simd::expm1<Arch>(xsimd::batch<float, Arch> x) -> e^x - 1
//   kd::detail::simd::log1p<Arch>(xsimd::batch<float, Arch> x) -> log(1 + x)
//
// They carry the divergences' accurate forms near 0 (kd/divergences/row_math.hpp: the JSD mixture offsets
// log1p(w expm1(-|d|)), exp_diff, TVD's 1 - q, skew KL's ratio), where xsimd's versions (Boost.SIMD's algorithms)
// spent three vector divisions per entry pair: a 512-bit division has a reciprocal throughput of about 10-16 cycles,
// against 0.5 for an FMA, and JSD(beta) ran at a third of KL's speed mostly on them (docs/performance.md).
//
// Accuracy (tests/test_simd_vector_fn.cpp, against std::expm1 / std::log1p in double rounded to float, every 251st
// float bit pattern plus every float of [-1, 1] in steps of 2^-16 and the special values; for every dispatched
// instruction set, FMA or not): expm1 at most 2 ulp, log1p at most 1. Special values as the C library's:
// expm1(-inf) = -1, expm1(+inf) = +inf, expm1(x) = +inf above 88.7228, log1p(-1) = -inf, log1p(x < -1) = NaN,
// log1p(+inf) = +inf, NaN -> NaN; -0 gives +0.
//
// expm1: x = k ln2 + r, |r| <= ln2/2 (Cody-Waite, kd's exp constants); e^r - 1 = r + r^2/2 + r^3 Q(r), Q of degree 3
// fitted for minimal relative error of the whole (1.4e-8 before rounding); then e^x - 1 = 2^k (e^r - 1) + (2^k - 1) in
// one FMA (2^k - 1 exact for |k| <= 24; k = 0 returns the polynomial itself, so tiny x keep their relative accuracy).
// Arguments are clamped to [-30, 80] (below -30 the result rounds to -1); lanes above 80 take kd's exp.
// log1p: u = 1 + x rounded, with its rounding error c = (1 + x) - u formed exactly (Fast2Sum); u = 2^k m with m in
// [sqrt(1/2), sqrt(2)), f = m - 1 exact; log1p(x) = k ln2 + log1p(f) + c / u, log1p(f) = f - f^2/2 + f^3 P(f), P of
// degree 6 fitted for minimal relative error (3.2e-8 before rounding); c / u = c 2^-k / m is a correction below half
// an ulp of u, so 1 / m is taken as 1 - f + f^2 (relative error f^3 / (1 + f), at most 5%, of a term below 2^-24 of
// the result).
#pragma once

#include <cstdint>
#include <limits>
#include <xsimd/xsimd.hpp>

#include "simd_exp.hpp"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

KD_BEGIN_NAMESPACE
namespace detail::simd {

template <class A>
KD_SIMD_INLINE fbatch<A> expm1(fbatch<A> x) noexcept {
  using b = fbatch<A>;
  using ib = ibatch<A>;
  const b hi(80.0f);
  const b xc = xsimd::min(hi, xsimd::max(b(-30.0f), x));  // NaN stays NaN (x86 min / max return the second operand)
  const b magic(12582912.0f);                              // 1.5 * 2^23: t's low mantissa bits hold k = round(x / ln2)
  const b t = xsimd::fma(xc, b(1.44269504088896341f), magic);
  const b k = t - magic;
  b r = xsimd::fnma(k, b(0.693359375f), xc);
  r = xsimd::fnma(k, b(-2.12194440e-4f), r);
  b q(1.3898225734e-03f);
  q = xsimd::fma(q, r, b(8.3660352975e-03f));
  q = xsimd::fma(q, r, b(4.1666854173e-02f));
  q = xsimd::fma(q, r, b(1.6666549444e-01f));
  const b p = xsimd::fma(r * r, xsimd::fma(r, q, b(0.5f)), r);  // e^r - 1
  const ib ki = xsimd::bitwise_cast<ib>(t) - ib(0x4B400000);
  const b s = xsimd::bitwise_cast<b>((ki + ib(127)) << 23);  // 2^k, k in [-44, 116]
  b res = xsimd::fma(s, p, s - b(1.0f));
  const auto big = x > hi;
  if (xsimd::any(big)) res = xsimd::select(big, exp<A>(x), res);
  return res;
}

template <class A>
KD_SIMD_INLINE fbatch<A> log1p(fbatch<A> x) noexcept {
  using b = fbatch<A>;
  using ib = ibatch<A>;
  const b one(1.0f);
  const b u = x + one;
  // c = (1 + x) - u exactly: Fast2Sum with the larger operand first.
  const b c = xsimd::select(xsimd::abs(x) <= one, x - (u - one), one - (u - x));
  // u = 2^k m, m in [sqrt(1/2), sqrt(2)): shift u's bits so that the exponent field counts from sqrt(1/2).
  const ib iu = xsimd::bitwise_cast<ib>(u) + ib(0x3f800000 - 0x3f3504f3);
  const ib ki = (iu >> 23) - ib(127);
  const b m = xsimd::bitwise_cast<b>((iu & ib(0x007fffff)) + ib(0x3f3504f3));
  const b f = m - one;
  // c / u = (c 2^-k) / m, 1 / m ~ 1 - f + f^2; 2^-k from the exponent bits (k <= 127 for finite u; the guard keeps
  // the field positive where c is negligible anyway).
  const b inv_pk = xsimd::bitwise_cast<b>(xsimd::max(ib(127) - ki, ib(1)) << 23);
  const b cu = (c * inv_pk) * xsimd::fma(f, f - one, one);
  b p(8.7003678083e-02f);
  p = xsimd::fma(p, f, b(-1.4267489314e-01f));
  p = xsimd::fma(p, f, b(1.4914789796e-01f));
  p = xsimd::fma(p, f, b(-1.6577585042e-01f));
  p = xsimd::fma(p, f, b(1.9963061810e-01f));
  p = xsimd::fma(p, f, b(-2.5001338124e-01f));
  p = xsimd::fma(p, f, b(3.3333909512e-01f));
  const b f2 = f * f;
  const b kf = xsimd::to_float(ki);
  // log1p(f) + k ln2_lo + c / u, small next to f (or to k ln2_hi), then the two leading terms.
  const b lo = xsimd::fma(f2 * f, p, xsimd::fma(kf, b(-2.12194440e-4f), cu)) - b(0.5f) * f2;
  b res = xsimd::fma(kf, b(0.693359375f), f + lo);
  const b inf(std::numeric_limits<float>::infinity());
  const auto regular = u > b(0.0f) && u < inf;  // false for u <= 0, u = +inf and NaN
  if (!xsimd::all(regular))
    res = xsimd::select(regular, res,
                        xsimd::select(u == b(0.0f), -inf,
                                      xsimd::select(u == inf, inf, b(std::numeric_limits<float>::quiet_NaN()))));
  return res;
}

}  // namespace detail::simd
KD_END_NAMESPACE

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
