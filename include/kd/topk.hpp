// Sparse (top-k) teacher distributions with a tail bucket (docs/pitfalls.md #11, #12).
//
// Teachers are often stored as their top-k tokens per position. Comparing such a teacher with a full-vocabulary student is
// wrong (docs/pitfalls.md #11): both sides must live on the same support. kd's policy is the tail bucket: each row becomes k + 1
// entries, the k teacher-support tokens and one bucket holding all the remaining probability mass, on BOTH sides:
//
//   topk_with_tail(logits [rows, V], indices [rows, k], T, out [rows, k+1])        (student, or a teacher whose logits exist)
//       out[:, i] = log softmax(logits / T)[indices_i], out[:, k] = log of the mass outside the support, computed as a
//       log-sum-exp over the other logits (docs/pitfalls.md #12). The most accurate tail.
//   topk_with_tail_from_log_probs(topk_log_probs [rows, k], out [rows, k+1])     (a teacher stored as top-k log-probs)
//       out[:, :k] = the stored log-probs (normalized over the full vocabulary, at the temperature they were made),
//       out[:, k]  = log(1 - sum_i exp(topk_i)) computed as log1mexp(logsumexp(topk)) (never 1 - sum, docs/pitfalls.md #12); exact to
//       the precision of the stored log-probs (a stored 0 means "no tail": -inf).
//   topk_with_tail_backward(student_logits, indices, T, grad_compressed [rows, k+1], grad_logits [rows, V])
//       maps dL/d(compressed row, treated as logits) back to dL/d(student logits): (1/T) g_i on the support, and
//       (1/T) g_tail * q_j / q_tail on every other entry j.
// Then call any divergence on the two compressed rows with input_kind::log_probs and temperature 1 (the temperature was
// applied when compressing; apply T^2 yourself if you want Hinton's scaling).
// Indices: int64, each in [0, V), distinct within a row (checked: errc::invalid_argument naming "indices", before writing).
// Scratch: O(V) per call. Reference (double) implementation.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "detail/reference_math.hpp"
#include "detail/validate.hpp"
#include "status.hpp"
#include "tensor.hpp"

KD_BEGIN_NAMESPACE
namespace detail {

// log(1 - exp(x)) for x <= 0, accurate on both ends (Maechler 2012); -inf for x >= 0.
inline double log1mexp(double x) noexcept {
  if (!(x < 0.0)) return -std::numeric_limits<double>::infinity();
  return x > -0.6931471805599453 ? std::log(-std::expm1(x)) : std::log1p(-std::exp(x));
}

inline status validate_indices(const const_rows<std::int64_t>& idx, std::int64_t rows, std::int64_t vocab,
                               std::vector<unsigned char>& seen) {
  if (status s = validate_rows(idx, "indices"); !s) return s;
  if (idx.rows != rows) return make_error(errc::invalid_argument, "indices", "must have one row per logits row");
  if (idx.cols > vocab) return make_error(errc::invalid_argument, "indices", "k must be <= the vocabulary size");
  seen.assign(static_cast<std::size_t>(vocab), 0);
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t* ir = idx.row(r);
    for (std::int64_t i = 0; i < idx.cols; ++i) {
      if (ir[i] < 0 || ir[i] >= vocab)
        return make_error(errc::invalid_argument, "indices", "entry outside [0, vocab)", double(ir[i]), r);
      if (seen[ir[i]]) return make_error(errc::invalid_argument, "indices", "duplicate index in a row", double(ir[i]), r);
      seen[ir[i]] = 1;
    }
    for (std::int64_t i = 0; i < idx.cols; ++i) seen[ir[i]] = 0;
  }
  return ok_status();
}

}  // namespace detail

template <class T, class O>
status topk_with_tail_from_log_probs(const const_rows<T>& topk_log_probs, const mut_rows<O>& out) {
  if (status s = detail::validate_rows(topk_log_probs, "topk_log_probs"); !s) return s;
  if (status s = detail::validate_rows(const_rows<O>(out.data, out.rows, out.cols, out.row_stride), "out"); !s) return s;
  if (out.rows != topk_log_probs.rows || out.cols != topk_log_probs.cols + 1)
    return make_error(errc::invalid_argument, "out", "shape must be [rows, k + 1]");
  status first;
  std::vector<double> v(topk_log_probs.cols);
  for (std::int64_t r = 0; r < topk_log_probs.rows; ++r) {
    for (std::int64_t i = 0; i < topk_log_probs.cols; ++i) v[i] = to_double(topk_log_probs.row(r)[i]);
    const double s = detail::ref::log_sum_exp(v.data(), topk_log_probs.cols);
    if (std::isnan(s) || s > 1e-3)
      detail::keep_first_error(first, make_error(errc::not_normalized, "topk_log_probs",
                                                 "top-k probabilities sum to more than 1 (or contain NaN)", s, r));
    for (std::int64_t i = 0; i < topk_log_probs.cols; ++i) out.row(r)[i] = from_double<O>(v[i]);
    out.row(r)[topk_log_probs.cols] = from_double<O>(detail::log1mexp(s));
  }
  return first;
}

template <class S, class O>
status topk_with_tail(const const_rows<S>& logits, const const_rows<std::int64_t>& indices,
                              double temperature, const mut_rows<O>& out) {
  if (status s = detail::validate_rows(logits, "logits"); !s) return s;
  if (status s = detail::validate_temperature(temperature); !s) return s;
  std::vector<unsigned char> in_k;
  if (status s = detail::validate_indices(indices, logits.rows, logits.cols, in_k); !s) return s;
  if (status s = detail::validate_rows(const_rows<O>(out.data, out.rows, out.cols, out.row_stride), "out"); !s) return s;
  if (out.rows != logits.rows || out.cols != indices.cols + 1)
    return make_error(errc::invalid_argument, "out", "shape must be [rows, k + 1]");
  const std::int64_t v = logits.cols, k = indices.cols;
  std::vector<double> all(v), rest;
  status first;
  for (std::int64_t r = 0; r < logits.rows; ++r) {
    const S* z = logits.row(r);
    const std::int64_t* ir = indices.row(r);
    for (std::int64_t j = 0; j < v; ++j) all[j] = to_double(z[j]) / temperature;
    const double lse = detail::ref::log_sum_exp(all.data(), v);
    if (!std::isfinite(lse)) {
      detail::keep_first_error(first, make_error(errc::non_finite_input, "logits",
                                                 "row is NaN, +inf or fully masked", lse, r));
      for (std::int64_t i = 0; i <= k; ++i) out.row(r)[i] = from_double<O>(std::numeric_limits<double>::quiet_NaN());
      continue;
    }
    for (std::int64_t i = 0; i < k; ++i) in_k[ir[i]] = 1;
    rest.clear();
    for (std::int64_t j = 0; j < v; ++j)
      if (!in_k[j]) rest.push_back(all[j]);
    for (std::int64_t i = 0; i < k; ++i) in_k[ir[i]] = 0;
    for (std::int64_t i = 0; i < k; ++i) out.row(r)[i] = from_double<O>(all[ir[i]] - lse);
    const double tail = rest.empty() ? detail::ref::ninf : detail::ref::log_sum_exp(rest.data(), rest.size()) - lse;
    out.row(r)[k] = from_double<O>(tail);
  }
  return first;
}

template <class S, class G, class O>
status topk_with_tail_backward(const const_rows<S>& student_logits, const const_rows<std::int64_t>& indices,
                             double temperature, const const_rows<G>& grad_compressed, const mut_rows<O>& grad_logits) {
  if (status s = detail::validate_rows(student_logits, "student_logits"); !s) return s;
  if (status s = detail::validate_temperature(temperature); !s) return s;
  std::vector<unsigned char> in_k;
  if (status s = detail::validate_indices(indices, student_logits.rows, student_logits.cols, in_k); !s) return s;
  if (status s = detail::validate_rows(grad_compressed, "grad_compressed"); !s) return s;
  if (grad_compressed.rows != student_logits.rows || grad_compressed.cols != indices.cols + 1)
    return make_error(errc::invalid_argument, "grad_compressed", "shape must be [rows, k + 1]");
  if (grad_logits.rows != student_logits.rows || grad_logits.cols != student_logits.cols ||
      grad_logits.row_stride < grad_logits.cols || (grad_logits.rows > 0 && grad_logits.data == nullptr))
    return make_error(errc::invalid_argument, "grad_logits", "shape must equal student_logits' [rows, V]");
  const std::int64_t v = student_logits.cols, k = indices.cols;
  std::vector<double> all(v);
  for (std::int64_t r = 0; r < student_logits.rows; ++r) {
    const S* z = student_logits.row(r);
    const std::int64_t* ir = indices.row(r);
    for (std::int64_t j = 0; j < v; ++j) all[j] = to_double(z[j]) / temperature;
    for (std::int64_t i = 0; i < k; ++i) in_k[ir[i]] = 1;
    // log q_tail up to the shared normalizer: logsumexp over the entries outside the support
    double m = detail::ref::ninf;
    for (std::int64_t j = 0; j < v; ++j)
      if (!in_k[j]) m = std::max(m, all[j]);
    double s = 0.0;
    if (m != detail::ref::ninf)
      for (std::int64_t j = 0; j < v; ++j)
        if (!in_k[j]) s += std::exp(all[j] - m);
    const double g_tail = to_double(grad_compressed.row(r)[k]);
    O* g = grad_logits.row(r);
    for (std::int64_t j = 0; j < v; ++j)
      g[j] = from_double<O>(in_k[j] || m == detail::ref::ninf ? 0.0 : g_tail * std::exp(all[j] - m) / s / temperature);
    for (std::int64_t i = 0; i < k; ++i) {
      g[ir[i]] = from_double<O>(to_double(grad_compressed.row(r)[i]) / temperature);
      in_k[ir[i]] = 0;
    }
  }
  return ok_status();
}

KD_END_NAMESPACE
