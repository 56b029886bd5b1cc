// kd::simd_backend<Arch, Executor>: the fast CPU backend. Vectorized with xsimd for one instruction set chosen at
// compile time (Arch = xsimd::default_arch, the best one the compiler flags enable: -march=native gives AVX-512 / AVX2
// where available; plain x86-64 flags give SSE2). For run-time selection in binaries built without -m flags see
// kd/backend/dispatch.hpp (the optional compiled library kd::dispatch).
//
//   kd::divergence_loss(d, student, teacher, options, result, outputs, kd::simd_backend<>{});    // all hardware threads
//   kd::divergence_loss(..., kd::simd_backend<>{kd::thread_executor{2}});                         // 2 threads
//   kd::divergence_loss(..., kd::simd_backend<xsimd::avx2, my_pool_adaptor>{my_pool_adaptor{...}});  // caller's executor
//
// Work: rows are independent; each row is computed by one thread in float32 (fp32 / bf16 / fp16 inputs are converted on
// load; partial sums of each L1-sized chunk are accumulated in double): the shared CPU driver (backend/cpu_driver.hpp)
// runs the registry's functors through the SIMD row kernels (detail/simd_divergence.hpp).
// float64 inputs ask for double precision: they are computed by kd::reference_backend (exact in double, single thread).
// Determinism: a row's result does not depend on which thread computes it, and per-row losses are summed in row order
// on the calling thread, so results are bitwise identical for any thread count and across runs (for a fixed Arch).
// Accuracy versus kd::reference_backend (docs/simd.md): float32 rounding of the log-probabilities,
// i.e. relative errors of a few 1e-6 on losses and gradients for logits of moderate scale (they grow with |logit| / T).
// Errors: identical to kd::reference_backend (same codes, argument names, first offending row; value errors leave NaN
// gradient rows and a NaN / +inf loss). Memory: per call, four arrays of `rows` entries; no temporary proportional to V.
// The policy gradient and the LM loss run the same row kernels (backend/pg_driver.hpp, lm_driver.hpp); the softmax family
// and top-k run in the reference kernels (KD_REFERENCE_SOFTMAX_TOPK_MEMBERS: double, calling thread).
// Small problems (fewer than 2 rows or under 2^16 elements in all) run on the calling thread without the executor.
#pragma once

#include <type_traits>
#include <xsimd/xsimd.hpp>

#include "../detail/simd_divergence.hpp"
#include "../options.hpp"
#include "../status.hpp"
#include "backend_traits.hpp"
#include "cpu_driver.hpp"
#include "executors.hpp"
#include "lm_driver.hpp"
#include "pg_driver.hpp"
#include "reference.hpp"

KD_BEGIN_NAMESPACE

template <class Arch = xsimd::default_arch, class Executor = thread_executor>
struct simd_backend {
  using arch_type = Arch;
  Executor executor{};

  static constexpr backend_traits traits = {backend_traits::host, true, backend_traits::float32};
  static constexpr const char* name() noexcept { return "simd"; }
  static constexpr const char* arch_name() noexcept { return Arch::name(); }

  // Precondition: arguments validated (kd::divergence_loss does it).
  template <class S, class P, class G>
  status run_divergence(const divergence& d, const student_input<S>& student, const teacher_input<P>& teacher,
                        const distill_options& opt, loss_result& result, const distill_outputs<G>& out) const {
    if constexpr (std::is_same_v<S, double> || std::is_same_v<P, double>)
      return reference_backend{}.run_divergence(d, student, teacher, opt, result, out);
    else
      return detail::drive<Executor, S, P, G>(&detail::process_rows<detail::simd::row_kernels<Arch>, S, P, G>,
                                              executor, d, student, teacher, opt, result, out);
  }

  // Fused linear + divergence (kd/fused_linear.hpp, backend/fused_linear_driver.hpp).
  template <class T>
  status run_fused_linear(const divergence& d, const linear_head<T>& student, const linear_head<T>* teacher_head,
                          const teacher_input<T>& teacher_logits, const distill_options& opt,
                          const fused_linear_options& fo, loss_result& result,
                          const fused_linear_outputs<T>& out) const {
    if constexpr (std::is_same_v<T, double>)
      return reference_backend{}.run_fused_linear(d, student, teacher_head, teacher_logits, opt, fo, result, out);
    else
      return detail::fused::run<detail::simd::row_kernels<Arch>>(executor, d, student, teacher_head, teacher_logits, opt, fo, result, out);
  }

  // A vocabulary shard of each row (kd/vocab_parallel.hpp, backend/shard_driver.hpp) on this backend's row kernels.
  template <class S, class P, class G, class Comm>
  status run_vocab_parallel(const divergence& d, const student_input<S>& student, const teacher_input<P>& teacher,
                            const distill_options& opt, loss_result& result, const distill_outputs<G>& out,
                            const Comm& comm) const {
    if constexpr (std::is_same_v<S, double> || std::is_same_v<P, double>)
      return reference_backend{}.run_vocab_parallel(d, student, teacher, opt, result, out, comm);
    else
      return detail::shard::run<detail::simd::row_kernels<Arch>>(executor, comm, d, student, teacher, opt, result,
                                                                 out);
  }

  // A teacher given as its top-k (kd/topk_teacher.hpp, backend/topk_driver.hpp): the student passes in this backend's
  // kernels. float64 students, and temperatures whose 1 / T overflows float32, run on the reference kernels.
  template <class S, class P, class G>
  status run_topk_divergence(const divergence& d, const student_input<S>& student,
                             const topk_teacher_input<P>& teacher, const distill_options& opt, loss_result& result,
                             const distill_outputs<G>& out) const {
    if constexpr (std::is_same_v<S, double>)
      return reference_backend{}.run_topk_divergence(d, student, teacher, opt, result, out);
    else if (!detail::simd::row_kernels<Arch>::float_inv_t(1.0 / opt.temperature))
      return reference_backend{}.run_topk_divergence(d, student, teacher, opt, result, out);
    else
      return detail::topk::run<detail::simd::row_kernels<Arch>>(executor, d, student, teacher, opt, result, out);
  }

  // The MiniLLM policy gradient (backend/pg_driver.hpp) on this backend's row kernels.
  template <class S, class P, class G>
  status run_policy_gradient(const student_input<S>& student, const teacher_input<P>& teacher, const pg_sequences& seq,
                             const pg_options& opt, const pg_outputs<G>& out, pg_diagnostics& diag) const {
    if constexpr (std::is_same_v<S, double> || std::is_same_v<P, double>)
      return reference_backend{}.run_policy_gradient(student, teacher, seq, opt, out, diag);
    else
      return detail::pg::run<detail::simd::row_kernels<Arch>>(executor, student, teacher, seq, opt, out, diag);
  }

  // The LM (cross-entropy) loss (backend/lm_driver.hpp) on this backend's row kernels.
  template <class S, class G>
  status run_lm_loss(const student_input<S>& student, const label_view& labels, const distill_options& opt,
                     loss_result& result, const mut_rows<G>& grad) const {
    if constexpr (std::is_same_v<S, double>)
      return reference_backend{}.run_lm_loss(student, labels, opt, result, grad);
    else
      return detail::lm::run<detail::simd::row_kernels<Arch>>(executor, student, labels, opt, result, grad);
  }

  KD_REFERENCE_SOFTMAX_TOPK_MEMBERS
};

KD_END_NAMESPACE
