// Total variation distance TVD(p, q) = (1/2) sum_i |p_i - q_i| (a probability in [0, 1]); p = teacher, q = student.
// Written in (x, y) form with x = p, y = q (symmetric):
//   dTV/dz_y = (1/2) y_j (s_j - sum_i y_i s_i), s = sign(y - x), sign(0) = 0;   likewise for x with sign(x - y).
// |x - y| by exp_diff (accurate where both are near 1); s from the log-ratio d = lx - ly as the driver forms it.
#pragma once

#include "entry.hpp"
#include "row_math.hpp"

KD_BEGIN_NAMESPACE
namespace rm {

struct tvd_row {
  static constexpr int n_sums = 5;
  // The loss; sum y s and sum x (-s) (s = sign(y - x)), each kept as an integer part (the entries with probability
  // above 1/2, counted as s) plus the rest: the centring s_j - sum_i y_i s_i of a confident row's top token is of the
  // size of its tail mass, which y_top = 1 in float32 would round away (y_top enters as 1 + expm1(ly) instead).
  double loss = 0.0, ys_int = 0.0, ys_rest = 0.0, xs_int = 0.0, xs_rest = 0.0;

  // s = sign(y - x) = sign(-d), exact wherever d is (x and y both near 1 round to the same float).
  template <class V>
  static KD_ROW_INLINE V sign_yx(const V& d) noexcept {
    return rm::sign(-d);  // qualified: ADL would pick xsimd::sign, which maps NaN (padded lanes) to NaN
  }
  template <class V>
  KD_ROW_INLINE void accumulate(const V& lx, const V& ly, const V& d, V* acc, mask_t<V>&) const noexcept {
    using M = ops<V>;
    using S = scalar_t<V>;
    const V x = M::exp_nonpos(lx), y = M::exp_nonpos(ly);
    const V s = sign_yx(d);
    acc[0] += M::abs(exp_diff(d, x, y));
    const auto hy = ly > V(S(-0.69314718f)), hx = lx > V(S(-0.69314718f));  // probability above 1/2
    acc[1] += M::select(hy, s, V(S(0)));
    acc[2] += M::select(hy, M::expm1(ly), y) * s;
    acc[3] -= M::select(hx, s, V(S(0)));
    acc[4] -= M::select(hx, M::expm1(lx), x) * s;
  }
  KD_HD void finish(const double* s, bool) noexcept {
    loss = 0.5 * s[0];
    ys_int = s[1];
    ys_rest = s[2];
    xs_int = s[3];
    xs_rest = s[4];
  }
  template <class V>
  KD_ROW_INLINE void grad(const V& lx, const V& ly, const V& d, V& gx, V& gy) const noexcept {
    using M = ops<V>;
    using S = scalar_t<V>;
    const V x = M::exp_nonpos(lx), y = M::exp_nonpos(ly);
    const V s = sign_yx(d);
    // (s - int) is exact (small integers); the rest is subtracted after.
    gy = V(S(0.5)) * y * ((s - V(static_cast<S>(ys_int))) - V(static_cast<S>(ys_rest)));
    gx = V(S(0.5)) * x * (((-s) - V(static_cast<S>(xs_int))) - V(static_cast<S>(xs_rest)));
  }
};

}  // namespace rm

namespace divergences {

struct tvd {
  static constexpr const char* name = "tvd";
  static constexpr const char* cli_name = "tvd";
  static constexpr const char* formula = "(1/2) sum |p - q|";
  static constexpr const char* citation = "total variation distance";
  static constexpr int n_params = 0;
  static constexpr param_spec params[2] = {};
  static constexpr endpoint_rule endpoints[1] = {};
  static constexpr bool x_is_student = false;
  using functor = rm::tvd_row;
  static KD_HD constexpr functor make(double, double) noexcept { return {}; }
};

}  // namespace divergences
KD_END_NAMESPACE
