// The per-position (sequence-level) stage of the MiniLLM policy gradient, shared by the reference and the fast path so both
// compute rewards, returns, importance weights, whitening and PPO clipping identically, in double, on O(B*L) scalars.
//
// Input: per-row statistics from the first pass over the logits (log q(y_t), log p(y_t), KL(q_t || p_t), ...).
// Output: per-row gradient coefficients for the second pass, the per-position output arrays and the diagnostics.
// Formulas: kd/policy_gradient.hpp and docs/policy_gradient.md.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "../pg_options.hpp"
#include "reference_math.hpp"

KD_BEGIN_NAMESPACE
namespace detail::pg {

// One row r = b * L + t. Pass 1 fills the statistics; the sequence stage fills the coefficients. The gradient of row r is
//   (1/T) [ c_single * q_j (log q_j - log p_j - kl) + c_long * (onehot(y)_j - q_j) + c_lm * (q_j - onehot(lm_label)_j) ].
struct row_state {
  double lse_s = 0.0, lse_t = 0.0;  // log-sum-exp of z / T (student, teacher)
  double lq_y = 0.0, lp_y = 0.0;    // log q(y_t), log p(y_t)
  double kl = 0.0;                  // KL(q_t || p_t) over the vocabulary
  double lq_lm = 0.0;               // log q(lm_label_t)
  double c_single = 0.0, c_long = 0.0, c_lm = 0.0;
  std::int64_t y = -1, y_lm = -1;   // sampled token, LM label (-1: none)
  bool pg = false;                  // a valid policy-gradient position
  bool needs_teacher() const noexcept { return pg; }
  bool active() const noexcept { return pg || y_lm >= 0; }
};

// Returns of one sequence (backward recursion over its valid positions; no gamma^t anywhere).
//   rew[t]   rewards (0 where invalid), valid[t] validity, lr[t] per-token log importance ratio log(q_old/s) (may be null:
//            all 0, or ignored unless exact), n = L. Writes adv[t] (0 where invalid).
// exact: G_t = exp(lr_t) (r_t + gamma G_{t+1}) carries the future tokens' ratios (unbiased with W_t outside); per-token:
// G_t = r_t + gamma G_{t+1}. A_t = G_{t+1} (exclude current) or r_t + gamma G_{t+1} (include), then length-normalized:
// paper / reference divide by a count of valid positions, discounted by the same count with each position weighted gamma^k.
inline void sequence_returns(const double* rew, const bool* valid, const double* lr, std::int64_t n, double gamma,
                             length_norm norm, bool include_current, bool exact, double* adv) noexcept {
  double g = 0.0;
  std::int64_t n_after = 0;
  double dc_after = 0.0;  // discounted count of the valid positions after t: sum_{k=0}^{n_after-1} gamma^k (0 if none)
  for (std::int64_t t = n - 1; t >= 0; --t) {
    if (!valid[t]) {
      adv[t] = 0.0;
      continue;
    }
    const double a_excl = g;
    const double a_incl = rew[t] + (gamma == 0.0 ? 0.0 : gamma * g);
    const std::int64_t n_from = n_after + 1;
    const double dc_from = 1.0 + (gamma == 0.0 ? 0.0 : gamma * dc_after);
    double a = include_current ? a_incl : a_excl;
    double div = 1.0;
    if (norm == length_norm::paper) div = static_cast<double>(include_current ? n_from : n_after);
    else if (norm == length_norm::reference) div = static_cast<double>(n_from);
    else if (norm == length_norm::discounted) div = include_current ? dc_from : dc_after;
    adv[t] = div > 0.0 ? a / div : 0.0;  // div == 0 only when nothing follows: a == 0 then
    dc_after = dc_from;
    const double v = (exact && lr) ? std::exp(lr[t]) : 1.0;
    g = v * a_incl;
    n_after = n_from;
  }
}

// Importance weights of one sequence (n positions, valid[t]) from the per-token log ratios lr[t] = log q_old - log s, in log
// space, clamped to [-log M, log M] with M = pg_max_importance_weight before exp (see pg_options.hpp). For valid t writes:
//   w[t]       the weight multiplying position t's long-term term: exp(clamp(lr_t)) per token, exp(clamp(sum_{t'<=t} lr_t'))
//              exact;
//   sw[t]      the single-step weight: 1 per token, the capped prefix product W_{t-1} exact;
//   carried[t] the log ratio carried inside the exact-form advantage, log W_t - log W_{t-1} of the capped products (so that
//              W_t * A_t weights every later reward with its own capped W); lr_t itself per token (unused there);
//   clipped[t] whether the cap changed w[t].
inline void capped_weights(const double* lr, const bool* valid, std::int64_t n, bool exact, double* sw, double* w,
                           double* carried, bool* clipped) noexcept {
  const double cap = std::log(pg_max_importance_weight);
  const auto clamp = [cap](double x) { return std::min(std::max(x, -cap), cap); };
  // exp of a clamped log weight; the bounds map to M and 1/M exactly (exp(log M) is not M to the last bit)
  const auto wexp = [cap](double lw) {
    return lw == cap ? pg_max_importance_weight : lw == -cap ? 1.0 / pg_max_importance_weight : std::exp(lw);
  };
  double cum = 0.0, prev = 0.0;  // running sum of lr, and the clamped log prefix product before t
  bool prev_exact = true;        // prev == the unclamped sum (then the carried ratio is lr_t itself, bit for bit)
  for (std::int64_t t = 0; t < n; ++t) {
    if (!valid[t]) continue;
    if (exact) {
      cum += lr[t];
      const double lw = clamp(cum);
      sw[t] = wexp(prev);
      w[t] = wexp(lw);
      clipped[t] = lw != cum;
      carried[t] = (prev_exact && !clipped[t]) ? lr[t] : lw - prev;
      prev = lw;
      prev_exact = !clipped[t];
    } else {
      const double lw = clamp(lr[t]);
      sw[t] = 1.0;
      w[t] = wexp(lw);
      carried[t] = lr[t];
      clipped[t] = lw != lr[t];
    }
  }
}

// Whitening over the valid entries: (x - mean) / sqrt(var + 1e-8), var unbiased (n - 1; 0 when n < 2), as torch.var_mean.
inline void whiten(double* x, const bool* valid, std::int64_t n) noexcept {
  double sum = 0.0;
  std::int64_t cnt = 0;
  for (std::int64_t i = 0; i < n; ++i)
    if (valid[i]) { sum += x[i]; ++cnt; }
  if (cnt == 0) return;
  const double mean = sum / static_cast<double>(cnt);
  double ss = 0.0;
  for (std::int64_t i = 0; i < n; ++i)
    if (valid[i]) ss += (x[i] - mean) * (x[i] - mean);
  const double var = cnt > 1 ? ss / static_cast<double>(cnt - 1) : 0.0;
  const double inv = 1.0 / std::sqrt(var + 1e-8);
  for (std::int64_t i = 0; i < n; ++i) x[i] = valid[i] ? (x[i] - mean) * inv : 0.0;
}

// PPO clipped surrogate for one position: value max(-A rho, -A clip(rho, 1-eps, 1+eps)) and d(value)/d(log q(y_t)):
// -A rho where the unclipped branch is active (ties included: both branches then have that gradient), 0 where clipped.
struct ppo_term {
  double value = 0.0;
  double dlogq = 0.0;
  bool clipped = false;
};
inline ppo_term ppo(double adv, double rho, double eps) noexcept {
  ppo_term p;
  const double unclipped = -adv * rho;
  p.value = unclipped;
  p.dlogq = unclipped;
  if (eps > 0.0) {
    const double rc = std::min(std::max(rho, 1.0 - eps), 1.0 + eps);
    const double clipped = -adv * rc;
    if (clipped > unclipped) {
      p.value = clipped;
      p.dlogq = 0.0;
      p.clipped = true;
    }
  }
  return p;
}

// The whole per-position stage. st: pass-1 statistics of every row (pg / y_lm set). Fills coefficients, outputs, diag.
template <class G>
void sequence_stage(const pg_sequences& seq, const pg_options& o, std::vector<row_state>& st, const pg_outputs<G>& out,
                    pg_diagnostics& d) {
  const std::int64_t B = seq.batch, L = seq.time, R = B * L;
  const bool exact = o.iw_form == importance_weight_form::exact_product;
  const bool incl = o.includes_current_reward();
  std::vector<double> rew(R, 0.0), lr(R, 0.0), adv(R, 0.0), w(R, 0.0), sw(R, 0.0), lq_old(R, 0.0);
  std::unique_ptr<bool[]> valid_buf(new bool[static_cast<std::size_t>(R > 0 ? R : 1)]());
  bool* valid = valid_buf.get();

  d = pg_diagnostics{};
  double sum_rew = 0.0, sum_k3 = 0.0, sum_kl = 0.0;
  const double log_a = o.alpha > 0.0 ? std::log(o.alpha) : ref::ninf;
  const double log_1ma = o.alpha < 1.0 ? std::log1p(-o.alpha) : ref::ninf;
  for (std::int64_t r = 0; r < R; ++r) {
    const row_state& s = st[r];
    if (!s.pg) continue;
    valid[r] = true;
    ++d.valid_tokens;
    const double dlt = s.lp_y - s.lq_y;  // raw log p(y) - log q(y), finite (checked in pass 1)
    double rr = dlt / o.reward_scale;
    if (o.reward_clip > 0.0) rr = std::min(std::max(rr, -o.reward_clip), o.reward_clip);
    rew[r] = rr;
    sum_rew += rr;
    sum_k3 += std::expm1(dlt) - dlt;
    sum_kl += s.kl;
    lq_old[r] = seq.old_log_probs ? static_cast<double>(seq.old_log_probs[r]) : s.lq_y;
    double log_s;
    if (o.alpha == 0.0) log_s = lq_old[r];
    else if (o.alpha == 1.0) log_s = s.lp_y;
    else log_s = ref::logaddexp(log_a + s.lp_y, log_1ma + lq_old[r]);
    lr[r] = lq_old[r] - log_s;
  }

  // Importance weights (forward over each sequence) and returns (backward).
  std::int64_t n_iw_clipped = 0;
  const auto clip_w = [&](double v) { return (o.iw_clip > 0.0 && v > o.iw_clip) ? o.iw_clip : v; };

  double seq_reward_sum = 0.0;
  std::vector<double> carried(R, 0.0);
  std::unique_ptr<bool[]> capped(new bool[static_cast<std::size_t>(R > 0 ? R : 1)]());
  for (std::int64_t b = 0; b < B; ++b) {
    const std::int64_t base = b * L;
    // log-space weights, capped at pg_max_importance_weight (never inf / NaN)
    capped_weights(lr.data() + base, valid + base, L, exact, sw.data() + base, w.data() + base, carried.data() + base,
                   capped.get() + base);
    double seq_d = 0.0;
    bool any = false;
    for (std::int64_t t = 0; t < L; ++t) {
      const std::int64_t r = base + t;
      if (!valid[r]) continue;
      any = true;
      seq_d += st[r].lp_y - st[r].lq_y;
      if (exact) sw[r] = clip_w(sw[r]);
      const double wc = clip_w(w[r]);
      if (capped[r] || wc != w[r]) ++n_iw_clipped;
      w[r] = wc;
    }
    if (any) {
      ++d.valid_sequences;
      seq_reward_sum += seq_d;
    }
    sequence_returns(rew.data() + base, valid + base, carried.data() + base, L, o.gamma, o.length_norm, incl, exact,
                     adv.data() + base);
  }
  if (o.whiten) whiten(adv.data(), valid, R);

  // Reduction scales.
  double scale = 1.0, scale_lm = 1.0;
  for (std::int64_t r = 0; r < R; ++r)
    if (st[r].y_lm >= 0) ++d.lm_tokens;
  if (o.reduction == reduction::mean) {
    scale = d.valid_tokens > 0 ? 1.0 / static_cast<double>(d.valid_tokens) : 0.0;
    scale_lm = d.lm_tokens > 0 ? 1.0 / static_cast<double>(d.lm_tokens) : 0.0;
  } else if (o.reduction == reduction::normalizer) {
    scale = scale_lm = 1.0 / o.normalizer;
  }

  // PPO surrogate, coefficients, outputs, diagnostics.
  double sum_pg = 0.0, sum_single = 0.0, sum_lm = 0.0, sum_ratio = 0.0, sum_w = 0.0, sum_adv = 0.0, sum_adv2 = 0.0;
  double w_min = ref::pinf, w_max = ref::ninf;
  std::int64_t n_clipped = 0;
  for (std::int64_t r = 0; r < R; ++r) {
    row_state& s = st[r];
    s.c_single = s.c_long = s.c_lm = 0.0;
    if (s.y_lm >= 0) {
      s.c_lm = o.lm_weight * scale_lm;
      sum_lm += -s.lq_lm;
    }
    if (valid[r]) {
      // PPO ratio in log space, capped like the weights (where capped, the surrogate is constant in log q: gradient 0)
      const double log_rho = (s.lq_y - lq_old[r]) + std::log(w[r]);
      const bool rho_capped = log_rho > std::log(pg_max_importance_weight);
      const double rho = rho_capped ? pg_max_importance_weight : std::exp(log_rho);
      ppo_term p = ppo(adv[r], rho, o.clip_range);
      if (rho_capped) p.dlogq = 0.0;
      if (p.clipped) ++n_clipped;
      s.c_long = p.dlogq * scale;
      sum_pg += p.value;
      if (o.single_step) {
        s.c_single = sw[r] * scale;
        sum_single += sw[r] * s.kl;
      }
      sum_ratio += rho;
      sum_w += w[r];
      w_min = std::min(w_min, w[r]);
      w_max = std::max(w_max, w[r]);
      sum_adv += adv[r];
      sum_adv2 += adv[r] * adv[r];
    }
    if (out.rewards) out.rewards[r] = static_cast<float>(rew[r]);
    if (out.advantages) out.advantages[r] = static_cast<float>(adv[r]);
    if (out.importance_weights) out.importance_weights[r] = static_cast<float>(w[r]);
    if (out.log_probs) out.log_probs[r] = valid[r] ? static_cast<float>(s.lq_y) : 0.0f;
  }

  const double n = static_cast<double>(d.valid_tokens);
  d.pg_loss = sum_pg * scale;
  d.single_step_loss = sum_single * scale;
  d.lm_loss = d.lm_tokens > 0 ? sum_lm / static_cast<double>(d.lm_tokens) : 0.0;
  d.loss = d.pg_loss + d.single_step_loss + o.lm_weight * sum_lm * scale_lm;
  if (d.valid_tokens > 0) {
    d.mean_reward = sum_rew / n;
    d.k3 = sum_k3 / n;
    d.token_reverse_kl = sum_kl / n;
    d.iw_mean = sum_w / n;
    d.iw_min = w_min;
    d.iw_max = w_max;
    d.iw_clip_fraction = static_cast<double>(n_iw_clipped) / n;
    d.ratio_mean = sum_ratio / n;
    d.clip_fraction = static_cast<double>(n_clipped) / n;
    d.advantage_mean = sum_adv / n;
    d.advantage_std = std::sqrt(std::max(0.0, sum_adv2 / n - d.advantage_mean * d.advantage_mean));
  }
  if (d.valid_sequences > 0) d.sequence_reward = seq_reward_sum / static_cast<double>(d.valid_sequences);
}

}  // namespace detail::pg
KD_END_NAMESPACE
