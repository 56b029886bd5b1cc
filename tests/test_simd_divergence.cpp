// kd::simd_backend versus kd::reference_backend: every divergence, dtype (fp32 / bf16 / fp16 in, fp32 or input-type
// gradient out), odd vocabulary sizes (vector tails, chunk tails), strided rows with NaN-poisoned padding, masks,
// ignore_index, row weights, reductions, temperatures, the teacher gradient, in-place gradients, error semantics and
// exact zeros. Runs for the instruction set this file is compiled for (xsimd::default_arch) with 1 and 2 threads; the
// per-instruction-set runs of kd::dispatch are in tests/test_simd_dispatch.cpp.
#include "test_simd_suite.hpp"
#include "test_simd_util.hpp"

TEST_CASE("simd backend (compile-time arch), serial", "[simd]") {
  std::printf("simd backend arch: %s\n", xsimd::default_arch::name());
  kdst::run_suite(kd::simd_backend<xsimd::default_arch, kd::serial_executor>{});
}

TEST_CASE("simd backend (compile-time arch), 2 threads", "[simd][threads]") {
  kdst::run_suite(kd::simd_backend<xsimd::default_arch, kd::thread_executor>{kd::thread_executor{2}});
}
