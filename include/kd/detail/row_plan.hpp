// Which rows count and what each row's gradient is scaled by; shared by every backend so they agree exactly.
//
// Before the main pass, a cheap pre-pass decides every row's weight and the reduction's denominator, so gradients can be
// written scaled in the same pass that computes them (no second pass over N x V). Detecting a fully masked row (all -inf)
// stops at the first element that is not -inf, so for ordinary rows the pre-pass reads one element per row.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "../options.hpp"
#include "../status.hpp"

KD_BEGIN_NAMESPACE
namespace detail {

template <class T>
inline bool fully_masked(const T* x, std::int64_t cols) noexcept {
  // Compared in double: a finite double logit below -FLT_MAX is not a mask (converting it to float gave -inf; fuzzing).
  constexpr double ninf = -std::numeric_limits<double>::infinity();
  for (std::int64_t j = 0; j < cols; ++j)
    if (!(to_double(x[j]) == ninf)) return false;  // NaN counts as "not masked": the main pass reports it
  return true;
}

struct row_plan {
  double scale = 1.0;        // T^2 (if t2_scale) / denominator: gradient of row r = weight(r) * scale * dl_r/dz
  double loss_scale = 1.0;   // T^2 (if t2_scale): per_row value = weight(r) * loss_scale * l_r
  double denominator = 1.0;
  std::int64_t valid_rows = 0;
  bool empty_mean = false;   // reduction::mean over zero valid rows: loss 0, gradient 0
};

// Weight of row r before masking: 0 when ignored by labels or weights.
inline double row_weight(const distill_options& o, std::int64_t r) noexcept {
  if (!o.labels.empty() && o.labels[r] == o.ignore_index) return 0.0;
  return o.row_weights ? static_cast<double>(o.row_weights[r]) : 1.0;
}

// Weight of row r including masking: 0 when ignored or when either side is fully masked.
template <class S, class P>
inline double effective_row_weight(const distill_options& o, const const_rows<S>& s, const const_rows<P>& t,
                                   std::int64_t r) noexcept {
  double w = row_weight(o, r);
  if (w == 0.0) return 0.0;
  if (fully_masked(s.row(r), s.cols) || fully_masked(t.row(r), t.cols)) return 0.0;
  return w;
}

template <class S, class P>
inline row_plan make_row_plan(const distill_options& o, const const_rows<S>& s, const const_rows<P>& t) noexcept {
  row_plan plan;
  double wsum = 0.0;
  for (std::int64_t r = 0; r < s.rows; ++r) {
    double w = effective_row_weight(o, s, t, r);
    if (w > 0.0) {
      ++plan.valid_rows;
      wsum += w;
    }
  }
  const double t2 = o.t2_scale ? o.temperature * o.temperature : 1.0;
  plan.loss_scale = t2;
  switch (o.reduction) {
    case reduction::none:
    case reduction::sum: plan.denominator = 1.0; break;
    case reduction::mean:
      plan.denominator = wsum;
      plan.empty_mean = !(wsum > 0.0);
      break;
    case reduction::normalizer: plan.denominator = o.normalizer; break;
  }
  plan.scale = plan.empty_mean ? 0.0 : t2 / plan.denominator;
  return plan;
}


}  // namespace detail
KD_END_NAMESPACE
