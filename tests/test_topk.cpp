// Top-k teacher distributions with a tail bucket on both sides (pitfalls 11, 12).
#include <catch2/catch.hpp>

#include "test_util.hpp"

namespace {

// Forward KL between a full teacher (restricted to top-k + tail) and the student, through the kd top-k API, in double.
double compressed_fkl(const std::vector<double>& zs, const std::vector<double>& teacher_lp,
                      const std::vector<std::int64_t>& idx, std::int64_t rows, std::int64_t v, std::int64_t k, double t,
                      std::vector<double>* grad = nullptr) {
  std::vector<double> tk(rows * k), tc(rows * (k + 1)), sc(rows * (k + 1));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = 0; i < k; ++i) tk[r * k + i] = teacher_lp[r * v + idx[r * k + i]];
  REQUIRE(kd::topk_with_tail_from_log_probs(kd::const_rows<double>(tk.data(), rows, k), kd::mut_rows<double>(tc.data(), rows, k + 1))
              .ok());
  kd::const_rows<std::int64_t> iv(idx.data(), rows, k);
  REQUIRE(kd::topk_with_tail(kd::const_rows<double>(zs.data(), rows, v), iv, t,
                                     kd::mut_rows<double>(sc.data(), rows, k + 1))
              .ok());
  std::vector<double> gc(rows * (k + 1));
  kd::distill_outputs<double> out;
  out.grad_student = kd::mut_rows<double>(gc.data(), rows, k + 1);
  kd::distill_options o;
  o.reduction = kd::reduction::sum;
  kd::loss_result res;
  REQUIRE(kd::forward_kl(kd::student_log_probs(sc.data(), rows, k + 1), kd::teacher_log_probs(tc.data(), rows, k + 1), o,
                         res, out, kd::reference_backend{})
              .ok());
  if (grad) {
    grad->assign(rows * v, 0.0);
    REQUIRE(kd::topk_with_tail_backward(kd::const_rows<double>(zs.data(), rows, v), iv, t,
                                      kd::const_rows<double>(gc.data(), rows, k + 1),
                                      kd::mut_rows<double>(grad->data(), rows, v))
                .ok());
  }
  return res.loss;
}

std::vector<double> log_softmax_rows(const std::vector<double>& z, std::int64_t rows, std::int64_t v, double t) {
  std::vector<double> out(z.size());
  REQUIRE(kd::log_softmax(kd::const_rows<double>(z.data(), rows, v), kd::mut_rows<double>(out.data(), rows, v), t).ok());
  return out;
}

}  // namespace

TEST_CASE("pitfall 12: the tail mass of a top-k support is computed from a log-sum-exp, not 1 - sum", "[pitfalls][topk]") {
  // one dominant logit: the top-1 probability is 1 - 999 e^-30 (tail 9.4e-11), which rounds to 1 in float32
  const std::int64_t v = 1000;
  std::vector<float> z(v, 0.f);
  z[7] = 30.f;
  std::vector<std::int64_t> idx = {7};
  std::vector<float> sc(2);
  REQUIRE(kd::topk_with_tail(kd::const_rows<float>(z.data(), 1, v), kd::const_rows<std::int64_t>(idx.data(), 1, 1), 1.0,
                             kd::mut_rows<float>(sc.data(), 1, 2))
              .ok());
  const double tail = std::log(999.0) - (30.0 + std::log1p(999.0 * std::exp(-30.0)));
  CHECK(sc[1] == Approx(tail).epsilon(1e-6));
  const float p_top = std::exp(sc[0]);
  CHECK(std::isinf(std::log(1.0f - p_top)));  // what subtracting probabilities in float32 gives
  // the same from stored top-k log-probs (e.g. a teacher saved as top-k): exact to the stored log-prob's precision
  std::vector<float> tk = {sc[0]}, tc(2);
  REQUIRE(kd::topk_with_tail_from_log_probs(kd::const_rows<float>(tk.data(), 1, 1), kd::mut_rows<float>(tc.data(), 1, 2))
              .ok());
  CHECK(tc[1] == Approx(std::log(-std::expm1(double(tk[0])))).epsilon(1e-6));  // the contract: log1mexp of the stored value
  // the stored log-prob (-9.4e-11) carries the absolute rounding of logsumexp near 30 (~4e-15), i.e. ~4e-5 relative
  CHECK(tc[1] == Approx(tail).epsilon(1e-4));
}

TEST_CASE("pitfall 11: with k = V - 1 the tail bucket is the last token and the compressed KL is the full KL",
          "[pitfalls][topk]") {
  const std::int64_t rows = 2, v = 6, k = 5;
  auto zs = kdt::random_logits(rows, v, 301), zt = kdt::random_logits(rows, v, 302);
  auto tlp = log_softmax_rows(zt, rows, v, 1.0);
  std::vector<std::int64_t> idx = {3, 0, 5, 1, 2, 4, 0, 2, 1, 3};  // row 0 leaves out 4, row 1 leaves out 5
  const double full = kdt::ref_loss(kd::divergence::forward_kl(), zs, zt, rows, v);
  CHECK(compressed_fkl(zs, tlp, idx, rows, v, k, 1.0) == Approx(full).epsilon(1e-12));
}

TEST_CASE("top-k compression: the composed gradient matches finite differences, and compression never increases KL",
          "[topk][gradcheck]") {
  const std::int64_t rows = 3, v = 40, k = 6;
  auto zs = kdt::random_logits(rows, v, 311, 2.0, 0.1), zt = kdt::random_logits(rows, v, 312, 3.0);
  for (std::size_t i = 0; i < zs.size(); ++i)  // shared mask: the full forward KL stays finite
    if (std::isinf(zs[i])) zt[i] = zs[i];
  for (double t : {1.0, 2.0}) {
    auto tlp = log_softmax_rows(zt, rows, v, t);
    std::vector<std::int64_t> idx(rows * k);
    for (std::int64_t r = 0; r < rows; ++r) {  // the teacher's true top-k
      std::vector<std::int64_t> order(v);
      for (std::int64_t j = 0; j < v; ++j) order[j] = j;
      std::partial_sort(order.begin(), order.begin() + k, order.end(),
                        [&](auto a, auto b) { return tlp[r * v + a] > tlp[r * v + b]; });
      for (std::int64_t i = 0; i < k; ++i) idx[r * k + i] = order[i];
    }
    std::vector<double> g;
    const double l = compressed_fkl(zs, tlp, idx, rows, v, k, t, &g);
    kd::distill_options o;
    o.temperature = t;
    o.reduction = kd::reduction::sum;
    kd::loss_result full;
    REQUIRE(kd::forward_kl(kd::student_logits(zs.data(), rows, v), kd::teacher_logits(zt.data(), rows, v), o, full, {},
                           kd::reference_backend{})
                .ok());
    CHECK(l <= full.loss + 1e-12);  // data-processing inequality
    double gmax = 0;
    for (double x : g) gmax = std::max(gmax, std::abs(x));
    for (std::int64_t i = 0; i < rows * v; ++i) {
      if (std::isinf(zs[i])) {
        CHECK(g[i] == 0.0);
        continue;
      }
      auto zp = zs, zm = zs;
      zp[i] += 1e-6;
      zm[i] -= 1e-6;
      const double fd = (compressed_fkl(zp, tlp, idx, rows, v, k, t) - compressed_fkl(zm, tlp, idx, rows, v, k, t)) / 2e-6;
      INFO("T " << t << " entry " << i);
      CHECK(std::abs(g[i] - fd) <= 1e-7 * gmax);
    }
  }
}

TEST_CASE("top-k index errors are reported before writing", "[topk][errors]") {
  std::vector<float> z(8, 0.f), out(3, 5.f);
  std::vector<std::int64_t> dup = {1, 1, 2, 3}, oob = {1, 9, 2, 3};
  auto st = kd::topk_with_tail(kd::const_rows<float>(z.data(), 2, 4), kd::const_rows<std::int64_t>(dup.data(), 2, 2),
                                       1.0, kd::mut_rows<float>(out.data(), 2, 3));
  CHECK(st.code == kd::errc::invalid_argument);
  CHECK(std::string(st.argument) == "indices");
  st = kd::topk_with_tail(kd::const_rows<float>(z.data(), 2, 4), kd::const_rows<std::int64_t>(oob.data(), 2, 2),
                                  1.0, kd::mut_rows<float>(out.data(), 2, 3));
  CHECK(st.code == kd::errc::invalid_argument);
  CHECK(out == std::vector<float>(3, 5.f));
}
