// kd losses as torch::autograd::Function subclasses (libtorch 1.13, CPU).
//
// Each function passes the tensors' memory to kd without a copy: logits are [..., V] contiguous float32 or bfloat16 CPU
// tensors, viewed as rows = numel / V rows of V entries (kd/tensor.hpp). forward() calls the fused kd entry point, which
// writes dL/d(student logits) into a preallocated tensor of the student's shape and dtype; that tensor is saved and
// backward() returns it scaled by grad_output (a scalar). The teacher never receives a gradient (it is a fixed target).
//
//   kdt::forward_kl(student_logits, teacher_logits, row_weights = {}, temperature = 1)   KL(p_teacher || q_student), nats
//   kdt::reverse_kl(student_logits, teacher_logits, row_weights = {}, temperature = 1)   KL(q_student || p_teacher), nats
//   kdt::jsd(student_logits, teacher_logits, beta, row_weights = {}, temperature = 1)    generalized JSD(beta) (GKD Eq. 1)
//
// row_weights: optional float32 [rows] (undefined or empty: none) (or the logits' leading shape), finite and >= 0; 0 ignores a row (padding). The
// reduction is kd's token mean: sum_r w_r l_r / sum_r w_r (0 rows -> loss 0, gradient 0), or, when normalizer > 0,
// sum_r w_r l_r / normalizer. Errors (kd::status) are raised as c10::Error with kd's one-line message.
#pragma once

#include <torch/torch.h>

#include <kd/divergence.hpp>

#include <cstdint>
#include <string>

namespace kdt {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

namespace detail {

inline void check_logits(const Tensor& x, const char* name) {
  TORCH_CHECK(x.defined(), "kdt: ", name, " is undefined");
  TORCH_CHECK(x.device().is_cpu(), "kdt: ", name, " must be a CPU tensor");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) >= 1, "kdt: ", name, " must be [..., V] with V >= 1");
  TORCH_CHECK(x.is_contiguous(), "kdt: ", name, " must be contiguous (kd reads its memory without a copy)");
  TORCH_CHECK(x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kBFloat16, "kdt: ", name,
              " must be float32 or bfloat16, got ", x.scalar_type());
}

// torch's c10::BFloat16 and Eigen::bfloat16 are both the upper 16 bits of an IEEE float.
template <class T>
const T* cptr(const Tensor& x) {
  if constexpr (std::is_same_v<T, float>) return x.data_ptr<float>();
  else return reinterpret_cast<const T*>(x.data_ptr<c10::BFloat16>());
}
template <class T>
T* mptr(Tensor& x) {
  if constexpr (std::is_same_v<T, float>) return x.data_ptr<float>();
  else return reinterpret_cast<T*>(x.data_ptr<c10::BFloat16>());
}

template <class F>
decltype(auto) dispatch_dtype(torch::ScalarType t, F&& f) {
  if (t == torch::kFloat) return f(float{});
  return f(kd::bfloat16{});
}

// One fused kd call: returns the reduced loss (double) and writes grad (student's shape and dtype).
inline double run_divergence(const kd::divergence& d, const Tensor& student, const Tensor& teacher,
                             const Tensor& row_weights, double temperature, double normalizer, Tensor& grad,
                             Tensor* per_row, bool want_grad = true) {
  check_logits(student, "student_logits");
  check_logits(teacher, "teacher_logits");
  const std::int64_t V = student.size(-1);
  const std::int64_t rows = student.numel() / V;
  TORCH_CHECK(teacher.size(-1) == V && teacher.numel() / V == rows, "kdt: teacher_logits ", teacher.sizes(),
              " must have the student's rows and vocabulary ", student.sizes());
  kd::distill_options opt;
  opt.temperature = temperature;
  if (normalizer > 0.0) {
    opt.reduction = kd::reduction::normalizer;
    opt.normalizer = normalizer;
  }
  if (row_weights.defined() && row_weights.numel() > 0) {
    TORCH_CHECK(row_weights.scalar_type() == torch::kFloat && row_weights.is_contiguous() && row_weights.device().is_cpu(),
                "kdt: row_weights must be a contiguous float32 CPU tensor");
    TORCH_CHECK(row_weights.numel() == rows, "kdt: row_weights must have one entry per row (", rows, "), got ",
                row_weights.numel());
    opt.row_weights = row_weights.data_ptr<float>();
  }
  if (want_grad) grad = torch::empty_like(student);
  if (per_row) *per_row = torch::zeros({rows}, student.options().dtype(torch::kFloat));
  kd::loss_result res;
  kd::status st;
  dispatch_dtype(student.scalar_type(), [&](auto s_tag) {
    using S = decltype(s_tag);
    dispatch_dtype(teacher.scalar_type(), [&](auto t_tag) {
      using P = decltype(t_tag);
      kd::distill_outputs<S> out;
      if (want_grad) out.grad_student = kd::mut_rows<S>(mptr<S>(grad), rows, V);
      if (per_row) out.per_row = per_row->data_ptr<float>();
      st = kd::divergence_loss(d, kd::student_logits(cptr<S>(student), rows, V), kd::teacher_logits(cptr<P>(teacher), rows, V),
                               opt, res, out);
      return 0;
    });
    return 0;
  });
  TORCH_CHECK(st.ok(), st.to_string());
  return res.loss;
}

}  // namespace detail

// The autograd node shared by the three divergences (the kind is data, as in kd::divergence).
struct DivergenceFunction : public torch::autograd::Function<DivergenceFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& student_logits, const Tensor& teacher_logits,
                        const Tensor& row_weights, int64_t kind, double param, double temperature, double normalizer) {
    kd::divergence d{static_cast<kd::divergence_kind>(kind), param};
    Tensor grad;
    const double loss = detail::run_divergence(d, student_logits, teacher_logits.detach(), row_weights, temperature,
                                               normalizer, grad, nullptr);
    ctx->saved_data["grad"] = grad;
    return torch::full({}, loss, student_logits.options().dtype(torch::kFloat));
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    Tensor grad = ctx->saved_data["grad"].toTensor();
    Tensor g = grad_outputs[0].to(grad.scalar_type());
    return {grad * g, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

inline Tensor divergence(const kd::divergence& d, const Tensor& student_logits, const Tensor& teacher_logits,
                         const Tensor& row_weights = {}, double temperature = 1.0, double normalizer = 0.0) {
  // libtorch 1.13's Function::apply cannot take an undefined tensor: an empty tensor means "no row weights".
  return DivergenceFunction::apply(student_logits, teacher_logits, row_weights.defined() ? row_weights : torch::empty({0}), static_cast<int64_t>(d.kind), d.param,
                                   temperature, normalizer);
}
inline Tensor forward_kl(const Tensor& s, const Tensor& t, const Tensor& w = {}, double temperature = 1.0,
                         double normalizer = 0.0) {
  return divergence(kd::divergence::forward_kl(), s, t, w, temperature, normalizer);
}
inline Tensor reverse_kl(const Tensor& s, const Tensor& t, const Tensor& w = {}, double temperature = 1.0,
                         double normalizer = 0.0) {
  return divergence(kd::divergence::reverse_kl(), s, t, w, temperature, normalizer);
}
inline Tensor jsd(const Tensor& s, const Tensor& t, double beta, const Tensor& w = {}, double temperature = 1.0,
                  double normalizer = 0.0) {
  return divergence(kd::divergence::jsd(beta), s, t, w, temperature, normalizer);
}

// Per-row divergence values without autograd (evaluation): float32 [rows].
inline Tensor divergence_per_row(const kd::divergence& d, const Tensor& student_logits, const Tensor& teacher_logits) {
  torch::NoGradGuard ng;
  Tensor grad, per_row;
  detail::run_divergence(d, student_logits.contiguous(), teacher_logits.contiguous(), {}, 1.0, 0.0, grad, &per_row,
                         /*want_grad=*/false);
  return per_row;
}

}  // namespace kdt
