// Total variation distance TVD(p, q) = (1/2) sum_i |p_i - q_i| (no unit: a probability in [0, 1]); p = teacher, q = student.
// Gradient w.r.t. student logits: (1/(2T)) q_j (s_j - sum_i q_i s_i), s = sign(q - p), sign(0) = 0. Errors: kd/divergence.hpp.
#pragma once

#include "divergence.hpp"

KD_BEGIN_NAMESPACE

template <class S, class P, class G = float, class Backend = default_backend>
status tvd(const student_input<S>& student, const teacher_input<P>& teacher, const distill_options& options,
           loss_result& result, const distill_outputs<G>& outputs = {}, const Backend& backend = {}) {
  return divergence_loss(divergence::tvd(), student, teacher, options, result, outputs, backend);
}

KD_END_NAMESPACE
