// The language-modeling (cross-entropy) term of MiniLLM training (Gu et al. arXiv 2306.08543 Sec. 2.3, L_PT; the reference
// code adds it with weight 1 on a separate pre-training batch): CE_r = -log q_r(label_r), q = softmax(z / T).
//
//   kd::status kd::lm_loss(student, labels, options, result, grad = {}, backend = kd::default_backend{})
//
// student  kd::student_logits(ptr, rows, V[, row_stride]) (float, double, kd::bfloat16, kd::half)
// labels   [rows] int32/int64 (kd::label_view); rows whose label == options.ignore_index are not counted
// options  kd::distill_options: temperature, reduction (mean = token mean over labelled rows; zero labelled rows give loss 0
//          and gradient 0), normalizer, ignore_index (labels / row_weights / t2_scale there are not used)
// result   loss in nats, valid_rows = labelled rows, denominator
// grad     optional [rows, V] d(loss)/d(logits) = (q - onehot(label)) / T * scale, 0 on unlabelled rows (may be in place)
// Errors: argument errors (shapes, a label outside [0, V) that is not ignore_index, options) before any output is written;
// a labelled row with NaN/+inf/fully masked logits, or q(label) = 0, also before any output (value errors, row named).
// This is the cross-entropy H(onehot, q): for a one-hot target it equals the forward KL (the target's entropy is 0).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "backend.hpp"
#include "backend/protocol.hpp"
#include "detail/validate.hpp"
#include "options.hpp"
#include "tensor.hpp"

KD_BEGIN_NAMESPACE

template <class S, class G = float, class Backend = default_backend>
status lm_loss(const student_input<S>& student, const label_view& labels, const distill_options& options,
               loss_result& result, const mut_rows<G>& grad = {}, const Backend& backend = {}) {
  static_assert(is_element_v<S> && is_element_v<G>, "kd: element types must be float, double, kd::bfloat16 or kd::half");
  KD_REQUIRE_BACKEND_OPERATION(lm_loss, lm_loss, Backend, student_input<S>, label_view, distill_options, loss_result,
                               mut_rows<G>);
  const auto& z = student.x;
  if (status s = detail::validate_rows(z, "student"); !s) return s;
  if (status s = detail::validate_temperature(options.temperature); !s) return s;
  if (options.reduction == reduction::normalizer && !(std::isfinite(options.normalizer) && options.normalizer > 0.0))
    return make_error(errc::invalid_argument, "normalizer", "must be finite and > 0 with reduction::normalizer",
                      options.normalizer);
  if (labels.empty() && z.rows > 0) return make_error(errc::invalid_argument, "labels", "is null");
  if (labels.size != z.rows) return make_error(errc::invalid_argument, "labels", "must have one entry per row");
  for (std::int64_t r = 0; r < z.rows; ++r) {
    const std::int64_t y = labels[r];
    if (y != options.ignore_index && (y < 0 || y >= z.cols))
      return make_error(errc::invalid_argument, "labels", "a label is outside [0, V) and not ignore_index", double(y), r);
  }
  if (grad.data) {
    if (grad.rows != z.rows || grad.cols != z.cols || grad.row_stride < grad.cols)
      return make_error(errc::invalid_argument, "grad", "shape must equal the student's [rows, V]");
    const_rows<G> g(grad.data, grad.rows, grad.cols, grad.row_stride);
    if (overlaps(g, z) && !same_buffer(g, z))
      return make_error(errc::invalid_argument, "grad", "overlaps the student without being the same buffer");
  }

  if constexpr (detail::has_run_lm_loss<Backend, student_input<S>, label_view, distill_options, loss_result, mut_rows<G>>)
    return backend.run_lm_loss(student, labels, options, result, grad);
  else
    return {};
}

KD_END_NAMESPACE
