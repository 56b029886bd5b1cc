// nvcc compile check (CTest nvcc_check, tests/CMakeLists.txt): kd headers meant for CUDA translation units compile with
// nvcc for sm_80 and sm_90 (-c only, no GPU needed). To add a header, add one #include line to the list below.
// Today's list: the plain-data headers and the row math (kd/divergences/); kd/options.hpp pulls in <Eigen/Core> through kd/tensor.hpp (bf16 / fp16 types),
// which compiles with nvcc 13 but with Eigen 3.4 warnings (#20012-D, defaulted __host__ __device__ members).

// --- headers checked with nvcc (one per line) ---
#include <kd/version.hpp>
#include <kd/status.hpp>
#include <kd/options.hpp>
#include <kd/divergences/registry.hpp>
// --- end of list ---

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
    f.accumulate(lx[j], ly[j], acc, mismatch);                  \
    double sums[F::n_sums];                                     \
    for (int i = 0; i < F::n_sums; ++i) sums[i] = acc[i];       \
    f.finish(sums, mismatch);                                   \
    float gx, gy;                                               \
    f.grad(lx[j], ly[j], gx, gy);                               \
    total += acc[0] + gx + gy;                                  \
  }
  KD_DIVERGENCES(KD_NVCC_ONE_)
#undef KD_NVCC_ONE_
  out[j] = total;
}
