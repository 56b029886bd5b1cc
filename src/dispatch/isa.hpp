// Private to kd::dispatch: the per-instruction-set kernel tables. Each isa_*.cpp is compiled with its own -m flags and
// fills one table with pointers to kd::detail::process_rows<simd::row_kernels<Arch>, ...> (Arch in every symbol: no
// one-definition-rule clash between the translation units).
#pragma once

#include <kd/backend/simd.hpp>

KD_BEGIN_NAMESPACE
namespace detail::dispatch_isa {

template <class S, class G>
using rows = detail::rows_fn<S, S, G>;

struct table {
  rows<float, float> f32;
  rows<bfloat16, float> bf16_f32;
  rows<bfloat16, bfloat16> bf16_bf16;
  rows<half, float> f16_f32;
  rows<half, half> f16_f16;
  void (*exp)(const float* in, float* out, std::int64_t n);
};

table table_sse2() noexcept;
table table_sse4_2() noexcept;
table table_avx2() noexcept;
table table_avx512() noexcept;

template <class A>
void exp_array(const float* in, float* out, std::int64_t n) {
  using b = xsimd::batch<float, A>;
  std::int64_t j = 0;
  for (; j + static_cast<std::int64_t>(b::size) <= n; j += b::size)
    simd::exp<A>(b::load_unaligned(in + j)).store_unaligned(out + j);
  if (j < n) simd::store_partial<A>(out, j, n, simd::exp<A>(simd::load_padded<A>(in, j, n, 0.0f)));
}

template <class A>
table make_table() noexcept {
  return {&detail::process_rows<simd::row_kernels<A>, float, float, float>,
          &detail::process_rows<simd::row_kernels<A>, bfloat16, bfloat16, float>,
          &detail::process_rows<simd::row_kernels<A>, bfloat16, bfloat16, bfloat16>,
          &detail::process_rows<simd::row_kernels<A>, half, half, float>,
          &detail::process_rows<simd::row_kernels<A>, half, half, half>,
          &exp_array<A>};
}

}  // namespace detail::dispatch_isa
KD_END_NAMESPACE
