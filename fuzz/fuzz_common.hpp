// Shared pieces of kd's libFuzzer targets: a byte reader that never fails (it returns zeros once the input is exhausted),
// value palettes with the extreme numbers that break distillation losses (NaN, +-inf, type max, subnormals, -1e10 padding),
// exact-size heap buffers (so AddressSanitizer sees any read or write one element past a view) and poisoned padding.
//
// A violated invariant calls KD_FUZZ_CHECK, which prints the condition and aborts: libFuzzer then saves the input as a crash.
#pragma once

#include <kd/kd.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#define KD_FUZZ_CHECK(cond, ...)                                                      \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      std::fprintf(stderr, "kd fuzz invariant failed at %s:%d: %s\n  ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                              \
      std::fprintf(stderr, "\n");                                                     \
      std::abort();                                                                   \
    }                                                                                 \
  } while (0)

namespace kdfuzz {

constexpr double inf = std::numeric_limits<double>::infinity();
constexpr double qnan = std::numeric_limits<double>::quiet_NaN();

// Reads the fuzzer's bytes front to back; past the end every read returns 0 (so short inputs are still valid cases).
class reader {
 public:
  reader(const std::uint8_t* d, std::size_t n) : d_(d), n_(n) {}
  std::uint8_t u8() { return i_ < n_ ? d_[i_++] : 0; }
  std::uint16_t u16() { return static_cast<std::uint16_t>(u8() | (u8() << 8)); }
  std::uint32_t u32() { return static_cast<std::uint32_t>(u16()) | (static_cast<std::uint32_t>(u16()) << 16); }
  bool flag() { return (u8() & 1) != 0; }
  // Integer in [lo, hi].
  std::int64_t range(std::int64_t lo, std::int64_t hi) {
    const std::uint64_t span = static_cast<std::uint64_t>(hi - lo) + 1;
    return lo + static_cast<std::int64_t>(u16() % span);
  }
  bool done() const { return i_ >= n_; }

 private:
  const std::uint8_t* d_;
  std::size_t n_;
  std::size_t i_ = 0;
};

template <class T>
constexpr double type_max() {
  if constexpr (std::is_same_v<T, double>) return std::numeric_limits<double>::max();
  else if constexpr (std::is_same_v<T, float>) return std::numeric_limits<float>::max();
  else if constexpr (std::is_same_v<T, kd::half>) return 65504.0;
  else return 3.3895313892515355e38;  // bfloat16
}
template <class T>
constexpr double type_denorm_min() {
  if constexpr (std::is_same_v<T, double>) return std::numeric_limits<double>::denorm_min();
  else if constexpr (std::is_same_v<T, float>) return std::numeric_limits<float>::denorm_min();
  else if constexpr (std::is_same_v<T, kd::half>) return 5.960464477539063e-08;
  else return 9.183549615799121e-41;  // bfloat16
}
// Unit roundoff (half an ulp at 1) of each element type.
template <class T>
constexpr double type_eps() {
  if constexpr (std::is_same_v<T, double>) return 0x1p-53;
  else if constexpr (std::is_same_v<T, float>) return 0x1p-24;
  else if constexpr (std::is_same_v<T, kd::half>) return 0x1p-11;
  else return 0x1p-8;  // bfloat16
}

// What a value draw may produce. finite_only: ordinary numbers and -1e10-style padding; masks: also -inf; any: also NaN, +inf.
enum class special { finite_only, masks, any };

// One logit-like value for element type T. Mostly ordinary values (a signed byte times a scale), sometimes extremes.
template <class T>
double draw_value(reader& in, double scale, special sp) {
  const std::uint8_t k = in.u8();
  const double ordinary = static_cast<double>(static_cast<std::int8_t>(in.u8())) / 16.0 * scale;
  switch (k % 24) {
    case 0: return sp == special::finite_only ? ordinary : -inf;
    case 1: return sp == special::any ? inf : ordinary;
    case 2: return sp == special::any ? qnan : ordinary;
    case 3: return type_max<T>();
    case 4: return -type_max<T>();
    case 5: return type_denorm_min<T>();
    case 6: return -1e10;
    case 7: return 0.0;
    case 8: return 1e4;
    case 9: return sp == special::finite_only ? ordinary : -inf;
    default: return ordinary;
  }
}

// Scalar parameters: a palette of boundary and out-of-range values, or an arbitrary double from 8 bytes.
inline double draw_param(reader& in, const double* palette, std::size_t n) {
  const std::uint8_t k = in.u8();
  if (k < 240) return palette[k % n];
  std::uint64_t bits = static_cast<std::uint64_t>(in.u32()) | (static_cast<std::uint64_t>(in.u32()) << 32);
  double v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// An exact-size heap buffer holding a [rows, cols] view with row_stride; padding between rows filled with `pad`.
template <class T>
struct buffer {
  std::vector<T> v;
  std::int64_t rows = 0, cols = 0, stride = 0;

  buffer() = default;
  buffer(std::int64_t r, std::int64_t c, std::int64_t s, double pad) : rows(r), cols(c), stride(s) {
    const std::int64_t n = (r > 0 && c > 0) ? (r - 1) * s + c : 0;
    v.assign(static_cast<std::size_t>(n), kd::from_double<T>(pad));
  }
  T* data() { return v.empty() ? nullptr : v.data(); }
  T& at(std::int64_t r, std::int64_t j) { return v[static_cast<std::size_t>(r * stride + j)]; }
  bool is_pad(std::size_t i) const { return stride > cols && static_cast<std::int64_t>(i) % stride >= cols; }
  std::vector<unsigned char> bytes() const {
    std::vector<unsigned char> b(v.size() * sizeof(T));
    if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
    return b;
  }
};

template <class T>
inline std::vector<unsigned char> bytes_of(const T* p, std::size_t n) {
  std::vector<unsigned char> b(n * sizeof(T));
  if (n) std::memcpy(b.data(), p, b.size());
  return b;
}

// Byte range [begin, end) spanned by a view; empty for rows <= 0 or cols <= 0 or a null pointer.
struct span {
  std::uintptr_t begin = 0, end = 0;
  bool intersects(const span& o) const { return begin < end && o.begin < o.end && begin < o.end && o.begin < end; }
};
template <class T>
inline span span_of(const void* p, std::int64_t rows, std::int64_t cols, std::int64_t stride) {
  if (!p || rows <= 0 || cols <= 0) return {};
  const auto b = reinterpret_cast<std::uintptr_t>(p);
  return {b, b + static_cast<std::uintptr_t>((rows - 1) * stride + cols) * sizeof(T)};
}

template <class T>
constexpr int dtype_index() {
  if constexpr (std::is_same_v<T, float>) return 0;
  else if constexpr (std::is_same_v<T, double>) return 1;
  else if constexpr (std::is_same_v<T, kd::bfloat16>) return 2;
  else return 3;
}

// Calls f(T{}) for element type index 0..3 (float, double, bfloat16, half).
template <class F>
inline void with_dtype(int idx, F&& f) {
  switch (idx & 3) {
    case 0: f(float{}); break;
    case 1: f(double{}); break;
    case 2: f(kd::bfloat16{}); break;
    default: f(kd::half{}); break;
  }
}

inline bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

}  // namespace kdfuzz
