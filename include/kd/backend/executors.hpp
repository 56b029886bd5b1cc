// Executors: how the CPU drivers run independent row ranges. A backend value carries one (CUB-style execution policy).
//
// Executor concept: any copyable type with `template <class F> void parallel_for(std::int64_t n, F f) const` that calls
// f(begin, end) on disjoint ranges covering [0, n), possibly concurrently, and returns when all calls have returned.
#pragma once

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

#include "../version.hpp"
#include "serial_executor.hpp"

KD_BEGIN_NAMESPACE

// Runs ranges on `threads` std::threads (0: std::thread::hardware_concurrency()); contiguous, equal row ranges.
struct thread_executor {
  int threads = 0;

  int count() const noexcept {
    if (threads > 0) return threads;
    const unsigned h = std::thread::hardware_concurrency();
    return h == 0 ? 1 : static_cast<int>(h);
  }

  template <class F>
  void parallel_for(std::int64_t n, F f) const {
    const std::int64_t t = std::min<std::int64_t>(count(), n);
    if (t <= 1) {
      if (n > 0) f(std::int64_t{0}, n);
      return;
    }
    std::vector<std::thread> pool;
    pool.reserve(static_cast<std::size_t>(t - 1));
    for (std::int64_t i = 1; i < t; ++i) pool.emplace_back([&f, i, n, t] { f(n * i / t, n * (i + 1) / t); });
    f(std::int64_t{0}, n / t);
    for (auto& th : pool) th.join();
  }
};

KD_END_NAMESPACE
