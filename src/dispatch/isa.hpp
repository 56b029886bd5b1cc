// Private to kd::dispatch: the per-instruction-set kernel tables. Each isa_*.cpp is compiled with its own -m flags and
// fills one table with pointers to complete drivers for its instruction set: kd::detail::simd::drive and
// process_rows<Arch, ...> are instantiated in that translation unit, in its ABI namespace (kd/version.hpp), so nothing
// compiled with these -m flags shares a symbol with dispatch.cpp (no flags) or a user's translation unit (other flags).
// The tables and the table_*() functions are ISA-free (kd::v0::dispatch_abi): their types are plain data.
#pragma once

#include <kd/backend/dispatch.hpp>
#include <kd/backend/simd.hpp>

KD_BEGIN_ISA_FREE_NAMESPACE
namespace dispatch_abi {

// Validated arguments in, status out: the whole of simd_backend<Arch>::run_divergence with a thread_executor.
template <class S, class G>
using driver = status (*)(int threads, const divergence& d, const student_input<S>& student,
                          const teacher_input<S>& teacher, const distill_options& opt, loss_result& result,
                          const distill_outputs<G>& out);

struct table {
  driver<float, float> f32;
  driver<bfloat16, float> bf16_f32;
  driver<bfloat16, bfloat16> bf16_bf16;
  driver<half, float> f16_f32;
  driver<half, half> f16_f16;
  void (*exp)(const float* in, float* out, std::int64_t n);
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
  return detail::drive<thread_executor, S, S, G>(&detail::process_rows<simd::row_kernels<A>, S, S, G>,
                                                 thread_executor{threads}, d, student,
                                               teacher, opt, result, out);
}

template <class A>
void exp_array(const float* in, float* out, std::int64_t n) {
  using b = xsimd::batch<float, A>;
  std::int64_t j = 0;
  for (; j + static_cast<std::int64_t>(b::size) <= n; j += b::size)
    simd::exp<A>(b::load_unaligned(in + j)).store_unaligned(out + j);
  if (j < n) simd::store_partial<A>(out, j, n, simd::exp<A>(simd::load_padded<A>(in, j, n, 0.0f)));
}

template <class A>
dispatch_abi::table make_table() noexcept {
  return {&drive_rows<A, float, float>,       &drive_rows<A, bfloat16, float>, &drive_rows<A, bfloat16, bfloat16>,
          &drive_rows<A, half, float>,        &drive_rows<A, half, half>,      &exp_array<A>};
}

}  // namespace detail::dispatch_isa
KD_END_NAMESPACE
