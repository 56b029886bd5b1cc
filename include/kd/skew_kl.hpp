// Skew KL divergences (DistiLLM, Ko et al., arXiv 2402.03898, Eqs. 4-5), nats, alpha in [0, 1):
//   skew_kl(alpha)         = KL(p || alpha p + (1 - alpha) q);   alpha = 0 is forward KL
//   skew_reverse_kl(alpha) = KL(q || (1 - alpha) p + alpha q);   alpha = 0 is reverse KL
// p = teacher, q = student. Both are finite for alpha > 0 even where one side has probability 0.
// Gradients (student logits): SKL: ((1-a)/T) q_j (sum_i q_i r_i - r_j), r = p/m; SRKL: (1/T) q_j (v_j - sum_i q_i v_i),
// v = log(q/m) - a q/m. Errors: kd/divergence.hpp.
#pragma once

#include "divergence.hpp"

KD_BEGIN_NAMESPACE

template <class S, class P, class G = float, class Backend = default_backend>
status skew_kl(const student_input<S>& student, const teacher_input<P>& teacher, double alpha,
               const distill_options& options, loss_result& result, const distill_outputs<G>& outputs = {},
               const Backend& backend = {}) {
  return divergence_loss(divergence::skew_kl(alpha), student, teacher, options, result, outputs, backend);
}

template <class S, class P, class G = float, class Backend = default_backend>
status skew_reverse_kl(const student_input<S>& student, const teacher_input<P>& teacher, double alpha,
                       const distill_options& options, loss_result& result, const distill_outputs<G>& outputs = {},
                       const Backend& backend = {}) {
  return divergence_loss(divergence::skew_reverse_kl(alpha), student, teacher, options, result, outputs, backend);
}

KD_END_NAMESPACE
