// Which divergence to compute: a small value type, so one engine serves every loss and backends take it as data.
//
// p = teacher distribution, q = student distribution (softmax of the inputs at temperature T). All values in nats.
//   forward_kl          KL(p || q)                                        MiniLLM (arXiv 2306.08543) Sec 2.1; Hinton et al. 2015
//   reverse_kl          KL(q || p)                                        MiniLLM Sec 2.1
//   jsd(beta)           beta KL(p || m) + (1 - beta) KL(q || m),          GKD (Agarwal et al., arXiv 2306.13649) Eq. 1
//                       m = beta p + (1 - beta) q; beta = 0 / 1 are DEFINED as forward / reverse KL exactly
//   skew_kl(alpha)      KL(p || alpha p + (1 - alpha) q), alpha in [0,1)   DistiLLM (Ko et al., arXiv 2402.03898) Eq. 4
//   skew_reverse_kl(a)  KL(q || (1 - alpha) p + alpha q), alpha in [0,1)   DistiLLM Eq. 5
//   tvd                 (1/2) sum_i |p_i - q_i|                            total variation distance
#pragma once

#include "version.hpp"

KD_BEGIN_ISA_FREE_NAMESPACE  // plain data types of kd::dispatch's signatures (kd/version.hpp)
enum class divergence_kind { forward_kl, reverse_kl, jsd, skew_kl, skew_reverse_kl, tvd };
KD_END_ISA_FREE_NAMESPACE

KD_BEGIN_NAMESPACE

inline const char* divergence_name(divergence_kind k) noexcept {
  switch (k) {
    case divergence_kind::forward_kl: return "forward_kl";
    case divergence_kind::reverse_kl: return "reverse_kl";
    case divergence_kind::jsd: return "jsd";
    case divergence_kind::skew_kl: return "skew_kl";
    case divergence_kind::skew_reverse_kl: return "skew_reverse_kl";
    case divergence_kind::tvd: return "tvd";
  }
  return "?";
}

KD_END_NAMESPACE

KD_BEGIN_ISA_FREE_NAMESPACE

struct divergence {
  divergence_kind kind = divergence_kind::forward_kl;
  double param = 0.0;  // beta for jsd (in [0, 1]), alpha for the skew divergences (in [0, 1)); unused otherwise

  static constexpr divergence forward_kl() noexcept { return {divergence_kind::forward_kl, 0.0}; }
  static constexpr divergence reverse_kl() noexcept { return {divergence_kind::reverse_kl, 0.0}; }
  static constexpr divergence jsd(double beta) noexcept { return {divergence_kind::jsd, beta}; }
  static constexpr divergence skew_kl(double alpha) noexcept { return {divergence_kind::skew_kl, alpha}; }
  static constexpr divergence skew_reverse_kl(double alpha) noexcept { return {divergence_kind::skew_reverse_kl, alpha}; }
  static constexpr divergence tvd() noexcept { return {divergence_kind::tvd, 0.0}; }
};

KD_END_ISA_FREE_NAMESPACE
