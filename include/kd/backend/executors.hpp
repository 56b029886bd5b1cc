// Executors: how the CPU drivers run independent row ranges. A backend value carries one (CUB-style execution policy).
//
// Executor concept: any copyable type with `template <class F> void parallel_for(std::int64_t n, F f) const` that calls
// f(begin, end) on disjoint ranges covering [0, n), possibly concurrently, and returns when all calls have returned.
#pragma once

#include <algorithm>
#include <cstdint>
#include <thread>

#include "../version.hpp"
#include "serial_executor.hpp"
#include "thread_pool.hpp"

KD_BEGIN_NAMESPACE

// Runs ranges on `threads` threads (0: std::thread::hardware_concurrency()); contiguous, equal row ranges: range i of t
// is [n i / t, n (i + 1) / t), range 0 on the calling thread. The other threads are the process's persistent pool
// (thread_pool.hpp): a call wakes parked workers instead of starting threads.
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
    detail::thread_pool::shared().run(t, [&f, n, t](std::int64_t i) { f(n * i / t, n * (i + 1) / t); });
  }
};

KD_END_NAMESPACE
