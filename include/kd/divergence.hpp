// The fused divergence entry point: one call computes the reduced loss (and per-row values) and writes the gradient with
// respect to the student logits (and, when asked, the teacher logits).
//
//   kd::status kd::divergence_loss(kd::divergence d, student, teacher, options, result, outputs = {}, backend = {})
//
// student  kd::student_input<S>: [rows, V] student logits or log-probs (S = float, double, kd::bfloat16, kd::half)
// teacher  kd::teacher_input<P>: [rows, V] teacher logits or log-probs, same rows and V as the student
// options  temperature, T^2 scaling, reduction, ignore_index + labels, row weights, normalizer (kd/options.hpp)
// result   the reduced loss in nats, the number of valid rows, the denominator used
// outputs  optional gradient views (G = float, double or the input type) and per-row loss values
// Errors: an argument error (errc::invalid_argument, naming the argument) is returned before any output is written.
//         A value error found during the pass (NaN/+inf input, +inf divergence, unnormalized log-probs) is returned with the
//         smallest offending row; valid rows are still written, offending rows' gradients are NaN, the loss is NaN or +inf.
#pragma once

#include "backend.hpp"
#include "backend/protocol.hpp"
#include "detail/validate.hpp"

KD_BEGIN_NAMESPACE

template <class S, class P, class G = float, class Backend = default_backend>
status divergence_loss(const divergence& d, const student_input<S>& student, const teacher_input<P>& teacher,
                       const distill_options& options, loss_result& result, const distill_outputs<G>& outputs = {},
                       const Backend& backend = {}) {
  static_assert(is_element_v<S>, "kd: student element type must be float, double, kd::bfloat16 or kd::half");
  static_assert(is_element_v<P>, "kd: teacher element type must be float, double, kd::bfloat16 or kd::half");
  static_assert(is_element_v<G>, "kd: gradient element type must be float, double, kd::bfloat16 or kd::half");
  KD_REQUIRE_BACKEND_OPERATION(divergence_loss, divergence, Backend, divergence, student_input<S>, teacher_input<P>,
                               distill_options, loss_result, distill_outputs<G>);
  if (status s = detail::validate_divergence_call(d, student, teacher, options, outputs); !s) return s;
  if constexpr (detail::has_run_divergence<Backend, divergence, student_input<S>, teacher_input<P>, distill_options,
                                           loss_result, distill_outputs<G>>)
    return backend.run_divergence(d, student, teacher, options, result, outputs);
  else
    return {};
}

KD_END_NAMESPACE
