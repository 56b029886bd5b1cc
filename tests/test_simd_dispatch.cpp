// The SIMD test suite for every instruction set compiled into kd::dispatch that this CPU supports (SSE2, SSE4.2,
// AVX2+FMA, AVX-512), with 1 and 2 threads, plus the dispatch API itself (names, availability, unsupported requests).
#include "test_simd_suite.hpp"
#include "test_simd_util.hpp"

#if KD_TEST_DISPATCH
#include <kd/backend/dispatch.hpp>

namespace {
const kd::simd_isa all_isas[] = {kd::simd_isa::sse2, kd::simd_isa::sse4_2, kd::simd_isa::avx2, kd::simd_isa::avx512};
}

TEST_CASE("dispatch: every available instruction set against the reference", "[simd][dispatch]") {
  std::printf("best instruction set on this CPU: %s\n", kd::simd_isa_name(kd::best_simd_isa()));
  int tested = 0;
  for (kd::simd_isa isa : all_isas) {
    if (!kd::simd_isa_available(isa)) {
      std::printf("dispatch: %s not supported by this CPU, skipped\n", kd::simd_isa_name(isa));
      continue;
    }
    for (int threads : {1, 2}) {
      // One dynamic section per (isa, threads): Catch2 enters each named section once per run, so the suite's own
      // sections must be nested under a distinct parent for every backend value.
      DYNAMIC_SECTION("isa " << kd::simd_isa_name(isa) << ", threads " << threads) {
        kdst::run_suite(kd::dispatch_backend{isa, threads});
      }
    }
    ++tested;
  }
  CHECK(tested >= 1);
  CHECK(kd::simd_isa_available(kd::simd_isa::sse2));  // x86-64 baseline
}

TEST_CASE("dispatch: API", "[simd][dispatch]") {
  CHECK(kd::simd_isa_available(kd::simd_isa::best));
  CHECK(std::string(kd::simd_isa_name(kd::simd_isa::avx2)) == "avx2");
  CHECK(kd::simd_isa_available(kd::best_simd_isa()));
  for (kd::simd_isa isa : all_isas) {
    if (kd::simd_isa_available(isa)) continue;
    std::vector<float> z(8, 0.0f);
    kd::loss_result r;
    auto st = kd::divergence_loss(kd::divergence::forward_kl(), kd::student_logits(z.data(), 2, 4),
                                  kd::teacher_logits(z.data(), 2, 4), {}, r, kd::distill_outputs<float>{},
                                  kd::dispatch_backend{isa, 1});
    CHECK(st.code == kd::errc::unsupported);
  }
}
#else
TEST_CASE("dispatch: not built (KD_BUILD_DISPATCH=OFF)", "[simd][dispatch]") { SUCCEED(); }
#endif
