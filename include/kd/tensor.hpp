// Row views over logit tensors, and the element types kd accepts.
//
// kd works on "rows": one row is one token position, a distribution over a vocabulary of `cols` entries.
// A [B, T, V] tensor is the row view (rows = B*T, cols = V) when its rows are contiguous; any row stride >= cols is allowed
// (row r starts at data + r * row_stride elements), so a padded vocabulary or a slice of a larger buffer needs no copy.
//
// Element types: float, double, kd::bfloat16, kd::half. Arithmetic is done in float (SIMD backend) or double (reference
// backend); 16-bit types are only a storage format. kd::bfloat16 / kd::half are Eigen::bfloat16 / Eigen::half (from
// <Eigen/Core>); in CUDA translation units (nvcc) they are CUDA's __nv_bfloat16 / __half (<cuda_bf16.h>, <cuda_fp16.h>),
// so a .cu file including kd's headers pulls in no Eigen. Both pairs have the same bits (IEEE binary16; bfloat16 = the
// top half of a float32), so a buffer written by one side is read by the other unchanged.
#pragma once

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#else
#include <Eigen/Core>
#endif
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "version.hpp"

KD_BEGIN_NAMESPACE

#if defined(__CUDACC__)
using bfloat16 = __nv_bfloat16;
using half = __half;
#else
using bfloat16 = Eigen::bfloat16;
using half = Eigen::half;
#endif

template <class T>
struct is_element : std::false_type {};
template <> struct is_element<float> : std::true_type {};
template <> struct is_element<double> : std::true_type {};
template <> struct is_element<bfloat16> : std::true_type {};
template <> struct is_element<half> : std::true_type {};
template <class T>
inline constexpr bool is_element_v = is_element<std::remove_cv_t<T>>::value;

template <class T>
constexpr const char* dtype_name() noexcept {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, float>) return "float32";
  else if constexpr (std::is_same_v<U, double>) return "float64";
  else if constexpr (std::is_same_v<U, bfloat16>) return "bfloat16";
  else if constexpr (std::is_same_v<U, half>) return "float16";
  else return "unknown";
}

// Element -> float / double and back. The 16-bit types convert with static_cast (round to nearest even).
template <class T>
inline float to_float(T x) noexcept { return static_cast<float>(x); }
template <class T>
inline double to_double(T x) noexcept { return static_cast<double>(static_cast<float>(x)); }
inline double to_double(double x) noexcept { return x; }
template <class T>
inline T from_float(float x) noexcept { return static_cast<T>(x); }
template <class T>
inline T from_double(double x) noexcept {
  if constexpr (std::is_same_v<T, double>) return x;
  else return static_cast<T>(static_cast<float>(x));
}

KD_END_NAMESPACE

KD_BEGIN_ISA_FREE_NAMESPACE  // plain data types of kd::dispatch's signatures (kd/version.hpp)

// A batch of rows: rows x cols elements, row r at data + r * row_stride. T may be const-qualified (inputs) or not (outputs).
template <class T>
struct rows_view {
  T* data = nullptr;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t row_stride = 0;  // in elements, >= cols

  constexpr rows_view() = default;
  constexpr rows_view(T* d, std::int64_t n, std::int64_t v) : data(d), rows(n), cols(v), row_stride(v) {}
  constexpr rows_view(T* d, std::int64_t n, std::int64_t v, std::int64_t stride)
      : data(d), rows(n), cols(v), row_stride(stride) {}
  // A mutable view converts to a read-only one.
  template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
  constexpr rows_view(const rows_view<U>& o) : data(o.data), rows(o.rows), cols(o.cols), row_stride(o.row_stride) {}

  constexpr bool empty() const noexcept { return data == nullptr; }
  T* row(std::int64_t r) const noexcept { return data + r * row_stride; }
  constexpr bool contiguous() const noexcept { return row_stride == cols; }
  // Bytes spanned from the first to one past the last element (for overlap checks).
  std::size_t span_bytes() const noexcept {
    if (rows <= 0 || cols <= 0) return 0;
    return static_cast<std::size_t>((rows - 1) * row_stride + cols) * sizeof(T);
  }
};

template <class T> using const_rows = rows_view<const T>;
template <class T> using mut_rows = rows_view<T>;

KD_END_ISA_FREE_NAMESPACE

KD_BEGIN_NAMESPACE

// [B, T, V] contiguous tensor as rows (B*T rows of V).
template <class T>
constexpr rows_view<T> rows_of_3d(T* data, std::int64_t batch, std::int64_t time, std::int64_t vocab) {
  return rows_view<T>(data, batch * time, vocab, vocab);
}

// True when the byte ranges spanned by two views intersect.
template <class A, class B>
inline bool overlaps(const rows_view<A>& a, const rows_view<B>& b) noexcept {
  if (a.data == nullptr || b.data == nullptr) return false;
  auto a0 = reinterpret_cast<std::uintptr_t>(a.data), b0 = reinterpret_cast<std::uintptr_t>(b.data);
  auto a1 = a0 + a.span_bytes(), b1 = b0 + b.span_bytes();
  return a0 < b1 && b0 < a1;
}

// Same memory, same element type, same shape and stride: an in-place output over an input.
template <class A, class B>
inline bool same_buffer(const rows_view<A>& a, const rows_view<B>& b) noexcept {
  return static_cast<const void*>(a.data) == static_cast<const void*>(b.data) &&
         std::is_same_v<std::remove_cv_t<A>, std::remove_cv_t<B>> && a.rows == b.rows && a.cols == b.cols &&
         a.row_stride == b.row_stride;
}

KD_END_NAMESPACE

KD_BEGIN_ISA_FREE_NAMESPACE  // plain data types of kd::dispatch's signatures (kd/version.hpp)

// Per-row integer labels (int32 or int64), used only for ignore_index masking.
struct label_view {
  const std::int32_t* i32 = nullptr;
  const std::int64_t* i64 = nullptr;
  std::int64_t size = 0;

  constexpr label_view() = default;
  constexpr label_view(const std::int32_t* p, std::int64_t n) : i32(p), size(n) {}
  constexpr label_view(const std::int64_t* p, std::int64_t n) : i64(p), size(n) {}
  constexpr bool empty() const noexcept { return i32 == nullptr && i64 == nullptr; }
  std::int64_t operator[](std::int64_t r) const noexcept { return i64 ? i64[r] : static_cast<std::int64_t>(i32[r]); }
};

KD_END_ISA_FREE_NAMESPACE
