// Generalized Jensen-Shannon divergence JSD(beta) = beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q,
// p = teacher, q = student, nats. GKD (Agarwal et al., arXiv 2306.13649) Eq. 1. beta in [0, 1]; beta = 0 is forward KL and
// beta = 1 is reverse KL exactly (by definition, not a limit). The mixture is formed in log space (logaddexp).
// Gradient w.r.t. student logits: ((1 - beta)/T) q_j (u_j - sum_i q_i u_i), u = log(q/m). Errors: kd/divergence.hpp.
#pragma once

#include "divergence.hpp"

KD_BEGIN_NAMESPACE

template <class S, class P, class G = float, class Backend = default_backend>
status jsd(const student_input<S>& student, const teacher_input<P>& teacher, double beta, const distill_options& options,
           loss_result& result, const distill_outputs<G>& outputs = {}, const Backend& backend = {}) {
  return divergence_loss(divergence::jsd(beta), student, teacher, options, result, outputs, backend);
}

KD_END_NAMESPACE
