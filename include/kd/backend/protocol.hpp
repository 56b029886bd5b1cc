// The backend protocol: how every kd operation hands its work to a backend value (the last argument of every call,
// CUB/Thrust-style execution policy). The public function validates its arguments (errors before any output is
// written), then calls one member of the backend; a backend is any copyable type with some of these members:
//
//   operation (public function)        member the backend implements (arguments validated)
//   divergence_loss (kd/divergence.hpp, forward_kl.hpp, ...)
//                                      status run_divergence(d, student, teacher, options, result, outputs)
//   vocab_parallel_divergence (kd/vocab_parallel.hpp)
//                                      status run_vocab_parallel(d, student, teacher, options, result, outputs, comm)
//   fused_linear_divergence (kd/fused_linear.hpp)
//                                      status run_fused_linear(d, student_head, teacher_head, teacher_logits, options,
//                                                              fused_options, result, outputs)
//   topk_divergence_loss (kd/topk_teacher.hpp)
//                                      status run_topk_divergence(d, student, teacher_topk, options, result, outputs)
//   policy_gradient (kd/policy_gradient.hpp)
//                                      status run_policy_gradient(student, teacher, seq, options, outputs, diag)
//   lm_loss (kd/lm_loss.hpp)           status run_lm_loss(student, labels, options, result, grad)
//   log_sum_exp (kd/softmax.hpp)       status run_log_sum_exp(logits, temperature, out)
//   softmax, log_softmax               status run_softmax(logits, out, temperature, softmax_form)
//   softmax_backward, log_softmax_backward
//                                      status run_softmax_backward(y, grad_y, grad_logits, temperature, softmax_form)
//   topk_with_tail (kd/topk.hpp)       status run_topk_with_tail(logits, indices, temperature, out)
//   topk_with_tail_from_log_probs      status run_topk_with_tail_from_log_probs(topk_log_probs, out)
//   topk_with_tail_backward            status run_topk_with_tail_backward(logits, indices, temperature, grad_compressed,
//                                                                        grad_logits)
//
// and `static constexpr kd::backend_traits traits` (plain data: host / device memory, deterministic, accumulation
// precision; backend/backend_traits.hpp). Passing a backend that lacks the member an operation needs fails at compile
// time with one message naming the operation (KD_REQUIRE_BACKEND_OPERATION below), never with a template backtrace.
//
// kd's backends (kd/backend.hpp): reference_backend implements every operation (double precision, the oracle);
// simd_backend<Arch, Executor> and dispatch_backend run the divergences (dense, vocabulary-parallel, top-k teachers),
// the policy gradient and the LM loss in their SIMD kernels, and the softmax family and top-k in the reference kernels (double, calling thread).
#pragma once

#include <type_traits>
#include <utility>

#include "../version.hpp"

KD_BEGIN_NAMESPACE
namespace detail {

template <class T>
inline constexpr bool dependent_false = false;

// has_run_<op><Backend, Args...>: whether backend.run_<op>(args...) is well-formed.
#define KD_BACKEND_OPERATION_(op)                                                                                 \
  template <class Void, class B, class... A>                                                                      \
  struct has_run_##op##_ : std::false_type {};                                                                    \
  template <class B, class... A>                                                                                  \
  struct has_run_##op##_<std::void_t<decltype(std::declval<const B&>().run_##op(std::declval<A&>()...))>, B, \
                         A...> : std::true_type {};                                                               \
  template <class B, class... A>                                                                                  \
  inline constexpr bool has_run_##op = has_run_##op##_<void, B, A...>::value;

KD_BACKEND_OPERATION_(divergence)
KD_BACKEND_OPERATION_(vocab_parallel)
KD_BACKEND_OPERATION_(fused_linear)
KD_BACKEND_OPERATION_(topk_divergence)
KD_BACKEND_OPERATION_(policy_gradient)
KD_BACKEND_OPERATION_(lm_loss)
KD_BACKEND_OPERATION_(log_sum_exp)
KD_BACKEND_OPERATION_(softmax)
KD_BACKEND_OPERATION_(softmax_backward)
KD_BACKEND_OPERATION_(topk_with_tail)
KD_BACKEND_OPERATION_(topk_with_tail_from_log_probs)
KD_BACKEND_OPERATION_(topk_with_tail_backward)
#undef KD_BACKEND_OPERATION_

}  // namespace detail
KD_END_NAMESPACE

// In a public operation: fails to compile, naming the operation, unless Backend implements run_<op>(Args...).
// Follow it with `if constexpr (detail::has_run_<op><Backend, Args...>)` around the call so that the message above
// is the only error.
#define KD_REQUIRE_BACKEND_OPERATION(fn, op, Backend, ...)                                                   \
  static_assert(::kd::detail::has_run_##op<Backend, __VA_ARGS__>,                                           \
                "kd::" #fn ": the backend passed does not implement this operation (it needs a member run_" #op \
                " taking these argument types; see kd/backend/protocol.hpp)")
