// tests/odr_check.sh: a user translation unit compiled with instruction-set flags (-mavx2 -mfma) that uses the
// header-only kd::simd_backend<> and, in the same program, kd::dispatch_backend from the compiled library kd::dispatch.
// Both must agree: bitwise with the library's kernels for the same instruction set, within float32 rounding with the
// best one. The script then checks with nm that no kd symbol is defined both here and in a dispatch object compiled
// with other flags.
#include <kd/backend/dispatch.hpp>
#include <kd/backend/simd.hpp>
#include <kd/divergence.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace {

// logits is (rows, vocab); enough work (rows * vocab >= 2^16) for the threaded path of both backends.
constexpr std::int64_t rows = 64, vocab = 8192;

template <class Backend>
kd::status run(const Backend& b, const kd::divergence& d, const std::vector<float>& zs, const std::vector<float>& zt,
               std::vector<float>& grad, kd::loss_result& r) {
  kd::distill_options opt;
  opt.temperature = 2.0;
  kd::distill_outputs<float> out;
  out.grad_student = kd::mut_rows<float>(grad.data(), rows, vocab);
  return kd::divergence_loss(d, kd::student_logits(zs.data(), rows, vocab), kd::teacher_logits(zt.data(), rows, vocab),
                             opt, r, out, b);
}

}  // namespace

int main() {
  std::vector<float> zs(rows * vocab), zt(rows * vocab);
  for (std::int64_t i = 0; i < rows * vocab; ++i) {
    zs[i] = static_cast<float>(std::sin(0.37 * i) * 6.0);
    zt[i] = static_cast<float>(std::cos(0.11 * i) * 5.0);
  }
  const kd::simd_isa same = kd::simd_isa::avx2;  // this file is compiled with -mavx2 -mfma (tests/CMakeLists.txt)
  int failed = 0;
  for (const kd::divergence& d : {kd::divergence::forward_kl(), kd::divergence::reverse_kl(), kd::divergence::jsd(0.3)}) {
    std::vector<float> g_hdr(zs.size()), g_lib(zs.size()), g_best(zs.size());
    kd::loss_result r_hdr, r_lib, r_best;
    const kd::status s1 = run(kd::simd_backend<>{kd::thread_executor{2}}, d, zs, zt, g_hdr, r_hdr);
    const kd::status s2 = run(kd::dispatch_backend{same, 2}, d, zs, zt, g_lib, r_lib);
    const kd::status s3 = run(kd::dispatch_backend{kd::simd_isa::best, 2}, d, zs, zt, g_best, r_best);
    const bool bitwise = r_hdr.loss == r_lib.loss && g_hdr == g_lib;
    double worst = std::abs(r_hdr.loss - r_best.loss) / std::abs(r_hdr.loss);
    for (std::size_t i = 0; i < g_hdr.size(); ++i)
      worst = std::max(worst, std::abs(static_cast<double>(g_hdr[i]) - g_best[i]) / (std::abs(g_hdr[i]) + 1e-6));
    const bool ok = s1.ok() && s2.ok() && s3.ok() && bitwise && worst < 1e-4;
    std::printf("%-10s simd_backend<%s> %.9g, dispatch %s %.9g (bitwise %s), dispatch best=%s %.9g (worst rel %.2g) %s\n",
                kd::divergence_name(d.kind), kd::simd_backend<>::arch_name(), r_hdr.loss, kd::simd_isa_name(same),
                r_lib.loss, bitwise ? "yes" : "NO", kd::simd_isa_name(kd::best_simd_isa()), r_best.loss, worst,
                ok ? "ok" : "FAIL");
    if (!ok) std::printf("  %s | %s | %s\n", s1.to_string().c_str(), s2.to_string().c_str(), s3.to_string().c_str());
    failed += ok ? 0 : 1;
  }
  return failed == 0 ? 0 : 1;
}
