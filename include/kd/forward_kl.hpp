// Forward KL, KL(p_teacher || q_student) = sum_i p_i (log p_i - log q_i), in nats: mode-covering ("word-level KD").
// Gradient w.r.t. student logits z: (q - p) / T (times T^2 with t2_scale). MiniLLM (arXiv 2306.08543) Sec 2.1, Eq. 1;
// Hinton et al. 2015 for temperature. Note torch.nn.functional.kl_div(log_q, p) computes this, and -sum p log q
// (cross-entropy) differs from it by H(p). Shapes, dtypes, options and errors: kd/divergence.hpp.
#pragma once

#include "divergence.hpp"

KD_BEGIN_NAMESPACE

template <class S, class P, class G = float, class Backend = default_backend>
status forward_kl(const student_input<S>& student, const teacher_input<P>& teacher, const distill_options& options,
                  loss_result& result, const distill_outputs<G>& outputs = {}, const Backend& backend = {}) {
  return divergence_loss(divergence::forward_kl(), student, teacher, options, result, outputs, backend);
}

KD_END_NAMESPACE
