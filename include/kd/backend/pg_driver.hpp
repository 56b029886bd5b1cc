// Row passes of the fused MiniLLM policy gradient and the driver that runs them around the per-position stage.
//
// Pass 1 (per active row, reads the logits): log-sum-exp of the student and the teacher rows at temperature T, log q(y_t),
//   log p(y_t), the exact KL(q_t || p_t) and log q(lm_label). Nothing is written, so every error is found before any output
//   is touched.
// Per-position stage (detail/pg_sequence.hpp, O(B*L) doubles): rewards, returns, weights, whitening, PPO -> coefficients.
// Pass 2 (per row, reads the logits again, writes the gradient row once):
//   g_j = (1/T) [ c_single q_j (log q_j - log p_j - KL) + c_long (onehot(y)_j - q_j) + c_lm (q_j - onehot(lm)_j) ].
// Reference path: double, running the reverse-KL functor (kd/divergences/kl.hpp) for the KL and its student gradient
// q_j (log q_j - log p_j - KL) (the reverse-KL row gradient times T). Fast path: float, one fused loop per pass; for float inputs the loops are xsimd batches
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
#include "../detail/pg_sequence.hpp"
#include "../detail/reference_rows.hpp"
#include "../status.hpp"
#include "simd.hpp"

KD_BEGIN_NAMESPACE
namespace detail::pg {

// ---------------------------------------------------------------------------------------------------------------------------
// Reference (double) rows.

template <class S, class P>
struct ref_rows {
  std::vector<double> lq, lp;
  rm::kl_row kl;  // KL(q || p): the reverse-KL functor of kd/divergences/kl.hpp (x = student)
  explicit ref_rows(std::int64_t v) : lq(v), lp(v) {}

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
    s.kl = ref::functor_row_loss(kl, lq.data(), lp.data(), n);
    return 0;
  }

  template <class G>
  void pass2(const S* zs, const P* zt, std::int64_t n, double inv_t, const row_state& s, G* g) {
    ref::load_log_probs(zs, n, inv_t, lq.data());
    const bool single = s.c_single != 0.0;
    if (single) {
      ref::load_log_probs(zt, n, inv_t, lp.data());
      kl.loss = s.kl;
    }
    for (std::int64_t j = 0; j < n; ++j) {
      const double q = std::exp(lq[j]);
      double v = s.c_long * ((j == s.y ? 1.0 : 0.0) - q) + s.c_lm * (q - (j == s.y_lm ? 1.0 : 0.0));
      if (single) {  // the reverse-KL functor's student gradient: q_j (log q_j - log p_j - KL)
        double gq, gp;
        kl.grad(lq[j], lp[j], gq, gp);
        v += s.c_single * gq;
      }
      g[j] = from_double<G>(inv_t * v);
    }
  }
};

// ---------------------------------------------------------------------------------------------------------------------------
// Fast (float) rows on the SIMD backend's row primitives (detail/simd_row.hpp, detail/simd_exp.hpp) for instruction set A.
// Rows are processed in L1-sized chunks (detail::simd::chunk) exactly like the backend's fused KL row (online max /
// sum-exp with rescaling), so pass 1 reads each input row once; pass 2 reads them once more and writes the gradient once.
// Partial sums are accumulated per chunk in float lanes and across chunks in double. Pass 1 runs the backend's optimistic
// fused-KL loop first and, for rows with masked (-inf) or non-finite entries, a careful loop whose selects make masked
// entries contribute exactly 0 (never 0 * inf); pass 2 always selects q_j = 0 -> 0.

template <class A, class S, class P>
struct fast_rows {
  using b = simd::fbatch<A>;
  static constexpr float ninf = -std::numeric_limits<float>::infinity();
  static constexpr float pinf = std::numeric_limits<float>::infinity();

  explicit fast_rows(std::int64_t) {}

  // Row sums of pass 1: maxima ms, mt of z / T, ss = sum exp(ys - ms), st = sum exp(yt - mt), and the KL numerator.
  struct sums {
    float ms = ninf, mt = ninf;
    double ss = 0.0, st = 0.0, dd = 0.0;
    // dd = sum_j e_s,j (xs_j - xt_j) / T, e_s = exp(ys - ms): sum_j q_j (ys_j - yt_j) = dd / ss
  };

  // The optimistic loop for rows without -inf / NaN / +inf (the structure of the backend's fused KL pass A, without
  // selects): dd = sum e_s (xs - xt) / T, with (xs - xt) / T rather than ys - yt so that the KL stays accurate when the
  // models agree at low T (docs/pitfalls.md #14). Returns false (the caller then runs the careful loop) on a fully masked chunk or
  // non-finite sums (a -inf entry makes 0 * -inf = NaN, a NaN / +inf too).
  static bool fast_sums(const S* zs, const P* zt, std::int64_t n, float inv_t, sums& r) noexcept {
    const b it(inv_t);
    alignas(64) float bs[simd::chunk], bt[simd::chunk];
    for (std::int64_t j0 = 0; j0 < n; j0 += simd::chunk) {
      const std::int64_t len = n - j0 < simd::chunk ? n - j0 : simd::chunk;
      const float* cs = simd::load_chunk<A>(zs + j0, len, bs);
      const float* ct = simd::load_chunk<A>(zt + j0, len, bt);
      // max(z) / T == max(z / T) (T > 0, rounding is monotonic).
      const float cms = simd::chunk_max_raw<A>(cs, len) * inv_t, cmt = simd::chunk_max_raw<A>(ct, len) * inv_t;
      if (!(cms > ninf && cmt > ninf)) return false;
      const float ns = cms > r.ms ? cms : r.ms, nt = cmt > r.mt ? cmt : r.mt;
      if (ns != r.ms || nt != r.mt) {
        const double fs = std::exp(static_cast<double>(r.ms) - ns), ft = std::exp(static_cast<double>(r.mt) - nt);
        r.dd *= fs;
        r.ss *= fs;
        r.st *= ft;
        r.ms = ns;
        r.mt = nt;
      }
      const b mbs(r.ms), mbt(r.mt);
      b as(0.0f), at(0.0f), ad(0.0f);
      std::int64_t j = 0;
      for (; j + simd::width<A> <= len; j += simd::width<A>) {
        const b xs = b::load_unaligned(cs + j), xt = b::load_unaligned(ct + j);
        const b es = simd::exp<A>(xsimd::fms(xs, it, mbs));
        as += es;
        at += simd::exp<A>(xsimd::fms(xt, it, mbt));
        ad = xsimd::fma(es, (xs - xt) * it, ad);
      }
      if (j < len) {  // tail: pad with 0 (finite), mask the contributions
        const auto m = simd::lane_mask<A>(len - j);
        const b xs = simd::load_padded<A>(cs, j, len, 0.0f), xt = simd::load_padded<A>(ct, j, len, 0.0f);
        const b es = xsimd::select(m, simd::exp<A>(xsimd::fms(xs, it, mbs)), b(0.0f));
        as += es;
        at += xsimd::select(m, simd::exp<A>(xsimd::fms(xt, it, mbt)), b(0.0f));
        ad = xsimd::fma(es, (xs - xt) * it, ad);
      }
      r.ss += simd::hsum<A>(as);
      r.st += simd::hsum<A>(at);
      r.dd += simd::hsum<A>(ad);
    }
    return std::isfinite(r.ss) && std::isfinite(r.st) && std::isfinite(r.dd);
  }

  // The careful loop: masked (-inf) entries contribute exactly 0 (selects on e == 0, never 0 * inf); a NaN or +inf makes
  // the sums NaN (reported by the caller); a teacher -inf under student mass makes dd +inf (KL = +inf).
  static void careful_sums(const S* zs, const P* zt, std::int64_t n, float inv_t, bool teacher, sums& r) noexcept {
    const b it(inv_t), zero(0.0f);
    alignas(64) float bs[simd::chunk], bt[simd::chunk];
    r = sums{};
    for (std::int64_t j0 = 0; j0 < n; j0 += simd::chunk) {
      const std::int64_t len = n - j0 < simd::chunk ? n - j0 : simd::chunk;
      const float* cs = simd::load_chunk<A>(zs + j0, len, bs);
      const float cms = simd::chunk_max_raw<A>(cs, len) * inv_t;
      const float* ct = nullptr;
      float cmt = ninf;
      if (teacher) {
        ct = simd::load_chunk<A>(zt + j0, len, bt);
        cmt = simd::chunk_max_raw<A>(ct, len) * inv_t;
      }
      if (cms > r.ms) {  // rescale the student sums (dd is student-weighted)
        const double f = r.ms == ninf ? 0.0 : std::exp(static_cast<double>(r.ms) - cms);
        r.ss *= f;
        r.dd *= f;
        r.ms = cms;
      }
      if (cmt > r.mt) {
        r.st *= r.mt == ninf ? 0.0 : std::exp(static_cast<double>(r.mt) - cmt);
        r.mt = cmt;
      }
      const b mbs(r.ms == ninf ? 0.0f : r.ms), mbt(r.mt == ninf ? 0.0f : r.mt);  // all -inf so far: every e is 0
      b as(0.0f), at(0.0f), ad(0.0f);
      if (teacher) {
        for (std::int64_t j = 0; j < len; j += simd::width<A>) {
          const b xs = simd::load_padded<A>(cs, j, len, ninf), xt = simd::load_padded<A>(ct, j, len, ninf);
          const b es = simd::exp<A>(xsimd::fms(xs, it, mbs));
          as += es;
          at += simd::exp<A>(xsimd::fms(xt, it, mbt));
          // KL = +inf where the student has mass and the teacher none, decided in log space like the oracle (a student
          // probability that underflows to 0 in float32 still counts as mass: found by fuzzing).
          ad += xsimd::select(xs > b(ninf), xsimd::select(xt == b(ninf), b(pinf), es * ((xs - xt) * it)), zero);
        }
      } else {
        for (std::int64_t j = 0; j < len; j += simd::width<A>)
          as += simd::exp<A>(xsimd::fms(simd::load_padded<A>(cs, j, len, ninf), it, mbs));
      }
      r.ss += simd::hsum<A>(as);
      r.st += simd::hsum<A>(at);
      r.dd += simd::hsum<A>(ad);
    }
  }

  int pass1(const S* zs, const P* zt, std::int64_t n, double inv_t_d, row_state& s) const noexcept {
    const float inv_t = static_cast<float>(inv_t_d);
    const bool teacher = s.needs_teacher();
    sums r;
    s.finite_row = teacher && fast_sums(zs, zt, n, inv_t, r);
    if (!s.finite_row) careful_sums(zs, zt, n, inv_t, teacher, r);
    if (r.ms == ninf) {  // fully masked student row
      s.lse_s = -std::numeric_limits<double>::infinity();
      return 1;
    }
    s.lse_s = static_cast<double>(r.ms) + std::log(r.ss);
    if (!std::isfinite(s.lse_s)) return 1;  // a NaN or +inf entry made the sum NaN
    if (s.y_lm >= 0) s.lq_lm = static_cast<double>(simd::elem_to_float<A>(zs[s.y_lm]) * inv_t) - s.lse_s;
    if (!teacher) return 0;
    if (r.mt == ninf) {
      s.lse_t = -std::numeric_limits<double>::infinity();
      return 2;
    }
    s.lse_t = static_cast<double>(r.mt) + std::log(r.st);
    if (!std::isfinite(s.lse_t)) return 2;
    s.lq_y = static_cast<double>(simd::elem_to_float<A>(zs[s.y]) * inv_t) - s.lse_s;
    s.lp_y = static_cast<double>(simd::elem_to_float<A>(zt[s.y]) * inv_t) - s.lse_t;
    // KL(q || p) = sum_j q_j (ys_j - yt_j) - lse_s + lse_t = dd / ss - lse_s + lse_t; identical rows give exactly 0.
    s.kl = r.dd / r.ss - s.lse_s + s.lse_t;
    if (!(s.kl < std::numeric_limits<double>::infinity())) s.kl = std::numeric_limits<double>::infinity();
    return 0;
  }

  template <class G>
  void pass2(const S* zs, const P* zt, std::int64_t n, double inv_t_d, const row_state& s, G* g) const noexcept {
    const bool single = s.c_single != 0.0;
    // The two one-hot entries are computed first, in double, from the inputs (g may be the student buffer itself).
    const auto entry = [&](std::int64_t j) {
      const double a = static_cast<double>(simd::elem_to_float<A>(zs[j])) * inv_t_d - s.lse_s;
      const double q = std::exp(a);
      double v = s.c_long * ((j == s.y ? 1.0 : 0.0) - q) + s.c_lm * (q - (j == s.y_lm ? 1.0 : 0.0));
      if (single && q > 0.0)
        v += s.c_single * q * (a - (static_cast<double>(simd::elem_to_float<A>(zt[j])) * inv_t_d - s.lse_t) - s.kl);
      return inv_t_d * v;
    };
    const double gy = s.y >= 0 ? entry(s.y) : 0.0, glm = s.y_lm >= 0 ? entry(s.y_lm) : 0.0;
    const float inv_t = static_cast<float>(inv_t_d);
    // g_j = (1/T) q_j (c_single ((ys_j - yt_j) - k) - c_long + c_lm),  k = KL + lse_s - lse_t;  q_j = 0 -> exactly 0.
    const b it(inv_t), ls(static_cast<float>(s.lse_s)), zero(0.0f);
    const b kb(static_cast<float>(s.kl + s.lse_s - s.lse_t)), csb(static_cast<float>(s.c_single * inv_t_d));
    const b c0(static_cast<float>((s.c_lm - s.c_long) * inv_t_d));
    alignas(64) float bs[simd::chunk], bt[simd::chunk], bg[simd::chunk];
    for (std::int64_t j0 = 0; j0 < n; j0 += simd::chunk) {
      const std::int64_t len = n - j0 < simd::chunk ? n - j0 : simd::chunk;
      const float* cs = simd::load_chunk<A>(zs + j0, len, bs);
      float* cg;
      if constexpr (std::is_same_v<G, float>) cg = g + j0;
      else cg = bg;
      if (single) {
        const float* ct = simd::load_chunk<A>(zt + j0, len, bt);
        std::int64_t j = 0;
        // q_j = 0 -> exactly 0, also in rows without -inf: a finite student logit can underflow q to 0 while the
        // log-ratio term overflows float32 (logits near -FLT_MAX), and 0 * inf would be NaN (found by fuzzing).
        for (; j + simd::width<A> <= len; j += simd::width<A>) {
          const b xs = b::load_unaligned(cs + j), xt = b::load_unaligned(ct + j);
          const b q = simd::exp<A>(xsimd::fms(xs, it, ls));
          xsimd::select(q == zero, zero, q * xsimd::fma(csb, xsimd::fms(xs - xt, it, kb), c0)).store_unaligned(cg + j);
        }
        if (j < len) {
          const b xs = simd::load_padded<A>(cs, j, len, ninf), xt = simd::load_padded<A>(ct, j, len, 0.0f);
          const b q = simd::exp<A>(xsimd::fms(xs, it, ls));
          simd::store_partial<A>(cg, j, len,
                                 xsimd::select(q == zero, zero, q * xsimd::fma(csb, xsimd::fms(xs - xt, it, kb), c0)));
        }
      } else {
        std::int64_t j = 0;
        for (; j + simd::width<A> <= len; j += simd::width<A>)
          (c0 * simd::exp<A>(xsimd::fms(b::load_unaligned(cs + j), it, ls))).store_unaligned(cg + j);
        if (j < len)
          simd::store_partial<A>(cg, j, len, c0 * simd::exp<A>(xsimd::fms(simd::load_padded<A>(cs, j, len, ninf), it, ls)));
      }
      if constexpr (!std::is_same_v<G, float>) {
        for (std::int64_t j = 0; j < len; ++j) g[j0 + j] = from_float<G>(cg[j]);
      }
    }
    if (s.y >= 0) g[s.y] = from_double<G>(gy);
    if (s.y_lm >= 0) g[s.y_lm] = from_double<G>(glm);
  }
};

template <class B>
struct simd_traits : std::false_type {};
template <class Arch, class Executor>
struct simd_traits<simd_backend<Arch, Executor>> : std::true_type {
  using arch = Arch;
};

// The row kernels of a backend: fast_rows<Arch> for kd::simd_backend<Arch, ...>, ref_rows for kd::reference_backend.
template <class Backend, class S, class P, bool = simd_traits<Backend>::value>
struct rows_for_impl {
  using type = ref_rows<S, P>;
};
template <class Backend, class S, class P>
struct rows_for_impl<Backend, S, P, true> {
  using type = fast_rows<typename simd_traits<Backend>::arch, S, P>;
};
template <class Backend, class S, class P>
using rows_for = typename rows_for_impl<Backend, S, P>::type;

// ---------------------------------------------------------------------------------------------------------------------------
// Driver.

// Runs f(begin, end) over [0, n) rows: on the calling thread for the reference backend and for small problems (threads cost
// tens of microseconds), else on the SIMD backend's executor. Each row is computed by one thread only and every reduction
// runs afterwards in row order, so results are bitwise identical for any thread count.
template <class Backend, class F>
void for_rows(const Backend& be, std::int64_t n, std::int64_t work, F f) {
  if constexpr (simd_traits<Backend>::value) {
    if (n >= 2 && work >= (std::int64_t{1} << 18)) {
      be.executor.parallel_for(n, f);
      return;
    }
  }
  (void)be;
  (void)work;
  if (n > 0) f(std::int64_t{0}, n);
}

template <class Backend, class S, class P, class G>
status run(const student_input<S>& student, const teacher_input<P>& teacher, const pg_sequences& seq, const pg_options& o,
           const pg_outputs<G>& out, pg_diagnostics& diag, const Backend& be) {
  const auto& zs = student.x;
  const auto& zt = teacher.x;
  const std::int64_t R = seq.batch * seq.time, n = zs.cols;
  const double inv_t = 1.0 / o.temperature;
  std::vector<row_state> st(static_cast<std::size_t>(R));
  std::vector<signed char> err(static_cast<std::size_t>(R), 0);
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
  const auto pass1 = [&](auto& rk, std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r)
      if (st[r].active()) err[r] = static_cast<signed char>(rk.pass1(zs.row(r), zt.row(r), n, inv_t, st[r]));
  };
  for_rows(be, R, R * n, [&](std::int64_t r0, std::int64_t r1) {
    rows_for<Backend, S, P> rk(n);  // per thread: O(V) scratch for the reference rows, none for the fast rows
    pass1(rk, r0, r1);
  });
  for (std::int64_t r = 0; r < R; ++r) {  // row order: the smallest offending row is reported
    const row_state& s = st[r];
    if (!s.active()) continue;
    if (err[r] == 1)
      return make_error(errc::non_finite_input, "student",
                        "a valid row holds NaN or +inf, or is fully masked (all -inf)", s.lse_s, r);
    if (err[r] == 2)
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
    const auto pass2 = [&](auto& rk, std::int64_t r0, std::int64_t r1) {
      for (std::int64_t r = r0; r < r1; ++r) {
        G* g = out.grad_student.row(r);
        const row_state& s = st[r];
        if (!s.active() || (s.c_single == 0.0 && s.c_long == 0.0 && s.c_lm == 0.0)) {
          std::fill(g, g + n, from_double<G>(0.0));
          continue;
        }
        rk.pass2(zs.row(r), zt.row(r), n, inv_t, s, g);
      }
    };
    for_rows(be, R, R * n, [&](std::int64_t r0, std::int64_t r1) {
      rows_for<Backend, S, P> rk(n);
      pass2(rk, r0, r1);
    });
  }
  return ok_status();
}

}  // namespace detail::pg
KD_END_NAMESPACE
