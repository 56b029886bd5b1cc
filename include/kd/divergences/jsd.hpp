// Generalized Jensen-Shannon divergence, GKD (Agarwal et al., arXiv 2306.13649) Eq. 1:
//   jsd(beta) = beta KL(p || m) + (1 - beta) KL(q || m),   m = beta p + (1 - beta) q,   beta in [0, 1], nats.
// beta = 0 is forward KL and beta = 1 reverse KL exactly (endpoint rules: defined, not a limit). The mixture enters
// only as lx - lm and ly - lm, formed from the log-ratio d = lx - ly relative to the larger side (row_math.hpp
// mix_offsets), exactly 0 where log p == log q. Written in (x, y) form with x = p, y = q, b = beta:
//   dJ/dz_y = (1 - b) y_j (u_j - sum_i y_i u_i), u = ly - lm;   dJ/dz_x = b x_j (w_j - sum_i x_i w_i), w = lx - lm,
// computed as a split gradient (row_math.hpp): parts (1 - b) y_j u_j and b x_j w_j, coefficients -(1 - b) KL(y || m)
// and -b KL(x || m).
#pragma once

#include <cmath>

#include "entry.hpp"
#include "row_math.hpp"

KD_BEGIN_NAMESPACE
namespace rm {

struct jsd_row {
  static constexpr int n_sums = 2;
  double beta = 0.5, log_b = 0.0, log_1mb = 0.0;  // b, log b, log(1 - b)
  double kx = 0.0, ky = 0.0, loss = 0.0;         // KL(x || m), KL(y || m), the loss

  // wx = lx - lm, wy = ly - lm (row_math.hpp mix_offsets).
  template <class V>
  KD_ROW_INLINE void offsets(const V& d, V& wx, V& wy) const noexcept {
    using S = scalar_t<V>;
    mix_offsets(d, V(static_cast<S>(beta)), V(static_cast<S>(1.0 - beta)), V(static_cast<S>(log_b)),
                V(static_cast<S>(log_1mb)), wx, wy);
  }
  // The sums' terms tx = x wx, ty = y wy (0 where the probability is 0) and the gradient's parts px = b tx,
  // py = (1 - b) ty (split gradient, row_math.hpp).
  static constexpr bool split_grad = true;
  template <class V>
  KD_ROW_INLINE void accumulate_split(const V& lx, const V& ly, const V& d, V* acc, mask_t<V>&, V& px,
                                      V& py) const noexcept {
    using M = ops<V>;
    using S = scalar_t<V>;
    V wx, wy;
    offsets(d, wx, wy);
    const V tx = M::select(M::is_ninf(lx), V(S(0)), M::exp_nonpos(lx) * wx);
    const V ty = M::select(M::is_ninf(ly), V(S(0)), M::exp_nonpos(ly) * wy);
    acc[0] += tx;
    acc[1] += ty;
    px = V(static_cast<S>(beta)) * tx;
    py = V(static_cast<S>(1.0 - beta)) * ty;
  }
  template <class V>
  KD_ROW_INLINE void accumulate(const V& lx, const V& ly, const V& d, V* acc, mask_t<V>& mm) const noexcept {
    split_accumulate(*this, lx, ly, d, acc, mm);
  }
  KD_HD void finish(const double* s, bool) noexcept {
    kx = s[0];
    ky = s[1];
    loss = beta * kx + (1.0 - beta) * ky;
  }
  KD_HD void grad_coefs(double& cx, double& cy) const noexcept {
    cx = -beta * kx;
    cy = -(1.0 - beta) * ky;
  }
  template <class V>
  KD_ROW_INLINE void grad(const V& lx, const V& ly, const V& d, V& gx, V& gy) const noexcept {
    grad_of_split(*this, lx, ly, d, gx, gy);
  }
};

}  // namespace rm

namespace divergences {

struct jsd {
  static constexpr const char* name = "jsd";
  static constexpr const char* cli_name = "jsd";
  static constexpr const char* formula = "beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q";
  static constexpr const char* citation = "GKD (Agarwal et al., arXiv 2306.13649) Eq. 1";
  static constexpr int n_params = 1;
  static constexpr param_spec params[2] = {{"beta", 0.0, 1.0, false, false, 0.0, "must be in [0, 1]", 0.5}, {}};
  static constexpr endpoint_rule endpoints[2] = {{0.0, any_value, "forward_kl"}, {1.0, any_value, "reverse_kl"}};
  static constexpr bool x_is_student = false;
  using functor = rm::jsd_row;
  static KD_HD functor make(double beta, double) noexcept {
    functor f;
    f.beta = beta;
    f.log_b = std::log(beta);
    f.log_1mb = std::log1p(-beta);
    return f;
  }
};

}  // namespace divergences
KD_END_NAMESPACE
