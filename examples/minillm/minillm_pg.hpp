// The MiniLLM policy-gradient estimator (kd/policy_gradient.hpp) as a torch::autograd::Function (libtorch 1.13, CPU).
//
//   kdt::policy_gradient(student_logits, teacher_logits, tokens, mask, options, &diag) -> scalar surrogate loss
//
// student_logits, teacher_logits: [B, L, V] contiguous float32 or bfloat16 CPU tensors: the logits that predicted the
//   sampled response tokens (row b*L + t predicts tokens[b, t]); their memory is passed to kd without a copy.
// tokens: [B, L] int64 sampled tokens y; mask: [B, L] float32, 1 = response token, 0 = padding (never read by kd).
// options: kd::pg_options (e.g. kd::pg_options::paper() with alpha = 0.2: single-step decomposition, teacher-mixed sampling
//   importance weights, Eq. 6 length normalization); diag: optional kd::pg_diagnostics written by forward().
// forward() makes ONE fused kd call that writes the total gradient w.r.t. the student logits (single-step KL term + long-term
// policy-gradient term) into a preallocated tensor; backward() returns it scaled by grad_output. Errors: c10::Error with
// kd's one-line message. Gu et al., arXiv 2306.08543, Sec. 2.2.
#pragma once

#include "kd_torch.hpp"

#include <kd/policy_gradient.hpp>

namespace kdt {

struct PolicyGradientFunction : public torch::autograd::Function<PolicyGradientFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& student_logits, const Tensor& teacher_logits,
                        const Tensor& tokens, const Tensor& mask, const kd::pg_options& options, kd::pg_diagnostics* diag) {
    const Tensor teacher = teacher_logits.detach();
    detail::check_logits(student_logits, "student_logits");
    detail::check_logits(teacher, "teacher_logits");
    TORCH_CHECK(student_logits.dim() == 3, "kdt: student_logits must be [B, L, V], got ", student_logits.sizes());
    TORCH_CHECK(teacher.sizes() == student_logits.sizes(), "kdt: teacher_logits ", teacher.sizes(),
                " must have the student's shape ", student_logits.sizes());
    const std::int64_t B = student_logits.size(0), L = student_logits.size(1), V = student_logits.size(2);
    TORCH_CHECK(tokens.scalar_type() == torch::kLong && tokens.is_contiguous() && tokens.numel() == B * L,
                "kdt: tokens must be a contiguous int64 [B, L] tensor");
    TORCH_CHECK(mask.scalar_type() == torch::kFloat && mask.is_contiguous() && mask.numel() == B * L,
                "kdt: mask must be a contiguous float32 [B, L] tensor");
    kd::pg_sequences seq;
    seq.batch = B;
    seq.time = L;
    seq.tokens = kd::label_view(tokens.data_ptr<std::int64_t>(), B * L);
    seq.mask = kd::mask_view(mask.data_ptr<float>(), B * L);
    Tensor grad = torch::empty_like(student_logits);
    kd::pg_diagnostics d;
    kd::status st;
    detail::dispatch_dtype(student_logits.scalar_type(), [&](auto s_tag) {
      using S = decltype(s_tag);
      detail::dispatch_dtype(teacher.scalar_type(), [&](auto t_tag) {
        using P = decltype(t_tag);
        kd::pg_outputs<S> out;
        out.grad_student = kd::mut_rows<S>(detail::mptr<S>(grad), B * L, V);
        st = kd::policy_gradient(kd::student_logits(detail::cptr<S>(student_logits), B * L, V),
                                 kd::teacher_logits(detail::cptr<P>(teacher), B * L, V), seq, options, out, d);
        return 0;
      });
      return 0;
    });
    TORCH_CHECK(st.ok(), st.to_string());
    if (diag) *diag = d;
    ctx->saved_data["grad"] = grad;
    return torch::full({}, d.loss, student_logits.options().dtype(torch::kFloat));
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    Tensor grad = ctx->saved_data["grad"].toTensor();
    return {grad * grad_outputs[0].to(grad.scalar_type()), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

inline Tensor policy_gradient(const Tensor& student_logits, const Tensor& teacher_logits, const Tensor& tokens,
                              const Tensor& mask, const kd::pg_options& options, kd::pg_diagnostics* diag = nullptr) {
  return PolicyGradientFunction::apply(student_logits, teacher_logits, tokens, mask, options, diag);
}

}  // namespace kdt
