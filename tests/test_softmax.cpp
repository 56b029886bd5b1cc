// softmax / log_softmax / log_sum_exp forward and backward with temperature, against double math and finite differences.
#include <catch2/catch.hpp>

#include "test_util.hpp"

TEST_CASE("log_softmax is computed in log space and matches double math", "[softmax]") {
  std::vector<float> x = {1000.f, 0.f, -1000.f, -INFINITY, 3.f, 1.f, 2.f, 0.f};
  std::vector<float> ly(8), y(8), lse(2);
  for (double t : {1.0, 0.05, 4.0}) {
    REQUIRE(kd::log_softmax(kd::const_rows<float>(x.data(), 2, 4), kd::mut_rows<float>(ly.data(), 2, 4), t).ok());
    REQUIRE(kd::softmax(kd::const_rows<float>(x.data(), 2, 4), kd::mut_rows<float>(y.data(), 2, 4), t).ok());
    REQUIRE(kd::log_sum_exp(kd::const_rows<float>(x.data(), 2, 4), t, lse.data()).ok());
    for (int r = 0; r < 2; ++r) {
      double m = -INFINITY;
      for (int j = 0; j < 4; ++j) m = std::max(m, double(x[r * 4 + j]) / t);
      double s = 0;
      for (int j = 0; j < 4; ++j) s += std::exp(double(x[r * 4 + j]) / t - m);
      const double l = m + std::log(s);
      CHECK(lse[r] == Approx(l).epsilon(1e-7));
      for (int j = 0; j < 4; ++j) {
        const double e = double(x[r * 4 + j]) / t - l;
        if (std::isinf(e)) {
          CHECK(ly[r * 4 + j] == -INFINITY);
          CHECK(y[r * 4 + j] == 0.0f);
        } else {
          CHECK(ly[r * 4 + j] == Approx(e).margin(1e-4).epsilon(1e-6));  // finite even where exp underflows (pitfall 14)
          CHECK(y[r * 4 + j] == Approx(std::exp(e)).margin(1e-30));
        }
      }
    }
  }
}

TEST_CASE("softmax and log_softmax backward match finite differences", "[softmax][gradcheck]") {
  const std::int64_t cols = 9;
  auto x = kdt::random_logits(1, cols, 91, 2.0, 0.2);
  std::vector<double> w = kdt::random_logits(1, cols, 92);  // loss = sum_j w_j * f(x)_j
  for (double t : {1.0, 0.7}) {
    for (int mode = 0; mode < 2; ++mode) {
      auto f = [&](const std::vector<double>& xx) {
        std::vector<double> y(cols);
        kd::const_rows<double> in(xx.data(), 1, cols);
        kd::mut_rows<double> out(y.data(), 1, cols);
        (void)(mode == 0 ? kd::softmax(in, out, t) : kd::log_softmax(in, out, t));
        double l = 0;
        for (std::int64_t j = 0; j < cols; ++j)
          if (!std::isinf(y[j])) l += w[j] * y[j];
        return std::make_pair(l, y);
      };
      auto [l0, y] = f(x);
      std::vector<double> dy = w, dx(cols);
      if (mode == 0)
        REQUIRE(kd::softmax_backward(kd::const_rows<double>(y.data(), 1, cols), kd::const_rows<double>(dy.data(), 1, cols),
                                     kd::mut_rows<double>(dx.data(), 1, cols), t)
                    .ok());
      else
        REQUIRE(kd::log_softmax_backward(kd::const_rows<double>(y.data(), 1, cols),
                                         kd::const_rows<double>(dy.data(), 1, cols),
                                         kd::mut_rows<double>(dx.data(), 1, cols), t)
                    .ok());
      for (std::int64_t j = 0; j < cols; ++j) {
        INFO("mode " << mode << " T " << t << " j " << j);
        if (std::isinf(x[j])) {
          CHECK(dx[j] == 0.0);
          continue;
        }
        auto xp = x, xm = x;
        xp[j] += 1e-6;
        xm[j] -= 1e-6;
        const double fd = (f(xp).first - f(xm).first) / 2e-6;
        CHECK(dx[j] == Approx(fd).margin(1e-8));
      }
    }
  }
}

TEST_CASE("softmax on a fully masked row is 0 and NaN input is reported", "[softmax][errors]") {
  std::vector<float> x = {-INFINITY, -INFINITY, 1.f, NAN}, y(4, 5.f);
  auto st = kd::softmax(kd::const_rows<float>(x.data(), 2, 2), kd::mut_rows<float>(y.data(), 2, 2));
  CHECK(st.code == kd::errc::non_finite_input);
  CHECK(st.row == 1);
  CHECK(y[0] == 0.0f);
  CHECK(y[1] == 0.0f);
  CHECK(std::isnan(y[2]));
  std::vector<float> y2(4, 5.f);
  auto bad = kd::softmax(kd::const_rows<float>(x.data(), 2, 2), kd::mut_rows<float>(y2.data(), 2, 2), 0.0);
  CHECK(bad.code == kd::errc::invalid_argument);
  CHECK(std::string(bad.argument) == "temperature");
  CHECK(y2 == std::vector<float>(4, 5.f));
}
