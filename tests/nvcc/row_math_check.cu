// nvcc compile check (CTest nvcc_check, tests/CMakeLists.txt): kd headers meant for CUDA translation units compile with
// nvcc for sm_80 and sm_90 (-c only, no GPU needed). To add a header, add one #include line to the list below.
// Today's list: the plain-data headers, the row math (kd/divergences/) and the public loss headers. Under nvcc they pull in
// no xsimd, Eigen or <thread> (checked below): kd::bfloat16 / kd::half are CUDA's types there (kd/tensor.hpp) and the
// default backend is the reference backend (kd/backend.hpp).

// --- headers checked with nvcc (one per line) ---
#include <kd/version.hpp>
#include <kd/status.hpp>
#include <kd/options.hpp>
#include <kd/divergences/registry.hpp>
#include <kd/reverse_kl.hpp>
#include <kd/forward_kl.hpp>
#include <kd/jsd.hpp>
#include <kd/policy_gradient.hpp>
#include <kd/lm_loss.hpp>
#include <kd/softmax.hpp>
#include <kd/topk.hpp>
// --- end of list ---

#if defined(EIGEN_WORLD_VERSION)
#error "a kd header pulled <Eigen/Core> into a CUDA translation unit"
#endif
#if defined(XSIMD_VERSION_MAJOR)
#error "a kd header pulled xsimd into a CUDA translation unit"
#endif
#if defined(_GLIBCXX_THREAD)
#error "a kd header pulled <thread> into a CUDA translation unit"
#endif

// Host code of a .cu file calling a public loss (reference backend, the default here) with CUDA's bf16 type.
kd::status kd_nvcc_host_call(const __nv_bfloat16* s, const __nv_bfloat16* t, float* g, long rows, long cols) {
  kd::loss_result r;
  kd::distill_outputs<float> out;
  out.grad_student = kd::mut_rows<float>(g, rows, cols);
  return kd::reverse_kl(kd::student_logits(s, rows, cols), kd::teacher_logits(t, rows, cols), kd::distill_options{}, r,
                        out);
}

// Every registered divergence functor, instantiated for V = float in device code (one entry per thread): accumulate,
// finish and grad, so the row math's device compatibility is checked for all of them, for every -gencode target.
__global__ void kd_nvcc_check_kernel(const float* lx, const float* ly, float* out, int n) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= n) return;
  float total = 0.0f;
#define KD_NVCC_ONE_(kind, entry)                                \
  {                                                             \
    using F = typename kd::entry::functor;                      \
    F f = kd::entry::make(0.5, 0.5);                            \
    float acc[F::n_sums] = {};                                  \
    bool mismatch = false;                                      \
    f.accumulate(lx[j], ly[j], lx[j] - ly[j], acc, mismatch);    \
    double sums[F::n_sums];                                     \
    for (int i = 0; i < F::n_sums; ++i) sums[i] = acc[i];       \
    f.finish(sums, mismatch);                                   \
    float gx, gy;                                               \
    f.grad(lx[j], ly[j], lx[j] - ly[j], gx, gy);                 \
    total += acc[0] + gx + gy;                                  \
  }
  KD_DIVERGENCES(KD_NVCC_ONE_)
#undef KD_NVCC_ONE_
  out[j] = total;
}
