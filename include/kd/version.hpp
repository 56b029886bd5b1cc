// kd: knowledge-distillation losses and gradients for LLM trainers (header-only).
// One version number, parsed by CMake.
// The docs/*.md files cited in kd's header comments are installed with the headers, to share/doc/kd/ (CMake's DOCDIR).
#pragma once

#define KD_VERSION_MAJOR 0
#define KD_VERSION_MINOR 1
#define KD_VERSION_PATCH 0

// Namespaces (docs/simd.md, "One-definition rule").
//
// kd::v0 is the versioned inline namespace: two kd versions linked into one program never share symbols.
// Inside it, kd's code lives in an ABI inline namespace named after the instruction set the translation unit is
// compiled for (KD_ISA_NAMESPACE, from the compiler's predefined macros), so that an inline function or template
// compiled with -mavx2 and the "same" one compiled without -m flags (e.g. in kd::dispatch) have different mangled
// names and the linker cannot keep one encoding for both. Users never spell these namespaces: kd::status,
// kd::simd_backend<> etc. resolve through the inline namespaces.
//
//   KD_BEGIN_NAMESPACE / KD_END_NAMESPACE
//       kd::v0::<isa>: the default for all code (kernels, drivers, helpers, anything with a function body).
//   KD_BEGIN_ISA_FREE_NAMESPACE / KD_END_ISA_FREE_NAMESPACE
//       kd::v0: only (1) the entry points DEFINED in the compiled library kd::dispatch (simd_isa_name,
//       simd_isa_available, best_simd_isa, detail::dispatch_divergence, detail::dispatch_vector_fn, the per-ISA
//       tables) so any user translation unit links with the library whatever its flags, and (2) the plain data types in their
//       signatures (status, divergence, the views, distill_options, ...). Such types must not gain inline member
//       functions that the library emits; the odr_check test fails when a kd symbol is defined both in a user object
//       and in a kd::dispatch object compiled with other flags.
//
// Each namespace below is defined by the features the library's per-ISA translation unit of that level enables
// (docs/simd.md), so every translation unit sharing a namespace has at least those features.
#if defined(__AVX512F__) && defined(__AVX512CD__) && defined(__AVX512DQ__) && defined(__AVX512BW__)
#define KD_ISA_NAMESPACE isa_avx512
#elif defined(__AVX512F__)
#define KD_ISA_NAMESPACE isa_avx512f
#elif defined(__AVX2__) && defined(__FMA__)
#define KD_ISA_NAMESPACE isa_avx2
#elif defined(__AVX2__)
#define KD_ISA_NAMESPACE isa_avx2_nofma
#elif defined(__AVX__)
#define KD_ISA_NAMESPACE isa_avx
#elif defined(__SSE4_2__)
#define KD_ISA_NAMESPACE isa_sse4_2
#elif defined(__SSE4_1__)
#define KD_ISA_NAMESPACE isa_sse4_1
#elif defined(__SSSE3__)
#define KD_ISA_NAMESPACE isa_ssse3
#elif defined(__SSE3__)
#define KD_ISA_NAMESPACE isa_sse3
#elif defined(__SSE2__) || defined(_M_X64)
#define KD_ISA_NAMESPACE isa_sse2
#elif defined(__aarch64__) || defined(_M_ARM64)
#define KD_ISA_NAMESPACE isa_neon64
#elif defined(__ARM_NEON)
#define KD_ISA_NAMESPACE isa_neon
#else
#define KD_ISA_NAMESPACE isa_generic
#endif

// clang-format off
#define KD_BEGIN_ISA_FREE_NAMESPACE namespace kd { inline namespace v0 {
#define KD_END_ISA_FREE_NAMESPACE } }
#define KD_BEGIN_NAMESPACE namespace kd { inline namespace v0 { inline namespace KD_ISA_NAMESPACE {
#define KD_END_NAMESPACE } } }
// clang-format on
