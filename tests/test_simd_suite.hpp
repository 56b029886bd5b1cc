// The SIMD test suite, run once per backend value (compile-time arch, each run-time dispatched instruction set).
#pragma once

#include <string_view>

#include "test_simd_util.hpp"

namespace kdst {

inline const std::vector<kd::divergence>& all_divergences() { return kdt::kAllDivergences; }

// Bit-identical student and teacher rows: exactly 0 loss and 0 gradient (pitfalls 13, 17).
template <class S, class Backend>
void check_identical(const Backend& be, std::int64_t rows, std::int64_t cols, double scale) {
  auto z = convert<S>(kdt::random_logits<double>(rows, cols, 99, scale, 0.05));
  for (const auto& d : all_divergences()) {
    INFO(kd::divergence_name(d.kind) << "(" << d.param << ") " << kd::dtype_name<S>() << " cols " << cols);
    std::vector<float> gs(z.size(), 1.0f), gt(z.size(), 1.0f);
    kd::distill_outputs<float> out;
    out.grad_student = kd::mut_rows<float>(gs.data(), rows, cols);
    out.grad_teacher = kd::mut_rows<float>(gt.data(), rows, cols);
    kd::loss_result r;
    kd::distill_options o;
    o.temperature = 0.7;
    auto st = kd::divergence_loss(d, kd::student_logits(z.data(), rows, cols), kd::teacher_logits(z.data(), rows, cols),
                                  o, r, out, be);
    REQUIRE(st.ok());
    CHECK(r.loss == 0.0);
    std::size_t nonzero = 0;
    for (std::size_t i = 0; i < gs.size(); ++i) nonzero += (gs[i] != 0.0f) + (gt[i] != 0.0f);
    CHECK(nonzero == 0);
  }
}

template <class Backend>
void run_suite(const Backend& be) {
  SECTION("all divergences, fp32, odd vocabulary sizes, teacher gradient") {
    for (const auto& d : all_divergences())
      for (std::int64_t cols : {1, 3, 17, 1000, 2048 + 37, 3 * 2048 + 5}) {
        case_spec c;
        c.d = d;
        c.cols = cols;
        c.rows = cols > 1000 ? 3 : 5;
        c.seed = static_cast<std::uint32_t>(cols);
        check_case<float, float>(c, be);
      }
  }
  SECTION("masks (-inf entries), strided rows, temperatures, reductions, ignore_index, weights, T^2") {
    int k = 0;
    for (const auto& d : all_divergences())
      for (double temp : {0.5, 1.0, 2.0})
        for (kd::reduction red :
             {kd::reduction::mean, kd::reduction::sum, kd::reduction::none, kd::reduction::normalizer}) {
          case_spec c;
          c.d = d;
          c.rows = 7;
          c.cols = 2048 + 129;
          c.stride = c.cols + 3;
          c.masked = (k % 2) ? 0.1 : 0.0;
          c.temperature = temp;
          c.red = red;
          c.labels = k % 3 == 0;
          c.weights = k % 3 == 1;
          c.t2 = k % 2 == 0;
          c.teacher_grad = k % 4 < 2;
          c.seed = static_cast<std::uint32_t>(k++);
          check_case<float, float>(c, be);
        }
  }
  SECTION("bf16 and fp16 inputs, fp32 and input-type gradients") {
    int k = 0;
    for (const auto& d : all_divergences())
      for (std::int64_t cols : {5, 2048 + 77}) {
        case_spec c;
        c.d = d;
        c.rows = 4;
        c.cols = cols;
        c.masked = (k % 2) ? 0.05 : 0.0;
        c.stride = (k % 3 == 0) ? cols + 8 : -1;
        c.seed = static_cast<std::uint32_t>(100 + k++);
        check_case<kd::bfloat16, float>(c, be);
        check_case<kd::bfloat16, kd::bfloat16>(c, be);
        check_case<kd::half, float>(c, be);
        check_case<kd::half, kd::half>(c, be);
        if constexpr (std::string_view(Backend::name()) != "dispatch") check_case<double, double>(c, be);
      }
  }
  SECTION("large logits and low temperature stay finite and accurate") {
    for (const auto& d : all_divergences()) {
      case_spec c;
      c.d = d;
      c.rows = 3;
      c.cols = 2000;
      c.scale = 8.0;
      c.temperature = 0.25;
      check_case<float, float>(c, be);  // y = z / T reaches about 130: the tolerance scales with it
    }
  }
  SECTION("bit-identical inputs give exactly zero loss and gradient") {
    check_identical<float>(be, 3, 5000, 10.0);
    check_identical<kd::bfloat16>(be, 2, 128256 / 4 + 3, 30.0);
    check_identical<kd::half>(be, 2, 1031, 5.0);
  }
  SECTION("-inf logits get exactly zero gradient; fully masked rows and ignored rows are zero") {
    const std::int64_t rows = 4, cols = 37;
    auto zs = kdt::random_logits<float>(rows, cols, 5, 2.0, 0.0);
    auto zt = kdt::random_logits<float>(rows, cols, 6, 2.0, 0.0);
    const float ninf = -INFINITY;
    for (std::int64_t j = 0; j < cols; j += 3) zs[j] = zt[j] = ninf;  // row 0: shared masks
    for (std::int64_t j = 0; j < cols; ++j) zs[1 * cols + j] = ninf;  // row 1: student fully masked
    for (std::int64_t j = 0; j < cols; ++j) zt[2 * cols + j] = ninf;  // row 2: teacher fully masked
    for (const auto& d : all_divergences()) {
      INFO(kd::divergence_name(d.kind) << "(" << d.param << ")");
      std::vector<float> gs(zs.size(), 5.0f), gt(zs.size(), 5.0f), rs(zs.size()), rt(zs.size());
      kd::distill_outputs<float> out, refout;
      out.grad_student = kd::mut_rows<float>(gs.data(), rows, cols);
      out.grad_teacher = kd::mut_rows<float>(gt.data(), rows, cols);
      refout.grad_student = kd::mut_rows<float>(rs.data(), rows, cols);
      refout.grad_teacher = kd::mut_rows<float>(rt.data(), rows, cols);
      kd::loss_result r, rr;
      auto st = kd::divergence_loss(d, kd::student_logits(zs.data(), rows, cols),
                                    kd::teacher_logits(zt.data(), rows, cols), {}, r, out, be);
      auto sr = kd::divergence_loss(d, kd::student_logits(zs.data(), rows, cols),
                                    kd::teacher_logits(zt.data(), rows, cols), {}, rr, refout, kd::reference_backend{});
      REQUIRE(st.ok());
      REQUIRE(sr.ok());
      CHECK(r.valid_rows == 2);
      CHECK(r.loss == Approx(rr.loss).epsilon(2e-5).margin(1e-6));
      for (std::int64_t j = 0; j < cols; j += 3) {
        CHECK(gs[j] == 0.0f);
        CHECK(gt[j] == 0.0f);
      }
      for (std::int64_t j = cols; j < 3 * cols; ++j) {
        CHECK(gs[j] == 0.0f);
        CHECK(gt[j] == 0.0f);
      }
      for (std::size_t i = 0; i < gs.size(); ++i) CHECK(gs[i] == Approx(rs[i]).margin(2e-6));
    }
  }
  SECTION("every row ignored: loss 0, gradient 0") {
    auto zs = kdt::random_logits<float>(3, 10, 1), zt = kdt::random_logits<float>(3, 10, 2);
    std::vector<std::int32_t> labels(3, -100);
    kd::distill_options o;
    o.labels = kd::label_view(labels.data(), 3);
    std::vector<float> g(30, 3.0f);
    kd::distill_outputs<float> out;
    out.grad_student = kd::mut_rows<float>(g.data(), 3, 10);
    kd::loss_result r;
    REQUIRE(kd::divergence_loss(kd::divergence::reverse_kl(), kd::student_logits(zs.data(), 3, 10),
                                kd::teacher_logits(zt.data(), 3, 10), o, r, out, be)
                .ok());
    CHECK(r.loss == 0.0);
    CHECK(r.valid_rows == 0);
    for (float v : g) CHECK(v == 0.0f);
  }
  SECTION("value errors: code, argument, first offending row, NaN gradient rows as the reference") {
    const std::int64_t rows = 5, cols = 2100;
    for (const auto& d : all_divergences()) {
      for (int kind = 0; kind < 5; ++kind) {
        auto zs = kdt::random_logits<double>(rows, cols, 11, 2.0, 0.0);
        auto zt = kdt::random_logits<double>(rows, cols, 12, 2.0, 0.0);
        case_spec c;
        c.d = d;
        c.rows = rows;
        c.cols = cols;
        switch (kind) {
          case 0:
            zs[3 * cols + 2080] = NAN;
            zt[4 * cols + 2] = NAN;
            break;  // student NaN row 3 first
          case 1:
            zs[4 * cols + 7] = INFINITY;
            zt[2 * cols + 1099] = INFINITY;
            break;  // teacher +inf row 2 first
          case 2:
            zt[1 * cols + 500] = -INFINITY;
            zs[1 * cols + 500] = 1.0;
            break;  // RKL / (TVD, JSD fine) mismatch
          case 3:
            zs[2 * cols + 9] = -INFINITY;
            break;  // FKL mismatch
          case 4:
            zs[0] = NAN;
            zs[1] = -INFINITY;
            zs[5] = INFINITY;  // NaN and +inf in one row: the reported value must be NaN, as the reference's
            zt[0] = -INFINITY;
            break;  // mixed in row 0
        }
        auto fs = convert<float>(zs), ft = convert<float>(zt);
        auto got = run_case<float, float, float>(c, fs, ft, be);
        auto ref = run_case<float, float, float>(c, fs, ft, kd::reference_backend{});
        INFO("error kind " << kind << ": " << got.st.to_string() << " | ref " << ref.st.to_string());
        tolerance tol;
        tol.ymax = 10.0;
        compare(got, ref, c, tol, 0.0);
      }
    }
  }
  SECTION("log_probs input not normalized at T = 1") {
    const std::int64_t rows = 3, cols = 40;
    auto zs = kdt::random_logits<float>(rows, cols, 1), zt = kdt::random_logits<float>(rows, cols, 2);
    for (auto* z : {&zs, &zt})  // normalize rows 0 and 2, leave row 1 unnormalized
      for (std::int64_t r : {0, 2}) {
        double m = -INFINITY, s = 0.0;
        for (std::int64_t j = 0; j < cols; ++j) m = std::max(m, double((*z)[r * cols + j]));
        for (std::int64_t j = 0; j < cols; ++j) s += std::exp((*z)[r * cols + j] - m);
        for (std::int64_t j = 0; j < cols; ++j) (*z)[r * cols + j] = float((*z)[r * cols + j] - m - std::log(s));
      }
    kd::loss_result r1, r2;
    auto s1 =
        kd::divergence_loss(kd::divergence::forward_kl(), kd::student_log_probs(zs.data(), rows, cols),
                            kd::teacher_log_probs(zt.data(), rows, cols), {}, r1, kd::distill_outputs<float>{}, be);
    auto s2 = kd::divergence_loss(kd::divergence::forward_kl(), kd::student_log_probs(zs.data(), rows, cols),
                                  kd::teacher_log_probs(zt.data(), rows, cols), {}, r2, kd::distill_outputs<float>{},
                                  kd::reference_backend{});
    CHECK(s1.code == kd::errc::not_normalized);
    CHECK(s1.code == s2.code);
    CHECK(s1.row == 1);
    CHECK(std::string(s1.argument) == s2.argument);
    CHECK(std::isnan(r1.loss));
  }
  SECTION("in-place gradients equal out-of-place ones bitwise") {
    const std::int64_t rows = 3, cols = 2048 + 21, stride = cols + 2;
    for (const auto& d : all_divergences()) {
      INFO(kd::divergence_name(d.kind) << "(" << d.param << ")");
      // Shared masks (so every divergence is finite), different values elsewhere.
      auto zs0 = kdt::random_logits<float>(rows, cols, 3, 2.0, 0.02), noise = kdt::random_logits<float>(rows, cols, 4);
      auto zt0 = zs0;
      for (std::size_t i = 0; i < zt0.size(); ++i) zt0[i] += noise[i];
      auto zs = strided(zs0, rows, cols, stride), zt = strided(zt0, rows, cols, stride);
      std::vector<float> gs(zs.size()), gt(zt.size());
      kd::distill_outputs<float> out;
      out.grad_student = kd::mut_rows<float>(gs.data(), rows, cols, stride);
      out.grad_teacher = kd::mut_rows<float>(gt.data(), rows, cols, stride);
      kd::loss_result r1, r2;
      REQUIRE(kd::divergence_loss(d, kd::student_logits(zs.data(), rows, cols, stride),
                                  kd::teacher_logits(zt.data(), rows, cols, stride), {}, r1, out, be)
                  .ok());
      kd::distill_outputs<float> inplace;
      inplace.grad_student = kd::mut_rows<float>(zs.data(), rows, cols, stride);
      inplace.grad_teacher = kd::mut_rows<float>(zt.data(), rows, cols, stride);
      REQUIRE(kd::divergence_loss(d, kd::student_logits(zs.data(), rows, cols, stride),
                                  kd::teacher_logits(zt.data(), rows, cols, stride), {}, r2, inplace, be)
                  .ok());
      CHECK(r1.loss == r2.loss);
      for (std::int64_t r = 0; r < rows; ++r) {
        CHECK(std::memcmp(gs.data() + r * stride, zs.data() + r * stride, cols * sizeof(float)) == 0);
        CHECK(std::memcmp(gt.data() + r * stride, zt.data() + r * stride, cols * sizeof(float)) == 0);
      }
      // bf16 in place
      auto bs = strided(convert<kd::bfloat16>(kdt::random_logits<double>(rows, cols, 7)), rows, cols, stride);
      auto bt = strided(convert<kd::bfloat16>(kdt::random_logits<double>(rows, cols, 8)), rows, cols, stride);
      std::vector<kd::bfloat16> g16(bs.size());
      kd::distill_outputs<kd::bfloat16> o16, i16;
      o16.grad_student = kd::mut_rows<kd::bfloat16>(g16.data(), rows, cols, stride);
      i16.grad_student = kd::mut_rows<kd::bfloat16>(bs.data(), rows, cols, stride);
      REQUIRE(kd::divergence_loss(d, kd::student_logits(bs.data(), rows, cols, stride),
                                  kd::teacher_logits(bt.data(), rows, cols, stride), {}, r1, o16, be)
                  .ok());
      REQUIRE(kd::divergence_loss(d, kd::student_logits(bs.data(), rows, cols, stride),
                                  kd::teacher_logits(bt.data(), rows, cols, stride), {}, r2, i16, be)
                  .ok());
      CHECK(r1.loss == r2.loss);
      for (std::int64_t r = 0; r < rows; ++r)
        CHECK(std::memcmp(g16.data() + r * stride, bs.data() + r * stride, cols * sizeof(kd::bfloat16)) == 0);
    }
  }
}

}  // namespace kdst
