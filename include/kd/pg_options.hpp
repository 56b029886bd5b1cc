// Inputs, options, outputs and diagnostics of the MiniLLM policy gradient (kd/policy_gradient.hpp).
// Gu et al., arXiv 2306.08543, Sec. 2.2; the public reference code is microsoft/LMOps minillm/ (docs/policy_gradient.md).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "options.hpp"
#include "status.hpp"
#include "tensor.hpp"

// Plain data types of the estimator's signatures (kd::dispatch takes them too): ISA-free namespace (kd/version.hpp).
KD_BEGIN_ISA_FREE_NAMESPACE

// How the return is normalized by length (the advantage before whitening).
//   none      : A_t = the return (the unbiased estimator: the paper's policy gradient before length normalization).
//   paper     : A_t = the return / (number of rewards it sums): the mean of the future rewards, paper Eq. 6. Eq. 6 prints
//               1 / (T - t - 1), which is 0 for the last-but-one token; kd reads it as the number of summed terms.
//               A position with no future reward gets A_t = 0 (never 0/0).
//   reference : A_t = the return / n_t, n_t = valid tokens from t to the end, inclusive (LMOps minillm losses.py).
//   discounted: A_t = the return / (discounted count of the rewards it sums) = sum_k gamma^k r_(k) / sum_k gamma^k over
//               the same valid positions (a discounted mean; TRL MiniLLMTrainer with length_normalization). With the
//               current reward included (by_variant) the count is sum_{k=0}^{n_t - 1} gamma^k; gamma = 0 gives A_t = r_t
//               (TRL's default), gamma = 1 the reference variant. A position with nothing to sum gets A_t = 0.
enum class length_norm { none, paper, reference, discounted };

inline const char* length_norm_name(length_norm n) noexcept {
  switch (n) {
    case length_norm::none: return "none";
    case length_norm::paper: return "paper";
    case length_norm::reference: return "reference";
    case length_norm::discounted: return "discounted";
  }
  return "?";
}

// Whether the return at t includes the current reward r_t.
//   by_variant: exclude for length_norm none / paper (R_{t+1}, the paper), include for length_norm reference (the LMOps
//               code) and discounted (TRL).
//   exclude   : R_{t+1}: the single-step term accounts for r_t exactly (the paper's single-step decomposition).
//   include   : R_t = r_t + gamma R_{t+1} (the reference code; with single_step on, r_t is then counted twice).
enum class current_reward { by_variant, exclude, include };

// Importance weight for teacher-mixed sampling (paper Sec. 2.2).
//   exact_product: W_t = prod_{t'<=t} q_old(y_t') / s(y_t'), with the future tokens' ratios inside the advantage: unbiased.
//   per_token    : w_t = q_old(y_t) / s(y_t) (the paper's approximation; what the reference code uses).
enum class importance_weight_form { exact_product, per_token };

// Every importance weight (the per-token w_t, the exact prefix product W_t, the single-step weight W_{t-1}) is formed from
// its logarithm in double and clamped to [1 / pg_max_importance_weight, pg_max_importance_weight] before it is
// exponentiated; the PPO ratio rho_t = exp(log q - log q_old) * weight is capped at the same value (where capped, its
// gradient is 0, as for any clip). A weight of 1e10 already means one sample outweighs ten billion others, so the cap only
// changes degenerate estimates (alpha at or next to 1 with |logit| / T > ~12, or exact products over long sequences) and
// keeps every weight, and with it every gradient coefficient, inside float32's range instead of inf / NaN. Counted in
// pg_diagnostics::iw_clip_fraction. In the exact form the ratios carried inside the advantage are those of the capped
// prefix products, so each reward stays weighted by its own (capped) prefix weight. docs/policy_gradient.md.
inline constexpr double pg_max_importance_weight = 1e10;

struct pg_options {
  double temperature = 1.0;                 // T > 0: q = softmax(z_student / T), p = softmax(z_teacher / T)
  double gamma = 1.0;                       // discount in [0, 1] over relative (valid-token) positions
  kd::length_norm length_norm = kd::length_norm::paper;
  kd::current_reward current_reward = kd::current_reward::by_variant;
  bool single_step = true;                  // add the exact single-step term; reference code: single_step_reg
  bool whiten = false;                      // whiten advantages over the valid positions of the batch
  double reward_scale = 1.0;                // rewards are divided by this (> 0); reference code: reward_scaling
  double reward_clip = 0.0;                 // > 0: clip scaled rewards to [-reward_clip, reward_clip]; 0: off
  double alpha = 0.0;                       // teacher-mix coefficient in [0, 1]: tokens were sampled from alpha p + (1-alpha) q
  importance_weight_form iw_form = importance_weight_form::per_token;
  double iw_clip = 0.0;                     // > 0: clip importance weights at this value; 0: off (the hard cap
                                            // pg_max_importance_weight applies either way)
  double clip_range = 0.0;                  // PPO epsilon in [0, 1); 0: off (no clipping)
  double lm_weight = 0.0;                   // weight of the LM (cross-entropy) term on pg_sequences::lm_labels; 0: off
  std::int64_t ignore_index = -100;         // lm_labels equal to this are not counted
  kd::reduction reduction = kd::reduction::mean;  // mean (token mean), sum (per-sequence sums) or normalizer; none = sum
  double normalizer = 0.0;                  // > 0, with reduction::normalizer (the global valid-token count)

  // The paper's estimator (Sec. 2.2): R_{t+1} with Eq. 6 length normalization, single-step term, teacher-mixed sampling with
  // alpha = 0.2 and the per-token weight, PPO clip 0.2, no discount, no whitening.
  static pg_options paper() noexcept {
    pg_options o;
    o.length_norm = kd::length_norm::paper;
    o.alpha = 0.2;
    o.clip_range = 0.2;
    return o;
  }
  // The public reference code's defaults (LMOps minillm): advantage includes r_t, gamma = 0.95, divided by n_t, whitened,
  // PPO clip 0.2, alpha 0.2 with per-token weights, single-step regularizer on, token-mean reduction. (Its LM loss is on a
  // separate pre-training batch with weight 1: use kd::lm_loss or lm_weight on that batch.)
  static pg_options reference_code() noexcept {
    pg_options o;
    o.length_norm = kd::length_norm::reference;
    o.current_reward = kd::current_reward::include;
    o.gamma = 0.95;
    o.whiten = true;
    o.alpha = 0.2;
    o.clip_range = 0.2;
    return o;
  }
  // Plain unbiased estimator of the gradient of the sequence-level reverse KL: no normalization, no discount, no clipping,
  // exact importance weights, per-sequence sums (what the enumeration proofs of docs/policy_gradient.md use).
  static pg_options exact() noexcept {
    pg_options o;
    o.length_norm = kd::length_norm::none;
    o.iw_form = importance_weight_form::exact_product;
    o.reduction = kd::reduction::sum;
    return o;
  }

  bool includes_current_reward() const noexcept {
    if (current_reward == kd::current_reward::include) return true;
    if (current_reward == kd::current_reward::exclude) return false;
    return length_norm == kd::length_norm::reference || length_norm == kd::length_norm::discounted;
  }
};

// Per-position validity: 1-byte (bool / uint8), int32, int64 or float32 masks; nonzero = valid, 0 = padding. A NaN in a
// float mask is neither, and is an argument error (errc::invalid_argument, argument "mask"). An empty view: every position
// is valid except those whose student logits row is fully masked (all -inf), which are padding (docs/conventions.md).
struct mask_view {
  const std::uint8_t* u8 = nullptr;
  const std::int32_t* i32 = nullptr;
  const std::int64_t* i64 = nullptr;
  const float* f32 = nullptr;
  std::int64_t size = 0;

  constexpr mask_view() = default;
  mask_view(const bool* p, std::int64_t n) : u8(reinterpret_cast<const std::uint8_t*>(p)), size(n) {}
  constexpr mask_view(const std::uint8_t* p, std::int64_t n) : u8(p), size(n) {}
  constexpr mask_view(const std::int32_t* p, std::int64_t n) : i32(p), size(n) {}
  constexpr mask_view(const std::int64_t* p, std::int64_t n) : i64(p), size(n) {}
  constexpr mask_view(const float* p, std::int64_t n) : f32(p), size(n) {}
  constexpr bool empty() const noexcept { return !u8 && !i32 && !i64 && !f32; }
  bool operator[](std::int64_t r) const noexcept {
    if (u8) return u8[r] != 0;
    if (i32) return i32[r] != 0;
    if (i64) return i64[r] != 0;
    if (f32) return f32[r] != 0.0f;
    return true;
  }
};

// The sampled responses: B sequences of L positions, row r = b * L + t of the [B*L, V] logits.
struct pg_sequences {
  std::int64_t batch = 0;              // B
  std::int64_t time = 0;               // L
  label_view tokens = {};              // [B*L] sampled tokens y (int32 / int64), read only at valid positions
  mask_view mask = {};                 // [B*L] validity; empty = every position whose student row is not all -inf
  const float* old_log_probs = nullptr;  // optional [B*L] rollout-time student log q_old(y_t) (nats, at temperature T);
                                         // absent: q_old = q (on-policy, first PPO epoch)
  label_view lm_labels = {};           // optional [B*L] labels of the LM term (ignore_index = not counted)

  bool valid(std::int64_t r) const noexcept { return mask.empty() || mask[r]; }
};

template <class G = float>
struct pg_outputs {
  mut_rows<G> grad_student = {};       // [B*L, V] d(surrogate)/d(student logits); may be the student buffer itself
  float* rewards = nullptr;            // [B*L] r_t as used in the returns (scaled, clipped); 0 at padding
  float* advantages = nullptr;         // [B*L] A_t after length normalization and whitening; 0 at padding
  float* importance_weights = nullptr; // [B*L] the weight multiplying position t's long-term term (W_t or w_t, clipped); 0 at
                                       // padding
  float* log_probs = nullptr;          // [B*L] log q(y_t) under the current student (store it as next epoch's old_log_probs)
};

struct pg_diagnostics {
  double loss = 0.0;                 // the surrogate whose gradient was written: single-step KL + PPO surrogate + LM term
  double pg_loss = 0.0;              // the PPO surrogate part, reduced
  double single_step_loss = 0.0;     // the single-step part, reduced (weighted sum of KL(q_t || p_t))
  double lm_loss = 0.0;              // the LM cross-entropy, token mean over labelled positions (unweighted)
  double mean_reward = 0.0;          // mean over valid positions of r_t as used (scaled, clipped)
  double k3 = 0.0;                   // mean over valid positions of exp(d) - 1 - d, d = log p(y_t) - log q(y_t): the k3
                                     // estimate of the per-token reverse KL (unbiased when y ~ q)
  double token_reverse_kl = 0.0;     // mean over valid positions of the exact KL(q_t || p_t) over the vocabulary
  double sequence_reward = 0.0;      // mean over sequences of sum_t d_t (raw): -(sequence-level reverse KL) when y ~ q
  double iw_mean = 0.0, iw_min = 0.0, iw_max = 0.0;  // importance weights used (after iw_clip) over valid positions
  double iw_clip_fraction = 0.0;     // fraction of valid positions whose importance weight was clipped (iw_clip or the
                                     // log-space cap pg_max_importance_weight)
  double ratio_mean = 0.0;           // mean PPO ratio rho_t
  double clip_fraction = 0.0;        // fraction of valid positions whose PPO term was clipped (zero gradient)
  double advantage_mean = 0.0, advantage_std = 0.0;  // of the final advantages (after whitening)
  std::int64_t valid_tokens = 0;     // valid positions
  std::int64_t valid_sequences = 0;  // sequences with at least one valid position
  std::int64_t lm_tokens = 0;        // labelled positions of the LM term
};

KD_END_ISA_FREE_NAMESPACE

KD_BEGIN_NAMESPACE

inline status validate_pg_options(const pg_options& o) {
  // The fast path works in float32: T and 1/T must both be well inside its range (T = 1e300 underflowed every logit).
  if (!(std::isfinite(o.temperature) && o.temperature >= 1e-30 && o.temperature <= 1e30))
    return make_error(errc::invalid_argument, "temperature", "must be in [1e-30, 1e30]", o.temperature);
  if (!(o.gamma >= 0.0 && o.gamma <= 1.0)) return make_error(errc::invalid_argument, "gamma", "must be in [0, 1]", o.gamma);
  if (!(o.alpha >= 0.0 && o.alpha <= 1.0)) return make_error(errc::invalid_argument, "alpha", "must be in [0, 1]", o.alpha);
  if (!(std::isfinite(o.reward_scale) && o.reward_scale > 0.0))
    return make_error(errc::invalid_argument, "reward_scale", "must be finite and > 0", o.reward_scale);
  if (!(o.reward_clip >= 0.0)) return make_error(errc::invalid_argument, "reward_clip", "must be >= 0", o.reward_clip);
  if (!(o.iw_clip >= 0.0)) return make_error(errc::invalid_argument, "iw_clip", "must be >= 0 (0 = off)", o.iw_clip);
  if (!(o.clip_range >= 0.0 && o.clip_range < 1.0))
    return make_error(errc::invalid_argument, "clip_range", "must be in [0, 1) (0 = off)", o.clip_range);
  if (!std::isfinite(o.lm_weight)) return make_error(errc::invalid_argument, "lm_weight", "must be finite", o.lm_weight);
  if (o.reduction == reduction::normalizer && !(std::isfinite(o.normalizer) && o.normalizer > 0.0))
    return make_error(errc::invalid_argument, "normalizer", "must be finite and > 0 with reduction::normalizer",
                      o.normalizer);
  // Gradient terms are (scale) x (a bounded factor) in float32. Keep the scale well inside float's range, or a term overflows
  // to inf and inf * 0 gives NaN gradients under an ok status (found by fuzzing: normalizer 4e-149).
  {
    const double denom = o.reduction == reduction::normalizer ? o.normalizer : 1.0;
    const double scale = std::max(1.0, std::abs(o.lm_weight)) / (o.temperature * denom * std::min(1.0, o.reward_scale));
    if (!(scale <= 1e20)) {
      const char* arg = (o.reduction == reduction::normalizer && denom < 1e-10) ? "normalizer"
                        : o.temperature < 1e-10                                   ? "temperature"
                        : o.reward_scale < 1e-10                                  ? "reward_scale"
                                                                                  : "lm_weight";
      return make_error(errc::invalid_argument, arg,
                        "gradient scale max(1, |lm_weight|) / (temperature * normalizer * min(1, reward_scale)) must be "
                        "<= 1e20 (float32 range, with room for rewards and weights)",
                        scale);
    }
  }
  switch (o.length_norm) {
    case length_norm::none: case length_norm::paper: case length_norm::reference: case length_norm::discounted: break;
    default: return make_error(errc::invalid_argument, "length_norm", "unknown variant");
  }
  switch (o.iw_form) {
    case importance_weight_form::exact_product: case importance_weight_form::per_token: break;
    default: return make_error(errc::invalid_argument, "iw_form", "unknown variant");
  }
  switch (o.current_reward) {
    case kd::current_reward::by_variant: case kd::current_reward::exclude: case kd::current_reward::include: break;
    default: return make_error(errc::invalid_argument, "current_reward", "unknown variant");
  }
  return ok_status();
}

KD_END_NAMESPACE
