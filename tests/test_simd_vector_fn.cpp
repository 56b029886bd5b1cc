// kd's vector functions against the C library's, computed in double and rounded to float: kd::detail::simd::exp
// (detail/simd_exp.hpp) and expm1 / log1p (detail/simd_expm1_log1p.hpp) over the whole float range: every 251st bit
// pattern of all 2^32 (every binade, both signs, subnormals, infinities, NaNs), every float step of 2^-16 in [-1, 1]
// (the range reductions' boundaries, the small arguments where expm1 / log1p exist), a fine grid near 0, and the
// special values. Bound: 2 ulp for exp and expm1, 1 for log1p (distance between float bit patterns, so it also covers
// subnormal results and the overflow / underflow thresholds); NaN exactly where the reference is NaN; the exact values the kernels rely on (exp:
// 0 for -inf and below -103.98, +inf above 88.73; expm1(-inf) = -1; log1p(-1) = -inf). Runs for the compile-time arch
// and for every instruction set of kd::dispatch this CPU supports (SSE2 has no FMA: its polynomials round twice).
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <kd/detail/simd_exp.hpp>
#include <kd/detail/simd_expm1_log1p.hpp>
#include <kd/detail/simd_row.hpp>
#include <limits>
#include <string>
#include <vector>

#if KD_TEST_DISPATCH
#include <kd/backend/dispatch.hpp>
#endif

namespace {

using array_fn = std::function<void(const float*, float*, std::int64_t)>;
using ref_fn = double (*)(double);

double ref_exp(double x) { return std::exp(x); }
double ref_expm1(double x) { return std::expm1(x); }
double ref_log1p(double x) { return std::log1p(x); }

std::int64_t ulp_distance(float a, float b) {
  std::int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  // Map to a monotonic integer line (negative floats below zero).
  const std::int64_t la = ia < 0 ? -(std::int64_t(ia) & 0x7fffffff) : ia,
                     lb = ib < 0 ? -(std::int64_t(ib) & 0x7fffffff) : ib;
  return la > lb ? la - lb : lb - la;
}

void check_fn(const char* fn, const char* name, const array_fn& f, ref_fn reference, std::int64_t max_ulp) {
  std::vector<float> in;
  for (std::uint64_t u = 0; u <= 0xffffffffull; u += 251) {
    std::uint32_t b = static_cast<std::uint32_t>(u);
    float x;
    std::memcpy(&x, &b, 4);
    in.push_back(x);
  }
  for (float x = -1.0f; x <= 1.0f; x += 1.0f / 65536) in.push_back(x);
  for (float x = -1e-3f; x <= 1e-3f; x += 1e-7f) in.push_back(x);
  const float specials[] = {0.0f,
                            -0.0f,
                            1.0f,
                            -1.0f,
                            0.34657359f,
                            -0.34657359f,
                            88.72283f,
                            88.72284f,
                            88.7228394f,
                            89.0f,
                            -87.33654f,
                            -87.33655f,
                            -103.97207f,
                            -103.97208f,
                            -104.0f,
                            -150.0f,
                            1e-30f,
                            -1e-30f,
                            std::numeric_limits<float>::denorm_min(),
                            std::numeric_limits<float>::max(),
                            std::numeric_limits<float>::lowest(),
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN()};
  for (float s : specials) in.push_back(s);
  std::vector<float> out(in.size());
  f(in.data(), out.data(), static_cast<std::int64_t>(in.size()));
  std::int64_t worst = 0;
  float worst_x = 0.0f;
  std::size_t nan_bad = 0, inf_bad = 0;
  for (std::size_t i = 0; i < in.size(); ++i) {
    const float x = in[i];
    const float ref = static_cast<float>(reference(static_cast<double>(x)));
    if (std::isnan(ref)) {
      nan_bad += !std::isnan(out[i]);
      continue;
    }
    if (std::isinf(ref) || ref == 0.0f) inf_bad += out[i] != ref && ulp_distance(out[i], ref) > 2;
    const std::int64_t u = std::isnan(out[i]) ? (std::int64_t(1) << 40) : ulp_distance(out[i], ref);
    if (u > worst) {
      worst = u;
      worst_x = x;
    }
  }
  std::printf("%s [%s]: %zu inputs, worst error %lld ulp at x = %.9g\n", fn, name, in.size(), (long long)worst,
              worst_x);
  INFO(fn << " [" << name << "]: worst " << worst << " ulp at " << worst_x);
  CHECK(worst <= max_ulp);
  CHECK(nan_bad == 0);
  CHECK(inf_bad == 0);
}

void check_exp(const char* name, const array_fn& f) {
  check_fn("exp", name, f, &ref_exp, 2);
  // Exact values the kernels rely on.
  const float exact_in[] = {-std::numeric_limits<float>::infinity(), -200.0f, -104.0f,
                            std::numeric_limits<float>::infinity()};
  float exact_out[4];
  f(exact_in, exact_out, 4);
  CHECK(exact_out[0] == 0.0f);
  CHECK(exact_out[1] == 0.0f);
  CHECK(exact_out[2] == 0.0f);
  CHECK(exact_out[3] == std::numeric_limits<float>::infinity());
  const float one_in = 0.0f;
  float one_out = 0.0f;
  f(&one_in, &one_out, 1);
  CHECK(one_out == 1.0f);
}

// out[i] = fn(in[i]) with the compile-time arch's batches, the tail padded with 0.
template <class A, xsimd::batch<float, A> (*Fn)(xsimd::batch<float, A>) noexcept>
void apply_array(const float* in, float* out, std::int64_t n) {
  using b = xsimd::batch<float, A>;
  namespace s = kd::detail::simd;
  std::int64_t j = 0;
  for (; j + static_cast<std::int64_t>(b::size) <= n; j += b::size)
    Fn(b::load_unaligned(in + j)).store_unaligned(out + j);
  if (j < n) s::store_partial<A>(out, j, n, Fn(s::load_padded<A>(in, j, n, 0.0f)));
}

void check_expm1(const char* name, const array_fn& f) {
  check_fn("expm1", name, f, &ref_expm1, 2);
  const float inf = std::numeric_limits<float>::infinity();
  const float exact_in[] = {-inf, -200.0f, 0.0f, inf, 1e-30f};
  float exact_out[5];
  f(exact_in, exact_out, 5);
  CHECK(exact_out[0] == -1.0f);
  CHECK(exact_out[1] == -1.0f);
  CHECK(exact_out[2] == 0.0f);
  CHECK(exact_out[3] == inf);
  CHECK(exact_out[4] == 1e-30f);  // expm1(x) = x below half an ulp of x^2 / 2
}

void check_log1p(const char* name, const array_fn& f) {
  check_fn("log1p", name, f, &ref_log1p, 1);
  const float inf = std::numeric_limits<float>::infinity();
  const float exact_in[] = {-1.0f, 0.0f, inf, -2.0f, -inf, 1e-30f};
  float exact_out[6];
  f(exact_in, exact_out, 6);
  CHECK(exact_out[0] == -inf);
  CHECK(exact_out[1] == 0.0f);
  CHECK(exact_out[2] == inf);
  CHECK(std::isnan(exact_out[3]));
  CHECK(std::isnan(exact_out[4]));
  CHECK(exact_out[5] == 1e-30f);
}

}  // namespace

TEST_CASE("vector exp: compile-time arch", "[simd][exp]") {
  using A = xsimd::default_arch;
  check_exp(A::name(), &apply_array<A, &kd::detail::simd::exp<A>>);
}

TEST_CASE("vector expm1 and log1p: compile-time arch", "[simd][expm1][log1p]") {
  using A = xsimd::default_arch;
  check_expm1(A::name(), &apply_array<A, &kd::detail::simd::expm1<A>>);
  check_log1p(A::name(), &apply_array<A, &kd::detail::simd::log1p<A>>);
}

#if KD_TEST_DISPATCH
namespace {
array_fn dispatched(kd::simd_isa isa, kd::detail::vector_fn fn) {
  return [isa, fn](const float* in, float* out, std::int64_t n) {
    REQUIRE(kd::detail::dispatch_vector_fn(isa, fn, in, out, n).ok());
  };
}
}  // namespace

TEST_CASE("vector exp, expm1 and log1p: every dispatched instruction set", "[simd][exp][dispatch]") {
  using kd::detail::vector_fn;
  for (kd::simd_isa isa : {kd::simd_isa::sse2, kd::simd_isa::sse4_2, kd::simd_isa::avx2, kd::simd_isa::avx512}) {
    if (!kd::simd_isa_available(isa)) continue;
    check_exp(kd::simd_isa_name(isa), dispatched(isa, vector_fn::exp));
    check_expm1(kd::simd_isa_name(isa), dispatched(isa, vector_fn::expm1));
    check_log1p(kd::simd_isa_name(isa), dispatched(isa, vector_fn::log1p));
  }
}

TEST_CASE("dispatch_vector_fn: bad arguments are named", "[simd][dispatch]") {
  float x = 0.0f, y = 7.0f;
  const kd::simd_isa isa = kd::simd_isa::sse2;
  auto st = kd::detail::dispatch_vector_fn(isa, static_cast<kd::detail::vector_fn>(3), &x, &y, 1);
  CHECK(st.code == kd::errc::invalid_argument);
  CHECK(std::string(st.argument) == "f");
  st = kd::detail::dispatch_vector_fn(isa, kd::detail::vector_fn::exp, &x, &y, -1);
  CHECK(std::string(st.argument) == "n");
  st = kd::detail::dispatch_vector_fn(isa, kd::detail::vector_fn::exp, nullptr, &y, 1);
  CHECK(std::string(st.argument) == "in");
  CHECK(y == 7.0f);  // untouched
}
#endif
