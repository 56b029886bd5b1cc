// The reference (double) kernels of the top-k-with-tail compression (kd/topk.hpp has the contract and formulas).
// Arguments (shapes, indices in range and distinct) are validated by the API before these run; value errors are
// returned with the first offending row. Scratch: O(V) per call.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../status.hpp"
#include "../tensor.hpp"
#include "reference_math.hpp"

KD_BEGIN_NAMESPACE
namespace detail::ref {

// log(1 - exp(x)) for x <= 0, accurate on both ends (Maechler 2012); -inf for x >= 0.
inline double log1mexp(double x) noexcept {
  if (!(x < 0.0)) return -std::numeric_limits<double>::infinity();
  return x > -0.6931471805599453 ? std::log(-std::expm1(x)) : std::log1p(-std::exp(x));
}

template <class T, class O>
status topk_tail_from_log_probs_rows(const const_rows<T>& topk_log_probs, const mut_rows<O>& out) {
  status first;
  std::vector<double> v(static_cast<std::size_t>(topk_log_probs.cols));
  for (std::int64_t r = 0; r < topk_log_probs.rows; ++r) {
    for (std::int64_t i = 0; i < topk_log_probs.cols; ++i) v[i] = to_double(topk_log_probs.row(r)[i]);
    const double s = log_sum_exp(v.data(), topk_log_probs.cols);
    if (std::isnan(s) || s > 1e-3)
      keep_first_error(first, make_error(errc::not_normalized, "topk_log_probs",
                                         "top-k probabilities sum to more than 1 (or contain NaN)", s, r));
    for (std::int64_t i = 0; i < topk_log_probs.cols; ++i) out.row(r)[i] = from_double<O>(v[i]);
    out.row(r)[topk_log_probs.cols] = from_double<O>(log1mexp(s));
  }
  return first;
}

template <class S, class O>
status topk_tail_rows(const const_rows<S>& logits, const const_rows<std::int64_t>& indices, double temperature,
                      const mut_rows<O>& out) {
  const std::int64_t v = logits.cols, k = indices.cols;
  std::vector<unsigned char> in_k(static_cast<std::size_t>(v), 0);
  std::vector<double> all(static_cast<std::size_t>(v)), rest;
  status first;
  for (std::int64_t r = 0; r < logits.rows; ++r) {
    const S* z = logits.row(r);
    const std::int64_t* ir = indices.row(r);
    for (std::int64_t j = 0; j < v; ++j) all[j] = to_double(z[j]) / temperature;
    const double lse = log_sum_exp(all.data(), v);
    if (!std::isfinite(lse)) {
      keep_first_error(first, make_error(errc::non_finite_input, "logits", "row is NaN, +inf or fully masked", lse, r));
      for (std::int64_t i = 0; i <= k; ++i) out.row(r)[i] = from_double<O>(std::numeric_limits<double>::quiet_NaN());
      continue;
    }
    for (std::int64_t i = 0; i < k; ++i) in_k[ir[i]] = 1;
    rest.clear();
    for (std::int64_t j = 0; j < v; ++j)
      if (!in_k[j]) rest.push_back(all[j]);
    for (std::int64_t i = 0; i < k; ++i) in_k[ir[i]] = 0;
    for (std::int64_t i = 0; i < k; ++i) out.row(r)[i] = from_double<O>(all[ir[i]] - lse);
    const double tail = rest.empty() ? ninf : log_sum_exp(rest.data(), static_cast<std::int64_t>(rest.size())) - lse;
    out.row(r)[k] = from_double<O>(tail);
  }
  return first;
}

template <class S, class G, class O>
status topk_tail_backward_rows(const const_rows<S>& student_logits, const const_rows<std::int64_t>& indices,
                               double temperature, const const_rows<G>& grad_compressed, const mut_rows<O>& grad_logits) {
  const std::int64_t v = student_logits.cols, k = indices.cols;
  std::vector<unsigned char> in_k(static_cast<std::size_t>(v), 0);
  std::vector<double> all(static_cast<std::size_t>(v));
  for (std::int64_t r = 0; r < student_logits.rows; ++r) {
    const S* z = student_logits.row(r);
    const std::int64_t* ir = indices.row(r);
    for (std::int64_t j = 0; j < v; ++j) all[j] = to_double(z[j]) / temperature;
    for (std::int64_t i = 0; i < k; ++i) in_k[ir[i]] = 1;
    // log q_tail up to the shared normalizer: logsumexp over the entries outside the support
    double m = ninf;
    for (std::int64_t j = 0; j < v; ++j)
      if (!in_k[j]) m = std::max(m, all[j]);
    double s = 0.0;
    if (m != ninf)
      for (std::int64_t j = 0; j < v; ++j)
        if (!in_k[j]) s += std::exp(all[j] - m);
    const double g_tail = to_double(grad_compressed.row(r)[k]);
    O* g = grad_logits.row(r);
    for (std::int64_t j = 0; j < v; ++j)
      g[j] = from_double<O>(in_k[j] || m == ninf ? 0.0 : g_tail * std::exp(all[j] - m) / s / temperature);
    for (std::int64_t i = 0; i < k; ++i) {
      g[ir[i]] = from_double<O>(to_double(grad_compressed.row(r)[i]) / temperature);
      in_k[ir[i]] = 0;
    }
  }
  return ok_status();
}

}  // namespace detail::ref
KD_END_NAMESPACE
