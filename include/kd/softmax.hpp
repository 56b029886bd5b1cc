// Softmax, log-softmax and log-sum-exp over rows, with temperature, forward and backward (scalar double reference).
//
//   log_sum_exp(x, T, out):            out[r] = log sum_j exp(x_rj / T)                         [rows] float, nats
//   softmax(x, y, T):                  y = softmax(x / T)                                          [rows, V]
//   log_softmax(x, y, T):              y = x / T - logsumexp(x / T), computed in log space (never log(softmax))
//   softmax_backward(y, dy, dx, T):    dx = (1/T) y (dy - sum_j y_j dy_j)        y = softmax output
//   log_softmax_backward(ly, dy, dx, T): dx = (1/T) (dy - exp(ly) sum_j dy_j)    ly = log_softmax output
// -inf entries are masked: probability 0, log-probability -inf, gradient exactly 0. A fully masked row (all -inf) gives
// softmax 0, log_softmax -inf, logsumexp -inf and zero gradients. NaN or +inf inputs: errc::non_finite_input with the first
// offending row; that row's outputs are NaN, other rows are written. Argument errors are reported before writing anything.
// Outputs may alias their input exactly (in place).
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

template <class Out, class In>
status check_same_shape(const mut_rows<Out>& out, const const_rows<In>& in, const char* name) {
  if (status s = validate_rows(const_rows<Out>(out.data, out.rows, out.cols, out.row_stride), name); !s) return s;
  if (out.rows != in.rows || out.cols != in.cols)
    return make_error(errc::invalid_argument, name, "shape must equal the input's [rows, cols]");
  const_rows<Out> o(out.data, out.rows, out.cols, out.row_stride);
  if (overlaps(o, in) && !same_buffer(o, in))
    return make_error(errc::invalid_argument, name, "overlaps the input without being the same buffer");
  return ok_status();
}

// mode 0: softmax, 1: log_softmax
template <class T, class G>
status softmax_impl(const const_rows<T>& x, const mut_rows<G>& y, double temperature, int mode) {
  if (status s = validate_rows(x, "logits"); !s) return s;
  if (status s = validate_temperature(temperature); !s) return s;
  if (status s = check_same_shape(y, x, mode == 0 ? "probs" : "log_probs"); !s) return s;
  std::vector<double> v(x.cols);
  status first;
  const double inv_t = 1.0 / temperature;
  for (std::int64_t r = 0; r < x.rows; ++r) {
    const T* xr = x.row(r);
    for (std::int64_t j = 0; j < x.cols; ++j) v[j] = to_double(xr[j]) * inv_t;
    const double lse = ref::log_sum_exp(v.data(), x.cols);
    G* yr = y.row(r);
    if (std::isnan(lse) || lse == ref::pinf) {
      keep_first_error(first, make_error(errc::non_finite_input, "logits", "contains NaN or +inf", lse, r));
      for (std::int64_t j = 0; j < x.cols; ++j) yr[j] = from_double<G>(std::numeric_limits<double>::quiet_NaN());
      continue;
    }
    if (lse != ref::ninf) ref::normalize_log(v.data(), x.cols);
    for (std::int64_t j = 0; j < x.cols; ++j) {
      const double l = lse == ref::ninf ? ref::ninf : v[j];
      yr[j] = from_double<G>(mode == 0 ? std::exp(l) : l);
    }
  }
  return first;
}

}  // namespace detail

template <class T>
status log_sum_exp(const const_rows<T>& x, double temperature, float* out) {
  if (status s = detail::validate_rows(x, "logits"); !s) return s;
  if (status s = detail::validate_temperature(temperature); !s) return s;
  if (x.rows > 0 && out == nullptr) return make_error(errc::invalid_argument, "out", "is null");
  std::vector<double> v(x.cols);
  status first;
  for (std::int64_t r = 0; r < x.rows; ++r) {
    for (std::int64_t j = 0; j < x.cols; ++j) v[j] = to_double(x.row(r)[j]) / temperature;
    const double lse = detail::ref::log_sum_exp(v.data(), x.cols);
    if (std::isnan(lse) || lse == detail::ref::pinf)
      detail::keep_first_error(first, make_error(errc::non_finite_input, "logits", "contains NaN or +inf", lse, r));
    out[r] = static_cast<float>(lse);
  }
  return first;
}

template <class T, class G>
status softmax(const const_rows<T>& logits, const mut_rows<G>& probs, double temperature = 1.0) {
  return detail::softmax_impl(logits, probs, temperature, 0);
}

template <class T, class G>
status log_softmax(const const_rows<T>& logits, const mut_rows<G>& log_probs, double temperature = 1.0) {
  return detail::softmax_impl(logits, log_probs, temperature, 1);
}

// dx = (1/T) y (dy - sum_j y_j dy_j). y: softmax output [rows, V]; dy: dL/dy; dx: dL/dlogits (may alias dy).
template <class T, class G>
status softmax_backward(const const_rows<T>& probs, const const_rows<T>& grad_probs, const mut_rows<G>& grad_logits,
                        double temperature = 1.0) {
  if (status s = detail::validate_rows(probs, "probs"); !s) return s;
  if (status s = detail::validate_rows(grad_probs, "grad_probs"); !s) return s;
  if (grad_probs.rows != probs.rows || grad_probs.cols != probs.cols)
    return make_error(errc::invalid_argument, "grad_probs", "shape must equal probs' [rows, cols]");
  if (status s = detail::validate_temperature(temperature); !s) return s;
  if (status s = detail::check_same_shape(grad_logits, grad_probs, "grad_logits"); !s) return s;
  for (std::int64_t r = 0; r < probs.rows; ++r) {
    const T *y = probs.row(r), *dy = grad_probs.row(r);
    double dot = 0.0;
    for (std::int64_t j = 0; j < probs.cols; ++j)
      if (to_double(y[j]) != 0.0) dot += to_double(y[j]) * to_double(dy[j]);
    G* dx = grad_logits.row(r);
    for (std::int64_t j = 0; j < probs.cols; ++j) {
      const double yj = to_double(y[j]);
      dx[j] = from_double<G>(yj == 0.0 ? 0.0 : yj * (to_double(dy[j]) - dot) / temperature);
    }
  }
  return ok_status();
}

// dx = (1/T) (dy - exp(ly) sum_j dy_j). ly: log_softmax output [rows, V]; dy: dL/dly; dx: dL/dlogits (may alias dy).
// Entries with ly = -inf (masked) get exactly 0, and their dy is not counted.
template <class T, class G>
status log_softmax_backward(const const_rows<T>& log_probs, const const_rows<T>& grad_log_probs,
                            const mut_rows<G>& grad_logits, double temperature = 1.0) {
  if (status s = detail::validate_rows(log_probs, "log_probs"); !s) return s;
  if (status s = detail::validate_rows(grad_log_probs, "grad_log_probs"); !s) return s;
  if (grad_log_probs.rows != log_probs.rows || grad_log_probs.cols != log_probs.cols)
    return make_error(errc::invalid_argument, "grad_log_probs", "shape must equal log_probs' [rows, cols]");
  if (status s = detail::validate_temperature(temperature); !s) return s;
  if (status s = detail::check_same_shape(grad_logits, grad_log_probs, "grad_logits"); !s) return s;
  for (std::int64_t r = 0; r < log_probs.rows; ++r) {
    const T *ly = log_probs.row(r), *dy = grad_log_probs.row(r);
    double sum = 0.0;
    for (std::int64_t j = 0; j < log_probs.cols; ++j)
      if (to_double(ly[j]) != detail::ref::ninf) sum += to_double(dy[j]);
    G* dx = grad_logits.row(r);
    for (std::int64_t j = 0; j < log_probs.cols; ++j) {
      const double l = to_double(ly[j]);
      dx[j] = from_double<G>(l == detail::ref::ninf ? 0.0 : (to_double(dy[j]) - std::exp(l) * sum) / temperature);
    }
  }
  return ok_status();
}

KD_END_NAMESPACE
