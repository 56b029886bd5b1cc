// Row passes of the fused MiniLLM policy gradient and the driver that runs them around the per-position stage.
//
// Pass 1 (per active row, reads the logits): log-sum-exp of the student and the teacher rows at temperature T, log q(y_t),
//   log p(y_t), the exact KL(q_t || p_t) and log q(lm_label). Nothing is written, so every error is found before any output
//   is touched.
// Per-position stage (detail/pg_sequence.hpp, O(B*L) doubles): rewards, returns, weights, whitening, PPO -> coefficients.
// Pass 2 (per row, reads the logits again, writes the gradient row once):
//   g_j = (1/T) [ c_single q_j (log q_j - log p_j - KL) + c_long (onehot(y)_j - q_j) + c_lm (q_j - onehot(lm)_j) ].
// Reference path: double, reusing the reference divergence core (detail::ref::kl gives q_j (log q_j - log p_j - KL), the
// reverse-KL row gradient times T). Fast path: float, one fused loop per pass; for float inputs the loops are xsimd batches
// with the exponential of detail/simd_exp.hpp. Both need O(V) (reference) or O(1) (fast) scratch per row, no B x L x V
// temporary. Exponentials per element: pass 1 two (student, teacher), pass 2 one (student): the same as a fused reverse-KL
// forward + backward.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "../options.hpp"
#include "../pg_options.hpp"
#include "../status.hpp"
#include "pg_sequence.hpp"
#include "reference_math.hpp"

KD_BEGIN_NAMESPACE
namespace detail::pg {

// ---------------------------------------------------------------------------------------------------------------------------
// Reference (double) rows.

template <class S, class P>
struct ref_rows {
  std::vector<double> lq, lp, gq;
  explicit ref_rows(std::int64_t v) : lq(v), lp(v), gq(v) {}

  // Returns 0 (ok), 1 (student row not finite), 2 (teacher row not finite).
  int pass1(const S* zs, const P* zt, std::int64_t n, double inv_t, row_state& s) {
    s.lse_s = ref::load_log_probs(zs, n, inv_t, lq.data());
    if (!std::isfinite(s.lse_s)) return 1;
    if (s.y_lm >= 0) s.lq_lm = lq[s.y_lm];
    if (!s.needs_teacher()) return 0;
    s.lse_t = ref::load_log_probs(zt, n, inv_t, lp.data());
    if (!std::isfinite(s.lse_t)) return 2;
    s.lq_y = lq[s.y];
    s.lp_y = lp[s.y];
    s.kl = ref::kl(lq.data(), lp.data(), n, nullptr, nullptr);
    return 0;
  }

  template <class G>
  void pass2(const S* zs, const P* zt, std::int64_t n, double inv_t, const row_state& s, G* g) {
    ref::load_log_probs(zs, n, inv_t, lq.data());
    const bool single = s.c_single != 0.0;
    if (single) {
      ref::load_log_probs(zt, n, inv_t, lp.data());
      ref::kl(lq.data(), lp.data(), n, gq.data(), nullptr);  // gq_j = q_j (log q_j - log p_j - KL)
    }
    for (std::int64_t j = 0; j < n; ++j) {
      const double q = std::exp(lq[j]);
      double v = s.c_long * ((j == s.y ? 1.0 : 0.0) - q) + s.c_lm * (q - (j == s.y_lm ? 1.0 : 0.0));
      if (single) v += s.c_single * gq[j];
      g[j] = from_double<G>(inv_t * v);
    }
  }
};

// ---------------------------------------------------------------------------------------------------------------------------
// Fast (float) rows.

template <class S, class P>
struct fast_rows {
  explicit fast_rows(std::int64_t) {}

  // Generic float path (any element type; also the tail of the SIMD path).
  static void scalar_stats(const S* zs, const P* zt, std::int64_t j0, std::int64_t n, float inv_t, float ms, float mt,
                           bool teacher, float& ss, float& st, float& dd) noexcept {
    for (std::int64_t j = j0; j < n; ++j) {
      const float a = to_float(zs[j]) * inv_t;
      const float es = std::exp(a - ms);
      ss += es;
      if (teacher) {
        const float b = to_float(zt[j]) * inv_t;
        st += std::exp(b - mt);
        if (es != 0.0f) dd += es * (a - b);  // q_j = 0 contributes 0 (never 0 * inf)
      }
    }
  }

  int pass1(const S* zs, const P* zt, std::int64_t n, double inv_t_d, row_state& s) {
    const float inv_t = static_cast<float>(inv_t_d);
    const bool teacher = s.needs_teacher();
    float ms = -std::numeric_limits<float>::infinity(), mt = ms;
    float ss = 0.0f, st = 0.0f, dd = 0.0f;
    if constexpr (std::is_same_v<S, float> && std::is_same_v<P, float>) {
      using b = xsimd::batch<float>;
      constexpr std::int64_t W = static_cast<std::int64_t>(b::size);
      const std::int64_t nv = n - n % W;
      // Read 1: row maxima (two independent accumulators per input).
      b vms(ms), vmt(mt);
      for (std::int64_t j = 0; j < nv; j += W) {
        vms = xsimd::max(vms, b::load_unaligned(zs + j));
        if (teacher) vmt = xsimd::max(vmt, b::load_unaligned(zt + j));
      }
      alignas(64) float tmp[64];
      vms.store_aligned(tmp);
      for (std::int64_t k = 0; k < W; ++k) ms = std::max(ms, tmp[k]);
      if (teacher) {
        vmt.store_aligned(tmp);
        for (std::int64_t k = 0; k < W; ++k) mt = std::max(mt, tmp[k]);
      }
      for (std::int64_t j = nv; j < n; ++j) {
        ms = std::max(ms, zs[j]);
        if (teacher) mt = std::max(mt, zt[j]);
      }
      ms *= inv_t;
      mt *= inv_t;
      // Read 2: exponentials and sums. NaN inputs propagate into the sums (found below); -inf student entries contribute 0.
      const b vit(inv_t), vms_b(ms), vmt_b(mt), zero(0.0f);
      b ass(0.0f), ast(0.0f), add(0.0f);
      for (std::int64_t j = 0; j < nv; j += W) {
        const b a = b::load_unaligned(zs + j) * vit;
        const b es = xsimd::exp(a - vms_b);
        ass += es;
        if (teacher) {
          const b bt = b::load_unaligned(zt + j) * vit;
          ast += xsimd::exp(bt - vmt_b);
          add += xsimd::select(es != zero, es * (a - bt), zero);
        }
      }
      ss = xsimd::hadd(ass);
      st = xsimd::hadd(ast);
      dd = xsimd::hadd(add);
      scalar_stats(zs, zt, nv, n, inv_t, ms, mt, teacher, ss, st, dd);
    } else {
      for (std::int64_t j = 0; j < n; ++j) {
        ms = std::max(ms, to_float(zs[j]));
        if (teacher) mt = std::max(mt, to_float(zt[j]));
      }
      ms *= inv_t;
      mt *= inv_t;
      scalar_stats(zs, zt, 0, n, inv_t, ms, mt, teacher, ss, st, dd);
    }
    // A NaN anywhere makes the sums NaN; +inf makes a - ms NaN; an all -inf row gives ms = -inf and NaN: all reported.
    s.lse_s = static_cast<double>(ms) + std::log(static_cast<double>(ss));
    if (!std::isfinite(s.lse_s)) return 1;
    if (s.y_lm >= 0) s.lq_lm = static_cast<double>(to_float(zs[s.y_lm]) * inv_t) - s.lse_s;
    if (!teacher) return 0;
    s.lse_t = static_cast<double>(mt) + std::log(static_cast<double>(st));
    if (!std::isfinite(s.lse_t)) return 2;
    const float ay = to_float(zs[s.y]) * inv_t, by = to_float(zt[s.y]) * inv_t;
    s.lq_y = static_cast<double>(ay) - s.lse_s;
    s.lp_y = static_cast<double>(by) - s.lse_t;
    // KL(q || p) = sum_j q_j (a_j - b_j) - lse_s + lse_t, with sum_j q_j (a_j - b_j) = dd / ss. Identical rows give exactly 0.
    s.kl = static_cast<double>(dd) / static_cast<double>(ss) - s.lse_s + s.lse_t;
    if (std::isnan(s.kl)) s.kl = std::numeric_limits<double>::infinity();  // +inf - +inf: teacher -inf under student mass
    return 0;
  }

  template <class G>
  static void scalar_grad(const S* zs, const P* zt, std::int64_t j0, std::int64_t n, float inv_t, float lse_s, float lse_t,
                          float kl, float cs, float cl_m_clm, bool single, G* g) noexcept {
    for (std::int64_t j = j0; j < n; ++j) {
      const float a = to_float(zs[j]) * inv_t - lse_s;
      const float q = std::exp(a);
      float coef = -cl_m_clm;
      if (single) coef += cs * (a - (to_float(zt[j]) * inv_t - lse_t) - kl);
      g[j] = from_float<G>(q == 0.0f ? 0.0f : inv_t * q * coef);
    }
  }

  template <class G>
  void pass2(const S* zs, const P* zt, std::int64_t n, double inv_t_d, const row_state& s, G* g) {
    const bool single = s.c_single != 0.0;
    // The two one-hot entries are computed first, in double, from the inputs (g may be the student buffer itself).
    const auto entry = [&](std::int64_t j) {
      const double a = to_double(zs[j]) * inv_t_d - s.lse_s;
      const double q = std::exp(a);
      double v = s.c_long * ((j == s.y ? 1.0 : 0.0) - q) + s.c_lm * (q - (j == s.y_lm ? 1.0 : 0.0));
      if (single && q > 0.0) v += s.c_single * q * (a - (to_double(zt[j]) * inv_t_d - s.lse_t) - s.kl);
      return from_double<G>(inv_t_d * v);
    };
    const G gy = s.y >= 0 ? entry(s.y) : from_double<G>(0.0);
    const G glm = s.y_lm >= 0 ? entry(s.y_lm) : from_double<G>(0.0);
    const float inv_t = static_cast<float>(inv_t_d);
    const float lse_s = static_cast<float>(s.lse_s), lse_t = static_cast<float>(s.lse_t), kl = static_cast<float>(s.kl);
    const float cs = static_cast<float>(s.c_single), cl_m_clm = static_cast<float>(s.c_long - s.c_lm);
    std::int64_t j0 = 0;
    if constexpr (std::is_same_v<S, float> && std::is_same_v<P, float> && std::is_same_v<G, float>) {
      using b = xsimd::batch<float>;
      constexpr std::int64_t W = static_cast<std::int64_t>(b::size);
      const std::int64_t nv = n - n % W;
      const b vit(inv_t), vls(lse_s), vlt(lse_t), vkl(kl), vcs(cs), vc0(-cl_m_clm), zero(0.0f);
      if (single) {
        for (std::int64_t j = 0; j < nv; j += W) {
          const b a = xsimd::fms(b::load_unaligned(zs + j), vit, vls);
          const b q = xsimd::exp(a);
          const b bt = xsimd::fms(b::load_unaligned(zt + j), vit, vlt);
          const b coef = xsimd::fma(vcs, a - bt - vkl, vc0);
          xsimd::select(q == zero, zero, vit * q * coef).store_unaligned(g + j);
        }
      } else {
        const b k = vit * vc0;
        for (std::int64_t j = 0; j < nv; j += W) {
          const b q = xsimd::exp(xsimd::fms(b::load_unaligned(zs + j), vit, vls));
          (q * k).store_unaligned(g + j);
        }
      }
      j0 = nv;
    }
    scalar_grad(zs, zt, j0, n, inv_t, lse_s, lse_t, kl, cs, cl_m_clm, single, g);
    if (s.y >= 0) g[s.y] = gy;
    if (s.y_lm >= 0) g[s.y_lm] = glm;
  }
};

// ---------------------------------------------------------------------------------------------------------------------------
// Driver.

template <bool Reference, class S, class P, class G>
status run(const student_input<S>& student, const teacher_input<P>& teacher, const pg_sequences& seq, const pg_options& o,
           const pg_outputs<G>& out, pg_diagnostics& diag) {
  const auto& zs = student.x;
  const auto& zt = teacher.x;
  const std::int64_t R = seq.batch * seq.time, n = zs.cols;
  const double inv_t = 1.0 / o.temperature;
  using rows_t = std::conditional_t<Reference, ref_rows<S, P>, fast_rows<S, P>>;
  rows_t rk(n);
  std::vector<row_state> st(static_cast<std::size_t>(R));

  // Pass 1: statistics; errors are returned here, before any output is written.
  for (std::int64_t r = 0; r < R; ++r) {
    row_state& s = st[r];
    s.pg = seq.valid(r);
    s.y = s.pg ? seq.tokens[r] : -1;
    if (!seq.lm_labels.empty() && o.lm_weight != 0.0) {
      const std::int64_t l = seq.lm_labels[r];
      s.y_lm = l == o.ignore_index ? -1 : l;
    }
    if (!s.active()) continue;
    const int e = rk.pass1(zs.row(r), zt.row(r), n, inv_t, s);
    if (e == 1)
      return make_error(errc::non_finite_input, "student",
                        "a valid row holds NaN or +inf, or is fully masked (all -inf)", s.lse_s, r);
    if (e == 2)
      return make_error(errc::non_finite_input, "teacher",
                        "a valid row holds NaN or +inf, or is fully masked (all -inf)", s.lse_t, r);
    if (s.pg && s.lq_y == ref::ninf)
      return make_error(errc::support_mismatch, "tokens", "the student gives probability 0 to the sampled token", s.lq_y,
                        r);
    if (s.pg && s.lp_y == ref::ninf)
      return make_error(errc::support_mismatch, "teacher",
                        "the teacher gives probability 0 to the sampled token (reward -inf)", s.lp_y, r);
    if (s.pg && o.single_step && !(s.kl < ref::pinf))
      return make_error(errc::support_mismatch, "teacher",
                        "KL(q_t || p_t) is +inf: the teacher has a -inf logit where the student has mass", s.kl, r);
    if (s.y_lm >= 0 && s.lq_lm == ref::ninf)
      return make_error(errc::support_mismatch, "lm_labels", "the student gives probability 0 to the label", s.lq_lm, r);
  }

  sequence_stage(seq, o, st, out, diag);

  // Pass 2: gradient rows (zero for rows that count for nothing).
  if (out.grad_student.data) {
    for (std::int64_t r = 0; r < R; ++r) {
      G* g = out.grad_student.row(r);
      const row_state& s = st[r];
      if (!s.active() || (s.c_single == 0.0 && s.c_long == 0.0 && s.c_lm == 0.0)) {
        std::fill(g, g + n, from_double<G>(0.0));
        continue;
      }
      rk.pass2(zs.row(r), zt.row(r), n, inv_t, s, g);
    }
  }
  return ok_status();
}

}  // namespace detail::pg
KD_END_NAMESPACE
