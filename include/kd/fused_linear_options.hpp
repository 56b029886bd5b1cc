// The inputs, options and outputs of kd::fused_linear_divergence (kd/fused_linear.hpp): plain data.
#pragma once

#include <cstdint>

#include "tensor.hpp"

KD_BEGIN_NAMESPACE

// One model's output layer: logits = transform(hidden [N, H] x weight^T [H, V] + bias [V]). T = float or double.
template <class T>
struct linear_head {
  const_rows<T> hidden;           // [N, H], row-major (row_stride >= H)
  const_rows<T> weight;           // [V, H], row-major (the lm-head's weight as PyTorch stores it)
  const T* bias = nullptr;        // [V] or null
  double logit_scale = 1.0;       // s: logits times s (Cohere); finite, != 0
  double softcap = 0.0;           // c: final_logit_softcapping, z = c tanh(z / c) (Gemma-2); 0: none; else finite > 0
};

struct fused_linear_options {
  std::int64_t chunk_rows = 0;  // rows per chunk (0: 256: near the unfused path's time at 10x less memory at
                                // N = 4096 and V = 128256, docs/fused_linear.md)
  std::int64_t tile_vocab = 0;  // vocabulary entries per tile (0: the whole vocabulary, no recomputation)
};

template <class T>
struct fused_linear_outputs {
  mut_rows<T> grad_hidden = {};  // [N, H]: dL/d(student hidden)
  mut_rows<T> grad_weight = {};  // [V, H]: dL/d(student weight) (overwritten, not accumulated)
  T* grad_bias = nullptr;        // [V]: dL/d(student bias); needs a student bias
  float* per_row = nullptr;      // [N]: w_r l_r (times T^2 with t2_scale), as distill_outputs::per_row
  float* student_entropy = nullptr;  // [N]: H(q_r) = -sum q log q of the student at temperature T, nats (0 for rows
                                     // that do not count)
};

KD_END_NAMESPACE
