// Shared helpers for kd's tests: deterministic random rows and a double-precision loss evaluator for finite differences.
#pragma once

#include <kd/kd.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
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

namespace kdt {

// Runs f(backend, name) for the oracle and for the default backend (the fast one once compiled in).
template <class F>
void for_each_backend(F&& f) {
  f(kd::reference_backend{}, "reference");
  if constexpr (!std::is_same_v<kd::default_backend, kd::reference_backend>) f(kd::default_backend{}, "default");
}

// One divergence call with T inputs and float outputs; the outputs are pre-filled with a poison value.
template <class T>
struct call {
  kd::status st;
  kd::loss_result r;
  std::vector<float> gs, gt, per_row;
};

template <class T, class Backend>
call<T> run_call(const kd::divergence& d, const std::vector<T>& zs, const std::vector<T>& zt, std::int64_t rows,
                 std::int64_t cols, const kd::distill_options& o, const Backend& be, bool teacher_grad = false,
                 kd::input_kind sk = kd::input_kind::logits, kd::input_kind tk = kd::input_kind::logits) {
  call<T> c;
  c.gs.assign(zs.size(), 777.0f);
  c.gt.assign(teacher_grad ? zt.size() : 0, 777.0f);
  c.per_row.assign(static_cast<std::size_t>(rows), 777.0f);
  kd::distill_outputs<float> out;
  out.grad_student = kd::mut_rows<float>(c.gs.data(), rows, cols);
  if (teacher_grad) out.grad_teacher = kd::mut_rows<float>(c.gt.data(), rows, cols);
  out.per_row = c.per_row.data();
  kd::student_input<T> s{kd::const_rows<T>(zs.data(), rows, cols), sk};
  kd::teacher_input<T> t{kd::const_rows<T>(zt.data(), rows, cols), tk};
  c.r.loss = 777.0;
  c.st = kd::divergence_loss(d, s, t, o, c.r, out, be);
  return c;
}

// The test cases of every registered divergence, from the registry (kd/divergences/registry.hpp): each kind at its
// parameters' example values, at a second interior point (lo + 0.1 (hi - lo)), and at each endpoint rule's parameters
// (which are computed as the target divergence). A new registry row is picked up by every test that loops over these.
inline std::vector<kd::divergence> registry_cases() {
  std::vector<kd::divergence> out;
  auto add = [&](const kd::divergence& d) {
    for (const auto& o : out)
      if (o.kind == d.kind && o.param == d.param && o.param2 == d.param2) return;
    out.push_back(d);
  };
  for (const kd::divergence_info& i : kd::divergence_registry()) {
    const double ex0 = i.n_params > 0 ? i.params[0].example : 0.0, ex1 = i.n_params > 1 ? i.params[1].example : 0.0;
    add(kd::divergence::of(i.kind, ex0, ex1));
    if (i.n_params > 0) {
      auto second = [](const kd::param_spec& p) { return p.lo + 0.1 * (p.hi - p.lo); };
      add(kd::divergence::of(i.kind, second(i.params[0]), i.n_params > 1 ? second(i.params[1]) : 0.0));
    }
    kd::visit_divergence<int>(
        i.kind,
        [&](auto e) {
          for (const kd::endpoint_rule& r : decltype(e)::endpoints)
            if (r.target) add(kd::divergence::of(i.kind, std::isnan(r.p0) ? ex0 : r.p0, std::isnan(r.p1) ? ex1 : r.p1));
          return 0;
        },
        0);
  }
  return out;
}

inline const std::vector<kd::divergence> kAllDivergences = registry_cases();

// "jsd(0.5)", "alpha_beta(0.5, 0.5)", "tvd": for test messages.
inline std::string describe(const kd::divergence& d) {
  const kd::divergence_info* i = kd::find_divergence(d.kind);
  if (!i) return "?";
  std::string s = i->name;
  if (i->n_params > 0) s += "(" + std::to_string(d.param);
  if (i->n_params > 1) s += ", " + std::to_string(d.param2);
  if (i->n_params > 0) s += ")";
  return s;
}

}  // namespace kdt

namespace kdt {

// Two-entry rows (as log-probs) whose forward KL is exactly each target: teacher [0.5, 0.5], student [b, 1 - b] with b solved
// by bisection. Lets tests use the literal per-row losses of pitfalls.md.
inline void rows_with_forward_kl(const std::vector<double>& targets, std::vector<double>& student,
                                 std::vector<double>& teacher) {
  auto fkl2 = [](double b) { return 0.5 * std::log(0.5 / b) + 0.5 * std::log(0.5 / (1 - b)); };
  for (double target : targets) {
    double lo = 0.5, hi = 1.0 - 1e-300;
    for (int it = 0; it < 2000 && hi - lo > 0; ++it) {
      double mid = 0.5 * (lo + hi);
      if (mid == lo || mid == hi) break;
      (fkl2(mid) < target ? lo : hi) = mid;
    }
    student.push_back(std::log(lo));
    student.push_back(std::log1p(-lo));
    teacher.push_back(std::log(0.5));
    teacher.push_back(std::log(0.5));
  }
}

}  // namespace kdt
