// Compiled by tests/header_check.sh with g++ and clang++, as C++17 and C++20, -Wall -Wextra -Wpedantic -Werror:
// the public headers, and the main templates instantiated for every element type.
#include <kd/reverse_kl.hpp>
#include <kd/forward_kl.hpp>
#include <kd/jsd.hpp>
#include <kd/skew_kl.hpp>
#include <kd/tvd.hpp>
#include <kd/softmax.hpp>
#include <kd/topk.hpp>
#include <kd/policy_gradient.hpp>
#include <kd/lm_loss.hpp>
#include <kd/teacher_mixed.hpp>
#include <kd/counter_rng.hpp>
#include <kd/padding.hpp>
#include <kd/kd.hpp>

#include <vector>

template <class S, class P, class G>
int instantiate() {
  std::vector<S> s(8, S(1.0f));
  std::vector<P> t(8, P(0.5f));
  std::vector<G> g(8);
  kd::distill_outputs<G> out;
  out.grad_student = kd::mut_rows<G>(g.data(), 2, 4);
  kd::loss_result r;
  kd::distill_options o;
  int bad = 0;
  bad += !kd::zero_padding_columns(out.grad_student, 4).ok();
  bad += !kd::forward_kl(kd::student_logits(s.data(), 2, 4), kd::teacher_logits(t.data(), 2, 4), o, r, out).ok();
  bad += !kd::reverse_kl(kd::student_logits(s.data(), 2, 4), kd::teacher_logits(t.data(), 2, 4), o, r, out,
                         kd::reference_backend{})
              .ok();
  bad += !kd::jsd(kd::student_logits(s.data(), 2, 4), kd::teacher_logits(t.data(), 2, 4), 0.5, o, r, out).ok();
  return bad;
}

int main() {
  return instantiate<float, float, float>() + instantiate<kd::bfloat16, kd::bfloat16, kd::bfloat16>() +
         instantiate<kd::half, float, float>() + instantiate<double, double, double>();
}
