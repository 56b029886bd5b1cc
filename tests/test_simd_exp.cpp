// kd::detail::simd::exp against std::exp (computed in double, rounded to float) over the whole float range: every 251st
// bit pattern of all 2^32 (every binade, both signs, subnormals, infinities, NaNs), every float in [-1, 1] near the
// boundaries of the range reduction, and the special values. Bound: 2 ulp (distance between float bit patterns, so it
// also covers subnormal results and the overflow / underflow thresholds); exact 0 for -inf and below -103.98; +inf
// above 88.73; NaN for NaN. Runs for the compile-time arch and for every instruction set of kd::dispatch this CPU
// supports.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <kd/detail/simd_exp.hpp>
#include <kd/detail/simd_row.hpp>
#include <limits>
#include <vector>

#if KD_TEST_DISPATCH
#include <kd/backend/dispatch.hpp>
#endif

namespace {

using exp_fn = std::function<void(const float*, float*, std::int64_t)>;

std::int64_t ulp_distance(float a, float b) {
  std::int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  // Map to a monotonic integer line (negative floats below zero).
  const std::int64_t la = ia < 0 ? -(std::int64_t(ia) & 0x7fffffff) : ia,
                     lb = ib < 0 ? -(std::int64_t(ib) & 0x7fffffff) : ib;
  return la > lb ? la - lb : lb - la;
}

void check_exp(const char* name, const exp_fn& f) {
  std::vector<float> in;
  for (std::uint64_t u = 0; u <= 0xffffffffull; u += 251) {
    std::uint32_t b = static_cast<std::uint32_t>(u);
    float x;
    std::memcpy(&x, &b, 4);
    in.push_back(x);
  }
  for (float x = -1.0f; x <= 1.0f; x += 1.0f / 65536) in.push_back(x);
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
    if (std::isnan(x)) {
      nan_bad += !std::isnan(out[i]);
      continue;
    }
    const float ref = static_cast<float>(std::exp(static_cast<double>(x)));
    if (std::isinf(ref) || ref == 0.0f) inf_bad += out[i] != ref && ulp_distance(out[i], ref) > 2;
    const std::int64_t u = std::isnan(out[i]) ? (std::int64_t(1) << 40) : ulp_distance(out[i], ref);
    if (u > worst) {
      worst = u;
      worst_x = x;
    }
  }
  std::printf("exp [%s]: %zu inputs, worst error %lld ulp at x = %.9g\n", name, in.size(), (long long)worst, worst_x);
  INFO(name << ": worst " << worst << " ulp at " << worst_x);
  CHECK(worst <= 2);
  CHECK(nan_bad == 0);
  CHECK(inf_bad == 0);
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

template <class A>
void exp_array(const float* in, float* out, std::int64_t n) {
  using b = xsimd::batch<float, A>;
  namespace s = kd::detail::simd;
  std::int64_t j = 0;
  for (; j + static_cast<std::int64_t>(b::size) <= n; j += b::size)
    s::exp<A>(b::load_unaligned(in + j)).store_unaligned(out + j);
  if (j < n) s::store_partial<A>(out, j, n, s::exp<A>(s::load_padded<A>(in, j, n, 0.0f)));
}

}  // namespace

TEST_CASE("vector exp: compile-time arch", "[simd][exp]") {
  check_exp(xsimd::default_arch::name(), &exp_array<xsimd::default_arch>);
}

#if KD_TEST_DISPATCH
TEST_CASE("vector exp: every dispatched instruction set", "[simd][exp][dispatch]") {
  for (kd::simd_isa isa : {kd::simd_isa::sse2, kd::simd_isa::sse4_2, kd::simd_isa::avx2, kd::simd_isa::avx512}) {
    if (!kd::simd_isa_available(isa)) continue;
    check_exp(kd::simd_isa_name(isa), [isa](const float* in, float* out, std::int64_t n) {
      REQUIRE(kd::detail::dispatch_exp(isa, in, out, n).ok());
    });
  }
}
#endif
