// Reverse KL, KL(q_student || p_teacher) = sum_i q_i (log q_i - log p_i), in nats: mode-seeking.
// Gradient w.r.t. student logits z: (1/T) q_j (log(q_j / p_j) - KL(q || p)). MiniLLM (Gu et al., arXiv 2306.08543) Sec 2.1
// (token-level form; the sequence-level policy gradient is in kd/policy_gradient.hpp). +inf (errc::support_mismatch) when the
// teacher has a -inf logit where the student has mass. Shapes, dtypes, options and errors: kd/divergence.hpp.
#pragma once

#include "divergence.hpp"

KD_BEGIN_NAMESPACE

template <class S, class P, class G = float, class Backend = default_backend>
status reverse_kl(const student_input<S>& student, const teacher_input<P>& teacher, const distill_options& options,
                  loss_result& result, const distill_outputs<G>& outputs = {}, const Backend& backend = {}) {
  return divergence_loss(divergence::reverse_kl(), student, teacher, options, result, outputs, backend);
}

KD_END_NAMESPACE
