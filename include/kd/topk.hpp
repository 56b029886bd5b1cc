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
// Scratch: O(V) per call. Each function takes a backend as its last argument (backend/protocol.hpp; default
// kd::default_backend); every kd backend runs the double-precision reference kernels (detail/reference_topk.hpp).
#pragma once

#include <cstdint>
#include <vector>

#include "backend.hpp"
#include "backend/protocol.hpp"
#include "detail/validate.hpp"
#include "status.hpp"
#include "tensor.hpp"

KD_BEGIN_NAMESPACE
namespace detail {

inline status validate_indices(const const_rows<std::int64_t>& idx, std::int64_t rows, std::int64_t vocab) {
  if (status s = validate_rows(idx, "indices"); !s) return s;
  if (idx.rows != rows) return make_error(errc::invalid_argument, "indices", "must have one row per logits row");
  if (idx.cols > vocab) return make_error(errc::invalid_argument, "indices", "k must be <= the vocabulary size");
  std::vector<unsigned char> seen(static_cast<std::size_t>(vocab), 0);
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

template <class T, class O, class Backend = default_backend>
status topk_with_tail_from_log_probs(const const_rows<T>& topk_log_probs, const mut_rows<O>& out,
                                     const Backend& backend = {}) {
  KD_REQUIRE_BACKEND_OPERATION(topk_with_tail_from_log_probs, topk_with_tail_from_log_probs, Backend, const_rows<T>,
                               mut_rows<O>);
  if (status s = detail::validate_rows(topk_log_probs, "topk_log_probs"); !s) return s;
  if (status s = detail::validate_rows(const_rows<O>(out.data, out.rows, out.cols, out.row_stride), "out"); !s) return s;
  if (out.rows != topk_log_probs.rows || out.cols != topk_log_probs.cols + 1)
    return make_error(errc::invalid_argument, "out", "shape must be [rows, k + 1]");
  if constexpr (detail::has_run_topk_with_tail_from_log_probs<Backend, const_rows<T>, mut_rows<O>>)
    return backend.run_topk_with_tail_from_log_probs(topk_log_probs, out);
  else
    return {};
}

template <class S, class O, class Backend = default_backend>
status topk_with_tail(const const_rows<S>& logits, const const_rows<std::int64_t>& indices, double temperature,
                      const mut_rows<O>& out, const Backend& backend = {}) {
  KD_REQUIRE_BACKEND_OPERATION(topk_with_tail, topk_with_tail, Backend, const_rows<S>, const_rows<std::int64_t>, double,
                               mut_rows<O>);
  if (status s = detail::validate_rows(logits, "logits"); !s) return s;
  if (status s = detail::validate_temperature(temperature); !s) return s;
  if (status s = detail::validate_indices(indices, logits.rows, logits.cols); !s) return s;
  if (status s = detail::validate_rows(const_rows<O>(out.data, out.rows, out.cols, out.row_stride), "out"); !s) return s;
  if (out.rows != logits.rows || out.cols != indices.cols + 1)
    return make_error(errc::invalid_argument, "out", "shape must be [rows, k + 1]");
  if constexpr (detail::has_run_topk_with_tail<Backend, const_rows<S>, const_rows<std::int64_t>, double, mut_rows<O>>)
    return backend.run_topk_with_tail(logits, indices, temperature, out);
  else
    return {};
}

template <class S, class G, class O, class Backend = default_backend>
status topk_with_tail_backward(const const_rows<S>& student_logits, const const_rows<std::int64_t>& indices,
                               double temperature, const const_rows<G>& grad_compressed, const mut_rows<O>& grad_logits,
                               const Backend& backend = {}) {
  KD_REQUIRE_BACKEND_OPERATION(topk_with_tail_backward, topk_with_tail_backward, Backend, const_rows<S>,
                               const_rows<std::int64_t>, double, const_rows<G>, mut_rows<O>);
  if (status s = detail::validate_rows(student_logits, "student_logits"); !s) return s;
  if (status s = detail::validate_temperature(temperature); !s) return s;
  if (status s = detail::validate_indices(indices, student_logits.rows, student_logits.cols); !s) return s;
  if (status s = detail::validate_rows(grad_compressed, "grad_compressed"); !s) return s;
  if (grad_compressed.rows != student_logits.rows || grad_compressed.cols != indices.cols + 1)
    return make_error(errc::invalid_argument, "grad_compressed", "shape must be [rows, k + 1]");
  if (grad_logits.rows != student_logits.rows || grad_logits.cols != student_logits.cols ||
      grad_logits.row_stride < grad_logits.cols || (grad_logits.rows > 0 && grad_logits.data == nullptr))
    return make_error(errc::invalid_argument, "grad_logits", "shape must equal student_logits' [rows, V]");
  if constexpr (detail::has_run_topk_with_tail_backward<Backend, const_rows<S>, const_rows<std::int64_t>, double,
                                                        const_rows<G>, mut_rows<O>>)
    return backend.run_topk_with_tail_backward(student_logits, indices, temperature, grad_compressed, grad_logits);
  else
    return {};
}

KD_END_NAMESPACE
