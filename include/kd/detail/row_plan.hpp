// Which rows count and what each row's gradient is scaled by; shared by every backend so they agree exactly.
//
// The plan is made from the rows' weights alone (labels == ignore_index and row weights; no pass over the logits), so
// gradients can be written scaled in the same pass that computes them. A row with a fully masked side (every entry
// -inf) is found by the row kernels in pass 1 (its log-sum-exp is -inf) and then gets weight 0: the driver makes the
// plan again, and where that changes the denominator (reduction::mean) it recomputes the gradient rows (see
// backend/cpu_driver.hpp).
#pragma once

#include <cstdint>

#include "../options.hpp"

KD_BEGIN_NAMESPACE
namespace detail {

struct row_plan {
  double scale = 1.0;        // T^2 (if t2_scale) / denominator: gradient of row r = weight(r) * scale * dl_r/dz
  double loss_scale = 1.0;   // T^2 (if t2_scale): per_row value = weight(r) * loss_scale * l_r
  double denominator = 1.0;
  std::int64_t valid_rows = 0;
  bool empty_mean = false;   // reduction::mean over zero valid rows: loss 0, gradient 0
};

// Weight of row r from the options alone: 0 when ignored by its label or its weight.
inline double row_weight(const distill_options& o, std::int64_t r) noexcept {
  if (!o.labels.empty() && o.labels[r] == o.ignore_index) return 0.0;
  return o.row_weights ? static_cast<double>(o.row_weights[r]) : 1.0;
}

// The plan for rows with weights w[0..rows) (0: the row does not count).
inline row_plan make_row_plan(const distill_options& o, const double* w, std::int64_t rows) noexcept {
  row_plan plan;
  double wsum = 0.0;
  for (std::int64_t r = 0; r < rows; ++r) {
    if (w[r] > 0.0) {
      ++plan.valid_rows;
      wsum += w[r];
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
