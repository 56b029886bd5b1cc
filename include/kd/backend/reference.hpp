// kd::reference_backend: the scalar, double-precision oracle backend. Single-threaded, plain loops, O(V) scratch per call.
// Deterministic. Use it to check other backends and in gradient-checking tools; it is not meant to be fast.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../detail/reference_math.hpp"
#include "../detail/row_plan.hpp"
#include "../divergence_spec.hpp"
#include "../options.hpp"
#include "../status.hpp"

KD_BEGIN_NAMESPACE

struct reference_backend {
  static constexpr const char* name() noexcept { return "reference"; }

  // Precondition: arguments validated (kd::divergence_loss does it).
  template <class S, class P, class G>
  status run_divergence(const divergence& d, const student_input<S>& student, const teacher_input<P>& teacher,
                        const distill_options& opt, loss_result& result, const distill_outputs<G>& out) const;
};

namespace detail::ref {

// Row r of x / T as double log-probabilities into lp; returns the log-sum-exp of x / T (the normalizer).
template <class T>
inline double load_log_probs(const T* x, std::int64_t n, double inv_t, double* lp) noexcept {
  for (std::int64_t j = 0; j < n; ++j) lp[j] = to_double(x[j]) * inv_t;
  const double lse = log_sum_exp(lp, n);
  if (std::isfinite(lse)) normalize_log(lp, n);
  return lse;
}

// Divergence d between student log-probs lq and teacher log-probs lp (both / T); gradients w.r.t. logits times T.
inline double divergence_row(const divergence& d, const double* lq, const double* lp, std::int64_t n, double* gq,
                             double* gp) noexcept {
  switch (d.kind) {
    case divergence_kind::forward_kl: return kl(lp, lq, n, gp, gq);
    case divergence_kind::reverse_kl: return kl(lq, lp, n, gq, gp);
    case divergence_kind::jsd:
      if (d.param == 0.0) return kl(lp, lq, n, gp, gq);  // beta = 0 is forward KL by definition
      if (d.param == 1.0) return kl(lq, lp, n, gq, gp);  // beta = 1 is reverse KL by definition
      return jsd(d.param, lp, lq, n, gp, gq);
    case divergence_kind::skew_kl:
      if (d.param == 0.0) return kl(lp, lq, n, gp, gq);
      return skew(d.param, lp, lq, n, gp, gq);
    case divergence_kind::skew_reverse_kl:
      if (d.param == 0.0) return kl(lq, lp, n, gq, gp);
      return skew(d.param, lq, lp, n, gq, gp);
    case divergence_kind::tvd: return tvd(lp, lq, n, gp, gq);
  }
  return std::numeric_limits<double>::quiet_NaN();
}

template <class G>
inline void fill_row(G* g, std::int64_t n, double v) noexcept {
  for (std::int64_t j = 0; j < n; ++j) g[j] = from_double<G>(v);
}

}  // namespace detail::ref

template <class S, class P, class G>
status reference_backend::run_divergence(const divergence& d, const student_input<S>& student,
                                         const teacher_input<P>& teacher, const distill_options& opt,
                                         loss_result& result, const distill_outputs<G>& out) const {
  using namespace detail;
  const auto& s = student.x;
  const auto& t = teacher.x;
  const std::int64_t n = s.cols;
  const row_plan plan = make_row_plan(opt, s, t);
  const double inv_t = 1.0 / opt.temperature;
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  const bool want_gq = out.grad_student.data != nullptr, want_gp = out.grad_teacher.data != nullptr;

  std::vector<double> lq(n), lp(n), gq(want_gq ? n : 0), gp(want_gp ? n : 0);
  status first;
  double total = 0.0;

  for (std::int64_t r = 0; r < s.rows; ++r) {
    const double w = effective_row_weight(opt, s, t, r);
    double row_loss = 0.0;
    bool bad = false;
    if (w > 0.0) {
      const double lse_q = ref::load_log_probs(s.row(r), n, inv_t, lq.data());
      const double lse_p = ref::load_log_probs(t.row(r), n, inv_t, lp.data());
      status e;
      if (!std::isfinite(lse_q))
        e = make_error(errc::non_finite_input, "student", "contains NaN or +inf", lse_q, r);
      else if (!std::isfinite(lse_p))
        e = make_error(errc::non_finite_input, "teacher", "contains NaN or +inf", lse_p, r);
      else if (student.kind == input_kind::log_probs && opt.temperature == 1.0 && std::abs(lse_q) > 0.05)
        e = make_error(errc::not_normalized, "student", "declared log_probs but logsumexp(row) != 0", lse_q, r);
      else if (teacher.kind == input_kind::log_probs && opt.temperature == 1.0 && std::abs(lse_p) > 0.05)
        e = make_error(errc::not_normalized, "teacher", "declared log_probs but logsumexp(row) != 0", lse_p, r);
      if (!e.ok()) {
        row_loss = nan;
      } else {
        row_loss = ref::divergence_row(d, lq.data(), lp.data(), n, want_gq ? gq.data() : nullptr,
                                       want_gp ? gp.data() : nullptr);
        if (!std::isfinite(row_loss))
          e = make_error(errc::support_mismatch, "teacher",
                         "the divergence is +inf: one side has probability 0 (a -inf logit) where the other has mass",
                         row_loss, r);
      }
      if (!e.ok()) {
        keep_first_error(first, e);
        bad = true;
      }
      row_loss *= w * plan.loss_scale;
    }
    total += row_loss;
    if (out.per_row) out.per_row[r] = static_cast<float>(row_loss);

    // Gradient rows: scaled and written; zero for rows that do not count; NaN for rows with a value error.
    const double c = w * plan.scale * inv_t;
    if (want_gq) {
      G* g = out.grad_student.row(r);
      if (bad) ref::fill_row(g, n, nan);
      else if (w == 0.0 || plan.empty_mean) ref::fill_row(g, n, 0.0);
      else for (std::int64_t j = 0; j < n; ++j) g[j] = from_double<G>(c * gq[j]);
    }
    if (want_gp) {
      G* g = out.grad_teacher.row(r);
      if (bad) ref::fill_row(g, n, nan);
      else if (w == 0.0 || plan.empty_mean) ref::fill_row(g, n, 0.0);
      else for (std::int64_t j = 0; j < n; ++j) g[j] = from_double<G>(c * gp[j]);
    }
  }

  result.valid_rows = plan.valid_rows;
  result.denominator = plan.denominator;
  result.loss = plan.empty_mean && first.ok() ? 0.0 : total / plan.denominator;
  return first;
}

KD_END_NAMESPACE
