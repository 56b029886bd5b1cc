#include <kd/backend/dispatch.hpp>
#include <kd/divergence.hpp>
#include <kd/reverse_kl.hpp>

#include <cmath>
#include <cstdio>

int main() {
  const float student[4] = {1, 2, 3, 4}, teacher[4] = {4, 3, 2, 1};
  const double expected = 1.9853054691715395;  // KL(q || p), q = softmax(student), p = softmax(teacher), nats
  float grad[4];
  kd::loss_result r;
  kd::distill_outputs<float> out;
  out.grad_student = kd::mut_rows<float>(grad, 1, 4);
  kd::status st = kd::reverse_kl(kd::student_logits(student, 1, 4), kd::teacher_logits(teacher, 1, 4), {}, r, out);
  std::printf("reverse KL %.7f (%s)\n", r.loss, st.to_string().c_str());
  // kd::dispatch (compiled library): the same loss with the instruction set chosen at run time.
  kd::loss_result rd;
  kd::status sd = kd::divergence_loss(kd::divergence::reverse_kl(), kd::student_logits(student, 1, 4),
                                      kd::teacher_logits(teacher, 1, 4), {}, rd, kd::distill_outputs<float>{},
                                      kd::dispatch_backend{});
  std::printf("reverse KL %.7f with kd::dispatch_backend (%s, %s)\n", rd.loss, kd::simd_isa_name(kd::best_simd_isa()),
              sd.to_string().c_str());
  return st.ok() && sd.ok() && std::abs(r.loss - expected) < 1e-5 && std::abs(rd.loss - expected) < 1e-5 ? 0 : 1;
}
