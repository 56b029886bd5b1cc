// Vector exp for the SIMD backend: written once over xsimd architectures (Arch is in every signature, so kernels
// compiled for different instruction sets never share a symbol).
//
//   kd::detail::simd::exp<Arch>(xsimd::batch<float, Arch> x) -> batch<float, Arch>
//
// Accuracy (measured against std::exp over the whole float range, docs/simd.md): at most 2 ulp (most
// results within 1 ulp), subnormal results scaled with one rounding, exp(-inf) == 0 exactly, exp(x) == 0 for x <
// -103.97, exp(+inf) == +inf, exp(x) == +inf for x > 88.7228, NaN -> NaN. Method: x = k ln2 + r with |r| <= ln2/2
// (Cody-Waite, two-constant ln2), exp(r) by a degree-5 polynomial fitted for minimal relative error (1.05e-7, about 0.9
// ulp, before rounding), times 2^k. 2^k is applied as two exact power-of-two factors 2^(k/2) 2^(k - k/2), so subnormal
// and overflowing results round once; on AVX-512 one vscalefps does the same. Cost: 12 vector operations per batch on
// AVX-512 (2 clamps, 8 FMA / add, 1 scalef), 18 on SSE / AVX2.
#pragma once

#include <cstdint>
#include <type_traits>
#include <xsimd/xsimd.hpp>

#include "../version.hpp"

// GCC 12's AVX-512 min/max/scalef intrinsics start from _mm512_undefined_ps(), which -Wmaybe-uninitialized
// or -Wuninitialized report (GCC bug 105593) wherever they are inlined; the pragmas keep kd's kernels warning-free.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

KD_BEGIN_NAMESPACE
namespace detail::simd {

template <class A>
using fbatch = xsimd::batch<float, A>;
template <class A>
using ibatch = xsimd::batch<std::int32_t, A>;

// The exps sit in every hot loop; large translation units (many instantiations) otherwise hit GCC's inlining limits and
// call them out of line with 64-byte arguments on the stack (measured: forward KL 1.3 vs 0.83 ns per entry).
#if defined(__GNUC__) || defined(__clang__)
#define KD_SIMD_INLINE inline __attribute__((always_inline))
#else
#define KD_SIMD_INLINE inline
#endif

template <class A>
inline constexpr bool is_avx512 = std::is_base_of<xsimd::avx512f, A>::value;

// exp(xc) for an argument already clamped to [-104, 88.8] (or NaN): range reduction by k ln2, degree-5 polynomial,
// scaling by 2^k. Shared by exp() and exp_nonpos(), which differ only in their clamps.
template <class A>
KD_SIMD_INLINE fbatch<A> exp_clamped(fbatch<A> xc) noexcept {
  using b = fbatch<A>;
  // k = round(x / ln2) via the 1.5 * 2^23 trick: t's low mantissa bits hold k.
  const b magic(12582912.0f);
  const b t = xsimd::fma(xc, b(1.44269504088896341f), magic);
  const b k = t - magic;
  b r = xsimd::fnma(k, b(0.693359375f), xc);  // ln2 high part (exact product for |k| <= 2^11)
  r = xsimd::fnma(k, b(-2.12194440e-4f), r);  // ln2 low part
  // Degree-5 polynomial, near-minimax for relative error on [-ln2/2, ln2/2] (max 1.05e-7 before rounding).
  b p(8.3125173518e-03f);
  p = xsimd::fma(p, r, b(4.1890116211e-02f));
  p = xsimd::fma(p, r, b(1.6667114566e-01f));
  p = xsimd::fma(p, r, b(4.9999231766e-01f));
  p = xsimd::fma(p, r, b(1.0f));
  p = xsimd::fma(p, r, b(1.0f));
#if defined(__AVX512F__)
  if constexpr (is_avx512<A>) {
    return _mm512_scalef_ps(p, k);
  } else
#endif
  {
    using ib = ibatch<A>;
    const ib ki = xsimd::bitwise_cast<ib>(t) - ib(0x4B400000);
    const ib k1 = ki >> 1;
    const ib k2 = ki - k1;
    const b s1 = xsimd::bitwise_cast<b>((k1 + ib(127)) << 23);
    const b s2 = xsimd::bitwise_cast<b>((k2 + ib(127)) << 23);
    return (p * s1) * s2;
  }
}

template <class A>
KD_SIMD_INLINE fbatch<A> exp(fbatch<A> x) noexcept {
  using b = fbatch<A>;
  // Clamp so that k stays in [-150, 128]; max(lo, x) / min(hi, x) return x when x is NaN (x86 min/max return their
  // second operand on NaN), so NaN flows through the polynomial and comes out NaN.
  const b lo(-104.0f), hi(88.8f);
  return exp_clamped<A>(xsimd::min(hi, xsimd::max(lo, x)));
}

// exp for arguments known to be <= 0, -inf or NaN (log-probabilities, y - max): the same result as exp() there, one
// clamp fewer (11 operations on AVX-512). Positive arguments are not supported (they would overflow the scaling).
template <class A>
KD_SIMD_INLINE fbatch<A> exp_nonpos(fbatch<A> x) noexcept {
  using b = fbatch<A>;
  return exp_clamped<A>(xsimd::max(b(-104.0f), x));  // NaN stays NaN (x86 max returns its second operand on NaN)
}

}  // namespace detail::simd
KD_END_NAMESPACE

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
