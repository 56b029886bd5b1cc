// Alpha-beta divergence of ABKD (Wang et al., ICML 2025; the AB-divergence of Cichocki, Cruces and Amari, Entropy 2011,
// Eq. 4 and its limits Eq. 5), p = teacher, q = student, s = alpha + beta, nats-like (dimensionless):
//   D_AB(p || q) = -1/(alpha beta) sum_i ( p_i^alpha q_i^beta - alpha/s p_i^s - beta/s q_i^s )     alpha, beta, s != 0
//   limits:  beta = 0:          1/alpha^2 sum ( p^alpha log(p^alpha / q^alpha) - p^alpha + q^alpha )
//            alpha = 0:         1/beta^2  sum ( q^beta log(q^beta / p^beta) - q^beta + p^beta )
//            alpha = beta = 0:  1/2 sum ( log p - log q )^2
// (alpha, beta) = (1, 0) is forward KL and (0, 1) reverse KL exactly (endpoint rules). Parameters: alpha, beta in {0} U [1e-30, 1] (the float32 relative error of
// x^s grows as 2^-24 s |log x|: larger exponents are ill-conditioned in float32).
//
// Row math, in (x, y) form with x = p, y = q, lx, ly log-probabilities, d = lx - ly (as the driver forms it). Per entry, with x^a y^b computed in
// log space as exp(a lx + b ly):
//   v_j = x_j dD/dx_j = (x^s - x^a y^b) / b = x^a y^b expm1(b d) / b      (-> x^a d as b -> 0)
//   w_j = y_j dD/dy_j = (y^s - x^a y^b) / a = x^a y^b expm1(-a d) / a     (-> -x^a y^b d as a -> 0)
//   D_j = (v_j + w_j) / s                                                  (s > 0);   d^2 / 2 when a = b = 0
// The factored form x^a y^b expm1(c d) / c is used where c d <= 1 (no cancellation near d = 0, no overflow), the
// difference of powers where c d > 1 (no overflow of expm1, cancellation below a factor e / (e - 1)). Entries with
// x = 0 or y = 0 take the exact zero-probability values (x = 0: v = 0, w = y^s / a; y = 0: w = 0, v = x^s / b); with
// a = 0 (resp. b = 0) they are +inf, a support mismatch, as the limits say.
// Gradients with respect to the logits (times T): dD/dz_y = w_j - y_j sum_i w_i, dD/dz_x = v_j - x_j sum_i v_i.
// Accuracy: D_j = (v + w) / s cancels where |d| is small (v and w have opposite signs); the relative error of a row is
// about 2^-p (|v| + |w|) / |v + w| ~ 2^-p 4 / (s |d|) for unit roundoff 2^-p, so rows of nearly equal distributions
// are evaluated to a few digits fewer in float32 than KL (tests/test_registry.cpp measures it).
#pragma once


#include "entry.hpp"
#include "row_math.hpp"

KD_BEGIN_NAMESPACE
namespace rm {

struct alpha_beta_row {
  static constexpr int n_sums = 3;
  double a = 0.5, b = 0.5;                    // alpha, beta
  double loss = 0.0, sv = 0.0, sw = 0.0;      // the loss, sum v, sum w

  // v, w and D_j of one entry (see above).
  template <class V>
  KD_ROW_INLINE void terms(const V& lx, const V& ly, const V& d, V& v, V& w, V& dj) const noexcept {
    using M = ops<V>;
    using S = scalar_t<V>;
    const V zero(S(0)), one(S(1)), inf(infinity<S>());
    const V A(static_cast<S>(a)), B(static_cast<S>(b)), s(static_cast<S>(a + b));
    const auto xz = M::is_ninf(lx), yz = M::is_ninf(ly);
    const V pw = M::exp_nonpos(M::fma(A, lx, B * ly));  // x^a y^b (NaN lanes where a = 0, lx = -inf: replaced below)
    V vr, wr;
    if (b == 0.0) {
      vr = pw * d;
    } else {
      const V bd = B * d;
      vr = M::select(bd > one, (M::exp_nonpos(s * lx) - pw) / B, pw * M::expm1(bd) / B);
    }
    if (a == 0.0) {
      wr = -(pw * d);
    } else {
      const V ad = -(A * d);
      wr = M::select(ad > one, (M::exp_nonpos(s * ly) - pw) / A, pw * M::expm1(ad) / A);
    }
    const V v_y0 = b == 0.0 ? inf : M::exp_nonpos(s * lx) / B;  // y = 0, x > 0
    const V w_x0 = a == 0.0 ? inf : M::exp_nonpos(s * ly) / A;  // x = 0, y > 0
    v = M::select(xz, zero, M::select(yz, v_y0, vr));
    w = M::select(yz, zero, M::select(xz, w_x0, wr));
    if (a + b > 0.0) {
      dj = (v + w) / s;
    } else {
      const auto both = xz && yz, either = xz || yz;
      dj = M::select(both, zero, M::select(either, inf, S(0.5) * d * d));
    }
  }
  // Split gradient (row_math.hpp): parts v, w; coefficients -sum v, -sum w.
  static constexpr bool split_grad = true;
  template <class V>
  KD_ROW_INLINE void accumulate_split(const V& lx, const V& ly, const V& d, V* acc, mask_t<V>&, V& px,
                                      V& py) const noexcept {
    V dj;
    terms(lx, ly, d, px, py, dj);
    acc[0] += dj;
    acc[1] += px;
    acc[2] += py;
  }
  template <class V>
  KD_ROW_INLINE void accumulate(const V& lx, const V& ly, const V& d, V* acc, mask_t<V>& mm) const noexcept {
    split_accumulate(*this, lx, ly, d, acc, mm);
  }
  KD_HD void finish(const double* s, bool) noexcept {
    loss = s[0];
    sv = s[1];
    sw = s[2];
  }
  KD_HD void grad_coefs(double& cx, double& cy) const noexcept {
    cx = -sv;
    cy = -sw;
  }
  template <class V>
  KD_ROW_INLINE void grad(const V& lx, const V& ly, const V& d, V& gx, V& gy) const noexcept {
    grad_of_split(*this, lx, ly, d, gx, gy);
  }
};

}  // namespace rm

namespace divergences {

inline constexpr param_spec ab_param(const char* name, double example) {
  return {name, 0.0, 1.0, false, false, 1e-30, "must be 0 or in [1e-30, 1]", example};
}

struct alpha_beta {
  static constexpr const char* name = "alpha_beta";
  static constexpr const char* cli_name = "ab";
  static constexpr const char* formula =
      "-1/(alpha beta) sum (p^alpha q^beta - alpha/(alpha+beta) p^(alpha+beta) - beta/(alpha+beta) q^(alpha+beta))";
  static constexpr const char* citation = "ABKD (Wang et al., ICML 2025); Cichocki, Cruces, Amari, Entropy 2011 Eq. 4";
  static constexpr int n_params = 2;
  static constexpr param_spec params[2] = {ab_param("alpha", 0.5), ab_param("beta", 0.5)};
  static constexpr endpoint_rule endpoints[2] = {{1.0, 0.0, "forward_kl"}, {0.0, 1.0, "reverse_kl"}};
  static constexpr bool x_is_student = false;
  using functor = rm::alpha_beta_row;
  static KD_HD constexpr functor make(double alpha, double beta) noexcept {
    functor f;
    f.a = alpha;
    f.b = beta;
    return f;
  }
};

}  // namespace divergences
KD_END_NAMESPACE
