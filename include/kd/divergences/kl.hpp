// Kullback-Leibler divergence, the row math of forward KL and reverse KL (one functor, two orientations).
//
//   forward_kl = KL(p || q) = sum_i p_i (log p_i - log q_i)    mode-covering; MiniLLM (arXiv 2306.08543) Sec 2.1, Eq. 1;
//                                                               Hinton et al. 2015 (temperature)
//   reverse_kl = KL(q || p) = sum_i q_i (log q_i - log p_i)    mode-seeking;  MiniLLM Sec 2.1, Eq. 2
// p = teacher, q = student, nats. Written in (x, y) form, KL(x || y): forward KL has x = p, reverse KL has x = q.
// Gradients with respect to the logits (times T; the driver applies 1/T and the row scale), docs/math.md:
//   dKL/dz_y = y - x,   dKL/dz_x = x (lx - ly - KL).
// +inf (support mismatch) where some x_j > 0 has y_j = 0 (decided in log space: lx > -inf, ly = -inf).
#pragma once

#include <cmath>

#include "entry.hpp"
#include "row_math.hpp"

KD_BEGIN_NAMESPACE
namespace rm {

struct kl_row {
  static constexpr int n_sums = 1;
  double loss = 0.0;

  // Careful form: lx, ly are log-probabilities (-inf = probability 0) and d = lx - ly as the driver forms it (row_io.hpp,
  // "log-ratios"), summed into acc[0..n_sums).
  template <class V>
  KD_ROW_INLINE void accumulate(const V& lx, const V& ly, const V& d, V* acc, mask_t<V>& mismatch) const noexcept {
    using M = ops<V>;
    using S = scalar_t<V>;
    const auto xm = M::is_ninf(lx);
    mismatch = mismatch || (!xm && M::is_ninf(ly));
    acc[0] += M::select(xm, V(S(0)), M::exp_nonpos(lx) * d);
  }
  KD_HD void finish(const double* s, bool mismatch) noexcept {
    loss = mismatch ? infinity<double>() : s[0];
  }
  template <class V>
  KD_ROW_INLINE void grad(const V& lx, const V& ly, const V& d, V& gx, V& gy) const noexcept {
    using M = ops<V>;
    using S = scalar_t<V>;
    const V x = M::exp_nonpos(lx), y = M::exp_nonpos(ly);
    gy = exp_diff(-d, y, x);
    // x_j = 0 -> exactly 0, also where x underflowed from a finite lx: the log-ratio may overflow there (logits near
    // -FLT_MAX), and 0 * inf would be NaN (found by fuzzing the policy gradient).
    gx = M::select(M::is_ninf(lx) || x == V(S(0)), V(S(0)), x * (d - V(static_cast<S>(loss))));
  }

  // Online form, for rows without -inf / NaN / +inf (the drivers' fused two-pass path): with running maxima M of
  // y = z / T, u = y - M and e = exp(u) per side, one pass accumulates S_x = sum e_x, S_y = sum e_y and
  //   D = sum_j e_x,j du_j,  du_j = (y_x,j - M_x) - (y_y,j - M_y),   then   KL(x || y) = D / S_x - log S_x + log S_y.
  // The driver forms du as u_x - u_y (exact near the maxima) or from the raw logit difference, (z_x - z_y) / T -
  // (M_x - M_y) (exact where the models agree, even at low T where |z| / T is large; docs/pitfalls.md #14). D's re-basing when a running maximum moves
  // (M' = new maxima, f_x = exp(M_x - M_x')):  D' = (D - S_x ((M_x' - M_x) - (M_y' - M_y))) f_x.
  static constexpr bool has_online = true;
  template <class V>
  static KD_ROW_INLINE V online_term(const V& ex, const V& du, const V& acc) noexcept {
    return ops<V>::fma(ex, du, acc);
  }
  static KD_HD double online_rebase(double d, double sx, double shift, double fx) noexcept {
    return (d - sx * shift) * fx;
  }
  static KD_HD double online_loss(double d, double sx, double log_sx, double log_sy) noexcept {
    return d / sx - log_sx + log_sy;
  }
  // Scaled gradients of the online path from x = exp(lx), y = exp(ly): c x (lx - ly - KL), c (y - x) (exp_diff:
  // accurate where both are near 1). d = lx - ly and d_kl = lx - ly - KL, formed by the driver (from u_x - u_y minus a
  // row constant taken in double, or from the raw logit difference as (z_x - z_y) / T - (lse_x - lse_y + KL)).
  template <class V>
  static KD_ROW_INLINE V online_grad_x(const V& c, const V& x, const V& d_kl) noexcept {
    using S = scalar_t<V>;
    return ops<V>::select(x == V(S(0)), V(S(0)), c * x * d_kl);  // x = 0: exactly 0 (see grad)
  }
  template <class V>
  static KD_ROW_INLINE V online_grad_y(const V& c, const V& d, const V& x, const V& y) noexcept {
    return c * exp_diff(-d, y, x);
  }
};

}  // namespace rm

namespace divergences {

struct forward_kl {
  static constexpr const char* name = "forward_kl";
  static constexpr const char* cli_name = "fkl";
  static constexpr const char* formula = "KL(p || q) = sum p (log p - log q)";
  static constexpr const char* citation = "MiniLLM (Gu et al., arXiv 2306.08543) Sec 2.1; Hinton et al. 2015";
  static constexpr int n_params = 0;
  static constexpr param_spec params[2] = {};
  static constexpr endpoint_rule endpoints[1] = {};
  static constexpr bool x_is_student = false;
  using functor = rm::kl_row;
  static KD_HD constexpr functor make(double, double) noexcept { return {}; }
};

struct reverse_kl {
  static constexpr const char* name = "reverse_kl";
  static constexpr const char* cli_name = "rkl";
  static constexpr const char* formula = "KL(q || p) = sum q (log q - log p)";
  static constexpr const char* citation = "MiniLLM (Gu et al., arXiv 2306.08543) Sec 2.1";
  static constexpr int n_params = 0;
  static constexpr param_spec params[2] = {};
  static constexpr endpoint_rule endpoints[1] = {};
  static constexpr bool x_is_student = true;
  using functor = rm::kl_row;
  static KD_HD constexpr functor make(double, double) noexcept { return {}; }
};

}  // namespace divergences
KD_END_NAMESPACE
