// Sparse (top-k) teachers as a first-class input: any divergence between a full-vocabulary student and a teacher given
// only as its top-k token ids and log-probabilities (as distillation pipelines cache them offline, or a served teacher
// returns them), in one fused call with the gradient with respect to the full student logits.
//
//   kd::status kd::topk_divergence_loss(kd::divergence d, student, teacher_topk, options, result, outputs = {},
//                                       backend = {})
//
// student       kd::student_input<S>: [rows, V] student logits (or log-probs), S = float, double, bf16, fp16
// teacher_topk  kd::topk_teacher_input<P> (kd::teacher_topk(indices, log_probs, rows, k, mode)):
//                 indices    [rows, k] int64 token ids, each in [0, V), distinct within a row (any order)
//                 log_probs  [rows, k] the teacher's log-probabilities of those tokens (P = float, double, bf16, fp16),
//                            normalized over the full vocabulary, at the distillation temperature: kd uses them as
//                            given (options.temperature applies to the student only; with renormalize they may also be
//                            any scores, e.g. top-k logits already divided by T)
//                 mode       how the two sides are put on a common support (kd::topk_mode, below)
// options       as kd::divergence_loss (temperature of the student, T^2 scaling, reduction, ignore_index + labels,
//               row weights, normalizer). Rows that do not count (ignored label, weight 0) are not read at all: their
//               indices may be padding.
// outputs       grad_student ([rows, V], may be the student buffer itself), per_row; grad_teacher must be empty (the
//               teacher's top-k values are data here).
// Modes (q = softmax(z / T) the student over the full vocabulary, S the row's support, p_i the teacher's probabilities):
//   tail_bucket   both sides become k + 1 entries, the support and one bucket with the remaining mass:
//                   q' = (q_i for i in S, q_tail = sum_{j not in S} q_j),  p' = (p_i, p_tail = 1 - sum_i p_i),
//                 then D(p' || q') for the divergence d (docs/pitfalls.md #11). q_tail is a log-sum-exp over the entries
//                 outside the support (never 1 - sum: exact when the support holds almost all the mass), p_tail is
//                 log1mexp(logsumexp(log p_i)) (exact to the stored values' precision; p_tail = 0 when the stored
//                 probabilities sum to 1 or more, within the log-probs tolerance of 0.05 nats, as kd::topk_with_tail).
//                 Gradient: (1/T) g_i on the support, (1/T) g_tail q_j / q_tail elsewhere (g: d's gradient on q').
//   renormalize   both sides restricted to the support and renormalized there: q'' = softmax over S of z_i / T,
//                 p'' = softmax over S of the stored values; then D(p'' || q''). The gradient is 0 outside the support.
//                 A row whose student (or teacher) is -inf on the whole support is fully masked there: it does not count.
//   unnormalized_forward_kl  the top-k forward KL several trainers use: sum_{i in S} p_i (log p_i - log q_i) with q over the
//                 full vocabulary and p as stored (not renormalized; it can be negative when the student puts more mass
//                 on the support than the teacher). Gradient: (1/T)(P_S q_j - p_j), P_S = sum_i p_i, p_j = 0 off S.
//                 Only for d = forward_kl (other divergences are not sums that a truncated teacher leaves defined).
// Errors: argument errors (errc::invalid_argument naming student, teacher.indices, teacher.log_probs, teacher.mode,
//         grad_student, grad_teacher, or the option) before any output is written: shapes, k in [1, V], every counted
//         row's indices in [0, V) and distinct. Value errors as kd::divergence_loss, with the smallest offending row:
//         NaN / +inf student or teacher values, stored log-probs whose probabilities sum to more than 1 (beyond 0.05
//         nats; errc::not_normalized, "teacher"), a divergence that is +inf (a side with probability 0 where the other
//         has mass, e.g. reverse KL against p_tail = 0). Offending rows' gradients are NaN.
// Cost: two passes over each student row (statistics of the support and of the gaps between the sorted support ids,
// then the gradient), one read of the k teacher values; the divergence itself runs on the k (+1) compressed entries in
// double. Scratch O(k) per thread, nothing O(V) beyond the gradient row. The registry's functors (kd/divergences/) give
// the compressed rows' loss and gradient on every backend; the student passes are the backend's row kernels
// (backend/topk_driver.hpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "backend.hpp"
#include "backend/protocol.hpp"
#include "detail/row_plan.hpp"
#include "detail/validate.hpp"
#include "topk_teacher_input.hpp"

KD_BEGIN_NAMESPACE

namespace detail {

template <class S, class P, class G>
status validate_topk_call(const divergence& d, const student_input<S>& student, const topk_teacher_input<P>& teacher,
                          const distill_options& opt, const distill_outputs<G>& out) {
  if (status s = validate_divergence(d); !s) return s;
  if (status s = validate_rows(student.x, "student"); !s) return s;
  const std::int64_t rows = student.x.rows, V = student.x.cols;
  if (status s = validate_rows(teacher.indices, "teacher.indices"); !s) return s;
  if (status s = validate_rows(teacher.log_probs, "teacher.log_probs"); !s) return s;
  if (teacher.indices.rows != rows)
    return make_error(errc::invalid_argument, "teacher.indices", "must have one row per student row",
                      double(teacher.indices.rows));
  if (teacher.indices.cols > V)
    return make_error(errc::invalid_argument, "teacher.indices", "k must be <= the vocabulary size",
                      double(teacher.indices.cols));
  if (teacher.log_probs.rows != rows || teacher.log_probs.cols != teacher.indices.cols)
    return make_error(errc::invalid_argument, "teacher.log_probs", "shape must equal teacher.indices' [rows, k]",
                      double(teacher.log_probs.cols));
  switch (teacher.mode) {
    case topk_mode::tail_bucket:
    case topk_mode::renormalize: break;
    case topk_mode::unnormalized_forward_kl:
      if (canonical_divergence(d).kind != divergence_kind::forward_kl)
        return make_error(errc::invalid_argument, "teacher.mode",
                          "unnormalized_forward_kl is defined for the forward KL only (use tail_bucket or renormalize)");
      break;
    default: return make_error(errc::invalid_argument, "teacher.mode", "unknown top-k mode");
  }
  if (status s = validate_options(opt, rows); !s) return s;
  if (out.grad_teacher.data)
    return make_error(errc::invalid_argument, "grad_teacher",
                      "not available with a top-k teacher (its log-probs are data); leave it empty");
  if (status s = validate_grad(out.grad_student, student.x, teacher.log_probs, "grad_student"); !s) return s;
  if (out.grad_student.data &&
      overlaps(const_rows<G>(out.grad_student.data, out.grad_student.rows, out.grad_student.cols,
                             out.grad_student.row_stride),
               teacher.indices))
    return make_error(errc::invalid_argument, "grad_student", "overlaps teacher.indices");
  // The indices of every row that counts: in [0, V) and distinct (sorted copies, O(k log k) per row).
  std::vector<std::int64_t> ids(static_cast<std::size_t>(teacher.indices.cols));
  for (std::int64_t r = 0; r < rows; ++r) {
    if (row_weight(opt, r) == 0.0) continue;
    const std::int64_t* ir = teacher.indices.row(r);
    for (std::int64_t i = 0; i < teacher.indices.cols; ++i) {
      if (ir[i] < 0 || ir[i] >= V)
        return make_error(errc::invalid_argument, "teacher.indices", "entry outside [0, vocab)", double(ir[i]), r);
      ids[i] = ir[i];
    }
    std::sort(ids.begin(), ids.end());
    const auto dup = std::adjacent_find(ids.begin(), ids.end());
    if (dup != ids.end())
      return make_error(errc::invalid_argument, "teacher.indices", "duplicate index in a row", double(*dup), r);
  }
  return ok_status();
}

}  // namespace detail

template <class S, class P, class G = float, class Backend = default_backend>
status topk_divergence_loss(const divergence& d, const student_input<S>& student,
                            const topk_teacher_input<P>& teacher_topk, const distill_options& options,
                            loss_result& result, const distill_outputs<G>& outputs = {}, const Backend& backend = {}) {
  static_assert(is_element_v<S>, "kd: student element type must be float, double, kd::bfloat16 or kd::half");
  static_assert(is_element_v<P>, "kd: teacher element type must be float, double, kd::bfloat16 or kd::half");
  static_assert(is_element_v<G>, "kd: gradient element type must be float, double, kd::bfloat16 or kd::half");
  KD_REQUIRE_BACKEND_OPERATION(topk_divergence_loss, topk_divergence, Backend, divergence, student_input<S>,
                               topk_teacher_input<P>, distill_options, loss_result, distill_outputs<G>);
  if (status s = detail::validate_topk_call(d, student, teacher_topk, options, outputs); !s) return s;
  if constexpr (detail::has_run_topk_divergence<Backend, divergence, student_input<S>, topk_teacher_input<P>,
                                                distill_options, loss_result, distill_outputs<G>>)
    return backend.run_topk_divergence(d, student, teacher_topk, options, result, outputs);
  else
    return {};
}

KD_END_NAMESPACE
