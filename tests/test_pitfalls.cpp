// Every fault class of shared/reference/pitfalls.md (1-18; 19-20 are policy-gradient ones, see test_pg_*.cpp) with its
// concrete inputs, on the reference backend and the default backend.
#include <catch2/catch.hpp>

#include <type_traits>

#include "test_util.hpp"

using kd::divergence;
static const float kInf = std::numeric_limits<float>::infinity();

TEST_CASE("pitfall 1: JSD mixture with both probabilities below fp32 range stays finite (log space)", "[pitfalls]") {
  // log-probs far below -104: exp underflows to 0 in fp32 on both sides.
  std::vector<float> zs = {0.f, -150.f, -300.f, -900.f}, zt = {0.f, -400.f, -200.f, -1000.f};
  std::vector<double> zsd(zs.begin(), zs.end()), ztd(zt.begin(), zt.end());
  kdt::for_each_backend([&](auto be, const char* name) {
    for (double b : {0.1, 0.5, 0.9}) {
      auto c = kdt::run_call(divergence::jsd(b), zs, zt, 1, 4, {}, be, true);
      INFO(name << " beta " << b);
      REQUIRE(c.st.ok());
      CHECK(std::isfinite(c.r.loss));
      CHECK(c.r.loss == Approx(kdt::ref_loss(divergence::jsd(b), zsd, ztd, 1, 4)).margin(1e-12));
      for (float g : c.gs) CHECK(std::isfinite(g));
      for (float g : c.gt) CHECK(std::isfinite(g));
    }
  });
}

TEST_CASE("pitfall 2: masked logits meeting zero probability give 0 * (-inf) = 0", "[pitfalls]") {
  kdt::for_each_backend([&](auto be, const char* name) {
    INFO(name);
    // student logits [-inf, 0], teacher probs [0, 1] (as log-probs [-inf, 0]): forward KL = 0
    std::vector<float> s = {-kInf, 0.f}, t = {-kInf, 0.f};
    auto c = kdt::run_call(divergence::forward_kl(), s, t, 1, 2, {}, be, false, kd::input_kind::logits,
                           kd::input_kind::log_probs);
    REQUIRE(c.st.ok());
    CHECK(c.r.loss == 0.0);
    // student logits [2, 1, -inf], teacher logits [1, 2, -inf]: forward KL = 0.4621172
    std::vector<float> s2 = {2.f, 1.f, -kInf}, t2 = {1.f, 2.f, -kInf};
    auto c2 = kdt::run_call(divergence::forward_kl(), s2, t2, 1, 3, {}, be);
    REQUIRE(c2.st.ok());
    CHECK(c2.r.loss == Approx(0.4621172).epsilon(1e-6));
  });
}

TEST_CASE("pitfall 3: -inf logits get exactly 0 gradient and the others stay finite, every loss", "[pitfalls]") {
  std::vector<float> s = {1.f, -kInf, 0.5f, -kInf, -2.f}, t = {0.f, -kInf, 2.f, -kInf, 1.f};
  kdt::for_each_backend([&](auto be, const char* name) {
    for (const auto& d : kdt::kAllDivergences)
      for (double temp : {1.0, 0.3}) {
        kd::distill_options o;
        o.temperature = temp;
        auto c = kdt::run_call(d, s, t, 1, 5, o, be, true);
        INFO(name << " " << kd::divergence_name(d.kind) << "(" << d.param << ") T=" << temp);
        REQUIRE(c.st.ok());
        CHECK(c.gs[1] == 0.0f);
        CHECK(c.gs[3] == 0.0f);
        CHECK(c.gt[1] == 0.0f);
        CHECK(c.gt[3] == 0.0f);
        for (int j : {0, 2, 4}) {
          CHECK(std::isfinite(c.gs[j]));
          CHECK(std::isfinite(c.gt[j]));
        }
      }
  });
  // softmax and log-softmax backward
  std::vector<double> x = {1.0, -INFINITY, 2.0}, y(3), ly(3), dy = {0.3, 5.0, -1.0}, dx(3);
  REQUIRE(kd::softmax(kd::const_rows<double>(x.data(), 1, 3), kd::mut_rows<double>(y.data(), 1, 3)).ok());
  REQUIRE(kd::log_softmax(kd::const_rows<double>(x.data(), 1, 3), kd::mut_rows<double>(ly.data(), 1, 3)).ok());
  REQUIRE(kd::softmax_backward(kd::const_rows<double>(y.data(), 1, 3), kd::const_rows<double>(dy.data(), 1, 3),
                               kd::mut_rows<double>(dx.data(), 1, 3))
              .ok());
  CHECK(dx[1] == 0.0);
  REQUIRE(kd::log_softmax_backward(kd::const_rows<double>(ly.data(), 1, 3), kd::const_rows<double>(dy.data(), 1, 3),
                                   kd::mut_rows<double>(dx.data(), 1, 3))
              .ok());
  CHECK(dx[1] == 0.0);
  CHECK(std::isfinite(dx[0]));
}

TEST_CASE("pitfall 4: fully masked rows contribute 0, leave the mean's denominator, get zero gradient", "[pitfalls]") {
  const std::int64_t cols = 3;
  std::vector<float> s = {1.f, 2.f, 3.f, -kInf, -kInf, -kInf, 0.f, 1.f, 0.f};
  std::vector<float> t = {3.f, 2.f, 1.f, -kInf, -kInf, -kInf, 1.f, 0.f, 0.f};
  std::vector<double> sd(s.begin(), s.end()), td(t.begin(), t.end());
  std::vector<double> s0 = {1, 2, 3}, t0 = {3, 2, 1}, s2 = {0, 1, 0}, t2 = {1, 0, 0};
  kdt::for_each_backend([&](auto be, const char* name) {
    for (const auto& d : kdt::kAllDivergences) {
      auto c = kdt::run_call(d, s, t, 3, cols, {}, be, true);
      INFO(name << " " << kd::divergence_name(d.kind));
      REQUIRE(c.st.ok());
      CHECK(c.r.valid_rows == 2);
      const double expect = (kdt::ref_loss(d, s0, t0, 1, 3) + kdt::ref_loss(d, s2, t2, 1, 3)) / 2;
      CHECK(c.r.loss == Approx(expect).epsilon(1e-6));
      CHECK(c.per_row[1] == 0.0f);
      for (int j = 0; j < 3; ++j) {
        CHECK(c.gs[3 + j] == 0.0f);
        CHECK(c.gt[3 + j] == 0.0f);
      }
      for (float g : c.gs) CHECK(std::isfinite(g));
    }
  });
}

TEST_CASE("pitfall 5: every row ignored gives loss 0 and gradient 0, not 0/0", "[pitfalls]") {
  std::vector<float> s = {1.f, 2.f, 3.f, 0.f, 0.f, 1.f}, t = {3.f, 2.f, 1.f, 1.f, 0.f, 0.f};
  std::vector<std::int64_t> labels = {-100, -100};
  kd::distill_options o;
  o.labels = kd::label_view(labels.data(), 2);
  kdt::for_each_backend([&](auto be, const char* name) {
    for (const auto& d : kdt::kAllDivergences) {
      auto c = kdt::run_call(d, s, t, 2, 3, o, be, true);
      INFO(name << " " << kd::divergence_name(d.kind));
      REQUIRE(c.st.ok());
      CHECK(c.r.loss == 0.0);
      CHECK(c.r.valid_rows == 0);
      for (float g : c.gs) CHECK(g == 0.0f);
      for (float g : c.gt) CHECK(g == 0.0f);
    }
  });
}

TEST_CASE("pitfall 6: ignore_index is honoured and the mean divides by the non-ignored rows", "[pitfalls]") {
  const std::int64_t rows = 3, cols = 7;
  auto sd = kdt::random_logits(rows, cols, 31), td = kdt::random_logits(rows, cols, 32);
  std::vector<float> s(sd.begin(), sd.end()), t(td.begin(), td.end());
  std::vector<std::int32_t> labels = {5, 7, -100};
  kdt::for_each_backend([&](auto be, const char* name) {
    INFO(name);
    kd::distill_options sum;
    sum.reduction = kd::reduction::sum;
    auto all = kdt::run_call(divergence::reverse_kl(), s, t, rows, cols, sum, be);
    kd::distill_options o;
    o.labels = kd::label_view(labels.data(), rows);
    auto c = kdt::run_call(divergence::reverse_kl(), s, t, rows, cols, o, be);
    REQUIRE(c.st.ok());
    CHECK(c.r.valid_rows == 2);
    CHECK(c.r.loss == Approx((all.per_row[0] + all.per_row[1]) / 2.0).epsilon(1e-6));
    for (std::int64_t j = 0; j < cols; ++j) {
      CHECK(c.gs[2 * cols + j] == 0.0f);
      CHECK(c.gs[j] == Approx(all.gs[j] / 2).margin(1e-7));
      CHECK(c.gs[cols + j] == Approx(all.gs[cols + j] / 2).margin(1e-7));
    }
  });
  // The concrete numbers of pitfall 6: per-row losses [0.1, 0.2, 0.9] with labels [5, 7, -100] -> mean 0.15.
  // Rows with forward KL exactly 0.1, 0.2 and 0.9 are built from two-entry distributions solved numerically.
  std::vector<double> s3, t3;
  kdt::rows_with_forward_kl({0.1, 0.2, 0.9}, s3, t3);
  std::vector<std::int64_t> l3 = {5, 7, -100};
  kd::distill_options o3;
  o3.labels = kd::label_view(l3.data(), 3);
  kd::loss_result r;
  std::vector<float> per_row(3);
  kd::distill_outputs<double> out;
  out.per_row = per_row.data();
  REQUIRE(kd::forward_kl(kd::student_logits(s3.data(), 3, 2), kd::teacher_logits(t3.data(), 3, 2), o3, r, out,
                         kd::reference_backend{})
              .ok());
  CHECK(r.loss == Approx(0.15).epsilon(1e-12));
  CHECK(per_row[2] == 0.0f);
}

TEST_CASE("pitfall 7: reductions (per row, sum, token mean; not rows*vocab) and 3-D flattening", "[pitfalls][reduction]") {
  std::vector<double> p = {0.2, 0.3, 0.5, 0.1, 0.1, 0.8}, q = {0.3, 0.3, 0.4, 0.2, 0.5, 0.3};
  std::vector<float> lp(6), lq(6);
  for (int i = 0; i < 6; ++i) {
    lp[i] = static_cast<float>(std::log(p[i]));
    lq[i] = static_cast<float>(std::log(q[i]));
  }
  kdt::for_each_backend([&](auto be, const char* name) {
    INFO(name);
    kd::distill_options o;
    o.reduction = kd::reduction::none;
    // the same data as [batch 1, time 2, vocab 3]
    auto rows3 = kd::rows_of_3d(lq.data(), 1, 2, 3);
    REQUIRE(rows3.rows == 2);
    auto c = kdt::run_call(divergence::forward_kl(), lq, lp, rows3.rows, rows3.cols, o, be, false,
                           kd::input_kind::log_probs, kd::input_kind::log_probs);
    REQUIRE(c.st.ok());
    CHECK(c.per_row[0] == Approx(0.0304788).epsilon(1e-5));
    CHECK(c.per_row[1] == Approx(0.5544049).epsilon(1e-6));
    o.reduction = kd::reduction::sum;
    CHECK(kdt::run_call(divergence::forward_kl(), lq, lp, 2, 3, o, be, false, kd::input_kind::log_probs,
                        kd::input_kind::log_probs)
              .r.loss == Approx(0.5848836).epsilon(1e-6));
    o.reduction = kd::reduction::mean;
    const double mean = kdt::run_call(divergence::forward_kl(), lq, lp, 2, 3, o, be, false, kd::input_kind::log_probs,
                                      kd::input_kind::log_probs)
                            .r.loss;
    CHECK(mean == Approx(0.2924418).epsilon(1e-6));
    CHECK(mean != Approx(0.0974806).epsilon(1e-3));
  });
}

TEST_CASE("pitfall 8: teacher and student cannot be swapped silently; declared log-probs are checked", "[pitfalls]") {
  static_assert(!std::is_convertible_v<kd::teacher_input<float>, kd::student_input<float>>);
  static_assert(!std::is_convertible_v<kd::student_input<float>, kd::teacher_input<float>>);
  // logits passed as log-probs (logsumexp far from 0) are reported, naming the side
  std::vector<float> s = {1.f, 2.f, 3.f}, t = {std::log(0.2f), std::log(0.3f), std::log(0.5f)};
  kdt::for_each_backend([&](auto be, const char* name) {
    INFO(name);
    auto c = kdt::run_call(divergence::forward_kl(), s, t, 1, 3, {}, be, false, kd::input_kind::log_probs,
                           kd::input_kind::log_probs);
    CHECK(c.st.code == kd::errc::not_normalized);
    CHECK(std::string(c.st.argument) == "student");
    CHECK(c.st.row == 0);
    auto ok = kdt::run_call(divergence::forward_kl(), s, t, 1, 3, {}, be, false, kd::input_kind::logits,
                            kd::input_kind::log_probs);
    CHECK(ok.st.ok());
  });
}

TEST_CASE("pitfall 10: different padded vocabularies need an explicit view of the shared vocabulary", "[pitfalls]") {
  // student padded to 6 columns, teacher 4: a plain call is an error; a strided view over the first 4 columns is the policy.
  std::vector<float> s = {1, 2, 3, 4, 0, 0, 4, 3, 2, 1, 0, 0}, t = {4, 3, 2, 1, 1, 2, 3, 4};
  std::vector<float> s_tight = {1, 2, 3, 4, 4, 3, 2, 1};
  kd::loss_result r;
  kd::distill_options o;
  auto st = kd::forward_kl(kd::student_logits(s.data(), 2, 6), kd::teacher_logits(t.data(), 2, 4), o, r);
  CHECK(st.code == kd::errc::invalid_argument);
  CHECK(std::string(st.argument) == "teacher");
  kdt::for_each_backend([&](auto be, const char* name) {
    INFO(name);
    kd::loss_result a, b;
    std::vector<float> g(12, 5.0f), g_tight(8);
    kd::distill_outputs<float> out, out_tight;
    out.grad_student = kd::mut_rows<float>(g.data(), 2, 4, 6);
    out_tight.grad_student = kd::mut_rows<float>(g_tight.data(), 2, 4);
    REQUIRE(kd::forward_kl(kd::student_logits(s.data(), 2, 4, 6), kd::teacher_logits(t.data(), 2, 4), o, a, out, be).ok());
    REQUIRE(kd::forward_kl(kd::student_logits(s_tight.data(), 2, 4), kd::teacher_logits(t.data(), 2, 4), o, b, out_tight,
                           be)
                .ok());
    CHECK(a.loss == b.loss);
    for (int r2 = 0; r2 < 2; ++r2) {
      for (int j = 0; j < 4; ++j) CHECK(g[r2 * 6 + j] == g_tight[r2 * 4 + j]);
      CHECK(g[r2 * 6 + 4] == 5.0f);  // padding columns are outside the view: untouched
      CHECK(g[r2 * 6 + 5] == 5.0f);
    }
  });
}

TEST_CASE("pitfall 14: low temperature with float16 inputs stays finite", "[pitfalls][temperature]") {
  auto zd = kdt::random_logits(4, 257, 41, 8.0, 0.05), td = kdt::random_logits(4, 257, 42, 8.0, 0.0);
  for (std::size_t i = 0; i < zd.size(); ++i)
    if (std::isinf(zd[i])) td[i] = zd[i];
  std::vector<kd::half> zs(zd.size()), zt(td.size());
  for (std::size_t i = 0; i < zd.size(); ++i) {
    zs[i] = kd::from_double<kd::half>(zd[i]);
    zt[i] = kd::from_double<kd::half>(td[i]);
  }
  kd::distill_options o;
  o.temperature = 0.05;
  kdt::for_each_backend([&](auto be, const char* name) {
    for (const auto& d : kdt::kAllDivergences) {
      auto c = kdt::run_call(d, zs, zt, 4, 257, o, be, true);
      INFO(name << " " << kd::divergence_name(d.kind) << "(" << d.param << ")");
      REQUIRE(c.st.ok());
      CHECK(std::isfinite(c.r.loss));
      CHECK(std::none_of(c.gs.begin(), c.gs.end(), [](float g) { return std::isnan(g); }));
      CHECK(std::none_of(c.gt.begin(), c.gt.end(), [](float g) { return std::isnan(g); }));
    }
  });
}

TEST_CASE("pitfall 18: gradient accumulation with a global token count equals one big batch", "[pitfalls][reduction]") {
  const std::int64_t cols = 9;
  auto sd = kdt::random_logits(4, cols, 51), td = kdt::random_logits(4, cols, 52);
  std::vector<float> s(sd.begin(), sd.end()), t(td.begin(), td.end());
  kdt::for_each_backend([&](auto be, const char* name) {
    INFO(name);
    auto big = kdt::run_call(divergence::jsd(0.5), s, t, 4, cols, {}, be);
    kd::distill_options o;
    o.reduction = kd::reduction::normalizer;
    o.normalizer = 4.0;  // global number of valid tokens
    std::vector<float> sa(s.begin(), s.begin() + cols), ta(t.begin(), t.begin() + cols);
    std::vector<float> sb(s.begin() + cols, s.end()), tb(t.begin() + cols, t.end());
    auto a = kdt::run_call(divergence::jsd(0.5), sa, ta, 1, cols, o, be);  // micro-batch A: 1 token
    auto b = kdt::run_call(divergence::jsd(0.5), sb, tb, 3, cols, o, be);  // micro-batch B: 3 tokens
    CHECK(a.r.loss + b.r.loss == Approx(big.r.loss).epsilon(1e-6));
    for (std::int64_t j = 0; j < cols; ++j) CHECK(a.gs[j] == Approx(big.gs[j]).margin(1e-8));
    for (std::int64_t j = 0; j < 3 * cols; ++j) CHECK(b.gs[j] == Approx(big.gs[cols + j]).margin(1e-8));
  });
  // The pitfall's numbers: A one token with loss 1, B three tokens with loss 3 each: 10 / 4 = 2.5, not (1 + 3) / 2.
  std::vector<double> sA, tA, sB, tB;
  kdt::rows_with_forward_kl({1.0}, sA, tA);
  kdt::rows_with_forward_kl({3.0, 3.0, 3.0}, sB, tB);
  kd::distill_options o;
  o.reduction = kd::reduction::normalizer;
  o.normalizer = 4.0;
  kd::loss_result ra, rb;
  REQUIRE(kd::forward_kl(kd::student_logits(sA.data(), 1, 2), kd::teacher_logits(tA.data(), 1, 2), o, ra).ok());
  REQUIRE(kd::forward_kl(kd::student_logits(sB.data(), 3, 2), kd::teacher_logits(tB.data(), 3, 2), o, rb).ok());
  CHECK(ra.loss + rb.loss == Approx(2.5).epsilon(1e-9));
}
