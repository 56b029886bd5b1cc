// kd::dispatch_backend: the SIMD backend with the instruction set chosen at run time, for programs built without -m
// flags (PyTorch extensions, distribution packages). Needs the small compiled library kd::dispatch (CMake option
// KD_BUILD_DISPATCH, x86-64 only), which compiles the kernels of kd/backend/simd.hpp once per instruction set (SSE2,
// SSE4.2, AVX2+FMA, AVX-512 F/CD/DQ/BW), each in its own translation unit with its own -m flags and Arch in every
// kernel's template arguments.
//
//   target_link_libraries(my_target PRIVATE kd::dispatch)
//   kd::divergence_loss(d, student, teacher, options, result, outputs, kd::dispatch_backend{});            // best ISA
//   kd::policy_gradient(student, teacher, seq, options, outputs, diag, kd::dispatch_backend{});            // also
//   kd::lm_loss(student, labels, options, result, grad, kd::dispatch_backend{});                           // also
//   kd::topk_divergence_loss(d, student, teacher_topk, options, result, outputs, kd::dispatch_backend{}); // also
//   kd::divergence_loss(..., kd::dispatch_backend{kd::simd_isa::avx2, 2});                                 // forced, 2
//   threads
//
// Element types: student and teacher of the same type, float32, bf16 or fp16; gradient float32 or the input type (other
// combinations fail to compile with a static_assert; use kd::simd_backend<> for them). Results: those of
// kd::simd_backend<Arch> for the chosen Arch (bitwise identical for any thread count). Requesting an instruction set
// the CPU (or the build) lacks returns errc::unsupported naming "backend".
#pragma once

#include <cstdint>
#include <type_traits>

#include "../communicator.hpp"
#include "../divergence_spec.hpp"
#include "../options.hpp"
#include "../pg_options.hpp"
#include "../status.hpp"
#include "../topk_teacher_input.hpp"
#include "reference.hpp"

// The library's entry points are in the ISA-free namespace kd::v0 (kd/version.hpp), so a translation unit compiled with
// any -m flags links with the library; the library's internals are in kd::v0::dispatch_abi.
KD_BEGIN_ISA_FREE_NAMESPACE

enum class simd_isa { best = 0, sse2, sse4_2, avx2, avx512 };

// "best", "sse2", "sse4.2", "avx2", "avx512".
const char* simd_isa_name(simd_isa isa) noexcept;
// True when the library was built with kernels for `isa` and this CPU (and OS) supports it; best is always available.
bool simd_isa_available(simd_isa isa) noexcept;
// The instruction set simd_isa::best resolves to on this machine.
simd_isa best_simd_isa() noexcept;

namespace dispatch_abi {

// Defined in the library for the supported type combinations. Precondition: arguments validated.
template <class S, class P, class G>
status dispatch_divergence(simd_isa isa, int threads, const divergence& d, const student_input<S>& student,
                           const teacher_input<P>& teacher, const distill_options& opt, loss_result& result,
                           const distill_outputs<G>& out);

template <class S, class P, class G>
status dispatch_vocab_parallel(simd_isa isa, int threads, const divergence& d, const student_input<S>& student,
                               const teacher_input<P>& teacher, const distill_options& opt, loss_result& result,
                               const distill_outputs<G>& out, const communicator_ref& comm);

template <class S, class G>
status dispatch_topk_divergence(simd_isa isa, int threads, const divergence& d, const student_input<S>& student,
                                const topk_teacher_input<float>& teacher, const distill_options& opt,
                                loss_result& result, const distill_outputs<G>& out);

template <class S, class P, class G>
status dispatch_policy_gradient(simd_isa isa, int threads, const student_input<S>& student,
                                const teacher_input<P>& teacher, const pg_sequences& seq, const pg_options& opt,
                                const pg_outputs<G>& out, pg_diagnostics& diag);

template <class S, class G>
status dispatch_lm_loss(simd_isa isa, int threads, const student_input<S>& student, const label_view& labels,
                        const distill_options& opt, loss_result& result, const mut_rows<G>& grad);

// The vector functions of the SIMD kernels: kd::detail::simd::exp (detail/simd_exp.hpp), expm1 and log1p
// (detail/simd_expm1_log1p.hpp).
enum class vector_fn : int { exp = 0, expm1 = 1, log1p = 2 };

// out[i] = f(in[i]) with the kernels of `isa` (testing and benchmarking the vector functions).
status dispatch_vector_fn(simd_isa isa, vector_fn f, const float* in, float* out, std::int64_t n) noexcept;

}  // namespace dispatch_abi

KD_END_ISA_FREE_NAMESPACE

KD_BEGIN_NAMESPACE

namespace detail {

using dispatch_abi::dispatch_divergence;
using dispatch_abi::dispatch_vocab_parallel;
using dispatch_abi::dispatch_topk_divergence;
using dispatch_abi::dispatch_lm_loss;
using dispatch_abi::dispatch_policy_gradient;
using dispatch_abi::dispatch_vector_fn;
using dispatch_abi::vector_fn;

template <class S, class P, class G>
inline constexpr bool dispatch_types_supported = std::is_same_v<S, P> &&
                                                 (std::is_same_v<S, float> || std::is_same_v<S, bfloat16> ||
                                                  std::is_same_v<S, half>)&&(std::is_same_v<G, float> ||
                                                                             std::is_same_v<G, S>);

}  // namespace detail

struct dispatch_backend {
  static constexpr backend_traits traits = {backend_traits::host, true, backend_traits::float32};
  simd_isa isa = simd_isa::best;
  int threads = 0;  // 0: std::thread::hardware_concurrency()

  static constexpr const char* name() noexcept { return "dispatch"; }

  template <class S, class P, class G>
  status run_divergence(const divergence& d, const student_input<S>& student, const teacher_input<P>& teacher,
                        const distill_options& opt, loss_result& result, const distill_outputs<G>& out) const {
    static_assert(detail::dispatch_types_supported<S, P, G>,
                  "kd::dispatch_backend: student and teacher must have the same element type (float, kd::bfloat16 or "
                  "kd::half) and the gradient must be float or that type; use kd::simd_backend<> otherwise");
    return detail::dispatch_divergence(isa, threads, d, student, teacher, opt, result, out);
  }

  // kd::vocab_parallel_divergence: any communicator, through a communicator_ref (kd/communicator.hpp).
  template <class S, class P, class G, class Comm>
  status run_vocab_parallel(const divergence& d, const student_input<S>& student, const teacher_input<P>& teacher,
                            const distill_options& opt, loss_result& result, const distill_outputs<G>& out,
                            const Comm& comm) const {
    static_assert(detail::dispatch_types_supported<S, P, G>,
                  "kd::dispatch_backend: student and teacher must have the same element type (float, kd::bfloat16 or "
                  "kd::half) and the gradient must be float or that type; use kd::simd_backend<> otherwise");
    return detail::dispatch_vocab_parallel(isa, threads, d, student, teacher, opt, result, out,
                                           communicator_ref::of(comm));
  }

  // kd::topk_divergence_loss: the teacher's top-k log-probs in float32.
  template <class S, class P, class G>
  status run_topk_divergence(const divergence& d, const student_input<S>& student,
                             const topk_teacher_input<P>& teacher, const distill_options& opt, loss_result& result,
                             const distill_outputs<G>& out) const {
    static_assert(detail::dispatch_types_supported<S, S, G> && std::is_same_v<P, float>,
                  "kd::dispatch_backend: the student must be float, kd::bfloat16 or kd::half, the gradient float or "
                  "that type, and the teacher's top-k log-probs float; use kd::simd_backend<> otherwise");
    return detail::dispatch_topk_divergence(isa, threads, d, student, teacher, opt, result, out);
  }

  template <class S, class P, class G>
  status run_policy_gradient(const student_input<S>& student, const teacher_input<P>& teacher, const pg_sequences& seq,
                             const pg_options& opt, const pg_outputs<G>& out, pg_diagnostics& diag) const {
    static_assert(detail::dispatch_types_supported<S, P, G>,
                  "kd::dispatch_backend: student and teacher must have the same element type (float, kd::bfloat16 or "
                  "kd::half) and the gradient must be float or that type; use kd::simd_backend<> otherwise");
    return detail::dispatch_policy_gradient(isa, threads, student, teacher, seq, opt, out, diag);
  }

  template <class S, class G>
  status run_lm_loss(const student_input<S>& student, const label_view& labels, const distill_options& opt,
                     loss_result& result, const mut_rows<G>& grad) const {
    static_assert(detail::dispatch_types_supported<S, S, G>,
                  "kd::dispatch_backend: the student must be float, kd::bfloat16 or kd::half and the gradient float or "
                  "that type; use kd::simd_backend<> otherwise");
    return detail::dispatch_lm_loss(isa, threads, student, labels, opt, result, grad);
  }

  // The softmax family and top-k: the reference kernels (double, calling thread).
  KD_REFERENCE_SOFTMAX_TOPK_MEMBERS
};

KD_END_NAMESPACE
