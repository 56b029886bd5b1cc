// Finite-difference gradient checks (double reference) and fused-vs-reference checks, the same machinery as `kd gradcheck`.
#include <catch2/catch.hpp>

#include "gradcheck.hpp"
#include "test_util.hpp"

using namespace kdtool::gradcheck;

TEST_CASE("analytic gradients match central finite differences (student and teacher side)", "[gradcheck]") {
  for (std::uint32_t seed : {1u, 2u, 3u})
    for (double t : {1.0, 0.5, 3.0})
      for (const auto& c : kCases) {
        problem p = make_problem(seed * 100 + static_cast<std::uint32_t>(t * 10), 6, 23, t);
        INFO(c.name << " T=" << t << " seed=" << seed);
        CHECK(fd_check(c.d, p, false) < 1e-6);
        CHECK(fd_check(c.d, p, true) < 1e-6);
      }
}

TEST_CASE("T^2 scaling gradients match finite differences", "[gradcheck][temperature]") {
  for (const auto& c : kCases) {
    problem p = make_problem(7, 5, 19, 2.0);
    p.opt.t2_scale = true;
    INFO(c.name);
    CHECK(fd_check(c.d, p, false) < 1e-6);
  }
}

TEST_CASE("normalizer and sum reductions' gradients match finite differences", "[gradcheck][reduction]") {
  for (auto red : {kd::reduction::sum, kd::reduction::normalizer, kd::reduction::none}) {
    problem p = make_problem(11, 5, 17, 1.0);
    p.opt.reduction = red;
    p.opt.normalizer = 13.0;
    INFO(kd::reduction_name(red));
    CHECK(fd_check(kd::divergence::reverse_kl(), p, false) < 1e-6);
    CHECK(fd_check(kd::divergence::jsd(0.3), p, false) < 1e-6);
  }
}

TEST_CASE("the finite-difference check detects a wrong gradient", "[gradcheck][meta]") {
  // Forward KL's analytic gradient against reverse KL's loss must fail: the check can fail.
  problem p = make_problem(5, 4, 11, 1.0);
  std::vector<double> g_fkl(p.zs.size()), g_rkl(p.zs.size());
  loss_of(kd::divergence::forward_kl(), p, p.zs, p.zt, &g_fkl);
  loss_of(kd::divergence::reverse_kl(), p, p.zs, p.zt, &g_rkl);
  double diff = 0.0;
  for (std::size_t i = 0; i < g_fkl.size(); ++i) diff = std::max(diff, std::abs(g_fkl[i] - g_rkl[i]));
  CHECK(diff > 1e-2);
}

TEST_CASE("fused default backend matches the double reference for float32, bfloat16, float16", "[gradcheck][dtypes]") {
  for (double t : {1.0, 2.5})
    for (const auto& c : kCases) {
      problem p = make_problem(42, 6, 37, t);
      INFO(c.name << " T=" << t);
      auto f = fused_check<float>(c.d, p);
      CHECK(f.first < 2e-5);
      CHECK(f.second < 2e-5);
      auto b = fused_check<kd::bfloat16>(c.d, p);
      CHECK(b.first < 2e-5);
      CHECK(b.second < 2e-5);
      auto h = fused_check<kd::half>(c.d, p);
      CHECK(h.first < 2e-5);
      CHECK(h.second < 2e-5);
    }
}
