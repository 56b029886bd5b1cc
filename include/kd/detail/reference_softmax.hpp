// The reference (double) kernels of the softmax family: log-sum-exp, softmax / log-softmax and their backward passes
// over rows with temperature. Arguments are validated by the API (kd/softmax.hpp) before these run; value errors (NaN /
// +inf rows) are returned with the first offending row, whose outputs are NaN. Formulas: kd/softmax.hpp.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../status.hpp"
#include "../tensor.hpp"
#include "reference_math.hpp"

KD_BEGIN_NAMESPACE

// Which output of the softmax family: probabilities or log-probabilities.
enum class softmax_form { probs, log_probs };

namespace detail::ref {

template <class T>
status log_sum_exp_rows(const const_rows<T>& x, double temperature, float* out) {
  std::vector<double> v(static_cast<std::size_t>(x.cols));
  status first;
  for (std::int64_t r = 0; r < x.rows; ++r) {
    for (std::int64_t j = 0; j < x.cols; ++j) v[j] = to_double(x.row(r)[j]) / temperature;
    const double lse = log_sum_exp(v.data(), x.cols);
    if (std::isnan(lse) || lse == pinf)
      keep_first_error(first, make_error(errc::non_finite_input, "logits", "contains NaN or +inf", lse, r));
    out[r] = static_cast<float>(lse);
  }
  return first;
}

template <class T, class G>
status softmax_rows(const const_rows<T>& x, const mut_rows<G>& y, double temperature, softmax_form form) {
  std::vector<double> v(static_cast<std::size_t>(x.cols));
  status first;
  const double inv_t = 1.0 / temperature;
  for (std::int64_t r = 0; r < x.rows; ++r) {
    const T* xr = x.row(r);
    for (std::int64_t j = 0; j < x.cols; ++j) v[j] = to_double(xr[j]) * inv_t;
    const double lse = log_sum_exp(v.data(), x.cols);
    G* yr = y.row(r);
    if (std::isnan(lse) || lse == pinf) {
      keep_first_error(first, make_error(errc::non_finite_input, "logits", "contains NaN or +inf", lse, r));
      for (std::int64_t j = 0; j < x.cols; ++j) yr[j] = from_double<G>(std::numeric_limits<double>::quiet_NaN());
      continue;
    }
    if (lse != ninf) normalize_log(v.data(), x.cols);
    for (std::int64_t j = 0; j < x.cols; ++j) {
      const double l = lse == ninf ? ninf : v[j];
      yr[j] = from_double<G>(form == softmax_form::probs ? std::exp(l) : l);
    }
  }
  return first;
}

// probs: dx = (1/T) y (dy - sum_j y_j dy_j); log_probs: dx = (1/T) (dy - exp(ly) sum_j dy_j). Masked entries (y = 0,
// ly = -inf) get exactly 0 and their dy is not counted.
template <class T, class G>
status softmax_backward_rows(const const_rows<T>& y, const const_rows<T>& dy, const mut_rows<G>& dx, double temperature,
                             softmax_form form) {
  for (std::int64_t r = 0; r < y.rows; ++r) {
    const T *yr = y.row(r), *dyr = dy.row(r);
    G* dxr = dx.row(r);
    double acc = 0.0;
    if (form == softmax_form::probs) {
      for (std::int64_t j = 0; j < y.cols; ++j)
        if (to_double(yr[j]) != 0.0) acc += to_double(yr[j]) * to_double(dyr[j]);
      for (std::int64_t j = 0; j < y.cols; ++j) {
        const double yj = to_double(yr[j]);
        dxr[j] = from_double<G>(yj == 0.0 ? 0.0 : yj * (to_double(dyr[j]) - acc) / temperature);
      }
    } else {
      for (std::int64_t j = 0; j < y.cols; ++j)
        if (to_double(yr[j]) != ninf) acc += to_double(dyr[j]);
      for (std::int64_t j = 0; j < y.cols; ++j) {
        const double l = to_double(yr[j]);
        dxr[j] = from_double<G>(l == ninf ? 0.0 : (to_double(dyr[j]) - std::exp(l) * acc) / temperature);
      }
    }
  }
  return ok_status();
}

}  // namespace detail::ref
KD_END_NAMESPACE
