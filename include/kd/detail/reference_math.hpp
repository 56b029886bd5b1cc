// Double-precision log-space helpers of the reference paths (reference backend rows, softmax family, top-k, policy
// gradient oracle): logaddexp, log-sum-exp, normalisation of a row to log-probabilities. The divergences' formulas are
// not here: they live once, in kd/divergences/.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "../tensor.hpp"

KD_BEGIN_NAMESPACE
namespace detail::ref {

inline constexpr double ninf = -std::numeric_limits<double>::infinity();
inline constexpr double pinf = std::numeric_limits<double>::infinity();

// log(exp(a) + exp(b)) without overflow; -inf + -inf = -inf.
inline double logaddexp(double a, double b) noexcept {
  if (a == ninf) return b;
  if (b == ninf) return a;
  double m = std::max(a, b);
  return m + std::log1p(std::exp(-std::abs(a - b)));
}

// log sum_j exp(v_j - m) for the row maximum m (finite): the entries at m are counted apart from the tail, so the
// result keeps the tail's relative precision when one entry dominates (log(cnt) + log1p(tail / cnt); see
// detail/row_io.hpp split_sum).
inline double log_sum_exp_rel(const double* v, std::int64_t n, double m) noexcept {
  double cnt = 0.0, tail = 0.0;
  for (std::int64_t j = 0; j < n; ++j) {
    if (v[j] == m) cnt += 1.0;
    else tail += std::exp(v[j] - m);
  }
  return std::log(cnt) + std::log1p(tail / cnt);
}

// log-sum-exp of v[0..n): -inf for an all -inf row; NaN/+inf propagate (the caller reports them).
inline double log_sum_exp(const double* v, std::int64_t n) noexcept {
  double m = ninf;
  bool nan = false;
  for (std::int64_t j = 0; j < n; ++j) {
    if (std::isnan(v[j])) nan = true;
    m = std::max(m, v[j]);
  }
  if (nan) return std::numeric_limits<double>::quiet_NaN();
  if (m == ninf) return ninf;
  if (m == pinf) return pinf;
  return m + log_sum_exp_rel(v, n, m);
}

// v -= logsumexp(v) as (v - max) - log(sum exp(v - max)), for a row whose log-sum-exp is finite. Subtracting the max first
// keeps the row normalized when |v| >> 2^53 log(n): v - (max + log s) would round log s away (a double row of -1e39
// came out with sum exp = n; tests/test_bad_inputs.cpp).
// Returns the max m and log_s = log sum exp(v - m).
inline void normalize_log(double* v, std::int64_t n, double* max_out = nullptr, double* log_sum_out = nullptr) noexcept {
  double m = ninf;
  for (std::int64_t j = 0; j < n; ++j) m = std::max(m, v[j]);
  const double log_s = log_sum_exp_rel(v, n, m);
  for (std::int64_t j = 0; j < n; ++j) v[j] = (v[j] - m) - log_s;
  if (max_out) *max_out = m;
  if (log_sum_out) *log_sum_out = log_s;
}

// Row x[0..n) / T as double log-probabilities into lp; returns the log-sum-exp of x / T (the normalizer). For a finite
// one, *max_out and *log_sum_out (when given) receive its parts: lp_j = (x_j / T - max) - log_sum.
template <class T>
inline double load_log_probs(const T* x, std::int64_t n, double inv_t, double* lp, double* max_out = nullptr,
                             double* log_sum_out = nullptr) noexcept {
  for (std::int64_t j = 0; j < n; ++j) lp[j] = to_double(x[j]) * inv_t;
  const double lse = log_sum_exp(lp, n);
  if (std::isfinite(lse)) normalize_log(lp, n, max_out, log_sum_out);
  return lse;
}

}  // namespace detail::ref
KD_END_NAMESPACE
