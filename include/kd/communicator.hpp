// kd::communicator_ref: any communicator of kd::vocab_parallel_divergence (kd/vocab_parallel.hpp: all_reduce_max /
// all_reduce_sum over double arrays) behind two function pointers, so that compiled code (kd::dispatch, the PyTorch
// extension's torch.distributed adapter) takes one without templates. Plain data; it refers to the communicator it
// was made from, which must outlive it.
#pragma once

#include <cstdint>

#include "version.hpp"

KD_BEGIN_ISA_FREE_NAMESPACE

struct communicator_ref {
  const void* context = nullptr;
  void (*max_fn)(const void*, double*, std::int64_t) = nullptr;
  void (*sum_fn)(const void*, double*, std::int64_t) = nullptr;

  void all_reduce_max(double* data, std::int64_t n) const { max_fn(context, data, n); }
  void all_reduce_sum(double* data, std::int64_t n) const { sum_fn(context, data, n); }

  template <class Comm>
  static communicator_ref of(const Comm& c) noexcept {
    communicator_ref r;
    r.context = &c;
    r.max_fn = [](const void* p, double* x, std::int64_t n) { static_cast<const Comm*>(p)->all_reduce_max(x, n); };
    r.sum_fn = [](const void* p, double* x, std::int64_t n) { static_cast<const Comm*>(p)->all_reduce_sum(x, n); };
    return r;
  }
};

KD_END_ISA_FREE_NAMESPACE
