// kd::reference_backend: the scalar, double-precision oracle backend. Single-threaded, plain loops, O(V) scratch per call.
// Deterministic. It implements every operation of the backend protocol (backend/protocol.hpp): the divergences, the
// policy gradient and the LM loss run the registry's functors (kd/divergences/) in double through the shared CPU drivers
// (backend/cpu_driver.hpp, pg_driver.hpp, lm_driver.hpp) and the reference row kernels (detail/reference_rows.hpp); the
// softmax family and top-k run detail/reference_softmax.hpp and reference_topk.hpp. Use it to check other backends and
// in gradient-checking tools; it is not meant to be fast.
#pragma once

#include <cstdint>

#include "../detail/reference_rows.hpp"
#include "../detail/reference_softmax.hpp"
#include "../detail/reference_topk.hpp"
#include "../options.hpp"
#include "../pg_options.hpp"
#include "../status.hpp"
#include "../topk_teacher_input.hpp"
#include "backend_traits.hpp"
#include "cpu_driver.hpp"
#include "lm_driver.hpp"
#include "pg_driver.hpp"
#include "serial_executor.hpp"
#include "shard_driver.hpp"
#include "topk_driver.hpp"
#if !defined(__CUDACC__)  // Eigen matrix products: host code only (CUDA translation units get no Eigen)
#include "fused_linear_driver.hpp"
#endif

KD_BEGIN_NAMESPACE

struct reference_backend {
  static constexpr backend_traits traits = {backend_traits::host, true, backend_traits::float64};
  static constexpr const char* name() noexcept { return "reference"; }

  // Preconditions (all members): arguments validated by the public function.
  template <class S, class P, class G>
  status run_divergence(const divergence& d, const student_input<S>& student, const teacher_input<P>& teacher,
                        const distill_options& opt, loss_result& result, const distill_outputs<G>& out) const {
    return detail::drive<serial_executor, S, P, G>(&detail::process_rows<detail::ref::row_kernels, S, P, G>,
                                                   serial_executor{}, d, student, teacher, opt, result, out);
  }

#if !defined(__CUDACC__)
  // Fused linear + divergence (kd/fused_linear.hpp, backend/fused_linear_driver.hpp).
  template <class T>
  status run_fused_linear(const divergence& d, const linear_head<T>& student, const linear_head<T>* teacher_head,
                          const teacher_input<T>& teacher_logits, const distill_options& opt,
                          const fused_linear_options& fo, loss_result& result,
                          const fused_linear_outputs<T>& out) const {
    return detail::fused::run<detail::ref::row_kernels>(serial_executor{}, d, student, teacher_head, teacher_logits, opt, fo, result, out);
  }
#endif

  // A vocabulary shard of each row (kd/vocab_parallel.hpp, backend/shard_driver.hpp).
  template <class S, class P, class G, class Comm>
  status run_vocab_parallel(const divergence& d, const student_input<S>& student, const teacher_input<P>& teacher,
                            const distill_options& opt, loss_result& result, const distill_outputs<G>& out,
                            const Comm& comm) const {
    return detail::shard::run<detail::ref::row_kernels>(serial_executor{}, comm, d, student, teacher, opt, result, out);
  }

  // A teacher given as its top-k (kd/topk_teacher.hpp, backend/topk_driver.hpp).
  template <class S, class P, class G>
  status run_topk_divergence(const divergence& d, const student_input<S>& student,
                             const topk_teacher_input<P>& teacher, const distill_options& opt, loss_result& result,
                             const distill_outputs<G>& out) const {
    return detail::topk::run<detail::ref::row_kernels>(serial_executor{}, d, student, teacher, opt, result, out);
  }

  template <class S, class P, class G>
  status run_policy_gradient(const student_input<S>& student, const teacher_input<P>& teacher, const pg_sequences& seq,
                             const pg_options& opt, const pg_outputs<G>& out, pg_diagnostics& diag) const {
    return detail::pg::run<detail::ref::row_kernels>(serial_executor{}, student, teacher, seq, opt, out, diag);
  }

  template <class S, class G>
  status run_lm_loss(const student_input<S>& student, const label_view& labels, const distill_options& opt,
                     loss_result& result, const mut_rows<G>& grad) const {
    return detail::lm::run<detail::ref::row_kernels>(serial_executor{}, student, labels, opt, result, grad);
  }

  template <class T>
  status run_log_sum_exp(const const_rows<T>& x, double temperature, float* out) const {
    return detail::ref::log_sum_exp_rows(x, temperature, out);
  }
  template <class T, class G>
  status run_softmax(const const_rows<T>& x, const mut_rows<G>& y, double temperature, softmax_form form) const {
    return detail::ref::softmax_rows(x, y, temperature, form);
  }
  template <class T, class G>
  status run_softmax_backward(const const_rows<T>& y, const const_rows<T>& dy, const mut_rows<G>& dx,
                              double temperature, softmax_form form) const {
    return detail::ref::softmax_backward_rows(y, dy, dx, temperature, form);
  }
  template <class S, class O>
  status run_topk_with_tail(const const_rows<S>& logits, const const_rows<std::int64_t>& indices, double temperature,
                            const mut_rows<O>& out) const {
    return detail::ref::topk_tail_rows(logits, indices, temperature, out);
  }
  template <class T, class O>
  status run_topk_with_tail_from_log_probs(const const_rows<T>& topk_log_probs, const mut_rows<O>& out) const {
    return detail::ref::topk_tail_from_log_probs_rows(topk_log_probs, out);
  }
  template <class S, class G, class O>
  status run_topk_with_tail_backward(const const_rows<S>& logits, const const_rows<std::int64_t>& indices,
                                     double temperature, const const_rows<G>& grad_compressed,
                                     const mut_rows<O>& grad_logits) const {
    return detail::ref::topk_tail_backward_rows(logits, indices, temperature, grad_compressed, grad_logits);
  }
};

KD_END_NAMESPACE

// The members of a backend that leaves the softmax family and top-k to the reference kernels (double precision, calling
// thread): expands inside the backend's struct body (kd::simd_backend, kd::dispatch_backend).
#define KD_REFERENCE_SOFTMAX_TOPK_MEMBERS                                             \
  template <class... A>                                                               \
  ::kd::status run_log_sum_exp(const A&... a) const {                                 \
    return ::kd::reference_backend{}.run_log_sum_exp(a...);                           \
  }                                                                                   \
  template <class... A>                                                               \
  ::kd::status run_softmax(const A&... a) const {                                     \
    return ::kd::reference_backend{}.run_softmax(a...);                               \
  }                                                                                   \
  template <class... A>                                                               \
  ::kd::status run_softmax_backward(const A&... a) const {                            \
    return ::kd::reference_backend{}.run_softmax_backward(a...);                      \
  }                                                                                   \
  template <class... A>                                                               \
  ::kd::status run_topk_with_tail(const A&... a) const {                              \
    return ::kd::reference_backend{}.run_topk_with_tail(a...);                        \
  }                                                                                   \
  template <class... A>                                                               \
  ::kd::status run_topk_with_tail_from_log_probs(const A&... a) const {               \
    return ::kd::reference_backend{}.run_topk_with_tail_from_log_probs(a...);         \
  }                                                                                   \
  template <class... A>                                                               \
  ::kd::status run_topk_with_tail_backward(const A&... a) const {                     \
    return ::kd::reference_backend{}.run_topk_with_tail_backward(a...);               \
  }
