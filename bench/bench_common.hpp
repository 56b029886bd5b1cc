// Shared pieces of kd's benchmarks: cheap deterministic logits, a data cache, and a STREAM-style triad bandwidth probe.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <kd/tensor.hpp>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace kdb {

inline int bench_threads() {
  const char* e = std::getenv("KD_BENCH_THREADS");
  return e ? std::max(1, std::atoi(e)) : 2;
}

// Largest total working set (inputs + gradient) a benchmark may allocate, GiB (KD_BENCH_MAX_GIB, default 8).
inline double max_gib() {
  const char* e = std::getenv("KD_BENCH_MAX_GIB");
  return e ? std::atof(e) : 8.0;
}

// Logits in [-4, 4) from a hash of (seed, i): deterministic, fast to generate, no structure a kernel could exploit.
inline float pseudo_logit(std::uint64_t seed, std::uint64_t i) {
  std::uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ (seed * 0xD1B54A32D192ED03ull);
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return static_cast<float>(static_cast<double>(x >> 40) * (8.0 / 16777216.0) - 4.0);
}

template <class T>
void fill_logits(T* p, std::size_t n, std::uint64_t seed, int threads) {
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([=] {
      const std::size_t b = n * t / threads, e = n * (t + 1) / threads;
      for (std::size_t i = b; i < e; ++i) p[i] = static_cast<T>(pseudo_logit(seed, i));
    });
  for (auto& th : pool) th.join();
}

// One cached set of buffers (student, teacher, gradient) of the last requested shape and type; reused across benchmarks
// of the same shape (generating gigabytes of logits takes seconds).
template <class T>
struct buffers {
  std::int64_t rows = 0, cols = 0;
  std::unique_ptr<T[]> s, t, g;
};

// Frees the buffers of the element type used last (only one type's buffers are alive at a time: they can be gigabytes).
inline void (*&release_last())() {
  static void (*f)() = nullptr;
  return f;
}

template <class T>
buffers<T>& cache() {
  static buffers<T> b;
  return b;
}

template <class T>
buffers<T>& get_buffers(std::int64_t rows, std::int64_t cols) {
  buffers<T>& b = cache<T>();
  if (b.rows != rows || b.cols != cols) {
    if (release_last()) release_last()();
    release_last() = [] {
      buffers<T>& x = cache<T>();
      x.s.reset();
      x.t.reset();
      x.g.reset();
      x.rows = x.cols = 0;
    };
    b.s.reset();
    b.t.reset();
    b.g.reset();
    const std::size_t n = static_cast<std::size_t>(rows * cols);
    b.s.reset(new T[n]);
    b.t.reset(new T[n]);
    b.g.reset(new T[n]);
    fill_logits(b.s.get(), n, 1, bench_threads());
    fill_logits(b.t.get(), n, 2, bench_threads());
    fill_logits(b.g.get(), n, 3, bench_threads());  // touch the gradient pages too
    b.rows = rows;
    b.cols = cols;
  }
  return b;
}

// STREAM triad a = b + s c over arrays of `n` floats (default 2^26 = 256 MiB each, far above any cache), `threads`
// threads, best of `reps` runs. Returns bytes/s counting 12 bytes per element (STREAM convention: 2 reads + 1 write, no
// write-allocate traffic).
inline double triad_bandwidth(int threads, std::size_t n = std::size_t{1} << 26, int reps = 8) {
  std::unique_ptr<float[]> a(new float[n]), b(new float[n]), c(new float[n]);
  auto par = [&](auto f) {
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { f(n * t / threads, n * (t + 1) / threads); });
    for (auto& th : pool) th.join();
  };
  par([&](std::size_t lo, std::size_t hi) {
    for (std::size_t i = lo; i < hi; ++i) {
      a[i] = 0.0f;
      b[i] = 1.0f;
      c[i] = 2.0f;
    }
  });
  double best = 0.0;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    par([&](std::size_t lo, std::size_t hi) {
      float* __restrict pa = a.get();
      const float* __restrict pb = b.get();
      const float* __restrict pc = c.get();
      for (std::size_t i = lo; i < hi; ++i) pa[i] = pb[i] + 3.0f * pc[i];
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 12.0 * static_cast<double>(n) / s);
  }
  volatile float sink = a[n / 2];
  (void)sink;
  return best;
}

}  // namespace kdb
