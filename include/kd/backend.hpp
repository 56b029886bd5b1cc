// Backends are values passed as the last argument of every kd call (CUB/Thrust-style execution policy):
//   kd::reference_backend{}  scalar double-precision oracle (tests, gradient checks)
//   kd::simd_backend<Arch, Executor>{}  vectorized float32 kernels, threads over rows (kd/backend/simd.hpp)
//   kd::dispatch_backend{}   the SIMD kernels with the instruction set chosen at run time (kd/backend/dispatch.hpp; needs
//                            the compiled library kd::dispatch)
//   kd::default_backend      the best backend compiled in: kd::simd_backend<> for the compile-time best instruction set
//                            (xsimd::default_arch: build with -march=native or -mavx2 -mfma for more than SSE2), all hardware
//                            threads; the reference backend where xsimd has no instruction set. See docs/performance.md.
// A backend is any type with the members of the backend protocol its caller needs (kd/backend/protocol.hpp): every kd
// operation (divergences, policy gradient, LM loss, softmax family, top-k) takes one as its last argument.
#pragma once

#include <type_traits>

#include "backend/reference.hpp"

// CUDA translation units (nvcc) get the host backends without xsimd or <thread>: the reference backend, which is then
// the default (include kd/backend/simd.hpp explicitly for the SIMD backend in host code compiled by nvcc).
#if !defined(__CUDACC__)
#include "backend/simd.hpp"
#endif

KD_BEGIN_NAMESPACE

#if defined(__CUDACC__)
using default_backend = reference_backend;
#else
using default_backend =
    std::conditional_t<std::is_same_v<xsimd::default_arch, xsimd::unavailable>, reference_backend, simd_backend<>>;
#endif

KD_END_NAMESPACE
