// Reductions, row weights, strided rows, 3-D tensors, in-place gradients, teacher gradients; every backend.
#include <catch2/catch.hpp>

#include "test_util.hpp"

using kd::divergence;

TEST_CASE("reductions and row weights", "[reduction]") {
  const std::int64_t rows = 4, cols = 13;
  auto sd = kdt::random_logits(rows, cols, 61), td = kdt::random_logits(rows, cols, 62);
  std::vector<float> s(sd.begin(), sd.end()), t(td.begin(), td.end());
  std::vector<float> w = {0.5f, 2.0f, 0.0f, 1.5f};
  kdt::for_each_backend([&](auto be, const char* name) {
    for (const auto& d : kdt::kAllDivergences) {
      INFO(name << " " << kd::divergence_name(d.kind) << "(" << d.param << ")");
      kd::distill_options none;
      none.reduction = kd::reduction::none;
      auto n = kdt::run_call(d, s, t, rows, cols, none, be);
      REQUIRE(n.st.ok());
      double sum = 0;
      for (float v : n.per_row) sum += v;
      CHECK(n.r.loss == Approx(sum).epsilon(1e-6));
      kd::distill_options wo;
      wo.row_weights = w.data();
      auto m = kdt::run_call(d, s, t, rows, cols, wo, be);
      REQUIRE(m.st.ok());
      CHECK(m.r.valid_rows == 3);
      CHECK(m.r.denominator == Approx(4.0));
      const double expect = (0.5 * n.per_row[0] + 2.0 * n.per_row[1] + 1.5 * n.per_row[3]) / 4.0;
      CHECK(m.r.loss == Approx(expect).epsilon(1e-6));
      for (std::int64_t j = 0; j < cols; ++j) {
        CHECK(m.gs[cols + j] == Approx(n.gs[cols + j] * 2.0 / 4.0).margin(1e-7));
        CHECK(m.gs[2 * cols + j] == 0.0f);
      }
      CHECK(m.per_row[1] == Approx(2.0 * n.per_row[1]).epsilon(1e-6));
      CHECK(m.per_row[2] == 0.0f);
    }
  });
}

TEST_CASE("strided rows, 3-D tensors and in-place gradients give the contiguous results", "[strides][inplace]") {
  const std::int64_t b = 2, tt = 3, v = 11, rows = b * tt, stride = 16;
  auto sd = kdt::random_logits(rows, v, 71, 3.0, 0.1), td = kdt::random_logits(rows, v, 72, 3.0, 0.0);
  for (std::size_t i = 0; i < sd.size(); ++i)
    if (std::isinf(sd[i])) td[i] = sd[i];
  std::vector<float> s(sd.begin(), sd.end()), t(td.begin(), td.end());
  std::vector<float> s_str(rows * stride, 99.f), t_str(rows * stride, -99.f);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t j = 0; j < v; ++j) {
      s_str[r * stride + j] = s[r * v + j];
      t_str[r * stride + j] = t[r * v + j];
    }
  kdt::for_each_backend([&](auto be, const char* name) {
    for (const auto& d : kdt::kAllDivergences) {
      INFO(name << " " << kd::divergence_name(d.kind) << "(" << d.param << ")");
      auto ref = kdt::run_call(d, s, t, rows, v, {}, be, true);
      REQUIRE(ref.st.ok());
      // strided inputs and strided outputs
      std::vector<float> gs(rows * stride, 5.f), gt(rows * stride, 5.f);
      kd::distill_outputs<float> out;
      out.grad_student = kd::mut_rows<float>(gs.data(), rows, v, stride);
      out.grad_teacher = kd::mut_rows<float>(gt.data(), rows, v, stride);
      kd::loss_result r;
      REQUIRE(kd::divergence_loss(d, kd::student_logits(s_str.data(), rows, v, stride),
                                  kd::teacher_logits(t_str.data(), rows, v, stride), {}, r, out, be)
                  .ok());
      CHECK(r.loss == ref.r.loss);
      for (std::int64_t row = 0; row < rows; ++row)
        for (std::int64_t j = 0; j < stride; ++j) {
          if (j < v) {
            CHECK(gs[row * stride + j] == ref.gs[row * v + j]);
            CHECK(gt[row * stride + j] == ref.gt[row * v + j]);
          } else {
            CHECK(gs[row * stride + j] == 5.f);
          }
        }
      // [B, T, V] view and gradient written in place over the student (and teacher) buffers
      std::vector<float> s_in = s, t_in = t;
      auto sv = kd::rows_of_3d(s_in.data(), b, tt, v);
      auto tv = kd::rows_of_3d(t_in.data(), b, tt, v);
      kd::distill_outputs<float> inplace;
      inplace.grad_student = sv;
      inplace.grad_teacher = tv;
      kd::loss_result r2;
      REQUIRE(kd::divergence_loss(d, kd::student_input<float>{sv, kd::input_kind::logits},
                                  kd::teacher_input<float>{tv, kd::input_kind::logits}, {}, r2, inplace, be)
                  .ok());
      CHECK(r2.loss == ref.r.loss);
      CHECK(s_in == ref.gs);
      CHECK(t_in == ref.gt);
    }
  });
}

TEST_CASE("gradients in the input dtype (bfloat16 in place)", "[dtypes][inplace]") {
  const std::int64_t rows = 3, v = 64;
  auto sd = kdt::random_logits(rows, v, 81), td = kdt::random_logits(rows, v, 82);
  std::vector<kd::bfloat16> s(sd.size()), t(td.size());
  for (std::size_t i = 0; i < sd.size(); ++i) {
    s[i] = kd::from_double<kd::bfloat16>(sd[i]);
    t[i] = kd::from_double<kd::bfloat16>(td[i]);
  }
  kdt::for_each_backend([&](auto be, const char* name) {
    INFO(name);
    auto ref = kdt::run_call(divergence::reverse_kl(), s, t, rows, v, {}, be);
    std::vector<kd::bfloat16> g = s;
    kd::distill_outputs<kd::bfloat16> out;
    out.grad_student = kd::mut_rows<kd::bfloat16>(g.data(), rows, v);
    kd::loss_result r;
    REQUIRE(kd::reverse_kl(kd::student_logits(g.data(), rows, v), kd::teacher_logits(t.data(), rows, v), {}, r, out, be)
                .ok());
    CHECK(r.loss == ref.r.loss);
    for (std::size_t i = 0; i < g.size(); ++i)
      CHECK(static_cast<float>(g[i]) == static_cast<float>(kd::from_float<kd::bfloat16>(ref.gs[i])));
  });
}

TEST_CASE("in-place gradients with a fully masked row under the token mean equal the out-of-place ones",
          "[reduction][inplace]") {
  // A fully masked row is found in pass 1 and changes the mean's denominator; the rows are then computed again with the
  // corrected scale, which must not read a student (or teacher) buffer that pass 1 overwrote with its gradient (it
  // did: the second pass took gradients for logits, loss 0.127 instead of 0.262 here). In place the written rows are
  // rescaled instead; f = 3/2 exactly here, so float32 results agree to one rounding of each entry.
  const std::int64_t rows = 3, cols = 5;
  const float nf = -std::numeric_limits<float>::infinity();
  const std::vector<float> zs = {1, 2, 3, 4, 5, nf, nf, nf, nf, nf, 0.5f, 0.1f, 0.2f, 0.3f, 0.9f};
  const std::vector<float> zt = {2, 1, 0, 1, 2, 1, 1, 1, 1, 1, 0.1f, 0.2f, 0.3f, 0.4f, 0.5f};
  kd::distill_options o;
  kdt::for_each_backend([&](const auto& be, const char* name) {
    for (const auto& d : kdt::kAllDivergences) {
      INFO(name << " " << kdt::describe(d));
      const auto ref = kdt::run_call(d, zs, zt, rows, cols, o, be, true);
      REQUIRE(ref.st.ok());
      auto s = zs, t = zt;
      kd::distill_outputs<float> out;
      out.grad_student = kd::mut_rows<float>(s.data(), rows, cols);
      out.grad_teacher = kd::mut_rows<float>(t.data(), rows, cols);
      kd::loss_result r;
      REQUIRE(kd::divergence_loss(d, kd::student_logits(s.data(), rows, cols), kd::teacher_logits(t.data(), rows, cols),
                                  o, r, out, be)
                  .ok());
      CHECK(r.loss == ref.r.loss);
      CHECK(r.valid_rows == 2);
      for (std::size_t j = 0; j < s.size(); ++j) {
        CHECK(s[j] == Approx(ref.gs[j]).epsilon(1e-6).margin(1e-12));
        CHECK(t[j] == Approx(ref.gt[j]).epsilon(1e-6).margin(1e-12));
      }
    }
  });
}
