// The public test vectors of shared/reference/math.md and the concrete inputs of pitfalls.md, on the reference backend.
#include <catch2/catch.hpp>

#include "test_util.hpp"

using kd::divergence;

namespace {

struct run_out {
  kd::status st;
  kd::loss_result r;
  std::vector<double> grad;
  std::vector<float> per_row;
};

run_out run(const divergence& d, const std::vector<double>& zs, const std::vector<double>& zt, std::int64_t rows,
            std::int64_t cols, kd::distill_options o = {}, kd::input_kind sk = kd::input_kind::logits,
            kd::input_kind tk = kd::input_kind::logits) {
  run_out out;
  out.grad.assign(zs.size(), 12345.0);
  out.per_row.assign(rows, -1.0f);
  kd::distill_outputs<double> outs;
  outs.grad_student = kd::mut_rows<double>(out.grad.data(), rows, cols);
  outs.per_row = out.per_row.data();
  kd::student_input<double> s{kd::const_rows<double>(zs.data(), rows, cols), sk};
  kd::teacher_input<double> t{kd::const_rows<double>(zt.data(), rows, cols), tk};
  out.st = kd::divergence_loss(d, s, t, o, out.r, outs, kd::reference_backend{});
  return out;
}

const std::vector<double> A_s = {1, 2, 3, 4}, A_t = {4, 3, 2, 1};

}  // namespace

TEST_CASE("math.md case A: losses", "[vectors]") {
  CHECK(run(divergence::forward_kl(), A_s, A_t, 1, 4).r.loss == Approx(1.9853054691715395).epsilon(1e-14));
  CHECK(run(divergence::reverse_kl(), A_s, A_t, 1, 4).r.loss == Approx(1.9853054691715395).epsilon(1e-14));
  CHECK(run(divergence::jsd(0.5), A_s, A_t, 1, 4).r.loss == Approx(0.37547803313492988).epsilon(1e-14));
  CHECK(run(divergence::jsd(0.1), A_s, A_t, 1, 4).r.loss == Approx(0.1554576509935704).epsilon(1e-14));
  CHECK(run(divergence::jsd(0.9), A_s, A_t, 1, 4).r.loss == Approx(0.1554576509935704).epsilon(1e-14));
  CHECK(run(divergence::skew_kl(0.1), A_s, A_t, 1, 4).r.loss == Approx(1.269156472862382).epsilon(1e-14));
  CHECK(run(divergence::skew_reverse_kl(0.1), A_s, A_t, 1, 4).r.loss == Approx(1.269156472862382).epsilon(1e-14));
  CHECK(run(divergence::tvd(), A_s, A_t, 1, 4).r.loss == Approx(0.76159415595576489).epsilon(1e-14));
}

TEST_CASE("math.md case A: gradients", "[vectors]") {
  auto f = run(divergence::forward_kl(), A_s, A_t, 1, 4);
  const double dfkl[] = {-0.611855656608, -0.149738499348, 0.149738499348, 0.611855656608};
  const double drkl[] = {-0.159821930266, -0.260152411348, -0.233401936217, 0.653376277831};
  const double djsd[] = {-0.0437747116486, -0.0433801168255, 0.00052202576167, 0.0866328027124};
  auto r = run(divergence::reverse_kl(), A_s, A_t, 1, 4);
  auto j = run(divergence::jsd(0.5), A_s, A_t, 1, 4);
  for (int i = 0; i < 4; ++i) {
    CHECK(f.grad[i] == Approx(dfkl[i]).margin(1e-11));
    CHECK(r.grad[i] == Approx(drkl[i]).margin(1e-11));
    CHECK(j.grad[i] == Approx(djsd[i]).margin(1e-12));
  }
}

TEST_CASE("math.md case A at T = 2", "[vectors][temperature]") {
  kd::distill_options o;
  o.temperature = 2.0;
  CHECK(run(divergence::forward_kl(), A_s, A_t, 1, 4, o).r.loss == Approx(0.58457648846186432).epsilon(1e-14));
  CHECK(run(divergence::jsd(0.5), A_s, A_t, 1, 4, o).r.loss == Approx(0.13482520598610262).epsilon(1e-14));
}

TEST_CASE("math.md case C: probabilities given as log-probs", "[vectors][input_kind]") {
  std::vector<double> s = {std::log(0.1), std::log(0.9)}, t = {std::log(0.9), std::log(0.1)};
  auto lp = kd::input_kind::log_probs;
  CHECK(run(divergence::forward_kl(), s, t, 1, 2, {}, lp, lp).r.loss == Approx(1.7577796618689755).epsilon(1e-14));
  CHECK(run(divergence::reverse_kl(), s, t, 1, 2, {}, lp, lp).r.loss == Approx(1.7577796618689755).epsilon(1e-14));
  CHECK(run(divergence::jsd(0.5), s, t, 1, 2, {}, lp, lp).r.loss == Approx(0.36806420716849707).epsilon(1e-14));
  CHECK(run(divergence::jsd(0.1), s, t, 1, 2, {}, lp, lp).r.loss == Approx(0.14631051341864593).epsilon(1e-14));
  CHECK(run(divergence::jsd(0.9), s, t, 1, 2, {}, lp, lp).r.loss == Approx(0.14631051341864593).epsilon(1e-14));
}

TEST_CASE("pitfall 9: JSD endpoints and directions", "[vectors][pitfalls]") {
  std::vector<double> s = {std::log(0.5), std::log(0.5)}, t = {std::log(0.9), std::log(0.1)};
  CHECK(run(divergence::forward_kl(), s, t, 1, 2).r.loss == Approx(0.3680642).epsilon(1e-6));
  CHECK(run(divergence::reverse_kl(), s, t, 1, 2).r.loss == Approx(0.5108256).epsilon(1e-6));
  CHECK(run(divergence::jsd(0.5), s, t, 1, 2).r.loss == Approx(0.1017492).epsilon(1e-6));
  CHECK(run(divergence::jsd(0.1), s, t, 1, 2).r.loss == Approx(0.0336030).epsilon(1e-5));
  CHECK(run(divergence::jsd(0.9), s, t, 1, 2).r.loss == Approx(0.0430741).epsilon(1e-5));
  // beta = 0 / 1 are forward / reverse KL exactly (bitwise), not a clamp of the mixture formula.
  CHECK(run(divergence::jsd(0.0), s, t, 1, 2).r.loss == run(divergence::forward_kl(), s, t, 1, 2).r.loss);
  CHECK(run(divergence::jsd(1.0), s, t, 1, 2).r.loss == run(divergence::reverse_kl(), s, t, 1, 2).r.loss);
  CHECK(run(divergence::skew_kl(0.0), s, t, 1, 2).r.loss == run(divergence::forward_kl(), s, t, 1, 2).r.loss);
  CHECK(run(divergence::skew_reverse_kl(0.0), s, t, 1, 2).r.loss == run(divergence::reverse_kl(), s, t, 1, 2).r.loss);
}

TEST_CASE("pitfall 16: temperature and T^2 scaling", "[vectors][pitfalls][temperature]") {
  std::vector<double> s = {1, 2, 3}, t = {3, 2, 1};
  const double kl[] = {1.1504208, 0.3201567, 0.0824769};
  const double temps[] = {1, 2, 4};
  for (int i = 0; i < 3; ++i) {
    kd::distill_options o;
    o.temperature = temps[i];
    CHECK(run(divergence::forward_kl(), s, t, 1, 3, o).r.loss == Approx(kl[i]).epsilon(1e-6));
  }
  kd::distill_options o;
  o.temperature = 2.0;
  o.t2_scale = true;
  auto r = run(divergence::forward_kl(), s, t, 1, 3, o);
  CHECK(r.r.loss == Approx(4 * 0.3201567).epsilon(1e-6));
  CHECK(r.grad[0] == Approx(-0.640313).margin(1e-6));
  CHECK(r.grad[1] == Approx(0.0).margin(1e-12));
  CHECK(r.grad[2] == Approx(0.640313).margin(1e-6));
}
