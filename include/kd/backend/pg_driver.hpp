// The CPU driver of the fused MiniLLM policy gradient (kd/policy_gradient.hpp), shared by the reference and the SIMD
// backends: it runs the reverse-KL functor (kd/divergences/kl.hpp) through a backend's row kernels, the same kernels the
// divergence driver (backend/cpu_driver.hpp) runs, plus the estimator's own epilogue.
//
// Pass 1 (per active row, reads the logits, writes nothing): the row kernels' statistics of KL(q_t || p_t) (both
//   log-sum-exps at temperature T and the exact KL), or a student-only log-sum-exp for rows that need no teacher (LM-only
//   positions); then, in double, log q(y_t), log p(y_t) and log q(lm_label_t). Every error is found here, before any
//   output is touched, and the smallest offending row is reported.
// Per-position stage (detail/pg_sequence.hpp, O(B*L) doubles): rewards, returns, weights, whitening, PPO -> coefficients.
// Pass 2 (per row, writes the gradient row once): the row kernels' reverse-KL gradient from pass 1's statistics,
//   c_single q_j (log q_j - log p_j - KL), with the epilogue (c_lm - c_long) q_j added in the same loop (row_params::c_q),
//   or that epilogue alone when the single-step term is off; then the two one-hot entries (y_t, lm_label_t), recomputed
//   in double from the inputs (the gradient may be the student buffer itself):
//   g_j = (1/T) [ c_single q_j (log q_j - log p_j - KL) + c_long (onehot(y)_j - q_j) + c_lm (q_j - onehot(lm)_j) ].
// Exponentials per element: the fused reverse-KL forward + backward's (pass 1 two, pass 2 one on the online path).
// Scratch: O(B*L) row statistics, plus the row kernels' per-thread scratch (O(V) doubles for the reference).
// Deterministic: each row is computed by one thread; every reduction runs afterwards in row order.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../detail/pg_sequence.hpp"
#include "../detail/row_io.hpp"
#include "../divergences/kl.hpp"
#include "../options.hpp"
#include "../pg_options.hpp"
#include "../status.hpp"
#include "cpu_driver.hpp"

// The SIMD row kernels inline here: GCC 12's AVX-512 intrinsics' -W(maybe-)uninitialized false positives (GCC bug
// 105593; see detail/simd_divergence.hpp) are reported at this point of instantiation.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

KD_BEGIN_NAMESPACE
namespace detail::pg {

// Pass-1 outcome of a row: 0 ok, else the error to report (argument, message) with its value.
struct pass1_error {
  row_error e = row_error::none;
  bool student = true;  // which side
  double value = 0.0;
};

inline status pass1_status(const pass1_error& pe, std::int64_t r) {
  const char* arg = pe.student ? "student" : "teacher";
  switch (pe.e) {
    case row_error::student_out_of_range:
    case row_error::teacher_out_of_range:
      return make_error(errc::non_finite_input, arg,
                        "finite logits whose |x| / T exceeds the floating-point range (temperature too small)",
                        pe.value, r);
    default:
      return make_error(errc::non_finite_input, arg, "a valid row holds NaN or +inf, or is fully masked (all -inf)",
                        pe.value, r);
  }
}

template <class K, class Executor, class S, class P, class G>
status run(const Executor& exec, const student_input<S>& student, const teacher_input<P>& teacher,
           const pg_sequences& seq, const pg_options& o, const pg_outputs<G>& out, pg_diagnostics& diag) {
  using E = divergences::reverse_kl;
  using F = E::functor;
  const auto& zs = student.x;
  const auto& zt = teacher.x;
  const std::int64_t R = seq.batch * seq.time, n = zs.cols;
  const double inv_t = 1.0 / o.temperature;
  std::vector<row_state> st(static_cast<std::size_t>(R));
  std::vector<row_stats<F>> rs(static_cast<std::size_t>(R));
  std::vector<pass1_error> err(static_cast<std::size_t>(R));
  for (std::int64_t r = 0; r < R; ++r) {
    row_state& s = st[r];
    s.pg = seq.valid(r);
    s.y = s.pg ? seq.tokens[r] : -1;
    if (!seq.lm_labels.empty() && o.lm_weight != 0.0) {
      const std::int64_t l = seq.lm_labels[r];
      s.y_lm = l == o.ignore_index ? -1 : l;
    }
  }

  // Pass 1: statistics; errors are returned here, before any output is written.
  row_params rp1;
  rp1.inv_t = inv_t;
  rp1.raw_log_ratio = true;  // the low-T accuracy of the estimator's log-ratios (docs/pitfalls.md #14)
  run_rows(exec, R, n, [&](std::int64_t r0, std::int64_t r1) {
    typename K::template scratch<S, P, G> sc(n);
    const F f = E::make(0.0, 0.0);
    for (std::int64_t r = r0; r < r1; ++r) {
      row_state& s = st[r];
      if (!s.active()) continue;
      pass1_error& pe = err[r];
      row_stats<F>& x = rs[r];
      if (s.needs_teacher()) {
        const row_io<S, P, G> io{zs.row(r), zt.row(r), nullptr, nullptr, n};
        x = K::template stats<E>(f, io, rp1, sc);
        const row_error e = x.res.error;
        if (e == row_error::masked) {
          pe = {e, all_ninf(zs.row(r), n), -std::numeric_limits<double>::infinity()};
          continue;
        }
        if (e != row_error::none && e != row_error::support_mismatch) {
          pe = {e, e == row_error::student_non_finite || e == row_error::student_out_of_range, x.res.value};
          continue;
        }
        s.kl = e == row_error::support_mismatch ? std::numeric_limits<double>::infinity() : x.res.loss;
        s.lse_t = x.t.value();
        s.lq_y = K::log_prob(zs.row(r), s.y, inv_t, x.s);
        s.lp_y = K::log_prob(zt.row(r), s.y, inv_t, x.t);
      } else {
        const lse_result l = K::student_lse(zs.row(r), n, inv_t, sc);
        if (l.error != row_error::none) {
          pe = {l.error, true, l.value};
          continue;
        }
        x.s = l.lse;
      }
      s.lse_s = x.s.value();
      if (s.y_lm >= 0) s.lq_lm = K::log_prob(zs.row(r), s.y_lm, inv_t, x.s);
    }
  });
  for (std::int64_t r = 0; r < R; ++r) {  // row order: the smallest offending row is reported
    const row_state& s = st[r];
    if (!s.active()) continue;
    if (err[r].e != row_error::none) return pass1_status(err[r], r);
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
  if (!out.grad_student.data) return ok_status();

  // Pass 2: gradient rows (zero for rows that count for nothing).
  run_rows(exec, R, n, [&](std::int64_t r0, std::int64_t r1) {
    typename K::template scratch<S, P, G> sc(n);
    for (std::int64_t r = r0; r < r1; ++r) {
      G* g = out.grad_student.row(r);
      const row_state& s = st[r];
      if (!s.active() || (s.c_single == 0.0 && s.c_long == 0.0 && s.c_lm == 0.0)) {
        std::fill(g, g + n, from_double<G>(0.0));
        continue;
      }
      const S* z = zs.row(r);
      const P* t = zt.row(r);
      const row_stats<F>& x = rs[r];
      const bool single = s.c_single != 0.0;
      // The one-hot entries first, in double from the inputs (g may be the student buffer itself).
      const auto entry = [&](std::int64_t j) {
        const double lq = K::log_prob(z, j, inv_t, x.s), q = std::exp(lq);
        double v = s.c_long * ((j == s.y ? 1.0 : 0.0) - q) + s.c_lm * (q - (j == s.y_lm ? 1.0 : 0.0));
        if (single && q > 0.0) {  // the reverse-KL functor's student gradient q_j (log q_j - log p_j - KL)
          F f = E::make(0.0, 0.0);
          f.loss = s.kl;
          double gx, gy;
          const double lp = K::log_prob(t, j, inv_t, x.t);
          f.grad(lq, lp, lq - lp, gx, gy);
          v += s.c_single * gx;
        }
        return inv_t * v;
      };
      const double gy = s.y >= 0 ? entry(s.y) : 0.0, glm = s.y_lm >= 0 ? entry(s.y_lm) : 0.0;
      const double c_q = (s.c_lm - s.c_long) * inv_t;
      if (single) {
        row_params rp;
        rp.inv_t = inv_t;
        rp.c = s.c_single * inv_t;
        rp.c_q = c_q;
        rp.raw_log_ratio = true;
        K::template grad<E>(x, row_io<S, P, G>{z, t, g, nullptr, n}, rp, sc);
      } else {
        K::softmax_grad(z, n, inv_t, x.s, c_q, g);
      }
      if (s.y >= 0) g[s.y] = from_double<G>(gy);
      if (s.y_lm >= 0) g[s.y_lm] = from_double<G>(glm);
    }
  });
  return ok_status();
}

}  // namespace detail::pg
KD_END_NAMESPACE

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
