// Reusable row primitives of the SIMD backend (also meant for fused kernels elsewhere in kd, e.g. policy gradients):
//
//   load_chunk<Arch>(x, n, buf)        n <= chunk elements of float / double / bf16 / fp16 as float32 (float rows: no
//   copy) store_chunk<Arch>(dst, src, n)     float32 -> G (round to nearest even; NaN stays NaN)
//   for_each_batch<Arch>(n, f)         f(j, lane_mask_or_none) over batches covering [0, n); the last partial batch
//   gets a mask load_padded<Arch>(p, j, n, pad)    the batch at p + j, lanes >= n - j set to pad (no out-of-bounds
//   read) row_logsumexp<Arch>(x, n, inv_t)   online (single-pass over memory) log-sum-exp of x / T, in L1-sized chunks
//
// All functions take Arch as a template parameter so that translation units compiled with different -m flags never
// share a symbol (kd::dispatch builds one per instruction set).
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <xsimd/xsimd.hpp>

#include "../tensor.hpp"
#include "row_io.hpp"
#include "simd_exp.hpp"

// GCC 12's AVX-512 min/max/scalef intrinsics start from _mm512_undefined_ps(), which -Wmaybe-uninitialized
// or -Wuninitialized report (GCC bug 105593) wherever they are inlined; the pragmas keep kd's kernels warning-free.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

KD_BEGIN_NAMESPACE
namespace detail::simd {

// Entries per chunk: the two float32 input chunks (16 KiB) stay in a 32 KiB L1 between the max scan and the exponentials
// (2048 measured 2-3% faster than 1024 in cache; per-chunk work is a few scalar exps and horizontal sums).
inline constexpr std::int64_t chunk = 2048;

template <class A>
inline constexpr std::int64_t width = static_cast<std::int64_t>(fbatch<A>::size);

// Scalar float32 <-> 16-bit conversions, templated on Arch (never shared between instruction sets).
template <class A>
inline float bf16_to_float(std::uint16_t h) noexcept {
  const std::uint32_t u = static_cast<std::uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
template <class A>
inline std::uint16_t float_to_bf16(float f) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                                            // round to nearest even
  return static_cast<std::uint16_t>(u >> 16);
}
template <class A>
inline float half_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu, u;
  if (e == 0x1f) {
    u = sign | 0x7f800000u | (m << 13);
  } else if (e == 0) {
    if (m == 0) {
      u = sign;
    } else {  // subnormal half: normalize
      int s = -1;
      do {
        ++s;
        m <<= 1;
      } while ((m & 0x400u) == 0);
      u = sign | ((112u - static_cast<std::uint32_t>(s)) << 23) | ((m & 0x3ffu) << 13);
    }
  } else {
    u = sign | ((e + 112u) << 23) | (m << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
template <class A>
inline std::uint16_t float_to_half(float f) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u);   // NaN
  if (a >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (a < 0x38800000u) {  // result subnormal or zero: add 0.5 to scale into the subnormal grid, round by the FPU
    float v;
    std::memcpy(&v, &a, 4);
    v += 0.5f;
    std::uint32_t w;
    std::memcpy(&w, &v, 4);
    return static_cast<std::uint16_t>(sign | (w - 0x3f000000u));
  }
  std::uint32_t r = a + 0xc8000fffu + ((a >> 13) & 1u);  // rebias exponent (-112 << 23) and round to nearest even
  return static_cast<std::uint16_t>(sign | (r >> 13));
}

template <class A, class T>
inline float elem_to_float(const T& x) noexcept {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, float>)
    return x;
  else if constexpr (std::is_same_v<U, double>)
    return static_cast<float>(x);
  else if constexpr (std::is_same_v<U, Eigen::bfloat16>)
    return bf16_to_float<A>(x.value);
  else
    return half_to_float<A>(x.x);
}
template <class A, class T>
inline void float_to_elem(float f, T& out) noexcept {
  if constexpr (std::is_same_v<T, float>)
    out = f;
  else if constexpr (std::is_same_v<T, double>)
    out = static_cast<double>(f);
  else if constexpr (std::is_same_v<T, Eigen::bfloat16>)
    out.value = float_to_bf16<A>(f);
  else
    out.x = float_to_half<A>(f);
}

// n (<= chunk) elements of x as float32: x itself for float rows, else converted into buf.
template <class A, class T>
inline const float* load_chunk(const T* x, std::int64_t n, float* buf) noexcept {
  if constexpr (std::is_same_v<std::remove_cv_t<T>, float>) {
    (void)n;
    (void)buf;
    return x;
  } else {
    for (std::int64_t j = 0; j < n; ++j) buf[j] = elem_to_float<A>(x[j]);
    return buf;
  }
}

// Float32 values src[0..n) into dst as G.
template <class A, class G>
inline void store_chunk(G* dst, const float* src, std::int64_t n) noexcept {
  if constexpr (std::is_same_v<G, float>) {
    if (dst != src) std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float));
  } else {
    for (std::int64_t j = 0; j < n; ++j) float_to_elem<A>(src[j], dst[j]);
  }
}

// Lane mask for the last partial batch: lanes [0, rem) true.
template <class A>
inline xsimd::batch_bool<float, A> lane_mask(std::int64_t rem) noexcept {
  alignas(64) float idx[fbatch<A>::size];
  for (std::size_t i = 0; i < fbatch<A>::size; ++i) idx[i] = static_cast<float>(i);
  return fbatch<A>::load_aligned(idx) < fbatch<A>(static_cast<float>(rem));
}

// The batch at p + j with lanes >= n - j replaced by pad (reads only p[j .. n)).
template <class A>
inline fbatch<A> load_padded(const float* p, std::int64_t j, std::int64_t n, float pad) noexcept {
  if (j + width<A> <= n) return fbatch<A>::load_unaligned(p + j);
  alignas(64) float tmp[fbatch<A>::size];
  for (std::int64_t i = 0; i < width<A>; ++i) tmp[i] = j + i < n ? p[j + i] : pad;
  return fbatch<A>::load_aligned(tmp);
}

// Stores the lanes [0, n - j) of v at p + j.
template <class A>
inline void store_partial(float* p, std::int64_t j, std::int64_t n, const fbatch<A>& v) noexcept {
  if (j + width<A> <= n) {
    v.store_unaligned(p + j);
    return;
  }
  alignas(64) float tmp[fbatch<A>::size];
  v.store_aligned(tmp);
  for (std::int64_t i = 0; j + i < n; ++i) p[j + i] = tmp[i];
}

// Horizontal sum of a batch as double (fixed lane order: deterministic).
template <class A>
inline double hsum(const fbatch<A>& v) noexcept {
  alignas(64) float tmp[fbatch<A>::size];
  v.store_aligned(tmp);
  double s = 0.0;
  for (std::size_t i = 0; i < fbatch<A>::size; ++i) s += tmp[i];
  return s;
}
template <class A>
inline float hmax(const fbatch<A>& v) noexcept {
  alignas(64) float tmp[fbatch<A>::size];
  v.store_aligned(tmp);
  float m = tmp[0];
  for (std::size_t i = 1; i < fbatch<A>::size; ++i) m = tmp[i] > m ? tmp[i] : m;
  return m;
}

// Maximum of y = x * inv_t over a float chunk; sets flags.nan / flags.pinf if a NaN or +inf is met. Pads with -inf.
struct nonfinite_flags {
  bool nan = false;
  bool pinf = false;
};

template <class A>
inline float chunk_max(const float* x, std::int64_t n, float inv_t, nonfinite_flags& flags) noexcept {
  using b = fbatch<A>;
  const b it(inv_t);
  constexpr float ninf = -std::numeric_limits<float>::infinity();
  b m0(ninf), m1(ninf);
  xsimd::batch_bool<float, A> bad(false);
  std::int64_t j = 0;
  // Two accumulators hide the max latency.
  for (; j + 2 * width<A> <= n; j += 2 * width<A>) {
    const b y0 = b::load_unaligned(x + j) * it, y1 = b::load_unaligned(x + j + width<A>) * it;
    m0 = xsimd::max(m0, y0);
    m1 = xsimd::max(m1, y1);
    bad = bad || xsimd::isnan(y0) || xsimd::isnan(y1);  // not y != y: xsimd compares ordered on AVX (false for NaN)
  }
  for (; j < n; j += width<A>) {
    const b y = load_padded<A>(x, j, n, ninf) * it;
    m0 = xsimd::max(m0, y);
    bad = bad || xsimd::isnan(y);
  }
  const float m = hmax<A>(xsimd::max(m0, m1));
  if (xsimd::any(bad)) flags.nan = true;
  if (m == std::numeric_limits<float>::infinity()) flags.pinf = true;
  return m;
}

// Maximum of raw values over a float chunk (no temperature, no NaN check: for callers that detect non-finite values
// later, e.g. through NaN sums). Two accumulators hide the max latency; the tail is padded with -inf.
template <class A>
inline float chunk_max_raw(const float* x, std::int64_t n) noexcept {
  using b = fbatch<A>;
  constexpr float ninf = -std::numeric_limits<float>::infinity();
  b m0(ninf), m1(ninf);
  std::int64_t j = 0;
  for (; j + 2 * width<A> <= n; j += 2 * width<A>) {
    m0 = xsimd::max(m0, b::load_unaligned(x + j));
    m1 = xsimd::max(m1, b::load_unaligned(x + j + width<A>));
  }
  for (; j < n; j += width<A>) m0 = xsimd::max(m0, load_padded<A>(x, j, n, ninf));
  return hmax<A>(xsimd::max(m0, m1));
}

// Online log-sum-exp state of one row at temperature: lse = max + log(sum), sum kept relative to the running max.
template <class A>
struct online_lse {
  float max = -std::numeric_limits<float>::infinity();
  split_sum sum;  // sum exp(y - max): entries at the max counted apart from the tail (row_io.hpp)
  nonfinite_flags flags;
  std::int64_t max_chunk = -1;  // index of the chunk (of detail::simd::chunk entries) that holds the maximum

  // Moves the running max to m_new (>= max), rescaling the sum. Returns the max to use for the chunk's exponentials.
  float raise(float m_new) noexcept {
    if (m_new > max) {
      sum.rescale(std::exp(static_cast<double>(max) - static_cast<double>(m_new)));
      max = m_new;
    }
    return max;
  }
  // The log-sum-exp in the reference's conventions: NaN if the row has a NaN, +inf if it has +inf, -inf if all -inf.
  double value() const noexcept {
    if (flags.nan) return std::numeric_limits<double>::quiet_NaN();
    if (flags.pinf) return std::numeric_limits<double>::infinity();
    if (max == -std::numeric_limits<float>::infinity()) return -std::numeric_limits<double>::infinity();
    return static_cast<double>(max) + sum.log();
  }
};

// Compensated accumulation in lanes: s + c holds the sum, c the accumulated rounding errors of s, each found exactly
// by Knuth's TwoSum (any order of magnitudes: Kahan's shorter form loses small terms added before a large one).
// Used on the chunk that holds a row's maximum: there one lane adds exp(0) = 1 and every tail term below 2^-24 would
// vanish from it (a confident row: the top token ahead by 16+ nats); 7 operations per term instead of 1, on one chunk.
template <class A>
KD_SIMD_INLINE void kahan_add(fbatch<A>& s, fbatch<A>& c, const fbatch<A>& v) noexcept {
  const fbatch<A> t = s + v, bp = t - s;
  c += (s - (t - bp)) + (v - bp);
  s = t;
}

// For the chunk that holds the running maximum m: sum_j exp(x_j * inv_t - m) with the entries AT m counted apart
// (split_sum), so the tail keeps its precision.
template <class A>
inline void chunk_sum_exp_split(const float* x, std::int64_t n, float inv_t, float m, split_sum& out) noexcept {
  using b = fbatch<A>;
  const b it(inv_t), mb(m), zero(0.0f), one(1.0f);
  b s(0.0f), c(0.0f);
  for (std::int64_t j = 0; j < n; j += width<A>) {
    const b u = xsimd::fms(load_padded<A>(x, j, n, -std::numeric_limits<float>::infinity()), it, mb);
    const auto at_max = u == zero;
    s += xsimd::select(at_max, zero, exp_nonpos<A>(u));
    c += xsimd::select(at_max, one, zero);
  }
  out.tail += hsum<A>(s);
  out.cnt += hsum<A>(c);
}

// sum_j exp(x_j * inv_t - m) over a float chunk (x_j = -inf contributes exactly 0), m finite.
template <class A>
inline double chunk_sum_exp(const float* x, std::int64_t n, float inv_t, float m) noexcept {
  using b = fbatch<A>;
  const b it(inv_t), mb(m);
  b s0(0.0f), s1(0.0f);
  std::int64_t j = 0;
  for (; j + 2 * width<A> <= n; j += 2 * width<A>) {
    s0 += exp_nonpos<A>(xsimd::fms(b::load_unaligned(x + j), it, mb));
    s1 += exp_nonpos<A>(xsimd::fms(b::load_unaligned(x + j + width<A>), it, mb));
  }
  for (; j < n; j += width<A>)
    s0 += exp_nonpos<A>(xsimd::fms(load_padded<A>(x, j, n, -std::numeric_limits<float>::infinity()), it, mb));
  return hsum<A>(s0 + s1);
}

// Online log-sum-exp of one row x[0..n) at temperature (y = x * inv_t), reading the row from memory once: each L1-sized
// chunk is scanned for its max, the running sum is rescaled when the max grows, then the chunk's exponentials are
// summed (read from L1). Returns the state; .value() is the log-sum-exp (NaN / +inf / -inf conventions of the reference
// backend).
template <class A, class T>
inline online_lse<A> row_logsumexp(const T* x, std::int64_t n, float inv_t) noexcept {
  online_lse<A> st;
  alignas(64) float buf[chunk];
  for (std::int64_t j0 = 0; j0 < n; j0 += chunk) {
    const std::int64_t len = n - j0 < chunk ? n - j0 : chunk;
    const float* xc = load_chunk<A>(x + j0, len, buf);
    const float cm = chunk_max<A>(xc, len, inv_t, st.flags);
    if (st.flags.nan || st.flags.pinf) return st;
    if (cm == -std::numeric_limits<float>::infinity()) continue;  // a fully masked chunk adds nothing
    const float m = st.raise(cm);
    if (cm == m) {  // this chunk holds the running maximum: its entries at the max are counted apart
      st.max_chunk = j0 / chunk;
      chunk_sum_exp_split<A>(xc, len, inv_t, m, st.sum);
    } else {
      st.sum.tail += chunk_sum_exp<A>(xc, len, inv_t, m);
    }
  }
  return st;
}

}  // namespace detail::simd
KD_END_NAMESPACE

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
