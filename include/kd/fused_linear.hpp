// Fused linear + divergence: the divergence of two models' output distributions computed from hidden states and output
// weights, never materialising the [N, V] logits (at N = 8192, V = 128256 they are 4.2 GB per model in float32).
//
//   kd::status kd::fused_linear_divergence(d, student_head, teacher_head, options, fused, result, outputs, backend = {})
//   kd::status kd::fused_linear_divergence(d, student_head, teacher_logits, options, fused, result, outputs, backend = {})
//
// student_head  kd::linear_head<T> (kd/fused_linear_options.hpp): hidden [N, H], weight [V, H] (row-major, the
//               lm-head's weight as PyTorch stores it), optional bias [V], logit_scale s, final_logit_softcapping c:
//               logits z = c tanh(s (h W^T + b) / c), or s (h W^T + b) when c = 0. T = float or double.
// teacher       a linear_head<T> of its own (hidden [N, H_t], weight [V, H_t]: any H_t) or precomputed logits
//               kd::teacher_input<T> [N, V] (logits or log-probs).
// options       temperature, T^2 scaling, reduction, ignore_index + labels, row weights, normalizer: as
//               kd::divergence_loss (kd/options.hpp), on the logits z.
// fused         chunk_rows (rows per chunk) and tile_vocab (vocabulary entries per tile; 0: the whole vocabulary).
//               Extra memory: 3 chunk_rows tile_vocab values of T plus O(N); with tile_vocab < V each tile's logits
//               are computed three times (statistics, sums, gradients: backend/fused_linear_driver.hpp).
// outputs       grad_hidden [N, H], grad_weight [V, H] (overwritten), grad_bias [V], per_row [N], student_entropy [N]
//               (H(q) at temperature T, nats); any may be null.
// The result equals the unfused path (logits, kd::divergence_loss, the backward matrix products) to float rounding for
// any chunk_rows and tile_vocab (tests/test_fused_linear.cpp; docs/fused_linear.md). Matrix products: Eigen (its
// OpenMP threads when built with -fopenmp); the row kernels: the backend's (reference: double; simd: float32 lanes).
// Errors: argument errors (errc::invalid_argument, naming student_hidden, student_weight, teacher_hidden,
//         teacher_weight, teacher, logit_scale, softcap, chunk_rows, tile_vocab, grad_hidden, grad_weight, grad_bias)
//         before any output is written (gradient outputs must not overlap the student's inputs; overlap with the
//         teacher's is not checked); value errors (a NaN / +inf hidden
//         state or weight gives non-finite logits) as kd::divergence_loss, naming "student" / "teacher" and the row:
//         that row's gradient is NaN and, through the products, so is the weight gradient (as in the unfused path).
#pragma once

#include <cmath>
#include <type_traits>

#include "backend.hpp"
#include "backend/protocol.hpp"
#include "detail/validate.hpp"
#include "fused_linear_options.hpp"

KD_BEGIN_NAMESPACE
namespace detail {

template <class T>
status validate_head(const linear_head<T>& h, const char* hidden, const char* weight, const char* bias,
                     const char* scale, const char* cap) {
  if (status s = validate_rows(h.hidden, hidden); !s) return s;
  if (status s = validate_rows(h.weight, weight); !s) return s;
  if (h.weight.rows < 1) return make_error(errc::invalid_argument, weight, "must have >= 1 row (the vocabulary)");
  if (h.weight.cols != h.hidden.cols)
    return make_error(errc::invalid_argument, weight, "cols must equal the hidden size (hidden's cols)",
                      double(h.weight.cols));
  (void)bias;
  if (!(std::isfinite(h.logit_scale) && h.logit_scale != 0.0))
    return make_error(errc::invalid_argument, scale, "must be finite and != 0", h.logit_scale);
  if (!(std::isfinite(h.softcap) && h.softcap >= 0.0))
    return make_error(errc::invalid_argument, cap, "must be finite and >= 0 (0: no softcapping)", h.softcap);
  return ok_status();
}

template <class T>
status validate_fused_outputs(const linear_head<T>& sh, const fused_linear_options& fo,
                              const fused_linear_outputs<T>& out) {
  if (fo.chunk_rows < 0) return make_error(errc::invalid_argument, "chunk_rows", "must be >= 0", double(fo.chunk_rows));
  if (fo.tile_vocab < 0) return make_error(errc::invalid_argument, "tile_vocab", "must be >= 0", double(fo.tile_vocab));
  const auto& gh = out.grad_hidden;
  if (gh.data && (gh.rows != sh.hidden.rows || gh.cols != sh.hidden.cols || gh.row_stride < gh.cols))
    return make_error(errc::invalid_argument, "grad_hidden", "shape must equal student_hidden's [N, H]");
  const auto& gw = out.grad_weight;
  if (gw.data && (gw.rows != sh.weight.rows || gw.cols != sh.weight.cols || gw.row_stride < gw.cols))
    return make_error(errc::invalid_argument, "grad_weight", "shape must equal student_weight's [V, H]");
  if (out.grad_bias && !sh.bias)
    return make_error(errc::invalid_argument, "grad_bias", "needs a student bias (student_head.bias is null)");
  if (gh.data && overlaps(const_rows<T>(gh.data, gh.rows, gh.cols, gh.row_stride), sh.hidden))
    return make_error(errc::invalid_argument, "grad_hidden", "overlaps student_hidden (in place is not supported)");
  if (gw.data && overlaps(const_rows<T>(gw.data, gw.rows, gw.cols, gw.row_stride), sh.weight))
    return make_error(errc::invalid_argument, "grad_weight", "overlaps student_weight (in place is not supported)");
  if (out.grad_bias && out.grad_bias < sh.bias + sh.weight.rows && sh.bias < out.grad_bias + sh.weight.rows)
    return make_error(errc::invalid_argument, "grad_bias", "overlaps student_bias (in place is not supported)");
  return ok_status();
}

// The teacher's checks: a head of the student's rows and vocabulary, or logits [N, V].
template <class T>
status validate_teacher(const linear_head<T>& student, const linear_head<T>* th, const teacher_input<T>& tl) {
  if (th) {
    if (status s = validate_head(*th, "teacher_hidden", "teacher_weight", "teacher_bias", "teacher logit_scale",
                                 "teacher softcap");
        !s)
      return s;
    if (th->hidden.rows != student.hidden.rows)
      return make_error(errc::invalid_argument, "teacher_hidden", "must have as many rows as student_hidden",
                        double(th->hidden.rows));
    if (th->weight.rows != student.weight.rows)
      return make_error(errc::invalid_argument, "teacher_weight", "vocabulary (rows) differs from student_weight's",
                        double(th->weight.rows));
    return ok_status();
  }
  if (status s = validate_rows(tl.x, "teacher"); !s) return s;
  if (tl.x.rows != student.hidden.rows)
    return make_error(errc::invalid_argument, "teacher", "must have as many rows as student_hidden",
                      double(tl.x.rows));
  if (tl.x.cols != student.weight.rows)
    return make_error(errc::invalid_argument, "teacher", "vocabulary (cols) differs from student_weight's rows",
                      double(tl.x.cols));
  return ok_status();
}

// Both public overloads: validation (before any output is written), then the backend's member.
template <class T, class Backend>
status fused_linear_call(const divergence& d, const linear_head<T>& student, const linear_head<T>* th,
                         const teacher_input<T>& tl, const distill_options& options, const fused_linear_options& fused,
                         loss_result& result, const fused_linear_outputs<T>& outputs, const Backend& backend) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "kd::fused_linear_divergence: hidden states, weights and teacher logits must be float or double");
  KD_REQUIRE_BACKEND_OPERATION(fused_linear_divergence, fused_linear, Backend, divergence, linear_head<T>,
                               const linear_head<T>*, teacher_input<T>, distill_options, fused_linear_options,
                               loss_result, fused_linear_outputs<T>);
  if (status s = validate_divergence(d); !s) return s;
  if (status s = validate_head(student, "student_hidden", "student_weight", "student_bias", "logit_scale", "softcap");
      !s)
    return s;
  if (status s = validate_teacher(student, th, tl); !s) return s;
  if (status s = validate_options(options, student.hidden.rows); !s) return s;
  if (status s = validate_fused_outputs(student, fused, outputs); !s) return s;
  if constexpr (has_run_fused_linear<Backend, divergence, linear_head<T>, const linear_head<T>*, teacher_input<T>,
                                     distill_options, fused_linear_options, loss_result, fused_linear_outputs<T>>)
    return backend.run_fused_linear(d, student, th, tl, options, fused, result, outputs);
  else
    return {};
}

}  // namespace detail

// Teacher as a head of its own.
template <class T, class Backend = default_backend>
status fused_linear_divergence(const divergence& d, const linear_head<T>& student, const linear_head<T>& teacher,
                               const distill_options& options, const fused_linear_options& fused,
                               loss_result& result, const fused_linear_outputs<T>& outputs = {},
                               const Backend& backend = {}) {
  return detail::fused_linear_call(d, student, &teacher, teacher_input<T>{}, options, fused, result, outputs, backend);
}

// Teacher as precomputed logits or log-probs [N, V].
template <class T, class Backend = default_backend>
status fused_linear_divergence(const divergence& d, const linear_head<T>& student, const teacher_input<T>& teacher,
                               const distill_options& options, const fused_linear_options& fused,
                               loss_result& result, const fused_linear_outputs<T>& outputs = {},
                               const Backend& backend = {}) {
  return detail::fused_linear_call(d, student, static_cast<const linear_head<T>*>(nullptr), teacher, options, fused,
                                   result, outputs, backend);
}

KD_END_NAMESPACE
