// Inputs, options and outputs shared by every divergence in kd.
//
// Conventions (docs/conventions.md):
//  - p is the TEACHER distribution, q the STUDENT distribution, both softmax(x / T) of their input rows.
//  - forward KL = KL(p || q) (mode-covering), reverse KL = KL(q || p) (mode-seeking); MiniLLM, Gu et al. arXiv 2306.08543 Sec 2.1.
//  - Units: nats (natural log).
//  - The teacher and the student are distinct C++ types (kd::teacher_input / kd::student_input), so they cannot be swapped
//    silently, and each declares its input kind (logits or log-probs) explicitly (docs/pitfalls.md #8).
#pragma once

#include <cstdint>
#include <limits>

#include "tensor.hpp"

KD_BEGIN_ISA_FREE_NAMESPACE  // plain data types of kd::dispatch's signatures (kd/version.hpp)

// What the numbers in an input row are. Both kinds are normalized with a log-sum-exp of x / T (exact for log-probs, whose
// log-sum-exp is 0); declaring log_probs additionally checks, at T = 1, that |logsumexp(row)| <= 0.05 nats and reports
// errc::not_normalized otherwise (it catches logits passed as log-probs). Probabilities are not accepted: take their log.
enum class input_kind { logits, log_probs };

KD_END_ISA_FREE_NAMESPACE

KD_BEGIN_NAMESPACE

inline const char* input_kind_name(input_kind k) noexcept { return k == input_kind::logits ? "logits" : "log_probs"; }

KD_END_NAMESPACE

KD_BEGIN_ISA_FREE_NAMESPACE

template <class T>
struct student_input {
  const_rows<T> x;
  input_kind kind = input_kind::logits;
};

template <class T>
struct teacher_input {
  const_rows<T> x;
  input_kind kind = input_kind::logits;
};

KD_END_ISA_FREE_NAMESPACE

KD_BEGIN_NAMESPACE

// Factories: kd::student_logits(ptr, rows, vocab[, row_stride]) and friends.
template <class T>
constexpr student_input<T> student_logits(const T* p, std::int64_t rows, std::int64_t cols, std::int64_t stride = -1) {
  return {const_rows<T>(p, rows, cols, stride < 0 ? cols : stride), input_kind::logits};
}
template <class T>
constexpr student_input<T> student_log_probs(const T* p, std::int64_t rows, std::int64_t cols, std::int64_t stride = -1) {
  return {const_rows<T>(p, rows, cols, stride < 0 ? cols : stride), input_kind::log_probs};
}
template <class T>
constexpr teacher_input<T> teacher_logits(const T* p, std::int64_t rows, std::int64_t cols, std::int64_t stride = -1) {
  return {const_rows<T>(p, rows, cols, stride < 0 ? cols : stride), input_kind::logits};
}
template <class T>
constexpr teacher_input<T> teacher_log_probs(const T* p, std::int64_t rows, std::int64_t cols, std::int64_t stride = -1) {
  return {const_rows<T>(p, rows, cols, stride < 0 ? cols : stride), input_kind::log_probs};
}

KD_END_NAMESPACE

KD_BEGIN_ISA_FREE_NAMESPACE

// How per-row losses l_r (with row weights w_r) become the returned loss L; the gradient is always dL/d(student logits).
//   none       : L = sum_r w_r l_r; per-row values are the result (gradient of their sum, i.e. each row its own gradient).
//   sum        : L = sum_r w_r l_r.
//   mean       : L = sum_r w_r l_r / sum_r w_r over valid rows (token mean: with no weights, divides by the number of valid
//                rows). Zero valid rows give L = 0 and a zero gradient (docs/pitfalls.md #5).
//   normalizer : L = sum_r w_r l_r / options.normalizer, e.g. the global number of valid tokens across gradient-accumulation
//                micro-batches, so accumulated micro-batches equal one big batch (docs/pitfalls.md #18).
// PyTorch's "batchmean" is sum / rows (use normalizer = rows); its "mean" divides by rows * vocab, almost never wanted.
enum class reduction { none, sum, mean, normalizer };

KD_END_ISA_FREE_NAMESPACE

KD_BEGIN_NAMESPACE

inline const char* reduction_name(reduction r) noexcept {
  switch (r) {
    case reduction::none: return "none";
    case reduction::sum: return "sum";
    case reduction::mean: return "mean";
    case reduction::normalizer: return "normalizer";
  }
  return "?";
}

KD_END_NAMESPACE

KD_BEGIN_ISA_FREE_NAMESPACE

struct distill_options {
  double temperature = 1.0;   // T > 0, finite; applied to both sides: q = softmax(x_s / T), p = softmax(x_t / T)
  bool t2_scale = false;      // multiply loss and gradient by T^2 (Hinton et al. 2015); TRL and Liger do not
  kd::reduction reduction = kd::reduction::mean;
  double normalizer = 0.0;    // > 0, used only with reduction::normalizer
  label_view labels = {};     // optional, one per row: rows whose label == ignore_index are ignored
  std::int64_t ignore_index = -100;
  const float* row_weights = nullptr;  // optional, one per row, finite and >= 0; weight 0 ignores the row
};

// A row is valid when it is not ignored (label == ignore_index or weight 0) and neither side is fully masked (all -inf).

// Optional outputs. Leave a view empty (data == nullptr) to skip it.
template <class G = float>
struct distill_outputs {
  mut_rows<G> grad_student = {};  // dL/d(student input), same shape as the student; may be the student buffer itself (in place)
  mut_rows<G> grad_teacher = {};  // dL/d(teacher input), same shape as the teacher; may be the teacher buffer itself
  float* per_row = nullptr;       // rows entries: w_r * l_r (times T^2 when t2_scale), 0 for ignored or fully masked rows
};

struct loss_result {
  double loss = 0.0;             // the reduced loss, nats (NaN or +inf after a value error, see docs/errors.md)
  std::int64_t valid_rows = 0;   // rows that count (not ignored, not fully masked)
  double denominator = 1.0;      // what the weighted sum was divided by
};

KD_END_ISA_FREE_NAMESPACE
