#include <kd/reverse_kl.hpp>

#include <cmath>
#include <cstdio>

int main() {
  const float student[4] = {1, 2, 3, 4}, teacher[4] = {4, 3, 2, 1};
  float grad[4];
  kd::loss_result r;
  kd::distill_outputs<float> out;
  out.grad_student = kd::mut_rows<float>(grad, 1, 4);
  kd::status st = kd::reverse_kl(kd::student_logits(student, 1, 4), kd::teacher_logits(teacher, 1, 4), {}, r, out);
  std::printf("reverse KL %.7f (%s)\n", r.loss, st.to_string().c_str());
  return st.ok() && std::abs(r.loss - 1.9853054691715395) < 1e-5 ? 0 : 1;
}
