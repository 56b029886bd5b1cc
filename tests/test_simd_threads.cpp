// Determinism of the SIMD backend: loss, per-row values and gradients are bitwise identical for 1, 2, 3, 4 and 7
// threads, a caller-provided executor (here: ranges run in reverse order, one row each) and repeated runs.
#include <algorithm>
#include <atomic>
#include <cstring>

#include "test_simd_util.hpp"

#if KD_TEST_DISPATCH
#include <kd/backend/dispatch.hpp>
#endif

namespace {

// A caller-provided executor: one task per row, run in reverse order on the calling thread.
struct reverse_executor {
  std::atomic<int>* calls;
  template <class F>
  void parallel_for(std::int64_t n, F f) const {
    for (std::int64_t r = n - 1; r >= 0; --r) f(r, r + 1);
    calls->fetch_add(1);
  }
};

struct snapshot {
  double loss;
  std::vector<float> per_row, gs, gt;
  bool operator==(const snapshot& o) const {
    return std::memcmp(&loss, &o.loss, sizeof loss) == 0 && per_row == o.per_row && gs == o.gs && gt == o.gt;
  }
};

template <class Backend>
snapshot run(const kd::divergence& d, const std::vector<float>& zs, const std::vector<float>& zt, std::int64_t rows,
             std::int64_t cols, const Backend& be) {
  snapshot s;
  s.per_row.assign(rows, 0.0f);
  s.gs.assign(zs.size(), 0.0f);
  s.gt.assign(zt.size(), 0.0f);
  kd::distill_outputs<float> out;
  out.grad_student = kd::mut_rows<float>(s.gs.data(), rows, cols);
  out.grad_teacher = kd::mut_rows<float>(s.gt.data(), rows, cols);
  out.per_row = s.per_row.data();
  kd::loss_result r;
  kd::distill_options o;
  o.temperature = 1.5;
  REQUIRE(kd::divergence_loss(d, kd::student_logits(zs.data(), rows, cols), kd::teacher_logits(zt.data(), rows, cols),
                              o, r, out, be)
              .ok());
  s.loss = r.loss;
  return s;
}

}  // namespace

TEST_CASE("simd backend: bitwise identical for any thread count and executor", "[simd][threads][determinism]") {
  // 67 rows x 4099 columns: above the threading threshold (2^16 elements), rows not divisible by the thread counts.
  const std::int64_t rows = 67, cols = 4099;
  auto zs = kdt::random_logits<float>(rows, cols, 21, 3.0, 0.01);
  auto zt = kdt::random_logits<float>(rows, cols, 22, 3.0, 0.0);
  for (std::size_t i = 0; i < zs.size(); ++i)
    if (std::isinf(zs[i])) zt[i] = zs[i];                                       // shared masks: every divergence finite
  for (std::int64_t j = 0; j < cols; ++j) zt[5 * cols + j] = zs[5 * cols + j];  // row 5 identical (exact zeros)
  for (auto d :
       {kd::divergence::forward_kl(), kd::divergence::reverse_kl(), kd::divergence::jsd(0.3), kd::divergence::tvd()}) {
    INFO(kd::divergence_name(d.kind));
    using B = kd::simd_backend<xsimd::default_arch, kd::thread_executor>;
    const snapshot base = run(d, zs, zt, rows, cols, B{kd::thread_executor{1}});
    for (int t : {2, 3, 4, 7}) CHECK(run(d, zs, zt, rows, cols, B{kd::thread_executor{t}}) == base);
    CHECK(run(d, zs, zt, rows, cols, B{kd::thread_executor{2}}) == base);  // repeated run
    std::atomic<int> calls{0};
    CHECK(run(d, zs, zt, rows, cols,
              kd::simd_backend<xsimd::default_arch, reverse_executor>{reverse_executor{&calls}}) == base);
    CHECK(calls.load() == 1);  // the caller's executor was used
#if KD_TEST_DISPATCH
    for (kd::simd_isa isa : {kd::simd_isa::sse2, kd::simd_isa::avx2, kd::simd_isa::avx512}) {
      if (!kd::simd_isa_available(isa)) continue;
      const snapshot one = run(d, zs, zt, rows, cols, kd::dispatch_backend{isa, 1});
      for (int t : {2, 3}) CHECK(run(d, zs, zt, rows, cols, kd::dispatch_backend{isa, t}) == one);
    }
#endif
  }
}
