// Properties from math.md: symmetry of JSD, endpoints, exact zeros for identical inputs, zero-sum gradient rows, shift invariance.
#include <catch2/catch.hpp>

#include "test_util.hpp"

using kd::divergence;

TEST_CASE("JSD_beta(p||q) = JSD_(1-beta)(q||p)", "[properties]") {
  auto zs = kdt::random_logits(5, 31, 1), zt = kdt::random_logits(5, 31, 2);
  for (double b : {0.1, 0.25, 0.5, 0.8}) {
    double a = kdt::ref_loss(divergence::jsd(b), zs, zt, 5, 31);
    double c = kdt::ref_loss(divergence::jsd(1.0 - b), zt, zs, 5, 31);
    CHECK(a == Approx(c).epsilon(1e-12));
  }
  // skew KL and skew reverse KL are the same function with the roles swapped.
  CHECK(kdt::ref_loss(divergence::skew_kl(0.3), zs, zt, 5, 31) ==
        Approx(kdt::ref_loss(divergence::skew_reverse_kl(0.3), zt, zs, 5, 31)).epsilon(1e-12));
  CHECK(kdt::ref_loss(divergence::forward_kl(), zs, zt, 5, 31) ==
        Approx(kdt::ref_loss(divergence::reverse_kl(), zt, zs, 5, 31)).epsilon(1e-12));
}

TEST_CASE("lim beta->0 JSD_beta / beta = forward KL", "[properties]") {
  auto zs = kdt::random_logits(3, 17, 3), zt = kdt::random_logits(3, 17, 4);
  const double fkl = kdt::ref_loss(divergence::forward_kl(), zs, zt, 3, 17);
  const double b = 1e-6;
  CHECK(kdt::ref_loss(divergence::jsd(b), zs, zt, 3, 17) / b == Approx(fkl).epsilon(1e-4));
}

TEST_CASE("divergences are >= 0 and invariant to adding a constant to a logits row", "[properties]") {
  auto zs = kdt::random_logits(4, 29, 5, 3.0), zt = kdt::random_logits(4, 29, 6, 3.0);
  auto zs2 = zs, zt2 = zt;
  for (std::size_t i = 0; i < zs2.size(); ++i) {
    zs2[i] += 17.5 * static_cast<double>(i / 29);
    zt2[i] -= 4.25;
  }
  for (const auto& d : kdt::kAllDivergences) {
    const double a = kdt::ref_loss(d, zs, zt, 4, 29), b = kdt::ref_loss(d, zs2, zt2, 4, 29);
    CHECK(a > 0.0);
    CHECK(a == Approx(b).epsilon(1e-12));
  }
}

TEMPLATE_TEST_CASE("bit-identical student and teacher give exactly 0 loss and 0 gradient (pitfalls 13, 17)",
                   "[properties][pitfalls]", float, kd::bfloat16, kd::half) {
  const std::int64_t rows = 3, cols = 50000;
  auto zd = kdt::random_logits(rows, cols, 9, 30.0, 0.01);
  std::vector<TestType> z(zd.size());
  for (std::size_t i = 0; i < z.size(); ++i) z[i] = kd::from_double<TestType>(zd[i]);
  kdt::for_each_backend([&](auto be, const char* name) {
    for (double t : {1.0, 0.7}) {
      kd::distill_options o;
      o.temperature = t;
      for (const auto& d : kdt::kAllDivergences) {
        auto c = kdt::run_call(d, z, z, rows, cols, o, be, true);
        INFO(name << " " << kd::divergence_name(d.kind) << "(" << d.param << ") T=" << t);
        REQUIRE(c.st.ok());
        CHECK(c.r.loss == 0.0);
        CHECK(std::all_of(c.gs.begin(), c.gs.end(), [](float g) { return g == 0.0f; }));
        CHECK(std::all_of(c.gt.begin(), c.gt.end(), [](float g) { return g == 0.0f; }));
      }
    }
  });
}

TEST_CASE("gradient rows sum to 0", "[properties]") {
  const std::int64_t rows = 4, cols = 301;
  auto zs = kdt::random_logits(rows, cols, 21, 4.0, 0.1), zt = kdt::random_logits(rows, cols, 22, 4.0, 0.1);
  // share the mask so forward and reverse KL are finite
  for (std::size_t i = 0; i < zs.size(); ++i)
    if (std::isinf(zs[i]) || std::isinf(zt[i])) zs[i] = zt[i] = kdt::ninf;
  for (const auto& d : kdt::kAllDivergences) {
    std::vector<double> g(zs.size()), gt(zt.size());
    kd::distill_outputs<double> out;
    out.grad_student = kd::mut_rows<double>(g.data(), rows, cols);
    out.grad_teacher = kd::mut_rows<double>(gt.data(), rows, cols);
    kd::loss_result r;
    kd::distill_options o;
    REQUIRE(kd::divergence_loss(d, kd::student_logits(zs.data(), rows, cols), kd::teacher_logits(zt.data(), rows, cols), o,
                                r, out, kd::reference_backend{})
                .ok());
    for (std::int64_t row = 0; row < rows; ++row) {
      double s = 0, st = 0, m = 0;
      for (std::int64_t j = 0; j < cols; ++j) {
        s += g[row * cols + j];
        st += gt[row * cols + j];
        m = std::max(m, std::abs(g[row * cols + j]));
      }
      INFO(kd::divergence_name(d.kind) << "(" << d.param << ") row " << row);
      CHECK(std::abs(s) <= 1e-14 * cols);
      CHECK(std::abs(st) <= 1e-14 * cols);
      CHECK(m > 0.0);
    }
  }
}
