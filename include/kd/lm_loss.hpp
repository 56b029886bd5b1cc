// The language-modeling (cross-entropy) term of MiniLLM training (Gu et al. arXiv 2306.08543 Sec. 2.3, L_PT; the reference
// code adds it with weight 1 on a separate pre-training batch): CE_r = -log q_r(label_r), q = softmax(z / T).
//
//   kd::status kd::lm_loss(student, labels, options, result, grad = {}, backend = kd::pg_fast_backend{})
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
#include <cstdint>
#include <type_traits>

#include "backend.hpp"
#include "detail/validate.hpp"
#include "options.hpp"
#include "policy_gradient.hpp"

KD_BEGIN_NAMESPACE

template <class S, class G = float, class Backend = pg_fast_backend>
status lm_loss(const student_input<S>& student, const label_view& labels, const distill_options& options,
               loss_result& result, const mut_rows<G>& grad = {}, const Backend& backend = {}) {
  static_assert(is_element_v<S> && is_element_v<G>, "kd: element types must be float, double, kd::bfloat16 or kd::half");
  static_assert(detail::pg::simd_traits<Backend>::value || std::is_same_v<Backend, reference_backend>,
                "kd::lm_loss: backend must be a kd::simd_backend<...> or kd::reference_backend");
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

  const double inv_t = 1.0 / options.temperature;
  using rows_t = detail::pg::rows_for<Backend, S, S>;
  rows_t rk(z.cols);
  (void)backend;
  std::vector<detail::pg::row_state> st(static_cast<std::size_t>(z.rows));
  double sum = 0.0;
  std::int64_t count = 0;
  for (std::int64_t r = 0; r < z.rows; ++r) {
    auto& s = st[r];
    const std::int64_t y = labels[r];
    if (y == options.ignore_index) continue;
    s.y_lm = y;
    if (rk.pass1(z.row(r), z.row(r), z.cols, inv_t, s) != 0)
      return make_error(errc::non_finite_input, "student", "a labelled row holds NaN or +inf, or is fully masked",
                        s.lse_s, r);
    if (s.lq_lm == detail::ref::ninf)
      return make_error(errc::support_mismatch, "labels", "the student gives probability 0 to the label", s.lq_lm, r);
    sum += -s.lq_lm;
    ++count;
  }
  double den = 1.0;
  if (options.reduction == reduction::mean) den = static_cast<double>(count);
  else if (options.reduction == reduction::normalizer) den = options.normalizer;
  const double scale = den > 0.0 ? 1.0 / den : 0.0;
  result.valid_rows = count;
  result.denominator = den > 0.0 ? den : 1.0;
  result.loss = sum * scale;
  if (grad.data)
    for (std::int64_t r = 0; r < z.rows; ++r) {
      auto& s = st[r];
      G* g = grad.row(r);
      if (s.y_lm < 0 || scale == 0.0) {
        std::fill(g, g + z.cols, from_double<G>(0.0));
        continue;
      }
      s.c_lm = scale;
      rk.pass2(z.row(r), z.row(r), z.cols, inv_t, s, g);
    }
  return ok_status();
}

KD_END_NAMESPACE
