// MiniLLM policy gradient for the sequence-level reverse KL, KL(q_student(y|x) || p_teacher(y|x)), as ONE fused call that
// writes the total gradient with respect to the student logits [B, L, V] and returns diagnostics.
// Gu et al., "MiniLLM: Knowledge Distillation of Large Language Models", arXiv 2306.08543, Sec. 2.1-2.2 (policy gradient,
// single-step decomposition, teacher-mixed sampling, length normalization Eq. 6, PPO-style clipping); the public reference
// code is microsoft/LMOps minillm/. Formulas, variants and proofs: docs/policy_gradient.md.
//
// Notation (natural log, nats): q_t = softmax(z_t / T) student, p_t = softmax(z^teacher_t / T) teacher at position t of a
// sampled response y (prefix y_<t); T = options.temperature.
//   reward          r_t = log p_t(y_t) - log q_t(y_t)          (then / reward_scale, clipped to +-reward_clip)
//   single-step     grad KL(q_t || p_t) w.r.t. row t, exact over the vocabulary: (1/T) q_j (log(q_j/p_j) - KL_t)
//   long-term       -(A_t * rho_t) * (onehot(y_t) - q_t) / T   (the sampled part, with PPO clipping)
//   returns         R_{t+1} = sum_{t'>t} gamma^(t'-t-1) r_t' (paper) or R_t = r_t + gamma R_{t+1} (reference code), over VALID
//                   positions only (discount counts valid tokens after t: relative positions, padding never enters);
//                   computed by a backward recursion, never as gamma^t (no underflow, no 0/0).
//   length_norm     none: A_t = the return; paper (Eq. 6): the mean of the summed rewards (return / number of them);
//                   reference: return / n_t, n_t = valid tokens from t to the end inclusive (LMOps losses.py);
//                   discounted: return / sum_k gamma^k over the summed valid positions (TRL MiniLLMTrainer).
//   teacher-mixed   sampling from s_t = alpha p_t + (1 - alpha) q_old,t (Sec. 2.2, alpha = 0.2 in the paper); importance
//                   weight per token w_t = q_old(y_t) / s_t(y_t).
//                   exact_product: W_t = prod_{t'<=t} w_t' multiplies the long-term term, and the advantage carries the future
//                   tokens' ratios (A_t built from G_t = w_t (r_t + gamma G_{t+1})), so every reward r_t' is weighted by its
//                   own prefix product W_t': the estimator's expectation is the exact on-policy gradient; the single-step term
//                   is weighted by W_{t-1} (it is an exact expectation over y_t, so it needs only its prefix's weight).
//                   per_token (the paper's approximation, and the reference code): weight w_t on the long-term term, plain
//                   returns, single-step term unweighted (the paper's w_t there has conditional mean 1 given the prefix).
//                   iw_clip > 0 clips the weight multiplying each position's terms at iw_clip. Every weight is formed
//                   in log space and clamped to [1e-10, 1e10] (kd::pg_max_importance_weight, pg_options.hpp), the PPO
//                   ratio capped at 1e10, so weights beyond the float range never give inf / NaN.
//   PPO             rho_t = exp(log q(y_t) - log q_old(y_t)) * weight_t; surrogate max(-A rho, -A clip(rho, 1-eps, 1+eps));
//                   its gradient is -A rho (onehot - q)/T where the unclipped branch is active and 0 where clipped.
//   whitening       A <- (A - mean) / sqrt(var + 1e-8) over the valid positions of the batch (unbiased var, as torch.var).
//   LM term         lm_weight * cross-entropy(q_t, lm_label_t) with q at the same temperature; gradient (q - onehot)/T.
//   reduction       mean: every term / (number of valid positions) (LM term: / number of labelled positions), as the
//                   reference code; sum: per-sequence sums (the unbiased sequence-level estimator); normalizer: / normalizer.
// The importance weights, advantages and old log-probs are constants (no gradient flows through them), as in the paper.
//
// Example (a libtorch autograd function with contiguous float32 tensors; B sequences of L positions, vocabulary V):
//
//   kd::pg_options opt = kd::pg_options::reference_code();   // or kd::pg_options::paper()
//   kd::pg_sequences seq;
//   seq.batch = B; seq.time = L;
//   seq.tokens = kd::label_view(tokens.data_ptr<int64_t>(), B * L);   // sampled y [B, L]
//   seq.mask = kd::mask_view(mask.data_ptr<bool>(), B * L);           // 1 = response token, 0 = padding
//   seq.old_log_probs = old_logprobs.data_ptr<float>();               // optional [B, L] rollout-time log q_old(y_t)
//   kd::pg_outputs<float> out;
//   out.grad_student = kd::mut_rows<float>(grad.data_ptr<float>(), B * L, V);
//   out.advantages = adv.data_ptr<float>();                           // optional [B, L]
//   kd::pg_diagnostics diag;
//   kd::status st = kd::policy_gradient(kd::student_logits(student.data_ptr<float>(), B * L, V),
//                                       kd::teacher_logits(teacher.data_ptr<float>(), B * L, V), seq, opt, out, diag);
//   kd::throw_if_error(st);   // diag.loss is the surrogate whose gradient was written; grad is [B, L, V]
//
// Errors (kd::status, argument named): shapes, null pointers, options out of range, a token outside [0, V) or an old log-prob
// that is not finite and <= 0 at a VALID position -> errc::invalid_argument. Non-finite logits in a valid row, the student or
// the teacher giving probability 0 to a sampled token, or KL(q_t || p_t) = +inf with single_step on -> value errors with the
// smallest offending row. EVERY error is returned before any output is written (outputs untouched). Padded positions are
// never read (their logits, tokens and old log-probs may hold anything: masking happens before any exp/log, docs/pitfalls.md #20).
// Outputs at padded positions: gradient rows 0, per-position arrays 0.
// Masks: nonzero = valid, 0 = padding; a NaN in a float mask is an argument error ("mask"). With an empty mask, a position
// whose student logits row is fully masked (all -inf) is padding (as kd::divergence_loss treats fully masked rows); a
// position an explicit mask marks valid must have a usable student row, else it is a value error (non_finite_input,
// "student"): its sampled token has probability 0, so it has no reward, and silently dropping it would shift the
// discounted returns of every earlier position of the sequence.
// Memory: O(B * L) scalars of scratch (plus three L1-sized chunk buffers per thread), no temporary proportional to B x L x V.
// Deterministic: each row is computed by one thread and every reduction runs afterwards in row order, so results are
// bitwise identical across runs and thread counts (for a fixed instruction set).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "backend.hpp"
#include "backend/protocol.hpp"
#include "detail/pg_sequence.hpp"
#include "detail/validate.hpp"
#include "options.hpp"
#include "status.hpp"
#include "tensor.hpp"

KD_BEGIN_NAMESPACE

// The default backend of kd::policy_gradient / kd::lm_loss: kd::default_backend (the SIMD backend for the compile-time
// instruction set, all hardware threads). Any backend of the protocol works (backend/protocol.hpp):
// kd::simd_backend<Arch, Executor>{...}, kd::dispatch_backend{} (run-time instruction set), kd::reference_backend{} (the
// double-precision oracle).
using pg_fast_backend = default_backend;

namespace detail {

template <class G>
status validate_pg_outputs(const pg_outputs<G>& out, std::int64_t rows, std::int64_t cols) {
  if (out.grad_student.data == nullptr) return ok_status();
  if (out.grad_student.rows != rows || out.grad_student.cols != cols)
    return make_error(errc::invalid_argument, "grad_student", "shape must equal the student's [B*L, V]");
  if (out.grad_student.row_stride < out.grad_student.cols)
    return make_error(errc::invalid_argument, "grad_student", "row_stride must be >= cols");
  return ok_status();
}

// A NaN in a float mask is neither valid nor padding: reject it (nonzero != 0 would count it as valid).
inline status validate_mask_values(const mask_view& mask) {
  if (mask.f32 == nullptr) return ok_status();
  for (std::int64_t r = 0; r < mask.size; ++r)
    if (std::isnan(mask.f32[r]))
      return make_error(errc::invalid_argument, "mask", "holds NaN (neither valid nor padding)", mask.f32[r], r);
  return ok_status();
}

// With no mask, rows whose student logits are all -inf are padding (the convention of kd::divergence_loss for fully masked
// rows). Fills `derived` (1 = valid) and returns true when there is such a row. The scan of a row stops at its first entry
// that is not -inf (the first one, for any ordinary row), so this costs O(B*L) reads, not O(B*L*V).
template <class S>
bool derive_pg_mask(const const_rows<S>& x, std::vector<std::uint8_t>& derived) {
  bool any = false;
  derived.assign(static_cast<std::size_t>(x.rows), 1);
  for (std::int64_t r = 0; r < x.rows; ++r) {
    const S* z = x.row(r);
    std::int64_t j = 0;
    while (j < x.cols && to_double(z[j]) == -std::numeric_limits<double>::infinity()) ++j;
    if (j == x.cols) {
      derived[static_cast<std::size_t>(r)] = 0;
      any = true;
    }
  }
  return any;
}

template <class S, class P, class G>
status validate_pg_call(const student_input<S>& student, const teacher_input<P>& teacher, const pg_sequences& seq,
                        const pg_options& opt, const pg_outputs<G>& out) {
  if (status s = validate_rows(student.x, "student"); !s) return s;
  if (status s = validate_rows(teacher.x, "teacher"); !s) return s;
  if (seq.batch < 0) return make_error(errc::invalid_argument, "batch", "must be >= 0", double(seq.batch));
  if (seq.time < 0) return make_error(errc::invalid_argument, "time", "must be >= 0", double(seq.time));
  const std::int64_t rows = seq.batch * seq.time;
  if (student.x.rows != rows)
    return make_error(errc::invalid_argument, "student", "rows must equal batch * time", double(student.x.rows));
  if (teacher.x.rows != rows)
    return make_error(errc::invalid_argument, "teacher", "rows must equal batch * time", double(teacher.x.rows));
  if (teacher.x.cols != student.x.cols)
    return make_error(errc::invalid_argument, "teacher", "vocabulary (cols) differs from the student's",
                      double(teacher.x.cols));
  if (status s = validate_pg_options(opt); !s) return s;
  if (seq.tokens.empty() && rows > 0) return make_error(errc::invalid_argument, "tokens", "is null");
  if (!seq.tokens.empty() && seq.tokens.size != rows)
    return make_error(errc::invalid_argument, "tokens", "must have batch * time entries", double(seq.tokens.size));
  if (!seq.mask.empty() && seq.mask.size != rows)
    return make_error(errc::invalid_argument, "mask", "must have batch * time entries", double(seq.mask.size));
  if (status s = validate_mask_values(seq.mask); !s) return s;
  if (!seq.lm_labels.empty() && seq.lm_labels.size != rows)
    return make_error(errc::invalid_argument, "lm_labels", "must have batch * time entries", double(seq.lm_labels.size));
  if (opt.lm_weight != 0.0 && seq.lm_labels.empty())
    return make_error(errc::invalid_argument, "lm_labels", "are required when lm_weight != 0");
  const std::int64_t V = student.x.cols;
  for (std::int64_t r = 0; r < rows; ++r) {
    if (!seq.valid(r)) continue;  // padded positions are never read
    const std::int64_t y = seq.tokens[r];
    if (y < 0 || y >= V)
      return make_error(errc::invalid_argument, "tokens", "a valid position holds a token outside [0, V)", double(y), r);
    if (seq.old_log_probs) {
      const float o = seq.old_log_probs[r];
      if (!(std::isfinite(o) && o <= 1e-3f))
        return make_error(errc::invalid_argument, "old_log_probs", "must be finite and <= 0 at valid positions", o, r);
    }
  }
  if (!seq.lm_labels.empty())
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t y = seq.lm_labels[r];
      if (y != opt.ignore_index && (y < 0 || y >= V))
        return make_error(errc::invalid_argument, "lm_labels", "a label is outside [0, V) and not ignore_index", double(y),
                          r);
    }
  if (status s = validate_pg_outputs(out, rows, V); !s) return s;
  if (out.grad_student.data) {
    const_rows<G> g(out.grad_student.data, out.grad_student.rows, out.grad_student.cols, out.grad_student.row_stride);
    if (overlaps(g, student.x) && !same_buffer(g, student.x))
      return make_error(errc::invalid_argument, "grad_student",
                        "overlaps the student without being the same buffer (in place needs same dtype, data, stride)");
    if (overlaps(g, teacher.x)) return make_error(errc::invalid_argument, "grad_student", "overlaps the teacher");
  }
  return ok_status();
}

}  // namespace detail

// Advantages from given per-position rewards (for trainers that compute rewards elsewhere), exactly as the fused call forms
// them with per-token importance weights: discounted returns over valid positions (gamma, current_reward), length
// normalization (length_norm), then whitening (whiten). Other options are ignored.
//   rewards     [batch * time] float, nats; read only at valid positions
//   mask        [batch * time] validity (empty = all valid; NaN in a float mask: errc::invalid_argument)
//   advantages  [batch * time] float out (0 at padding); may alias rewards
// Errors (errc::invalid_argument, before any output is written): null pointers, negative sizes, a mask of the wrong size,
// options out of range, a non-finite reward at a valid position.
inline status pg_advantages(const float* rewards, const mask_view& mask, std::int64_t batch, std::int64_t time,
                            const pg_options& options, float* advantages) {
  if (batch < 0) return make_error(errc::invalid_argument, "batch", "must be >= 0", double(batch));
  if (time < 0) return make_error(errc::invalid_argument, "time", "must be >= 0", double(time));
  const std::int64_t n = batch * time;
  if (n > 0 && rewards == nullptr) return make_error(errc::invalid_argument, "rewards", "is null");
  if (n > 0 && advantages == nullptr) return make_error(errc::invalid_argument, "advantages", "is null");
  if (!mask.empty() && mask.size != n)
    return make_error(errc::invalid_argument, "mask", "must have batch * time entries", double(mask.size));
  if (status s = detail::validate_mask_values(mask); !s) return s;
  if (status s = validate_pg_options(options); !s) return s;
  std::vector<double> r(static_cast<std::size_t>(n)), a(static_cast<std::size_t>(n));
  std::unique_ptr<bool[]> valid(new bool[static_cast<std::size_t>(n > 0 ? n : 1)]());
  for (std::int64_t i = 0; i < n; ++i) {
    valid[i] = mask.empty() || mask[i];
    if (!valid[i]) continue;
    if (!std::isfinite(rewards[i]))
      return make_error(errc::invalid_argument, "rewards", "must be finite at valid positions", rewards[i], i);
    r[i] = rewards[i];
  }
  for (std::int64_t b = 0; b < batch; ++b)
    detail::pg::sequence_returns(r.data() + b * time, valid.get() + b * time, nullptr, time, options.gamma,
                                 options.length_norm, options.includes_current_reward(), false, a.data() + b * time);
  if (options.whiten) detail::pg::whiten(a.data(), valid.get(), n);
  for (std::int64_t i = 0; i < n; ++i) advantages[i] = valid[i] ? static_cast<float>(a[i]) : 0.0f;
  return ok_status();
}

// The fused MiniLLM policy-gradient step (see the top of this file).
//   student   kd::student_logits(ptr, B*L, V[, row_stride]) (float, double, kd::bfloat16, kd::half; log-probs accepted too)
//   teacher   kd::teacher_logits(ptr, B*L, V[, row_stride])
//   seq       batch B, time L, tokens [B*L], mask [B*L], optional old_log_probs [B*L] and lm_labels [B*L]
//   options   kd::pg_options (paper() / reference_code() presets)
//   outputs   optional gradient [B*L, V] (may be the student buffer itself), rewards / advantages / importance_weights /
//             log_probs [B*L] float
//   diag      diagnostics (kd::pg_diagnostics)
//   backend   any backend of the protocol (backend/protocol.hpp): kd::default_backend (default), kd::simd_backend<Arch,
//             Executor>{...}, kd::dispatch_backend{}, kd::reference_backend{} (the double-precision oracle)
template <class S, class P, class G = float, class Backend = default_backend>
status policy_gradient(const student_input<S>& student, const teacher_input<P>& teacher, const pg_sequences& seq,
                       const pg_options& options, const pg_outputs<G>& outputs, pg_diagnostics& diag,
                       const Backend& backend = {}) {
  static_assert(is_element_v<S>, "kd: student element type must be float, double, kd::bfloat16 or kd::half");
  static_assert(is_element_v<P>, "kd: teacher element type must be float, double, kd::bfloat16 or kd::half");
  static_assert(is_element_v<G>, "kd: gradient element type must be float, double, kd::bfloat16 or kd::half");
  KD_REQUIRE_BACKEND_OPERATION(policy_gradient, policy_gradient, Backend, student_input<S>, teacher_input<P>,
                               pg_sequences, pg_options, pg_outputs<G>, pg_diagnostics);
  // No mask: fully masked student rows are padding. Derived before the other checks so that such positions' tokens are
  // never read either; only once the student view itself is known to be readable.
  pg_sequences eff = seq;
  std::vector<std::uint8_t> derived;
  if (seq.mask.empty() && detail::validate_rows(student.x, "student").ok() && seq.batch >= 0 && seq.time >= 0 &&
      student.x.rows == seq.batch * seq.time && detail::derive_pg_mask(student.x, derived))
    eff.mask = mask_view(derived.data(), static_cast<std::int64_t>(derived.size()));
  if (status s = detail::validate_pg_call(student, teacher, eff, options, outputs); !s) return s;
  if constexpr (detail::has_run_policy_gradient<Backend, student_input<S>, teacher_input<P>, pg_sequences, pg_options,
                                                pg_outputs<G>, pg_diagnostics>)
    return backend.run_policy_gradient(student, teacher, eff, options, outputs, diag);
  else
    return {};
}

KD_END_NAMESPACE
