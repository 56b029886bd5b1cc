// nvcc compile check (CTest nvcc_check, tests/CMakeLists.txt): kd headers meant for CUDA translation units compile with
// nvcc for sm_80 and sm_90 (-c only, no GPU needed). To add a header, add one #include line to the list below.
// Today's list: the plain-data headers; kd/options.hpp pulls in <Eigen/Core> through kd/tensor.hpp (bf16 / fp16 types),
// which compiles with nvcc 13 but with Eigen 3.4 warnings (#20012-D, defaulted __host__ __device__ members).

// --- headers checked with nvcc (one per line) ---
#include <kd/version.hpp>
#include <kd/status.hpp>
#include <kd/options.hpp>
// --- end of list ---

// A trivial kernel so device code is generated for every -gencode target.
__global__ void kd_nvcc_check_kernel(float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = static_cast<float>(i);
}
