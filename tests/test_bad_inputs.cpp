// The bad- and extreme-input matrix of docs/numerics.md: every row of its table that no other test file covers, and the
// regressions for the bugs the fuzzers (fuzz/) found in the core headers. Reference backend unless stated.
#include <catch2/catch.hpp>

#include <cstring>
#include <kd/backend/simd.hpp>
#include <limits>
#include <utility>

#include "test_util.hpp"

using kd::divergence;

namespace {

constexpr double inf = std::numeric_limits<double>::infinity();

struct call_out {
  kd::status st;
  kd::loss_result r;
  std::vector<double> gs, gt;
  std::vector<float> per_row;
};

// One call on dense double inputs with student and teacher gradients and per-row values; outputs poisoned with 777.
call_out call(const divergence& d, const std::vector<double>& zs, const std::vector<double>& zt, std::int64_t rows,
              std::int64_t cols, const kd::distill_options& o = {}) {
  call_out c;
  c.gs.assign(zs.size(), 777.0);
  c.gt.assign(zt.size(), 777.0);
  c.per_row.assign(static_cast<std::size_t>(rows), 777.0f);
  c.r.loss = 777.0;
  kd::distill_outputs<double> out;
  out.grad_student = kd::mut_rows<double>(c.gs.data(), rows, cols);
  out.grad_teacher = kd::mut_rows<double>(c.gt.data(), rows, cols);
  out.per_row = c.per_row.data();
  c.st = kd::divergence_loss(d, kd::student_logits(zs.data(), rows, cols), kd::teacher_logits(zt.data(), rows, cols), o,
                             c.r, out, kd::reference_backend{});
  return c;
}

bool untouched(const call_out& c) {
  for (double v : c.gs)
    if (v != 777.0) return false;
  for (double v : c.gt)
    if (v != 777.0) return false;
  for (float v : c.per_row)
    if (v != 777.0f) return false;
  return c.r.loss == 777.0;
}

bool all_finite(const call_out& c) {
  for (double v : c.gs)
    if (!std::isfinite(v)) return false;
  for (double v : c.gt)
    if (!std::isfinite(v)) return false;
  for (float v : c.per_row)
    if (!std::isfinite(v)) return false;
  return std::isfinite(c.r.loss);
}

const std::vector<divergence>& kAll = kdt::kAllDivergences;  // every registered divergence

}  // namespace

// ---- regressions for bugs found by fuzz/fuzz_divergence.cpp ----

TEST_CASE("regression: a subnormal temperature (1/T = inf) is an argument error, not NaN logits", "[bad_inputs][fuzz]") {
  // Before the fix T = 1e-310 passed validation; 1/T = inf made 0 * inf = NaN, reported as a non-finite *input*.
  const std::vector<double> zs = {0.0, 1.0, 2.0}, zt = {2.0, 1.0, 0.0};
  for (double t : {1e-310, 4e-324}) {
    kd::distill_options o;
    o.temperature = t;
    auto c = call(divergence::forward_kl(), zs, zt, 1, 3, o);
    CHECK(c.st.code == kd::errc::invalid_argument);
    CHECK(std::string(c.st.argument) == "temperature");
    CHECK(untouched(c));
    std::vector<float> y(3, 5.0f);
    auto st = kd::softmax(kd::const_rows<double>(zs.data(), 1, 3), kd::mut_rows<float>(y.data(), 1, 3), t);
    CHECK(st.code == kd::errc::invalid_argument);
    CHECK(y == std::vector<float>(3, 5.0f));
  }
  // The smallest normal temperature is accepted and gives finite results for these logits (x / T = 0 or huge but finite).
  kd::distill_options o;
  o.temperature = 1e-300;
  const std::vector<double> z0 = {0.0, 0.0, 0.0};
  auto c = call(divergence::forward_kl(), z0, z0, 1, 3, o);
  CHECK(c.st.ok());
  CHECK(all_finite(c));
}

TEST_CASE("regression: loss and gradient scales that overflow double are argument errors, not NaN under ok",
          "[bad_inputs][fuzz]") {
  // Identical rows: the exact loss and gradient are 0, so an infinite scale used to give inf * 0 = NaN with status ok.
  const std::vector<double> z = {0.0, 0.0, 0.0, 0.0};
  SECTION("T^2 overflows with t2_scale (T = 1e300)") {
    kd::distill_options o;
    o.temperature = 1e300;
    o.t2_scale = true;
    auto c = call(divergence::reverse_kl(), z, z, 1, 4, o);
    CHECK(c.st.code == kd::errc::invalid_argument);
    CHECK(std::string(c.st.argument) == "temperature");
    CHECK(untouched(c));
    o.t2_scale = false;  // without T^2 the same temperature is fine
    auto ok = call(divergence::reverse_kl(), z, z, 1, 4, o);
    CHECK(ok.st.ok());
    CHECK(all_finite(ok));
  }
  SECTION("a subnormal normalizer (1 / normalizer = inf)") {
    kd::distill_options o;
    o.reduction = kd::reduction::normalizer;
    o.normalizer = 3.2e-319;
    auto c = call(divergence::forward_kl(), z, z, 1, 4, o);
    CHECK(c.st.code == kd::errc::invalid_argument);
    CHECK(std::string(c.st.argument) == "normalizer");
    CHECK(untouched(c));
  }
  SECTION("a huge row weight with a tiny temperature (w / T = inf)") {
    kd::distill_options o;
    o.reduction = kd::reduction::sum;
    o.temperature = 1e-300;
    const float w = 3e38f;
    o.row_weights = &w;
    auto c = call(divergence::forward_kl(), z, z, 1, 4, o);
    CHECK(c.st.code == kd::errc::invalid_argument);
    CHECK(std::string(c.st.argument) == "row_weights");
    CHECK(untouched(c));
    o.temperature = 1.0;  // 3e38 / 1 is a finite scale: accepted
    auto ok = call(divergence::forward_kl(), z, z, 1, 4, o);
    CHECK(ok.st.ok());
    CHECK(all_finite(ok));
  }
}

TEST_CASE("regression: a subnormal skew alpha is an argument error; the smallest normal alpha stays finite",
          "[bad_inputs][fuzz]") {
  // Found by fuzzing: skew_kl(1.39e-309) with a student concentrated on one token gave NaN teacher gradients (p/m = 1/alpha
  // overflows double).
  std::vector<double> zs(14, 6.8125), zt(14, 0.0);
  zs[0] = 0.0;
  zs[1] = 9984.0;
  for (auto mk : {&divergence::skew_kl, &divergence::skew_reverse_kl}) {
    auto bad = call(mk(1.39e-309), zs, zt, 1, 14);
    CHECK(bad.st.code == kd::errc::invalid_argument);
    CHECK(std::string(bad.st.argument) == "alpha");
    CHECK(untouched(bad));
    auto ok = call(mk(std::numeric_limits<double>::min()), zs, zt, 1, 14);
    CHECK(ok.st.ok());
    CHECK(all_finite(ok));
  }
}

TEST_CASE("regression: finite double logits below -FLT_MAX are not a mask", "[bad_inputs][fuzz]") {
  // fully_masked() converted to float, so a double row of -1e39 (finite) was dropped as "fully masked" (weight 0).
  const std::vector<double> zs = {0.5, -0.25, 1.0};
  const std::vector<double> low = {-1e39, -1e39, -1e39}, zero = {0.0, 0.0, 0.0};  // both uniform distributions
  auto a = call(divergence::forward_kl(), zs, low, 1, 3);
  auto b = call(divergence::forward_kl(), zs, zero, 1, 3);
  REQUIRE(a.st.ok());
  CHECK(a.r.valid_rows == 1);
  CHECK(a.r.loss == Approx(b.r.loss).epsilon(1e-12));
  CHECK(a.r.loss > 0.0);
}

// ---- rows of the numerics.md matrix not covered elsewhere ----

TEST_CASE("huge finite logits (type max) give finite losses and gradients for every divergence and dtype",
          "[bad_inputs][extreme]") {
  // A row holding +-FLT_MAX (or the 16-bit max) next to ordinary values: the softmax saturates but nothing overflows.
  auto run_type = [](auto tag, double big) {
    using T = decltype(tag);
    std::vector<T> s = {T(1.0f), kd::from_double<T>(big), T(-2.0f), kd::from_double<T>(-big)};
    std::vector<T> t = {kd::from_double<T>(-big), T(0.5f), kd::from_double<T>(big), T(3.0f)};
    for (const auto& d : kAll) {
      std::vector<float> gs(4, 9.0f), gt(4, 9.0f);
      kd::distill_outputs<float> out;
      out.grad_student = kd::mut_rows<float>(gs.data(), 1, 4);
      out.grad_teacher = kd::mut_rows<float>(gt.data(), 1, 4);
      kd::loss_result r;
      auto st = kd::divergence_loss(d, kd::student_logits(s.data(), 1, 4), kd::teacher_logits(t.data(), 1, 4), {}, r,
                                    out, kd::reference_backend{});
      INFO(kd::divergence_name(d.kind) << " " << kd::dtype_name<T>());
      REQUIRE(st.ok());
      CHECK(std::isfinite(r.loss));
      for (int j = 0; j < 4; ++j) {
        CHECK(std::isfinite(gs[j]));
        CHECK(std::isfinite(gt[j]));
      }
    }
  };
  run_type(float{}, 3.4e38);
  run_type(double{}, 1e300);
  run_type(kd::bfloat16{}, 3.3e38);
  run_type(kd::half{}, 65504.0);
}

TEST_CASE("subnormal and -1e10 padding logits are ordinary finite values", "[bad_inputs][extreme]") {
  // Padding with a large negative logit (-1e10) instead of -inf: probability exp(-1e10) = 0 in double, yet no 0 * inf.
  const std::vector<double> zs = {1.0, 2.0, -1e10, 4.9e-324}, zt = {2.0, 1.0, -1e10, -4.9e-324};
  for (const auto& d : kAll) {
    auto c = call(d, zs, zt, 1, 4);
    INFO(kd::divergence_name(d.kind));
    REQUIRE(c.st.ok());
    CHECK(all_finite(c));
    CHECK(c.gs[2] == 0.0);  // probability exp(-1e10) == 0 exactly in double: zero gradient
  }
}

TEST_CASE("-inf teacher entry where the student has mass: support mismatch or finite, per divergence",
          "[bad_inputs][extreme]") {
  // KL(q||p) is +inf when p_j = 0 < q_j; KL(p||q) is finite. JSD, skew (alpha > 0) and TVD are always finite.
  const std::vector<double> zs = {0.0, 1.0, 2.0}, zt = {-inf, 1.0, 2.0};
  CHECK(call(divergence::forward_kl(), zs, zt, 1, 3).st.ok());
  auto r = call(divergence::reverse_kl(), zs, zt, 1, 3);
  CHECK(r.st.code == kd::errc::support_mismatch);
  CHECK(r.st.row == 0);
  for (const auto& d : {divergence::jsd(0.5), divergence::skew_kl(0.1), divergence::skew_reverse_kl(0.1), divergence::tvd()}) {
    auto c = call(d, zs, zt, 1, 3);
    INFO(kd::divergence_name(d.kind));
    CHECK(c.st.ok());
    CHECK(all_finite(c));
  }
  // skew_kl(0) is forward KL, skew_reverse_kl(0) reverse KL: the same support rule.
  CHECK(call(divergence::skew_reverse_kl(0.0), zs, zt, 1, 3).st.code == kd::errc::support_mismatch);
}

TEST_CASE("an unknown divergence kind is an argument error", "[bad_inputs][range]") {
  // (Temperature, beta, alpha, normalizer, weights and labels range errors: tests/test_errors.cpp.)
  const std::vector<double> z = {0.0, 1.0};
  divergence unknown;
  unknown.kind = static_cast<kd::divergence_kind>(42);
  auto c = call(unknown, z, z, 1, 2);
  CHECK(c.st.code == kd::errc::invalid_argument);
  CHECK(std::string(c.st.argument) == "divergence");
  CHECK(untouched(c));
}

TEST_CASE("zero rows is a valid empty batch: loss 0, nothing read", "[bad_inputs][shape]") {
  kd::loss_result r;
  r.loss = 5.0;
  auto st = kd::divergence_loss(divergence::forward_kl(), kd::student_logits<float>(nullptr, 0, 7),
                                kd::teacher_logits<float>(nullptr, 0, 7), {}, r);
  CHECK(st.ok());
  CHECK(r.loss == 0.0);  // mean over zero rows: the documented 0
  CHECK(r.valid_rows == 0);
  // (Zero columns, negative rows, short strides, null data, row / vocabulary mismatches: tests/test_errors.cpp.)
}

TEST_CASE("aliasing: outputs over the wrong buffer are rejected before writing", "[bad_inputs][aliasing]") {
  std::vector<float> s = {0, 1, 2, 3, 4, 5}, t = {5, 4, 3, 2, 1, 0}, g(6, 9.0f);
  const auto s0 = s, t0 = t;
  auto student = kd::student_logits(s.data(), 2, 3);
  auto teacher = kd::teacher_logits(t.data(), 2, 3);
  auto expect_bad = [&](kd::distill_outputs<float> out, const char* arg) {
    kd::loss_result r;
    auto st = kd::divergence_loss(divergence::forward_kl(), student, teacher, {}, r, out, kd::reference_backend{});
    CHECK(st.code == kd::errc::invalid_argument);
    CHECK(std::string(st.argument) == arg);
    CHECK(s == s0);
    CHECK(t == t0);
  };
  // (Student gradient over the teacher input, partial overlap, both gradients in one buffer: tests/test_errors.cpp.)
  kd::distill_outputs<float> out;
  out.grad_student = kd::mut_rows<float>(s.data(), 2, 3, 4);  // its own input's memory with another row stride
  expect_bad(out, "grad_student");
  out.grad_student = kd::mut_rows<float>(g.data(), 2, 3);
  out.grad_teacher = kd::mut_rows<float>(s.data(), 2, 3);  // teacher gradient over the student input
  expect_bad(out, "grad_teacher");
  // In-place needs the same dtype: a double view over a float student buffer overlaps without being the same buffer.
  std::vector<double> sd = {0, 1, 2, 3, 4, 5};
  std::vector<float> gf(6);
  kd::distill_outputs<float> o2;
  o2.grad_student = kd::mut_rows<float>(reinterpret_cast<float*>(sd.data()), 2, 3);
  kd::loss_result r;
  auto st = kd::divergence_loss(divergence::forward_kl(), kd::student_logits(sd.data(), 2, 3), teacher, {}, r, o2,
                                kd::reference_backend{});
  CHECK(st.code == kd::errc::invalid_argument);
  CHECK(std::string(st.argument) == "grad_student");
}

TEST_CASE("softmax family: argument errors leave outputs untouched; in place is allowed", "[bad_inputs][softmax]") {
  std::vector<float> x = {0, 1, 2, 3, 4, 5}, y(6, 7.0f);
  const auto x0 = x;
  auto X = kd::const_rows<float>(x.data(), 2, 3);
  CHECK(kd::softmax(X, kd::mut_rows<float>(y.data(), 2, 2)).code == kd::errc::invalid_argument);  // shape
  CHECK(kd::log_softmax(X, kd::mut_rows<float>(x.data() + 1, 2, 3, 3)).code == kd::errc::invalid_argument);  // overlap
  CHECK(kd::softmax(X, kd::mut_rows<float>(y.data(), 2, 3), 0.0).code == kd::errc::invalid_argument);
  CHECK(kd::softmax(kd::const_rows<float>(nullptr, 2, 3), kd::mut_rows<float>(y.data(), 2, 3)).code ==
        kd::errc::invalid_argument);
  CHECK(kd::log_sum_exp(X, 1.0, nullptr).code == kd::errc::invalid_argument);
  CHECK(y == std::vector<float>(6, 7.0f));
  CHECK(x == x0);
  std::vector<float> dy(6, 1.0f), dx(6, 7.0f);
  CHECK(kd::softmax_backward(X, kd::const_rows<float>(dy.data(), 2, 2), kd::mut_rows<float>(dx.data(), 2, 3)).code ==
        kd::errc::invalid_argument);
  CHECK(dx == std::vector<float>(6, 7.0f));
  // In place: log_softmax over its own input equals the out-of-place result bitwise.
  std::vector<float> out(6);
  REQUIRE(kd::log_softmax(X, kd::mut_rows<float>(out.data(), 2, 3)).ok());
  REQUIRE(kd::log_softmax(X, kd::mut_rows<float>(x.data(), 2, 3)).ok());
  CHECK(std::memcmp(out.data(), x.data(), sizeof(float) * 6) == 0);
}

TEST_CASE("finite double logits whose x / T overflows double are reported as non-finite", "[bad_inputs][extreme]") {
  // 1.7e308 / 0.5 = inf in double: the reference cannot normalize the row and reports errc::non_finite_input for it (the
  // input itself is finite; numerics.md documents this). The same logits at T = 1 are fine.
  const std::vector<double> zs = {1.7e308, 0.0}, zt = {0.0, 1.0};
  kd::distill_options o;
  o.temperature = 0.5;
  auto c = call(divergence::forward_kl(), zs, zt, 1, 2, o);
  CHECK(c.st.code == kd::errc::non_finite_input);
  CHECK(std::string(c.st.argument) == "student");
  CHECK(c.st.row == 0);
  auto ok = call(divergence::forward_kl(), zs, zt, 1, 2);
  CHECK(ok.st.ok());
  CHECK(std::isfinite(ok.r.loss));  // ~1.2e308 nats (the float per-row value overflows to inf, correctly rounded)
}

TEST_CASE("regression: log-probs of rows with |x| / T >> 2^53 stay normalized (oracle and softmax)", "[bad_inputs][fuzz]") {
  // x/T - (max + log s) rounds log s away when |max| >> 2^53: a uniform row of -1e39 came out as log p = 0 everywhere
  // (sum p = 3). kd computes (x/T - max) - log s.
  const std::vector<double> row = {-1e39, -1e39, -1e39}, shifted = {1e39, 1e39, 1e39};
  for (const auto& x : {row, shifted}) {
    std::vector<double> p(3), lp(3);
    REQUIRE(kd::softmax(kd::const_rows<double>(x.data(), 1, 3), kd::mut_rows<double>(p.data(), 1, 3)).ok());
    REQUIRE(kd::log_softmax(kd::const_rows<double>(x.data(), 1, 3), kd::mut_rows<double>(lp.data(), 1, 3)).ok());
    for (int j = 0; j < 3; ++j) {
      CHECK(p[j] == Approx(1.0 / 3.0).epsilon(1e-15));
      CHECK(lp[j] == Approx(-std::log(3.0)).epsilon(1e-15));
    }
  }
  // Divergence oracle: a uniform teacher given as -1e39 logits equals one given as zeros (also the mask regression above).
  const std::vector<double> zs = {0.5, -0.25, 1.0}, zero = {0.0, 0.0, 0.0};
  auto a = call(divergence::reverse_kl(), zs, row, 1, 3);
  auto b = call(divergence::reverse_kl(), zs, zero, 1, 3);
  REQUIRE(a.st.ok());
  CHECK(a.r.loss == Approx(b.r.loss).epsilon(1e-12));
  for (int j = 0; j < 3; ++j) CHECK(a.gs[j] == Approx(b.gs[j]).epsilon(1e-12));
}

TEST_CASE("regression: |x| / T beyond the float32 range is one error on every backend (kd loss --temperature 1e-300)",
          "[bad_inputs]") {
  // Before: the SIMD backend reported "contains NaN or +inf" for finite logits at T = 1e-300 (1 / T overflowed float32)
  // and failed even on all-zero rows, while the reference computed a loss of 1e299 whose per-row value overflowed the
  // float per_row output. Now one rule (detail/row_io.hpp check_range): finite |x| / T above FLT_MAX is an out-of-range
  // error naming the side, on the reference and the SIMD backend alike; zero rows stay valid. (Inputs that are beyond
  // the float32 range themselves, float64 logits such as -1e39, are not covered by the rule: the temperature did not
  // put them there; see "finite double logits below -FLT_MAX are not a mask".)
  const std::vector<float> zs = {1.0f, 2.0f, 0.5f, 0.0f, 0.0f, 0.0f}, zt = {0.0f, 2.5f, 0.5f, 0.0f, 0.0f, 0.0f};
  const std::vector<float> zero(6, 0.0f), tail = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, -2.0f};
  auto run = [&](const auto& be, const std::vector<float>& s, const std::vector<float>& t, double T, std::int64_t rows) {
    kd::distill_options o;
    o.temperature = T;
    std::vector<float> g(s.size(), 7.0f);
    kd::distill_outputs<float> out;
    out.grad_student = kd::mut_rows<float>(g.data(), rows, 3);
    kd::loss_result r;
    const kd::status st = kd::divergence_loss(divergence::forward_kl(), kd::student_logits(s.data(), rows, 3),
                                              kd::teacher_logits(t.data(), rows, 3), o, r, out, be);
    return std::make_pair(st, g);
  };
  for (double T : {1e-300, 1e-40, 5e-39}) {  // 2 / 5e-39 = 4e38 > FLT_MAX; 1/T overflows float below ~2.9e-39
    INFO("T = " << T);
    for (int b = 0; b < 2; ++b) {
      INFO((b ? "simd" : "reference"));
      const auto bad = b ? run(kd::simd_backend<>{}, zs, zt, T, 2) : run(kd::reference_backend{}, zs, zt, T, 2);
      CHECK(bad.first.code == kd::errc::non_finite_input);
      CHECK(std::string(bad.first.argument) == "student");
      CHECK(std::string(bad.first.message).find("float32 range") != std::string::npos);
      for (int j = 0; j < 3; ++j) CHECK(std::isnan(bad.second[j]));  // a value error: the offending row is NaN (errors.md)
      // All-zero rows: x / T = 0, a uniform distribution, valid at any temperature on every backend.
      const auto ok = b ? run(kd::simd_backend<>{}, zero, zero, T, 2) : run(kd::reference_backend{}, zero, zero, T, 2);
      CHECK(ok.first.ok());
      for (float v : ok.second) CHECK(v == 0.0f);
      // A finite entry that would round to -inf in float32 (probability 0 there) is out of range too, on the teacher.
      const auto neg = b ? run(kd::simd_backend<>{}, zero, tail, T, 2) : run(kd::reference_backend{}, zero, tail, T, 2);
      CHECK(neg.first.code == kd::errc::non_finite_input);
      CHECK(std::string(neg.first.argument) == "teacher");
    }
  }
}
