// What every backend declares about itself, as plain data: `static constexpr kd::backend_traits traits`.
//   where          host (pointers are host memory) or device (CUDA device pointers)
//   deterministic  results are bitwise identical across runs and thread counts
//   accumulation   the precision of the per-entry arithmetic (partial sums are combined in double by every backend)
#pragma once

#include "../version.hpp"

KD_BEGIN_NAMESPACE

struct backend_traits {
  enum memory { host, device };
  enum precision { float32, float64 };
  memory where = host;
  bool deterministic = true;
  precision accumulation = float64;
};

KD_END_NAMESPACE
