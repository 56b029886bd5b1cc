// The scalar double-precision oracle: per-row divergences and their exact gradients, written for clarity, not speed.
// Every other backend is tested against these functions.
//
// Notation: lx, ly are log-probabilities (already normalized, already divided by T) of two distributions x, y over n entries;
// -inf entries are probability 0. Each core returns the divergence in nats and, when gx / gy are non-null, writes
// dD/d(logit_x) * T and dD/d(logit_y) * T (the caller multiplies by 1/T and the row's reduction scale). General rule used
// throughout (docs/math.md): with g = dD/dy, dD/dz_j = (1/T) y_j (g_j - sum_i y_i g_i), so every gradient row sums to 0.
// Choices that make bit-identical inputs give exactly 0 (docs/pitfalls.md #13, #17):
//   - the mixture log m is set to lx where lx == ly (m = x = y there), else logaddexp(log a + lx, log(1-a) + ly)
//     (log space, docs/pitfalls.md #1);
//   - x/m is used as expm1(lx - lm) + 1 with the constant dropped (rows are centred, so constants cancel).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "../version.hpp"

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
  double s = 0.0;
  for (std::int64_t j = 0; j < n; ++j) s += std::exp(v[j] - m);
  return m + std::log(s);
}

// v -= logsumexp(v) as (v - max) - log(sum exp(v - max)), for a row whose log-sum-exp is finite. Subtracting the max first
// keeps the row normalized when |v| >> 2^53 log(n): v - (max + log s) would round log s away (a double row of -1e39
// came out with sum exp = n; docs/numerics.md).
inline void normalize_log(double* v, std::int64_t n) noexcept {
  double m = ninf;
  for (std::int64_t j = 0; j < n; ++j) m = std::max(m, v[j]);
  double s = 0.0;
  for (std::int64_t j = 0; j < n; ++j) s += std::exp(v[j] - m);
  const double log_s = std::log(s);
  for (std::int64_t j = 0; j < n; ++j) v[j] = (v[j] - m) - log_s;
}

// log m_j for m = a x + (1 - a) y, a in (0, 1), exact where lx == ly.
inline double log_mix(double a, double lx, double ly) noexcept {
  if (lx == ly) return lx;
  return logaddexp(std::log(a) + lx, std::log1p(-a) + ly);
}

// KL(x || y) = sum_j x_j (lx_j - ly_j). +inf when some x_j > 0 has y_j = 0.
//   dKL/dz_y = y - x;   dKL/dz_x = x (lx - ly - KL).
inline double kl(const double* lx, const double* ly, std::int64_t n, double* gx, double* gy) noexcept {
  double loss = 0.0;
  for (std::int64_t j = 0; j < n; ++j)
    if (lx[j] != ninf) loss += std::exp(lx[j]) * (lx[j] - ly[j]);
  for (std::int64_t j = 0; j < n; ++j) {
    const double x = std::exp(lx[j]), y = std::exp(ly[j]);
    if (gy) gy[j] = y - x;
    if (gx) gx[j] = x == 0.0 ? 0.0 : x * (lx[j] - ly[j] - loss);
  }
  return loss;
}

// Skew KL S_a(x, y) = KL(x || a x + (1 - a) y), a in (0, 1). Finite for all inputs (m >= a x).
//   dS/dz_y = (1 - a) y_j (sum_i y_i d_i - d_j),  d = x/m - 1 = expm1(lx - lm)
//   dS/dz_x = x_j (h_j - sum_i x_i h_i),          h = log(x/m) - a (x/m - 1)
inline double skew(double a, const double* lx, const double* ly, std::int64_t n, double* gx, double* gy) noexcept {
  double loss = 0.0, yd = 0.0, xh = 0.0;
  for (std::int64_t j = 0; j < n; ++j) {
    const double lm = log_mix(a, lx[j], ly[j]);
    const double x = std::exp(lx[j]), y = std::exp(ly[j]);
    if (x > 0.0) {
      const double r = lx[j] - lm;
      loss += x * r;
      xh += x * (r - a * std::expm1(r));
    }
    if (y > 0.0) yd += y * std::expm1(lx[j] - lm);
  }
  for (std::int64_t j = 0; j < n; ++j) {
    const double lm = log_mix(a, lx[j], ly[j]);
    const double x = std::exp(lx[j]), y = std::exp(ly[j]);
    if (gy) gy[j] = y == 0.0 ? 0.0 : (1.0 - a) * y * (yd - std::expm1(lx[j] - lm));
    if (gx) {
      const double r = lx[j] - lm;
      gx[j] = x == 0.0 ? 0.0 : x * ((r - a * std::expm1(r)) - xh);
    }
  }
  return loss;
}

// Generalized JSD J_b(x, y) = b KL(x || m) + (1 - b) KL(y || m), m = b x + (1 - b) y, b in (0, 1).
//   dJ/dz_y = (1 - b) y_j (u_j - sum_i y_i u_i), u = ly - lm;   dJ/dz_x = b x_j (w_j - sum_i x_i w_i), w = lx - lm.
inline double jsd(double b, const double* lx, const double* ly, std::int64_t n, double* gx, double* gy) noexcept {
  double kx = 0.0, ky = 0.0;
  for (std::int64_t j = 0; j < n; ++j) {
    const double lm = log_mix(b, lx[j], ly[j]);
    if (lx[j] != ninf) kx += std::exp(lx[j]) * (lx[j] - lm);
    if (ly[j] != ninf) ky += std::exp(ly[j]) * (ly[j] - lm);
  }
  for (std::int64_t j = 0; j < n; ++j) {
    const double lm = log_mix(b, lx[j], ly[j]);
    const double x = std::exp(lx[j]), y = std::exp(ly[j]);
    if (gy) gy[j] = y == 0.0 ? 0.0 : (1.0 - b) * y * ((ly[j] - lm) - ky);
    if (gx) gx[j] = x == 0.0 ? 0.0 : b * x * ((lx[j] - lm) - kx);
  }
  return b * kx + (1.0 - b) * ky;
}

inline double sign(double v) noexcept { return v > 0.0 ? 1.0 : (v < 0.0 ? -1.0 : 0.0); }

// Total variation distance (1/2) sum_j |x_j - y_j|.
//   dTV/dz_y = (1/2) y_j (s_j - sum_i y_i s_i), s = sign(y - x); symmetric for x.
inline double tvd(const double* lx, const double* ly, std::int64_t n, double* gx, double* gy) noexcept {
  double loss = 0.0, ys = 0.0, xs = 0.0;
  for (std::int64_t j = 0; j < n; ++j) {
    const double x = std::exp(lx[j]), y = std::exp(ly[j]);
    loss += std::abs(x - y);
    ys += y * sign(y - x);
    xs += x * sign(x - y);
  }
  for (std::int64_t j = 0; j < n; ++j) {
    const double x = std::exp(lx[j]), y = std::exp(ly[j]);
    if (gy) gy[j] = 0.5 * y * (sign(y - x) - ys);
    if (gx) gx[j] = 0.5 * x * (sign(x - y) - xs);
  }
  return 0.5 * loss;
}

}  // namespace detail::ref
KD_END_NAMESPACE
