// The input of kd::topk_divergence_loss (kd/topk_teacher.hpp): a teacher given as its top-k token ids and
// log-probabilities per row, and how it meets the full-vocabulary student (topk_mode). Plain data.
#pragma once

#include <cstdint>

#include "tensor.hpp"

KD_BEGIN_ISA_FREE_NAMESPACE  // plain data types of kd::dispatch's signatures (kd/version.hpp)

enum class topk_mode { tail_bucket, renormalize, unnormalized_forward_kl };

template <class P>
struct topk_teacher_input {
  const_rows<std::int64_t> indices;  // [rows, k]
  const_rows<P> log_probs;           // [rows, k]
  topk_mode mode = topk_mode::tail_bucket;
};

KD_END_ISA_FREE_NAMESPACE

KD_BEGIN_NAMESPACE

inline const char* topk_mode_name(topk_mode m) noexcept {
  switch (m) {
    case topk_mode::tail_bucket: return "tail_bucket";
    case topk_mode::renormalize: return "renormalize";
    case topk_mode::unnormalized_forward_kl: return "unnormalized_forward_kl";
  }
  return "?";
}

// kd::teacher_topk(indices, log_probs, rows, k, mode[, indices_stride, log_probs_stride]) (strides default to k).
template <class P>
constexpr topk_teacher_input<P> teacher_topk(const std::int64_t* indices, const P* log_probs, std::int64_t rows,
                                             std::int64_t k, topk_mode mode = topk_mode::tail_bucket,
                                             std::int64_t indices_stride = -1, std::int64_t log_probs_stride = -1) {
  return {const_rows<std::int64_t>(indices, rows, k, indices_stride < 0 ? k : indices_stride),
          const_rows<P>(log_probs, rows, k, log_probs_stride < 0 ? k : log_probs_stride), mode};
}

KD_END_NAMESPACE
