// libFuzzer target for the kd tool's .npy reader (tools/npy.hpp, kdtool::parse_npy): arbitrary bytes, seeded with valid
// files of every supported dtype (fuzz/corpus/fuzz_npy/). Invariants: the only exception is kdtool::npy_error (never
// std::out_of_range / bad_alloc / a sanitizer report); a parsed array holds exactly size() * itemsize bytes, at most 8
// non-negative dimensions, no more data than the file; every element converts to double / int64 without reading outside.
#include <npy.hpp>

#include <cstdio>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  kdtool::npy_array a;
  try {
    a = kdtool::parse_npy(data, size, "fuzz");
  } catch (const kdtool::npy_error&) {
    return 0;  // a malformed file: the documented outcome
  }
  std::int64_t n = 1;
  bool ok = a.shape.size() <= 8;
  for (auto s : a.shape) {
    ok &= s >= 0;
    n *= s;
  }
  ok &= n == a.size() && a.data.size() == static_cast<std::size_t>(n) * kdtool::npy_itemsize(a.dtype) && a.data.size() <= size;
  if (!ok) {
    std::fprintf(stderr, "kd fuzz invariant failed: parsed npy with inconsistent shape / data size\n");
    std::abort();
  }
  double acc = 0.0;
  const auto d = a.to_double();
  for (double v : d) acc += v == v ? 0.0 : 1.0;
  if (a.is_int() || a.dtype == kdtool::npy_dtype::u8 || a.dtype == kdtool::npy_dtype::b1) {
    const auto iv = a.to_int64();
    acc += static_cast<double>(iv.size());
  }
  return acc < 0.0 ? 1 : 0;
}
