// Private to kd::dispatch: the per-instruction-set kernel tables. Each isa_*.cpp is compiled with its own -m flags and
// fills one table with pointers to complete drivers for its instruction set: kd::detail::simd::drive and
// process_rows<Arch, ...> are instantiated in that translation unit, in its ABI namespace (kd/version.hpp), so nothing
// compiled with these -m flags shares a symbol with dispatch.cpp (no flags) or a user's translation unit (other flags).
// The tables and the table_*() functions are ISA-free (kd::v0::dispatch_abi): their types are plain data.
#pragma once

#include <kd/backend/dispatch.hpp>
#include <kd/backend/simd.hpp>
#include <kd/pg_options.hpp>
#include <kd/topk_teacher_input.hpp>

KD_BEGIN_ISA_FREE_NAMESPACE
namespace dispatch_abi {

// Validated arguments in, status out: the whole of simd_backend<Arch, thread_executor>'s run_divergence,
// run_policy_gradient, run_lm_loss, run_vocab_parallel and run_topk_divergence for one element-type combination (a
// top-k teacher's log-probs are float32).
template <class S, class G>
struct kernels {
  status (*divergence)(int threads, const kd::divergence& d, const student_input<S>& student,
                       const teacher_input<S>& teacher, const distill_options& opt, loss_result& result,
                       const distill_outputs<G>& out);
  status (*policy_gradient)(int threads, const student_input<S>& student, const teacher_input<S>& teacher,
                            const pg_sequences& seq, const pg_options& opt, const pg_outputs<G>& out,
                            pg_diagnostics& diag);
  status (*lm_loss)(int threads, const student_input<S>& student, const label_view& labels,
                    const distill_options& opt, loss_result& result, const mut_rows<G>& grad);
  status (*vocab_parallel)(int threads, const kd::divergence& d, const student_input<S>& student,
                           const teacher_input<S>& teacher, const distill_options& opt, loss_result& result,
                           const distill_outputs<G>& out, const communicator_ref& comm);
  status (*topk)(int threads, const kd::divergence& d, const student_input<S>& student,
                 const topk_teacher_input<float>& teacher, const distill_options& opt, loss_result& result,
                 const distill_outputs<G>& out);
};

struct table {
  kernels<float, float> f32;
  kernels<bfloat16, float> bf16_f32;
  kernels<bfloat16, bfloat16> bf16_bf16;
  kernels<half, float> f16_f32;
  kernels<half, half> f16_f16;
  // out[i] = f(in[i]) for each vector_fn f (dispatch.hpp), indexed by its value.
  void (*math[3])(const float* in, float* out, std::int64_t n);
};

table table_sse2() noexcept;
table table_sse4_2() noexcept;
table table_avx2() noexcept;
table table_avx512() noexcept;

}  // namespace dispatch_abi
KD_END_ISA_FREE_NAMESPACE

KD_BEGIN_NAMESPACE
namespace detail::dispatch_isa {

template <class A, class S, class G>
status drive_rows(int threads, const divergence& d, const student_input<S>& student, const teacher_input<S>& teacher,
                  const distill_options& opt, loss_result& result, const distill_outputs<G>& out) {
  return simd_backend<A, thread_executor>{thread_executor{threads}}.run_divergence(d, student, teacher, opt, result,
                                                                                  out);
}

template <class A, class S, class G>
status drive_pg(int threads, const student_input<S>& student, const teacher_input<S>& teacher, const pg_sequences& seq,
                const pg_options& opt, const pg_outputs<G>& out, pg_diagnostics& diag) {
  return simd_backend<A, thread_executor>{thread_executor{threads}}.run_policy_gradient(student, teacher, seq, opt, out,
                                                                                       diag);
}

template <class A, class S, class G>
status drive_lm(int threads, const student_input<S>& student, const label_view& labels, const distill_options& opt,
                loss_result& result, const mut_rows<G>& grad) {
  return simd_backend<A, thread_executor>{thread_executor{threads}}.run_lm_loss(student, labels, opt, result, grad);
}

template <class A, class S, class G>
status drive_vp(int threads, const divergence& d, const student_input<S>& student, const teacher_input<S>& teacher,
                const distill_options& opt, loss_result& result, const distill_outputs<G>& out,
                const communicator_ref& comm) {
  return simd_backend<A, thread_executor>{thread_executor{threads}}.run_vocab_parallel(d, student, teacher, opt, result,
                                                                                      out, comm);
}

template <class A, class S, class G>
status drive_topk(int threads, const divergence& d, const student_input<S>& student,
                  const topk_teacher_input<float>& teacher, const distill_options& opt, loss_result& result,
                  const distill_outputs<G>& out) {
  return simd_backend<A, thread_executor>{thread_executor{threads}}.run_topk_divergence(d, student, teacher, opt,
                                                                                       result, out);
}

template <class A, class S, class G>
constexpr dispatch_abi::kernels<S, G> kernels_of() noexcept {
  return {&drive_rows<A, S, G>, &drive_pg<A, S, G>, &drive_lm<A, S, G>, &drive_vp<A, S, G>, &drive_topk<A, S, G>};
}

// out[i] = fn(in[i]) over whole batches, the tail padded with 0.
template <class A, xsimd::batch<float, A> (*Fn)(xsimd::batch<float, A>) noexcept>
void math_array(const float* in, float* out, std::int64_t n) {
  using b = xsimd::batch<float, A>;
  std::int64_t j = 0;
  for (; j + static_cast<std::int64_t>(b::size) <= n; j += b::size)
    Fn(b::load_unaligned(in + j)).store_unaligned(out + j);
  if (j < n) simd::store_partial<A>(out, j, n, Fn(simd::load_padded<A>(in, j, n, 0.0f)));
}

template <class A>
dispatch_abi::table make_table() noexcept {
  return {kernels_of<A, float, float>(), kernels_of<A, bfloat16, float>(), kernels_of<A, bfloat16, bfloat16>(),
          kernels_of<A, half, float>(),  kernels_of<A, half, half>(),
          {&math_array<A, &simd::exp<A>>, &math_array<A, &simd::expm1<A>>, &math_array<A, &simd::log1p<A>>}};
}

}  // namespace detail::dispatch_isa
KD_END_NAMESPACE
