// Shared helpers for kd's tests: deterministic random rows and a double-precision loss evaluator for finite differences.
#pragma once

#include <kd/kd.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace kdt {

inline constexpr double ninf = -std::numeric_limits<double>::infinity();

// Random logits: normal(0, scale), with a fraction of -inf (masked) entries that never masks a whole row.
template <class T = double>
std::vector<T> random_logits(std::int64_t rows, std::int64_t cols, std::uint32_t seed, double scale = 2.0,
                             double masked_fraction = 0.0) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> nd(0.0, scale);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<T> v(static_cast<std::size_t>(rows * cols));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t j = 0; j < cols; ++j) {
      double x = nd(gen);
      if (j > 0 && u(gen) < masked_fraction) x = ninf;
      v[r * cols + j] = static_cast<T>(x);
    }
  return v;
}

// Loss of divergence d (sum reduction, no masks) at temperature t, in double, via the reference backend.
inline double ref_loss(const kd::divergence& d, const std::vector<double>& zs, const std::vector<double>& zt,
                       std::int64_t rows, std::int64_t cols, double t = 1.0, bool t2 = false) {
  kd::distill_options o;
  o.temperature = t;
  o.t2_scale = t2;
  o.reduction = kd::reduction::sum;
  kd::loss_result r;
  auto st = kd::divergence_loss(d, kd::student_logits(zs.data(), rows, cols), kd::teacher_logits(zt.data(), rows, cols), o,
                                r, kd::distill_outputs<double>{}, kd::reference_backend{});
  if (!st) return std::numeric_limits<double>::quiet_NaN();
  return r.loss;
}

// Worst |a - b| / (atol + |b|) over two vectors.
inline double worst_rel(const std::vector<double>& a, const std::vector<double>& b, double atol) {
  double w = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) != std::isnan(b[i])) return INFINITY;
    if (std::isnan(a[i])) continue;
    w = std::max(w, std::abs(a[i] - b[i]) / (atol + std::abs(b[i])));
  }
  return w;
}

}  // namespace kdt
