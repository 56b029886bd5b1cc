// Compiled by tests/protocol_check.sh: a backend without run_softmax passed to kd::softmax must fail to compile with
// kd's one-line message naming the operation. With -DKD_PROTOCOL_CONTROL the same call uses kd::reference_backend and
// must compile (so the check fails if the file breaks for another reason).
#include <kd/softmax.hpp>

struct divergence_only_backend {
  template <class S, class P, class G>
  kd::status run_divergence(const kd::divergence&, const kd::student_input<S>&, const kd::teacher_input<P>&,
                            const kd::distill_options&, kd::loss_result&, const kd::distill_outputs<G>&) const {
    return {};
  }
};

int main() {
  float x[4] = {0, 1, 2, 3}, y[4];
#ifdef KD_PROTOCOL_CONTROL
  const kd::reference_backend be;
#else
  const divergence_only_backend be;
#endif
  return kd::softmax(kd::const_rows<float>(x, 1, 4), kd::mut_rows<float>(y, 1, 4), 1.0, be).ok() ? 0 : 1;
}
