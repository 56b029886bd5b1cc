// Helpers for the SIMD backend tests: run a backend and kd::reference_backend on the same typed data and compare.
//
// Tolerance model (derived, not tuned): the SIMD backend works in float32. A gradient entry is built from
// log-probabilities y - M - log S (y = z / T, size up to |y|max + log V), log-ratios lq - lp (up to 2 |y|max) and, for
// KL-like gradients, the row's loss l_r itself (c q (lq - lp - l_r)); each enters with a few roundings, and the row loss
// is a float32 sum whose error is a few 2^-24 |terms|. With e = k * 2^-24 * (|y|max + 1), k = 8:
//   gradients   |g - g_ref| <= e * (c (1 + |l|max) + |g_ref|) + u * |g_ref|, with c = w T^(t2 ? 2 : 0) / (T * denominator)
//               the row's gradient scale, |l|max the largest reference per-row value, u half an ulp of the output dtype
//               (bf16 2^-8, fp16 2^-11, else 0);
//   row losses  |l - l_ref| <= e * (w T^(t2 ? 2 : 0) + |l_ref|), and the reduced loss likewise.
// Every comparison prints the worst error seen as a fraction of its tolerance.
#pragma once

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <kd/backend/reference.hpp>
#include <kd/backend/simd.hpp>
#include <kd/divergence.hpp>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace kdst {

template <class T>
double tod(T x) {
  return kd::to_double(x);
}

template <class T>
std::vector<T> convert(const std::vector<double>& v) {
  std::vector<T> o(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) o[i] = kd::from_double<T>(v[i]);
  return o;
}

// A strided copy: rows of `cols` values at stride `stride`, the padding poisoned with NaN (catches out-of-bounds
// reads).
template <class T>
std::vector<T> strided(const std::vector<T>& v, std::int64_t rows, std::int64_t cols, std::int64_t stride) {
  std::vector<T> o(static_cast<std::size_t>(rows * stride), kd::from_double<T>(std::nan("")));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t j = 0; j < cols; ++j) o[r * stride + j] = v[r * cols + j];
  return o;
}

template <class G>
struct outputs {
  std::vector<G> gs, gt;
  std::vector<float> per_row;
  kd::loss_result r;
  kd::status st;
};

struct case_spec {
  kd::divergence d;
  std::int64_t rows = 3, cols = 17, stride = -1;  // stride -1: contiguous
  double scale = 2.0, masked = 0.0, temperature = 1.0;
  bool teacher_grad = true, student_grad = true, t2 = false, labels = false, weights = false;
  kd::reduction red = kd::reduction::mean;
  std::uint32_t seed = 1;
};

inline std::string describe(const case_spec& c) {
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "%s(%g) rows=%lld cols=%lld stride=%lld scale=%g masked=%g T=%g tg=%d t2=%d lab=%d w=%d red=%s",
                kd::divergence_name(c.d.kind), c.d.param, (long long)c.rows, (long long)c.cols, (long long)c.stride,
                c.scale, c.masked, c.temperature, (int)c.teacher_grad, (int)c.t2, (int)c.labels, (int)c.weights,
                kd::reduction_name(c.red));
  return buf;
}

template <class S, class P, class G, class Backend>
outputs<G> run_case(const case_spec& c, const std::vector<S>& zs, const std::vector<P>& zt, const Backend& be,
                    std::vector<std::int64_t>* labels = nullptr, std::vector<float>* weights = nullptr) {
  const std::int64_t stride = c.stride < 0 ? c.cols : c.stride;
  outputs<G> o;
  o.gs.assign(zs.size(), kd::from_double<G>(777.0));
  o.gt.assign(zt.size(), kd::from_double<G>(777.0));
  o.per_row.assign(static_cast<std::size_t>(c.rows), -1.0f);
  kd::distill_options opt;
  opt.temperature = c.temperature;
  opt.t2_scale = c.t2;
  opt.reduction = c.red;
  if (c.red == kd::reduction::normalizer) opt.normalizer = 7.0;
  if (labels) opt.labels = kd::label_view(labels->data(), static_cast<std::int64_t>(labels->size()));
  if (weights) opt.row_weights = weights->data();
  kd::distill_outputs<G> out;
  if (c.student_grad) out.grad_student = kd::mut_rows<G>(o.gs.data(), c.rows, c.cols, stride);
  if (c.teacher_grad) out.grad_teacher = kd::mut_rows<G>(o.gt.data(), c.rows, c.cols, stride);
  out.per_row = o.per_row.data();
  o.st = kd::divergence_loss(c.d, kd::student_logits(zs.data(), c.rows, c.cols, stride),
                             kd::teacher_logits(zt.data(), c.rows, c.cols, stride), opt, o.r, out, be);
  return o;
}

template <class T>
constexpr double out_ulp() {
  if constexpr (std::is_same_v<T, kd::bfloat16>)
    return 1.0 / 256;
  else if constexpr (std::is_same_v<T, kd::half>)
    return 1.0 / 2048;
  else
    return 0.0;
}

struct tolerance {
  double k = 8.0;     // multiples of 2^-24 (|y|max + 1)
  double ymax = 0.0;  // max |z| / T over the finite inputs
  double eps() const { return k * std::ldexp(1.0, -24) * (ymax + 1.0); }
};

template <class T>
double max_abs_finite(const std::vector<T>& v) {
  double m = 0.0;
  for (auto x : v)
    if (std::isfinite(tod(x))) m = std::max(m, std::abs(tod(x)));
  return m;
}

// Compares a backend's outputs with the reference's on the same data (Catch2 checks).
template <class G>
void compare(const outputs<G>& got, const outputs<G>& ref, const case_spec& c, const tolerance& tol, double out_rtol) {
  INFO(describe(c));
  REQUIRE(got.st.code == ref.st.code);
  CHECK(std::string(got.st.argument) == ref.st.argument);
  CHECK(got.st.row == ref.st.row);
  CHECK(std::isnan(got.st.value) == std::isnan(ref.st.value));  // NaN (a NaN input) vs +inf (only +inf) as the reference
  if (std::isinf(ref.st.value)) CHECK(got.st.value == ref.st.value);
  CHECK(got.r.valid_rows == ref.r.valid_rows);
  CHECK(got.r.denominator == ref.r.denominator);
  const double e = tol.eps();
  const double lscale = (c.weights ? 1.5 : 1.0) * (c.t2 ? c.temperature * c.temperature : 1.0);
  // Loss.
  if (std::isnan(ref.r.loss)) {
    CHECK(std::isnan(got.r.loss));
  } else if (std::isinf(ref.r.loss)) {
    CHECK(got.r.loss == ref.r.loss);
  } else {
    const double err = std::abs(got.r.loss - ref.r.loss);
    INFO("loss " << got.r.loss << " ref " << ref.r.loss);
    CHECK(err <= e * (lscale * double(c.rows) / ref.r.denominator + std::abs(ref.r.loss)));
  }
  double worst_row = 0.0;
  for (std::size_t r = 0; r < ref.per_row.size(); ++r) {
    const double a = got.per_row[r], b = ref.per_row[r];
    if (std::isnan(b) || std::isinf(b)) {
      CHECK((std::isnan(a) == std::isnan(b) && (std::isnan(b) || a == b)));
      continue;
    }
    worst_row = std::max(worst_row, std::abs(a - b) / (e * (lscale + std::abs(b))));
  }
  INFO("worst per-row loss error / tolerance " << worst_row);
  CHECK(worst_row <= 1.0);
  // Gradient scale: (1/T) (T^2 with t2_scale) / denominator times the largest row weight (1.5 in these tests): the size
  // of the terms a gradient entry is computed from, so the absolute part of the tolerance is relative to it.
  const double gscale = (1.0 / c.temperature) * (c.t2 ? c.temperature * c.temperature : 1.0) / ref.r.denominator *
                        (c.weights ? 1.5 : 1.0);
  double lmax = 0.0;
  for (float v : ref.per_row)
    if (std::isfinite(v)) lmax = std::max(lmax, std::abs(double(v)));
  auto cmp = [&](const std::vector<G>& g, const std::vector<G>& gr, const char* what) {
    double worst = 0.0;
    std::size_t bad = 0, worst_i = 0;
    for (std::size_t i = 0; i < gr.size(); ++i) {
      const double a = tod(g[i]), b = tod(gr[i]);
      if (std::isnan(b)) {
        if (!std::isnan(a)) ++bad;
        continue;
      }
      if (std::isnan(a)) {
        ++bad;
        continue;
      }
      const double q = std::abs(a - b) / (e * (gscale * (1.0 + lmax) + std::abs(b)) + out_rtol * std::abs(b) + 1e-300);
      if (q > worst) {
        worst = q;
        worst_i = i;
      }
    }
    INFO(what << ": worst error / tolerance " << worst << " at " << worst_i << " (got " << tod(g[worst_i]) << ", ref "
              << tod(gr[worst_i]) << "), NaN mismatches " << bad);
    CHECK(bad == 0);
    CHECK(worst <= 1.0);
  };
  if (c.student_grad) cmp(got.gs, ref.gs, "grad_student");
  if (c.teacher_grad) cmp(got.gt, ref.gt, "grad_teacher");
}

// Runs case c with element types S = P, gradient type G on backend `be` and on the reference, and compares.
template <class S, class G, class Backend>
void check_case(const case_spec& c, const Backend& be, tolerance tol = {}) {
  const std::int64_t stride = c.stride < 0 ? c.cols : c.stride;
  auto zs0 = convert<S>(kdt::random_logits<double>(c.rows, c.cols, c.seed, c.scale, c.masked));
  auto zt0 = convert<S>(kdt::random_logits<double>(c.rows, c.cols, c.seed + 1000, c.scale, c.masked));
  auto zs = strided(zs0, c.rows, c.cols, stride), zt = strided(zt0, c.rows, c.cols, stride);
  std::vector<std::int64_t> labels;
  std::vector<float> weights;
  for (std::int64_t r = 0; r < c.rows; ++r) {
    labels.push_back(r % 3 == 1 ? -100 : r);
    weights.push_back(r % 4 == 2 ? 0.0f : 0.5f + 0.25f * static_cast<float>(r % 5));
  }
  auto got = run_case<S, S, G>(c, zs, zt, be, c.labels ? &labels : nullptr, c.weights ? &weights : nullptr);
  auto ref = run_case<S, S, G>(c, zs, zt, kd::reference_backend{}, c.labels ? &labels : nullptr,
                               c.weights ? &weights : nullptr);
  tol.ymax = std::max(max_abs_finite(zs0), max_abs_finite(zt0)) / c.temperature;
  compare(got, ref, c, tol, out_ulp<G>());
  // Padding between strided rows is never written.
  if (stride > c.cols && c.student_grad)
    for (std::int64_t r = 0; r < c.rows; ++r)
      for (std::int64_t j = c.cols; j < stride; ++j)
        CHECK(tod(got.gs[r * stride + j]) == tod(kd::from_double<G>(777.0)));
}

}  // namespace kdst
