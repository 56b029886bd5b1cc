// kd::dispatch: run-time selection of the SIMD kernels (compiled without instruction-set flags; only the isa_*.cpp
// translation units use them). The CPU is queried once (xsimd's cpuid) and the best compiled table is used.
#include <kd/backend/dispatch.hpp>

#include "isa.hpp"

// Everything here is ISA-free (kd::v0, kd/version.hpp): the entry points declared in kd/backend/dispatch.hpp, and the
// code between them and the per-ISA tables, which only queries the CPU and forwards (no kd kernel or driver is
// instantiated in this translation unit; the drivers run in the isa_*.cpp units).
KD_BEGIN_ISA_FREE_NAMESPACE

namespace {

const xsimd::detail::supported_arch& cpu() noexcept {
  static const xsimd::detail::supported_arch a = xsimd::available_architectures();
  return a;
}

bool cpu_has(simd_isa isa) noexcept {
  const auto& a = cpu();
  switch (isa) {
    case simd_isa::best:
      return true;
    case simd_isa::sse2:
      return a.sse2;
    case simd_isa::sse4_2:
      return a.sse4_2;
    case simd_isa::avx2:
      return a.avx2 && a.fma3_avx2;
    case simd_isa::avx512:
      return a.avx512f && a.avx512cd && a.avx512dq && a.avx512bw;
  }
  return false;
}

const dispatch_abi::table* table_for(simd_isa isa) noexcept {
  using namespace dispatch_abi;
  static const table sse2 = table_sse2(), sse4_2 = table_sse4_2(), avx2 = table_avx2(), avx512 = table_avx512();
  if (!simd_isa_available(isa)) return nullptr;
  switch (isa == simd_isa::best ? best_simd_isa() : isa) {
    case simd_isa::sse2:
      return &sse2;
    case simd_isa::sse4_2:
      return &sse4_2;
    case simd_isa::avx2:
      return &avx2;
    case simd_isa::avx512:
      return &avx512;
    case simd_isa::best:
      break;
  }
  return nullptr;
}

template <class S, class G>
const dispatch_abi::kernels<S, G>& pick(const dispatch_abi::table& t) noexcept {
  if constexpr (std::is_same_v<S, float>)
    return t.f32;
  else if constexpr (std::is_same_v<S, bfloat16> && std::is_same_v<G, float>)
    return t.bf16_f32;
  else if constexpr (std::is_same_v<S, bfloat16>)
    return t.bf16_bf16;
  else if constexpr (std::is_same_v<G, float>)
    return t.f16_f32;
  else
    return t.f16_f16;
}

}  // namespace

const char* simd_isa_name(simd_isa isa) noexcept {
  switch (isa) {
    case simd_isa::best:
      return "best";
    case simd_isa::sse2:
      return "sse2";
    case simd_isa::sse4_2:
      return "sse4.2";
    case simd_isa::avx2:
      return "avx2";
    case simd_isa::avx512:
      return "avx512";
  }
  return "?";
}

bool simd_isa_available(simd_isa isa) noexcept { return cpu_has(isa); }

simd_isa best_simd_isa() noexcept {
  for (simd_isa i : {simd_isa::avx512, simd_isa::avx2, simd_isa::sse4_2})
    if (cpu_has(i)) return i;
  return simd_isa::sse2;
}

namespace dispatch_abi {

template <class S, class P, class G>
status dispatch_divergence(simd_isa isa, int threads, const divergence& d, const student_input<S>& student,
                           const teacher_input<P>& teacher, const distill_options& opt, loss_result& result,
                           const distill_outputs<G>& out) {
  const table* t = table_for(isa);
  if (!t) return make_error(errc::unsupported, "backend", "instruction set not supported by this CPU");
  return pick<S, G>(*t).divergence(threads, d, student, teacher, opt, result, out);
}

template <class S, class P, class G>
status dispatch_vocab_parallel(simd_isa isa, int threads, const divergence& d, const student_input<S>& student,
                               const teacher_input<P>& teacher, const distill_options& opt, loss_result& result,
                               const distill_outputs<G>& out, const communicator_ref& comm) {
  const table* t = table_for(isa);
  if (!t) return make_error(errc::unsupported, "backend", "instruction set not supported by this CPU");
  return pick<S, G>(*t).vocab_parallel(threads, d, student, teacher, opt, result, out, comm);
}

template <class S, class G>
status dispatch_topk_divergence(simd_isa isa, int threads, const divergence& d, const student_input<S>& student,
                                const topk_teacher_input<float>& teacher, const distill_options& opt,
                                loss_result& result, const distill_outputs<G>& out) {
  const table* t = table_for(isa);
  if (!t) return make_error(errc::unsupported, "backend", "instruction set not supported by this CPU");
  return pick<S, G>(*t).topk(threads, d, student, teacher, opt, result, out);
}

template <class S, class P, class G>
status dispatch_policy_gradient(simd_isa isa, int threads, const student_input<S>& student,
                                const teacher_input<P>& teacher, const pg_sequences& seq, const pg_options& opt,
                                const pg_outputs<G>& out, pg_diagnostics& diag) {
  const table* t = table_for(isa);
  if (!t) return make_error(errc::unsupported, "backend", "instruction set not supported by this CPU");
  return pick<S, G>(*t).policy_gradient(threads, student, teacher, seq, opt, out, diag);
}

template <class S, class G>
status dispatch_lm_loss(simd_isa isa, int threads, const student_input<S>& student, const label_view& labels,
                        const distill_options& opt, loss_result& result, const mut_rows<G>& grad) {
  const table* t = table_for(isa);
  if (!t) return make_error(errc::unsupported, "backend", "instruction set not supported by this CPU");
  return pick<S, G>(*t).lm_loss(threads, student, labels, opt, result, grad);
}

#define KD_DISPATCH_INSTANTIATE(S, G)                                                                                  \
  template status dispatch_divergence<S, S, G>(simd_isa, int, const divergence&, const student_input<S>&,              \
                                               const teacher_input<S>&, const distill_options&, loss_result&,          \
                                               const distill_outputs<G>&);                                             \
  template status dispatch_vocab_parallel<S, S, G>(simd_isa, int, const divergence&, const student_input<S>&,          \
                                                   const teacher_input<S>&, const distill_options&, loss_result&,      \
                                                   const distill_outputs<G>&, const communicator_ref&);                \
  template status dispatch_topk_divergence<S, G>(simd_isa, int, const divergence&, const student_input<S>&,            \
                                                 const topk_teacher_input<float>&, const distill_options&,             \
                                                 loss_result&, const distill_outputs<G>&);                             \
  template status dispatch_policy_gradient<S, S, G>(simd_isa, int, const student_input<S>&, const teacher_input<S>&,   \
                                                    const pg_sequences&, const pg_options&, const pg_outputs<G>&,      \
                                                    pg_diagnostics&);                                                  \
  template status dispatch_lm_loss<S, G>(simd_isa, int, const student_input<S>&, const label_view&,                    \
                                         const distill_options&, loss_result&, const mut_rows<G>&);
KD_DISPATCH_INSTANTIATE(float, float)
KD_DISPATCH_INSTANTIATE(bfloat16, float)
KD_DISPATCH_INSTANTIATE(bfloat16, bfloat16)
KD_DISPATCH_INSTANTIATE(half, float)
KD_DISPATCH_INSTANTIATE(half, half)
#undef KD_DISPATCH_INSTANTIATE

status dispatch_vector_fn(simd_isa isa, vector_fn f, const float* in, float* out, std::int64_t n) noexcept {
  const table* t = table_for(isa);
  if (!t) return make_error(errc::unsupported, "backend", "instruction set not supported by this CPU");
  if (static_cast<unsigned>(f) > static_cast<unsigned>(vector_fn::log1p))
    return make_error(errc::invalid_argument, "f", "not a vector_fn value");
  if (n < 0) return make_error(errc::invalid_argument, "n", "negative length");
  if (n > 0 && (!in || !out)) return make_error(errc::invalid_argument, !in ? "in" : "out", "null pointer");
  t->math[static_cast<int>(f)](in, out, n);
  return ok_status();
}

}  // namespace dispatch_abi
KD_END_ISA_FREE_NAMESPACE
