// kd::rm::ops for xsimd::batch<float, A>: the row-math vocabulary (kd/divergences/row_math.hpp) on SIMD lanes, so the
// divergence functors run unchanged in the SIMD driver. exp / exp_nonpos (detail/simd_exp.hpp) and expm1 / log1p
// (detail/simd_expm1_log1p.hpp: division-free, at most 2 ulp) are kd's own; the rest forwards to xsimd. Arch is in every signature (no symbol shared between instruction sets).
#pragma once

#include <limits>
#include <xsimd/xsimd.hpp>

#include "../divergences/row_math.hpp"
#include "simd_exp.hpp"
#include "simd_expm1_log1p.hpp"

KD_BEGIN_NAMESPACE
namespace rm {

template <class A>
struct ops<xsimd::batch<float, A>> {
  using value = xsimd::batch<float, A>;
  using mask = xsimd::batch_bool<float, A>;
  using scalar = float;

  static KD_SIMD_INLINE value exp(const value& x) noexcept { return detail::simd::exp<A>(x); }
  static KD_SIMD_INLINE value exp_nonpos(const value& x) noexcept { return detail::simd::exp_nonpos<A>(x); }
  static KD_SIMD_INLINE value expm1(const value& x) noexcept { return detail::simd::expm1<A>(x); }
  static KD_SIMD_INLINE value log1p(const value& x) noexcept { return detail::simd::log1p<A>(x); }
  static KD_SIMD_INLINE value abs(const value& x) noexcept { return xsimd::abs(x); }
  static KD_SIMD_INLINE value max(const value& a, const value& b) noexcept { return xsimd::max(a, b); }
  static KD_SIMD_INLINE value fma(const value& a, const value& b, const value& c) noexcept { return xsimd::fma(a, b, c); }
  static KD_SIMD_INLINE value fms(const value& a, const value& b, const value& c) noexcept { return xsimd::fms(a, b, c); }
  static KD_SIMD_INLINE value fnma(const value& a, const value& b, const value& c) noexcept {
    return xsimd::fnma(a, b, c);
  }
  static KD_SIMD_INLINE value select(const mask& m, const value& a, const value& b) noexcept {
    return xsimd::select(m, a, b);
  }
  static KD_SIMD_INLINE mask is_ninf(const value& x) noexcept {
    return x == value(-std::numeric_limits<float>::infinity());
  }
  static KD_SIMD_INLINE bool any(const mask& m) noexcept { return xsimd::any(m); }
  static KD_SIMD_INLINE bool all(const mask& m) noexcept { return xsimd::all(m); }
};

}  // namespace rm
KD_END_NAMESPACE
