// Skew KL divergences, DistiLLM (Ko et al., arXiv 2402.03898) Eqs. 4-5, alpha in [0, 1), nats:
//   skew_kl(alpha)         = KL(p || alpha p + (1 - alpha) q);   alpha = 0 is forward KL (endpoint rule)
//   skew_reverse_kl(alpha) = KL(q || (1 - alpha) p + alpha q);   alpha = 0 is reverse KL (endpoint rule)
// p = teacher, q = student. One functor S_a(x, y) = KL(x || a x + (1 - a) y), finite for a > 0 (m >= a x):
//   dS/dz_y = (1 - a) y_j (sum_i y_i d_i - d_j),  d = x/m - 1 = expm1(lx - lm)
//   dS/dz_x = x_j (h_j - sum_i x_i h_i),          h = log(x/m) - a (x/m - 1)
// skew_kl has x = p, skew_reverse_kl has x = q.
#pragma once

#include <cmath>

#include "entry.hpp"
#include "row_math.hpp"

KD_BEGIN_NAMESPACE
namespace rm {

struct skew_row {
  static constexpr int n_sums = 3;
  double a = 0.1, log_a = 0.0, log_1ma = 0.0;  // a, log a, log(1 - a)
  double loss = 0.0, xh = 0.0, yd = 0.0;       // the loss, sum x h, sum y d

  // r = lx - lm (row_math.hpp mix_offsets).
  template <class V>
  KD_ROW_INLINE V offset_x(const V& d) const noexcept {
    using S = scalar_t<V>;
    V wx, wy;
    mix_offsets(d, V(static_cast<S>(a)), V(static_cast<S>(1.0 - a)), V(static_cast<S>(log_a)),
                V(static_cast<S>(log_1ma)), wx, wy);
    return wx;
  }
  // The sums' terms x r, x h (h = r - a em) and y em (0 where the probability is 0), and the gradient's parts
  // px = x h, py = -(1 - a) y em (split gradient, row_math.hpp).
  static constexpr bool split_grad = true;
  template <class V>
  KD_ROW_INLINE void accumulate_split(const V& lx, const V& ly, const V& d, V* acc, mask_t<V>&, V& px,
                                      V& py) const noexcept {
    using M = ops<V>;
    using S = scalar_t<V>;
    const V r = offset_x(d), em = M::expm1(r);
    const auto xm = M::is_ninf(lx);
    const V x = M::exp_nonpos(lx);
    const V xh = M::select(xm, V(S(0)), x * M::fnma(V(static_cast<S>(a)), em, r));
    const V yem = M::select(M::is_ninf(ly), V(S(0)), M::exp_nonpos(ly) * em);
    acc[0] += M::select(xm, V(S(0)), x * r);
    acc[1] += xh;
    acc[2] += yem;
    px = xh;
    py = V(static_cast<S>(a - 1.0)) * yem;
  }
  template <class V>
  KD_ROW_INLINE void accumulate(const V& lx, const V& ly, const V& d, V* acc, mask_t<V>& mm) const noexcept {
    split_accumulate(*this, lx, ly, d, acc, mm);
  }
  KD_HD void finish(const double* s, bool) noexcept {
    loss = s[0];
    xh = s[1];
    yd = s[2];
  }
  KD_HD void grad_coefs(double& cx, double& cy) const noexcept {
    cx = -xh;
    cy = (1.0 - a) * yd;
  }
  template <class V>
  KD_ROW_INLINE void grad(const V& lx, const V& ly, const V& d, V& gx, V& gy) const noexcept {
    grad_of_split(*this, lx, ly, d, gx, gy);
  }
};

KD_HD inline skew_row make_skew(double alpha) noexcept {
  skew_row f;
  f.a = alpha;
  f.log_a = std::log(alpha);
  f.log_1ma = std::log1p(-alpha);
  return f;
}

}  // namespace rm

namespace divergences {

// alpha: [0, 1), not subnormal (p / m <= 1 / alpha must be finite: a subnormal alpha gave NaN gradients; fuzzing).
inline constexpr param_spec skew_alpha = {"alpha", 0.0, 1.0, false, true, 2.2250738585072014e-308,
                                          "must be in [0, 1) and not subnormal", 0.1};

struct skew_kl {
  static constexpr const char* name = "skew_kl";
  static constexpr const char* cli_name = "skl";
  static constexpr const char* formula = "KL(p || alpha p + (1 - alpha) q)";
  static constexpr const char* citation = "DistiLLM (Ko et al., arXiv 2402.03898) Eq. 4";
  static constexpr int n_params = 1;
  static constexpr param_spec params[2] = {skew_alpha, {}};
  static constexpr endpoint_rule endpoints[1] = {{0.0, any_value, "forward_kl"}};
  static constexpr bool x_is_student = false;
  using functor = rm::skew_row;
  static KD_HD functor make(double alpha, double) noexcept { return rm::make_skew(alpha); }
};

struct skew_reverse_kl {
  static constexpr const char* name = "skew_reverse_kl";
  static constexpr const char* cli_name = "srkl";
  static constexpr const char* formula = "KL(q || (1 - alpha) p + alpha q)";
  static constexpr const char* citation = "DistiLLM (Ko et al., arXiv 2402.03898) Eq. 5";
  static constexpr int n_params = 1;
  static constexpr param_spec params[2] = {skew_alpha, {}};
  static constexpr endpoint_rule endpoints[1] = {{0.0, any_value, "reverse_kl"}};
  static constexpr bool x_is_student = true;
  using functor = rm::skew_row;
  static KD_HD functor make(double alpha, double) noexcept { return rm::make_skew(alpha); }
};

}  // namespace divergences
KD_END_NAMESPACE
