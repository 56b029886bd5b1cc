// Regressions found by fuzz/fuzz_pg.cpp in kd::policy_gradient (each failed before its fix).
#include <catch2/catch.hpp>

#include <kd/policy_gradient.hpp>

#include <cmath>
#include <limits>
#include <string>

namespace {

struct pg_run {
  kd::status fast, ref;
  float g_fast[5], g_ref[5];
};

pg_run run(const float* zs, const float* zt, std::int64_t y, const kd::pg_options& o) {
  static std::int64_t tok[1];
  tok[0] = y;
  kd::pg_sequences seq;
  seq.batch = 1;
  seq.time = 1;
  seq.tokens = kd::label_view(tok, 1);
  pg_run r;
  for (float& v : r.g_fast) v = 777.f;
  for (float& v : r.g_ref) v = 777.f;
  kd::pg_outputs<float> of, orf;
  of.grad_student = kd::mut_rows<float>(r.g_fast, 1, 5);
  orf.grad_student = kd::mut_rows<float>(r.g_ref, 1, 5);
  kd::pg_diagnostics d;
  r.fast = kd::policy_gradient(kd::student_logits(zs, 1, 5), kd::teacher_logits(zt, 1, 5), seq, o, of, d);
  r.ref = kd::policy_gradient(kd::student_logits(zs, 1, 5), kd::teacher_logits(zt, 1, 5), seq, o, orf, d,
                              kd::reference_backend{});
  return r;
}

}  // namespace

TEST_CASE("pg: a student probability that underflows in float32 never makes 0 * inf = NaN", "[pg][regression]") {
  const float M = -std::numeric_limits<float>::max();
  const float zs[5] = {M, -0.125f, 6.5f, M, M}, zt[5] = {-0.125f, -0.125f, M, M, M};
  kd::pg_options o = kd::pg_options::paper();
  o.reduction = kd::reduction::sum;
  auto r = run(zs, zt, 3, o);
  REQUIRE(r.fast.ok());
  REQUIRE(r.ref.ok());
  for (int j = 0; j < 5; ++j) {
    INFO(j);
    CHECK(!std::isnan(r.g_fast[j]));
    CHECK(r.g_fast[j] == Approx(r.g_ref[j]).epsilon(1e-5));
  }
}

TEST_CASE("pg: KL = +inf is decided in log space, as the oracle does", "[pg][regression]") {
  // the student's probability at entry 1 is exp(0.125 - 9984) = 0 in float32 and double, but it is not a mask
  const float zs[5] = {9984.f, 0.125f, 10.f, 10.f, 10.f}, zt[5] = {9984.f, -INFINITY, 10.f, 10.f, 10.f};
  kd::pg_options o = kd::pg_options::paper();
  auto r = run(zs, zt, 0, o);
  CHECK(r.ref.code == kd::errc::support_mismatch);
  CHECK(r.fast.code == r.ref.code);
  CHECK(r.g_fast[0] == 777.f);  // errors are returned before any output is written
}

TEST_CASE("pg: scales beyond float32's range are argument errors, not NaN gradients", "[pg][regression]") {
  const float zs[5] = {1, 2, 3, 4, 5}, zt[5] = {5, 4, 3, 2, 1};
  kd::pg_options o = kd::pg_options::paper();
  o.reduction = kd::reduction::normalizer;
  o.normalizer = 4.18602e-149;
  auto r = run(zs, zt, 2, o);
  CHECK(r.fast.code == kd::errc::invalid_argument);
  CHECK(std::string(r.fast.argument) == "normalizer");
  CHECK(r.g_fast[0] == 777.f);
  kd::pg_options t = kd::pg_options::paper();
  t.temperature = 1e300;
  CHECK(std::string(run(zs, zt, 2, t).fast.argument) == "temperature");
  t.temperature = 1e-31;
  CHECK(std::string(run(zs, zt, 2, t).fast.argument) == "temperature");
  kd::pg_options s = kd::pg_options::paper();
  s.reward_scale = 1e-30;
  CHECK(std::string(run(zs, zt, 2, s).fast.argument) == "reward_scale");
}
