// The registry of divergences (kd/divergences/registry.hpp) and the independence of the reference backend's oracle:
//  - every registered kind has literal values computed outside kd (tests/divergence_values.hpp, mpmath) and the reference
//    backend reproduces them;
//  - the reference backend, which now runs the shared functors, agrees with the frozen copy of the original double loops
//    (tests/frozen_oracle.hpp) to 1e-14 relative on the six original divergences;
//  - finite differences of the reference's own loss and the math properties hold for every registered divergence;
//  - the alpha-beta divergence (ABKD) at its parameter edges and limits; names, validation and lookups.
#include <catch2/catch.hpp>

#include <cmath>
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "divergence_values.hpp"
#include "frozen_oracle.hpp"
#include "test_util.hpp"

namespace {

struct single {
  kd::status st;
  double loss = 0.0;
  std::vector<double> gs, gt;
};

// One row, reduction sum (the result is the row's loss in double), double gradients of both sides.
single one_row(const kd::divergence& d, const std::vector<double>& zs, const std::vector<double>& zt, double T) {
  const std::int64_t n = static_cast<std::int64_t>(zs.size());
  single o;
  o.gs.assign(zs.size(), 9.0);
  o.gt.assign(zt.size(), 9.0);
  kd::distill_options opt;
  opt.temperature = T;
  opt.reduction = kd::reduction::sum;
  kd::distill_outputs<double> out;
  out.grad_student = kd::mut_rows<double>(o.gs.data(), 1, n);
  out.grad_teacher = kd::mut_rows<double>(o.gt.data(), 1, n);
  kd::loss_result r;
  o.st = kd::divergence_loss(d, kd::student_logits(zs.data(), 1, n), kd::teacher_logits(zt.data(), 1, n), opt, r, out,
                             kd::reference_backend{});
  o.loss = r.loss;
  return o;
}

double max_abs(const std::vector<double>& v) {
  double m = 0.0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// The frozen loops' row (the original reference_backend::divergence_row), on log-probs lq (student), lp (teacher).
double frozen_row(const kd::divergence& d, const double* lq, const double* lp, std::int64_t n, double* gq, double* gp) {
  namespace f = kdtest::frozen;
  switch (d.kind) {
    case kd::divergence_kind::forward_kl: return f::kl(lp, lq, n, gp, gq);
    case kd::divergence_kind::reverse_kl: return f::kl(lq, lp, n, gq, gp);
    case kd::divergence_kind::jsd:
      if (d.param == 0.0) return f::kl(lp, lq, n, gp, gq);
      if (d.param == 1.0) return f::kl(lq, lp, n, gq, gp);
      return f::jsd(d.param, lp, lq, n, gp, gq);
    case kd::divergence_kind::skew_kl:
      if (d.param == 0.0) return f::kl(lp, lq, n, gp, gq);
      return f::skew(d.param, lp, lq, n, gp, gq);
    case kd::divergence_kind::skew_reverse_kl:
      if (d.param == 0.0) return f::kl(lq, lp, n, gq, gp);
      return f::skew(d.param, lq, lp, n, gq, gp);
    case kd::divergence_kind::tvd: return f::tvd(lp, lq, n, gp, gq);
    default: return std::nan("");  // not one of the six original divergences
  }
}

}  // namespace

TEST_CASE("registry: every registered kind has literal values computed outside kd, and the reference matches them",
          "[registry]") {
  for (const kd::divergence_info& i : kd::divergence_registry()) {
    int rows = 0;
    for (const auto& v : kdtest::divergence_values) rows += v.d.kind == i.kind;
    INFO(i.name);
    CHECK(rows > 0);  // a new registry row needs its literal values in tests/divergence_values.hpp
  }
  const std::vector<double> zs(kdtest::value_student_logits, kdtest::value_student_logits + 5),
      zt(kdtest::value_teacher_logits, kdtest::value_teacher_logits + 5);
  for (const auto& v : kdtest::divergence_values) {
    INFO(kdt::describe(v.d) << " T=" << v.temperature);
    const single o = one_row(v.d, zs, zt, v.temperature);
    REQUIRE(o.st.ok());
    // Double evaluation of a few-term row: a few ulps of the terms; 1e-13 relative leaves a factor ~100 of margin.
    CHECK(o.loss == Approx(v.loss).epsilon(1e-13).margin(1e-15));
    double gmax = 0.0;
    for (double g : v.grad_student) gmax = std::max(gmax, std::abs(g));
    for (int j = 0; j < 5; ++j) CHECK(o.gs[j] == Approx(v.grad_student[j]).margin(1e-13 * gmax));
  }
}

TEST_CASE("registry: the reference backend agrees with the frozen original loops to 1e-14", "[registry]") {
  const std::int64_t cols = 257;
  int compared = 0;
  for (const auto& d : kdt::kAllDivergences) {
    if (static_cast<int>(d.kind) > static_cast<int>(kd::divergence_kind::tvd)) continue;  // not one of the original six
    for (std::uint32_t seed : {1u, 2u, 3u})
      for (double T : {0.5, 1.0, 3.0}) {
        auto zs = kdt::random_logits(1, cols, seed, 3.0, 0.1), zt = kdt::random_logits(1, cols, seed + 50, 3.0, 0.1);
        for (std::int64_t j = 0; j < cols; ++j)  // shared masks: every divergence finite
          if (std::isinf(zs[j]) || std::isinf(zt[j])) zs[j] = zt[j] = kdt::ninf;
        const single o = one_row(d, zs, zt, T);
        REQUIRE(o.st.ok());
        std::vector<double> lq(cols), lp(cols), gq(cols), gp(cols);
        kd::detail::ref::load_log_probs(zs.data(), cols, 1.0 / T, lq.data());
        kd::detail::ref::load_log_probs(zt.data(), cols, 1.0 / T, lp.data());
        const double l = frozen_row(d, lq.data(), lp.data(), cols, gq.data(), gp.data());
        INFO(kdt::describe(d) << " seed " << seed << " T " << T);
        CHECK(o.loss == Approx(l).epsilon(1e-14).margin(1e-300));
        for (auto& g : gq) g /= T;
        for (auto& g : gp) g /= T;
        const double mq = max_abs(gq), mp = max_abs(gp);
        double worst = 0.0;
        for (std::int64_t j = 0; j < cols; ++j)
          worst = std::max({worst, std::abs(o.gs[j] - gq[j]) / mq, std::abs(o.gt[j] - gp[j]) / mp});
        // The mixture divergences (jsd, skew) now form log m relative to the larger side (row_math.hpp log_mix, accurate
        // for a confident row's top token); the frozen loops' logaddexp(log a + lx, log(1 - a) + ly) rounds with
        // 2^-53 (|lx| + |log a|) per entry instead. That difference, a few of those roundings over the largest gradient
        // entry, is the bound for them; the others must agree to 1e-14.
        const bool mixture = d.kind == kd::divergence_kind::jsd || d.kind == kd::divergence_kind::skew_kl ||
                             d.kind == kd::divergence_kind::skew_reverse_kl;
        double ymax = 0.0;
        for (double v : lq) ymax = std::max(ymax, std::isfinite(v) ? std::abs(v) : 0.0);
        for (double v : lp) ymax = std::max(ymax, std::isfinite(v) ? std::abs(v) : 0.0);
        const double a = std::min(d.param, 1.0 - d.param);
        // TVD now keeps its centring sum_i y_i s_i as an exact integer part plus the rest (tvd.hpp); the frozen loops'
        // s_j - sum_i y_i s_i carries the rounding of a sum of size <= 1, a few 2^-53, into 0.5 y_j (s_j - ...), which a
        // peaked row (T = 0.5) shows over its small largest entry: bound 8 2^-53 / (largest entry).
        const double tol =
            mixture ? std::max(1e-14, 8.0 * 0x1p-53 * (ymax + std::abs(std::log(a))) / std::min(mq, mp))
            : d.kind == kd::divergence_kind::tvd ? std::max(1e-14, 8.0 * 0x1p-53 / std::min(mq, mp))
                                                 : 1e-14;
        INFO("worst " << worst << " tolerance " << tol);
        CHECK(worst <= tol);
        ++compared;
      }
  }
  CHECK(compared >= 9 * 11);
}

TEST_CASE("registry: finite differences of the reference loss, every registered divergence", "[registry]") {
  // Central differences with h = 1e-5 on logits of scale 2: truncation ~h^2 |D'''| ~ 1e-10, rounding ~1e-16 / h ~ 1e-11;
  // 1e-7 of the largest gradient entry leaves a wide margin without hiding an error of the analytic gradient.
  const std::int64_t cols = 9;
  for (const auto& d : kdt::kAllDivergences) {
    const auto zs = kdt::random_logits(1, cols, 7, 2.0), zt = kdt::random_logits(1, cols, 8, 2.0);
    for (double T : {1.0, 2.0}) {
      const single o = one_row(d, zs, zt, T);
      REQUIRE(o.st.ok());
      const double gm = std::max(max_abs(o.gs), max_abs(o.gt));
      INFO(kdt::describe(d) << " T " << T);
      for (int side = 0; side < 2; ++side)
        for (std::int64_t j = 0; j < cols; ++j) {
          auto a = zs, b = zt;
          auto& v = side == 0 ? a : b;
          const double h = 1e-5, x = v[j];
          v[j] = x + h;
          const double lp = one_row(d, a, b, T).loss;
          v[j] = x - h;
          const double lm = one_row(d, a, b, T).loss;
          const double fd = (lp - lm) / (2 * h), g = side == 0 ? o.gs[j] : o.gt[j];
          CHECK(std::abs(fd - g) <= 1e-7 * gm);
        }
    }
  }
}

TEST_CASE("registry: properties of every registered divergence (>= 0, identical rows, shift invariance, zero-sum)",
          "[registry][properties]") {
  const std::int64_t cols = 64;
  for (const auto& d : kdt::kAllDivergences) {
    INFO(kdt::describe(d));
    auto zs = kdt::random_logits(1, cols, 11, 3.0, 0.1), zt = kdt::random_logits(1, cols, 12, 3.0, 0.1);
    for (std::int64_t j = 0; j < cols; ++j)
      if (std::isinf(zs[j]) || std::isinf(zt[j])) zs[j] = zt[j] = kdt::ninf;
    const single o = one_row(d, zs, zt, 1.3);
    REQUIRE(o.st.ok());
    CHECK(o.loss > 0.0);
    // Shift invariance: logits + c give the same distributions (the log-probabilities agree to rounding of x + c).
    auto zs2 = zs, zt2 = zt;
    for (auto& v : zs2) v += 17.0;
    for (auto& v : zt2) v -= 5.0;
    const single o2 = one_row(d, zs2, zt2, 1.3);
    CHECK(o2.loss == Approx(o.loss).epsilon(1e-12));
    // Zero-sum gradient rows (softmax chain rule).
    double s = 0.0, t = 0.0;
    for (std::int64_t j = 0; j < cols; ++j) s += o.gs[j], t += o.gt[j];
    CHECK(std::abs(s) <= 1e-14 * cols * max_abs(o.gs));
    CHECK(std::abs(t) <= 1e-14 * cols * max_abs(o.gt));
    // Identical rows: exactly 0.
    const single z = one_row(d, zs, zs, 0.7);
    REQUIRE(z.st.ok());
    CHECK(z.loss == 0.0);
    CHECK(max_abs(z.gs) == 0.0);
  }
}

TEST_CASE("registry: names, lookups and parameter validation come from the registry", "[registry]") {
  CHECK(kd::divergence_count == static_cast<int>(kd::divergence_registry().size()));
  for (const kd::divergence_info& i : kd::divergence_registry()) {
    REQUIRE(kd::find_divergence(i.name) == &i);
    REQUIRE(kd::find_divergence(i.cli_name) == &i);
    CHECK(std::string(kd::divergence_name(i.kind)) == i.name);
    for (int p = 0; p < i.n_params; ++p) {  // just outside each range: an argument error naming the parameter
      kd::divergence d = kd::divergence::of(i.kind, i.params[0].example, i.n_params > 1 ? i.params[1].example : 0.0);
      (p == 0 ? d.param : d.param2) = i.params[p].hi + 1.0;
      const single o = one_row(d, {1, 2}, {2, 1}, 1.0);
      INFO(i.name << " " << i.params[p].name);
      CHECK(o.st.code == kd::errc::invalid_argument);
      CHECK(std::string(o.st.argument) == i.params[p].name);
      CHECK(o.gs[0] == 9.0);  // outputs untouched
    }
  }
  CHECK(kd::find_divergence("nope") == nullptr);
  CHECK(!kd::is_registered(static_cast<kd::divergence_kind>(kd::divergence_count)));
  CHECK(std::string(kd::find_divergence("ab")->name) == "alpha_beta");
}

TEST_CASE("alpha_beta: endpoints, limits and continuity at the parameter edges", "[registry][alpha_beta]") {
  using kd::divergence;
  const auto ab = [](double a, double b) { return divergence::of(kd::divergence_kind::alpha_beta, a, b); };
  const auto zs = kdt::random_logits(1, 50, 31, 2.5), zt = kdt::random_logits(1, 50, 32, 2.5);
  const double fkl = one_row(divergence::forward_kl(), zs, zt, 1.0).loss;
  const double rkl = one_row(divergence::reverse_kl(), zs, zt, 1.0).loss;
  // Endpoint rules: exactly KL.
  CHECK(one_row(ab(1, 0), zs, zt, 1.0).loss == fkl);
  CHECK(one_row(ab(0, 1), zs, zt, 1.0).loss == rkl);
  // Near the endpoints the general formula approaches KL (distance O(1e-7)).
  CHECK(one_row(ab(1, 1e-7), zs, zt, 1.0).loss == Approx(fkl).epsilon(1e-5));
  CHECK(one_row(ab(1e-7, 1), zs, zt, 1.0).loss == Approx(rkl).epsilon(1e-5));
  // Continuity into each limit formula (beta = 0, alpha = 0, both 0). The difference is O(param); the cancellation of
  // (v + w) / s costs about 2^-53 4 / (s |d|) ~ 1e-8 relative at s = 2e-8: 1e-6 relative bounds both.
  for (double a : {0.3, 0.9}) CHECK(one_row(ab(a, 1e-8), zs, zt, 1.0).loss == Approx(one_row(ab(a, 0), zs, zt, 1.0).loss).epsilon(1e-6));
  for (double b : {0.4, 1.0}) CHECK(one_row(ab(1e-8, b), zs, zt, 1.0).loss == Approx(one_row(ab(0, b), zs, zt, 1.0).loss).epsilon(1e-6));
  const double ab00 = one_row(ab(0, 0), zs, zt, 1.0).loss;
  CHECK(one_row(ab(1e-8, 1e-8), zs, zt, 1.0).loss == Approx(ab00).epsilon(1e-6));
  // Mirror symmetry of the definition: D_AB^(a,b)(p || q) = D_AB^(b,a)(q || p).
  CHECK(one_row(ab(0.3, 0.9), zs, zt, 1.4).loss == Approx(one_row(ab(0.9, 0.3), zt, zs, 1.4).loss).epsilon(1e-13));
  // Zero probabilities: shared zeros contribute nothing; a one-sided zero is finite for alpha, beta > 0 and a support
  // mismatch (+inf) where the limit formula has log 0.
  auto ms = zs, mt = zt;
  ms[3] = mt[3] = kdt::ninf;
  CHECK(std::isfinite(one_row(ab(0, 0), ms, mt, 1.0).loss));
  mt[5] = kdt::ninf;  // teacher p = 0 where the student has mass
  const single a1 = one_row(ab(0.5, 0.5), ms, mt, 1.0);
  CHECK(a1.st.ok());
  CHECK(std::isfinite(a1.loss));
  CHECK(one_row(ab(0.0, 0.5), ms, mt, 1.0).st.code == kd::errc::support_mismatch);  // alpha = 0: q^b log(q^b / p^b)
  CHECK(one_row(ab(0.0, 0.0), ms, mt, 1.0).st.code == kd::errc::support_mismatch);
  ms[5] = 0.0;
  ms[7] = kdt::ninf;  // student q = 0 where the teacher has mass: beta = 0 has log(p / q)
  CHECK(one_row(ab(0.7, 0.0), ms, zt, 1.0).st.code == kd::errc::support_mismatch);
  // The one-sided-zero terms are what the definition gives: compare with the limit of a tiny probability.
  auto tiny = zt;
  tiny[5] = -60.0;  // p_5 ~ e^-60 ~ 1e-26: its terms p^a q^b, p^s vanish to ~1e-13 relative (a = 0.5)
  auto zt0 = zt;
  zt0[5] = kdt::ninf;
  CHECK(one_row(ab(0.5, 0.5), zs, zt0, 1.0).loss == Approx(one_row(ab(0.5, 0.5), zs, tiny, 1.0).loss).epsilon(1e-9));
  // Range: 0 or [1e-30, 1] (float32 lanes divide by the parameter).
  CHECK(one_row(ab(-0.1, 0.5), zs, zt, 1.0).st.code == kd::errc::invalid_argument);
  CHECK(std::string(one_row(ab(0.5, 1e-31), zs, zt, 1.0).st.argument) == "beta");
  CHECK(one_row(ab(1e-30, 0.5), zs, zt, 1.0).st.ok());
}
