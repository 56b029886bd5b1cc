// Total variation distance TVD(p, q) = (1/2) sum_i |p_i - q_i| (a probability in [0, 1]); p = teacher, q = student.
// Written in (x, y) form with x = p, y = q (symmetric):
//   dTV/dz_y = (1/2) y_j (s_j - sum_i y_i s_i), s = sign(y - x), sign(0) = 0;   likewise for x with sign(x - y).
// |x - y| by exp_diff (accurate where both are near 1).
#pragma once

#include "entry.hpp"
#include "row_math.hpp"

KD_BEGIN_NAMESPACE
namespace rm {

struct tvd_row {
  static constexpr int n_sums = 3;
  double loss = 0.0, ys = 0.0, xs = 0.0;  // the loss, sum y sign(y - x), sum x sign(x - y)

  template <class V>
  KD_ROW_INLINE void accumulate(const V& lx, const V& ly, V* acc, mask_t<V>&) const noexcept {
    using M = ops<V>;
    const V x = M::exp_nonpos(lx), y = M::exp_nonpos(ly);
    const V s = sign(y - x);
    acc[0] += M::abs(exp_diff(lx, ly, x, y));
    acc[1] += y * s;
    acc[2] -= x * s;  // x sign(x - y)
  }
  KD_HD void finish(const double* s, bool) noexcept {
    loss = 0.5 * s[0];
    ys = s[1];
    xs = s[2];
  }
  template <class V>
  KD_ROW_INLINE void grad(const V& lx, const V& ly, V& gx, V& gy) const noexcept {
    using M = ops<V>;
    using S = scalar_t<V>;
    const V x = M::exp_nonpos(lx), y = M::exp_nonpos(ly);
    const V s = sign(y - x);
    gy = V(S(0.5)) * y * (s - V(static_cast<S>(ys)));
    gx = V(S(0.5)) * x * ((-s) - V(static_cast<S>(xs)));
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
