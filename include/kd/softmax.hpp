// Softmax, log-softmax and log-sum-exp over rows, with temperature, forward and backward. Each takes a backend as its last
// argument (backend/protocol.hpp; default kd::default_backend); every kd backend computes these with the double-precision
// reference kernels (detail/reference_softmax.hpp).
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

#include <cstdint>

#include "backend.hpp"
#include "backend/protocol.hpp"
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

template <class T, class G, class Backend>
status softmax_call(const const_rows<T>& x, const mut_rows<G>& y, double temperature, softmax_form form,
                    const Backend& backend) {
  if (status s = validate_rows(x, "logits"); !s) return s;
  if (status s = validate_temperature(temperature); !s) return s;
  if (status s = check_same_shape(y, x, form == softmax_form::probs ? "probs" : "log_probs"); !s) return s;
  if constexpr (has_run_softmax<Backend, const_rows<T>, mut_rows<G>, double, softmax_form>)
    return backend.run_softmax(x, y, temperature, form);
  else
    return {};
}

template <class T, class G, class Backend>
status softmax_backward_call(const const_rows<T>& y, const const_rows<T>& dy, const mut_rows<G>& dx, double temperature,
                             softmax_form form, const Backend& backend) {
  const bool p = form == softmax_form::probs;
  if (status s = validate_rows(y, p ? "probs" : "log_probs"); !s) return s;
  if (status s = validate_rows(dy, p ? "grad_probs" : "grad_log_probs"); !s) return s;
  if (dy.rows != y.rows || dy.cols != y.cols)
    return make_error(errc::invalid_argument, p ? "grad_probs" : "grad_log_probs",
                      p ? "shape must equal probs' [rows, cols]" : "shape must equal log_probs' [rows, cols]");
  if (status s = validate_temperature(temperature); !s) return s;
  if (status s = check_same_shape(dx, dy, "grad_logits"); !s) return s;
  if constexpr (has_run_softmax_backward<Backend, const_rows<T>, const_rows<T>, mut_rows<G>, double, softmax_form>)
    return backend.run_softmax_backward(y, dy, dx, temperature, form);
  else
    return {};
}

}  // namespace detail

template <class T, class Backend = default_backend>
status log_sum_exp(const const_rows<T>& x, double temperature, float* out, const Backend& backend = {}) {
  KD_REQUIRE_BACKEND_OPERATION(log_sum_exp, log_sum_exp, Backend, const_rows<T>, double, float*);
  if (status s = detail::validate_rows(x, "logits"); !s) return s;
  if (status s = detail::validate_temperature(temperature); !s) return s;
  if (x.rows > 0 && out == nullptr) return make_error(errc::invalid_argument, "out", "is null");
  if constexpr (detail::has_run_log_sum_exp<Backend, const_rows<T>, double, float*>)
    return backend.run_log_sum_exp(x, temperature, out);
  else
    return {};
}

template <class T, class G, class Backend = default_backend>
status softmax(const const_rows<T>& logits, const mut_rows<G>& probs, double temperature = 1.0,
               const Backend& backend = {}) {
  KD_REQUIRE_BACKEND_OPERATION(softmax, softmax, Backend, const_rows<T>, mut_rows<G>, double, softmax_form);
  return detail::softmax_call(logits, probs, temperature, softmax_form::probs, backend);
}

template <class T, class G, class Backend = default_backend>
status log_softmax(const const_rows<T>& logits, const mut_rows<G>& log_probs, double temperature = 1.0,
                   const Backend& backend = {}) {
  KD_REQUIRE_BACKEND_OPERATION(log_softmax, softmax, Backend, const_rows<T>, mut_rows<G>, double, softmax_form);
  return detail::softmax_call(logits, log_probs, temperature, softmax_form::log_probs, backend);
}

// dx = (1/T) y (dy - sum_j y_j dy_j). y: softmax output [rows, V]; dy: dL/dy; dx: dL/dlogits (may alias dy).
template <class T, class G, class Backend = default_backend>
status softmax_backward(const const_rows<T>& probs, const const_rows<T>& grad_probs, const mut_rows<G>& grad_logits,
                        double temperature = 1.0, const Backend& backend = {}) {
  KD_REQUIRE_BACKEND_OPERATION(softmax_backward, softmax_backward, Backend, const_rows<T>, const_rows<T>, mut_rows<G>,
                               double, softmax_form);
  return detail::softmax_backward_call(probs, grad_probs, grad_logits, temperature, softmax_form::probs, backend);
}

// dx = (1/T) (dy - exp(ly) sum_j dy_j). ly: log_softmax output [rows, V]; dy: dL/dly; dx: dL/dlogits (may alias dy).
// Entries with ly = -inf (masked) get exactly 0, and their dy is not counted.
template <class T, class G, class Backend = default_backend>
status log_softmax_backward(const const_rows<T>& log_probs, const const_rows<T>& grad_log_probs,
                            const mut_rows<G>& grad_logits, double temperature = 1.0, const Backend& backend = {}) {
  KD_REQUIRE_BACKEND_OPERATION(log_softmax_backward, softmax_backward, Backend, const_rows<T>, const_rows<T>,
                               mut_rows<G>, double, softmax_form);
  return detail::softmax_backward_call(log_probs, grad_log_probs, grad_logits, temperature, softmax_form::log_probs,
                                       backend);
}

KD_END_NAMESPACE
