// kd::serial_executor: runs every row range on the calling thread (the executor concept: backend/executors.hpp). Its own
// header so that the reference backend needs no <thread> (CUDA translation units include it).
#pragma once

#include <cstdint>

#include "../version.hpp"

KD_BEGIN_NAMESPACE

// Runs everything on the calling thread.
struct serial_executor {
  template <class F>
  void parallel_for(std::int64_t n, F f) const {
    if (n > 0) f(std::int64_t{0}, n);
  }
};

KD_END_NAMESPACE
