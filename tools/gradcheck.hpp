// The gradient-check machinery behind `kd gradcheck`, shared with tests/test_gradcheck.cpp.
//   fd_check:    analytic gradients of the double reference (student or teacher side) vs central finite differences of the
//                reduced loss in double precision; -inf entries must get exactly 0.
//   fused_check: kd::default_backend on T inputs (float32 gradient) vs the double reference on the same rounded inputs.
#pragma once

#include <kd/kd.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <cstdio>
#include <utility>
#include <vector>

namespace kdtool::gradcheck {

struct loss_case {
  std::string name;  // "fkl", "jsd(0.5)", "ab(0.5,0.5)"
  kd::divergence d;
};

// Every registered divergence (kd/divergences/registry.hpp) at its parameters' example values, at interior points 10% and
// 90% into each range, and at each endpoint rule's parameter values.
inline std::vector<loss_case> registry_cases() {
  std::vector<loss_case> out;
  auto add = [&](const kd::divergence_info& i, double p0, double p1) {
    for (const auto& c : out)
      if (c.d.kind == i.kind && c.d.param == p0 && c.d.param2 == p1) return;
    char buf[96];
    if (i.n_params == 0) std::snprintf(buf, sizeof buf, "%s", i.cli_name);
    else if (i.n_params == 1) std::snprintf(buf, sizeof buf, "%s(%g)", i.cli_name, p0);
    else std::snprintf(buf, sizeof buf, "%s(%g,%g)", i.cli_name, p0, p1);
    out.push_back({buf, kd::divergence::of(i.kind, p0, p1)});
  };
  for (const kd::divergence_info& i : kd::divergence_registry()) {
    const auto at = [&](int k, double f) { return k < i.n_params ? i.params[k].lo + f * (i.params[k].hi - i.params[k].lo) : 0.0; };
    const double e0 = i.n_params > 0 ? i.params[0].example : 0.0, e1 = i.n_params > 1 ? i.params[1].example : 0.0;
    add(i, e0, e1);
    if (i.n_params > 0) {
      add(i, at(0, 0.1), at(1, 0.1));
      add(i, at(0, 0.9), i.n_params > 1 ? e1 : 0.0);
    }
    kd::visit_divergence<int>(
        i.kind,
        [&](auto e) {
          for (const kd::endpoint_rule& r : decltype(e)::endpoints)
            if (r.target) add(i, std::isnan(r.p0) ? e0 : r.p0, std::isnan(r.p1) ? e1 : r.p1);
          return 0;
        },
        0);
  }
  return out;
}

inline const std::vector<loss_case> kCases = registry_cases();

struct problem {
  std::int64_t rows, cols;
  std::vector<double> zs, zt;
  std::vector<std::int64_t> labels;
  std::vector<float> weights;
  kd::distill_options opt;
};

// Random rows: mixed scales (one large-magnitude row), masked (-inf) entries shared by both sides, one fully masked row, one
// row ignored through its label, per-row weights. Masks are shared so forward and reverse KL stay finite.
inline problem make_problem(std::uint32_t seed, std::int64_t rows, std::int64_t cols, double temperature) {
  problem p;
  p.rows = rows;
  p.cols = cols;
  std::mt19937 gen(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  p.zs.resize(rows * cols);
  p.zt.resize(rows * cols);
  const double ninf = -INFINITY;
  for (std::int64_t r = 0; r < rows; ++r) {
    const double scale = r == 1 ? 25.0 : 2.0;  // row 1: large-magnitude logits (near one-hot distributions)
    for (std::int64_t j = 0; j < cols; ++j) {
      p.zs[r * cols + j] = scale * nd(gen);
      p.zt[r * cols + j] = scale * nd(gen) + 3.0;  // teacher offset: loss invariant to it
      if (j > 0 && u(gen) < 0.15) p.zs[r * cols + j] = p.zt[r * cols + j] = ninf;
    }
  }
  if (rows > 3)
    for (std::int64_t j = 0; j < cols; ++j) p.zs[3 * cols + j] = p.zt[3 * cols + j] = ninf;  // fully masked row
  p.labels.assign(rows, 1);
  if (rows > 2) p.labels[2] = -100;  // ignored row
  p.weights.resize(rows);
  for (auto& w : p.weights) w = static_cast<float>(0.5 + u(gen));
  p.opt.temperature = temperature;
  p.opt.reduction = kd::reduction::mean;
  p.opt.labels = kd::label_view(p.labels.data(), rows);
  p.opt.row_weights = p.weights.data();
  return p;
}

inline double loss_of(const kd::divergence& d, const problem& p, const std::vector<double>& zs, const std::vector<double>& zt,
               std::vector<double>* gs = nullptr, std::vector<double>* gt = nullptr) {
  kd::distill_outputs<double> out;
  if (gs) out.grad_student = kd::mut_rows<double>(gs->data(), p.rows, p.cols);
  if (gt) out.grad_teacher = kd::mut_rows<double>(gt->data(), p.rows, p.cols);
  kd::loss_result r;
  kd::status st = kd::divergence_loss(d, kd::student_logits(zs.data(), p.rows, p.cols),
                                      kd::teacher_logits(zt.data(), p.rows, p.cols), p.opt, r, out,
                                      kd::reference_backend{});
  return st.ok() ? r.loss : NAN;
}

// Worst relative error of analytic vs central-difference gradient over all finite entries; -inf entries must get exactly 0.
inline double fd_check(const kd::divergence& d, const problem& p, bool teacher_side) {
  std::vector<double> gs(p.zs.size()), gt(p.zt.size());
  loss_of(d, p, p.zs, p.zt, &gs, &gt);
  const std::vector<double>& g = teacher_side ? gt : gs;
  double gmax = 0.0;
  for (double v : g) gmax = std::max(gmax, std::abs(v));
  double worst = 0.0;
  std::vector<double> zs = p.zs, zt = p.zt;
  std::vector<double>& z = teacher_side ? zt : zs;
  for (std::size_t i = 0; i < z.size(); ++i) {
    if (std::isinf(z[i])) {
      if (g[i] != 0.0) return INFINITY;
      continue;
    }
    const double h = 1e-5 * std::max(1.0, std::abs(z[i]));
    const double z0 = z[i];
    z[i] = z0 + h;
    const double lp = loss_of(d, p, zs, zt);
    z[i] = z0 - h;
    const double lm = loss_of(d, p, zs, zt);
    z[i] = z0;
    const double fd = (lp - lm) / (2 * h);
    // Relative to the row set's largest gradient entry: tiny entries are compared in absolute terms.
    worst = std::max(worst, std::abs(g[i] - fd) / (1e-12 + gmax));
  }
  return worst;
}

template <class T>
std::vector<T> cast_rounded(const std::vector<double>& v, std::vector<double>& back) {
  std::vector<T> out(v.size());
  back.resize(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    out[i] = kd::from_double<T>(v[i]);
    back[i] = kd::to_double(out[i]);
  }
  return out;
}

// Fused default-backend kernel on T inputs (float gradients) vs the double reference on the same rounded inputs.
template <class T>
std::pair<double, double> fused_check(const kd::divergence& d, const problem& p) {
  std::vector<double> zs_d, zt_d;
  std::vector<T> zs = cast_rounded<T>(p.zs, zs_d), zt = cast_rounded<T>(p.zt, zt_d);
  std::vector<double> gref(zs.size());
  const double lref = loss_of(d, p, zs_d, zt_d, &gref);
  std::vector<float> g(zs.size());
  kd::distill_outputs<float> out;
  out.grad_student = kd::mut_rows<float>(g.data(), p.rows, p.cols);
  kd::loss_result r;
  kd::status st = kd::divergence_loss(d, kd::student_logits(zs.data(), p.rows, p.cols),
                                      kd::teacher_logits(zt.data(), p.rows, p.cols), p.opt, r, out);
  if (!st.ok()) return {INFINITY, INFINITY};
  double gmax = 0.0, gerr = 0.0;
  for (std::size_t i = 0; i < g.size(); ++i) {
    gmax = std::max(gmax, std::abs(gref[i]));
    gerr = std::max(gerr, std::abs(g[i] - gref[i]));
  }
  return {std::abs(r.loss - lref) / (1e-7 + std::abs(lref)), gerr / (1e-12 + gmax)};
}

}  // namespace kdtool::gradcheck
