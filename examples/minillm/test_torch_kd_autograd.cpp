// The kd autograd functions (kd_torch.hpp) against libtorch's own formulas on the same tensors: values and gradients
// (torch autograd through log_softmax / kl_div), float32 and bfloat16, row weights, grad_output scaling, bad inputs.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

#include "kd_torch.hpp"

namespace F = torch::nn::functional;
using torch::Tensor;

namespace {

struct pair_t {
  Tensor s, t;
};

pair_t make_inputs(std::int64_t seed, std::vector<std::int64_t> shape, double scale = 3.0) {
  torch::manual_seed(seed);
  return {torch::randn(shape) * scale, torch::randn(shape) * scale};
}

// Reference per-row divergences with torch ops only, in float64. Rows = all leading dims.
Tensor ref_rows(const std::string& kind, const Tensor& s, const Tensor& t, double beta, double T) {
  const std::int64_t V = s.size(-1);
  Tensor ls = torch::log_softmax(s.reshape({-1, V}) / T, -1), lt = torch::log_softmax(t.reshape({-1, V}) / T, -1);
  if (kind == "fkl")  // F.kl_div(input = log q, target = log p, log_target) = sum p (log p - log q) = KL(p || q)
    return F::kl_div(ls, lt, F::KLDivFuncOptions().reduction(torch::kNone).log_target(true)).sum(-1);
  if (kind == "rkl") return (ls.exp() * (ls - lt)).sum(-1);
  // jsd(beta) = beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q, log m in log space
  Tensor lm = torch::logsumexp(torch::stack({lt + std::log(beta), ls + std::log(1.0 - beta)}), 0);
  return beta * (lt.exp() * (lt - lm)).sum(-1) + (1.0 - beta) * (ls.exp() * (ls - lm)).sum(-1);
}

Tensor kd_loss(const std::string& kind, const Tensor& s, const Tensor& t, double beta, const Tensor& w, double T) {
  if (kind == "fkl") return kdt::forward_kl(s, t, w, T);
  if (kind == "rkl") return kdt::reverse_kl(s, t, w, T);
  return kdt::jsd(s, t, beta, w, T);
}

double max_abs(const Tensor& a) { return a.abs().max().item<double>(); }

void check_against_torch(const std::string& kind, double beta, double T, bool weighted) {
  auto in = make_inputs(7, {3, 5, 37});
  const std::int64_t rows = 15;
  Tensor w;
  if (weighted) {
    w = torch::rand({rows});
    w.index_put_({torch::tensor({1, 4, 9})}, 0.0f);  // padding rows
  }
  // kd path (float32 memory passed to kd), gradient through the autograd Function.
  Tensor s = in.s.clone().requires_grad_(true);
  Tensor loss = kd_loss(kind, s, in.t, beta, w, T);
  (loss * 2.5).backward();  // grad_output != 1 checks the scaling in backward()
  // torch path, float64.
  Tensor s64 = in.s.to(torch::kDouble).requires_grad_(true);
  Tensor per = ref_rows(kind, s64, in.t.to(torch::kDouble), beta, T);
  Tensor ref = weighted ? (per * w.to(torch::kDouble)).sum() / w.to(torch::kDouble).sum() : per.mean();
  (ref * 2.5).backward();
  INFO(kind << " beta=" << beta << " T=" << T << " weighted=" << weighted << " kd=" << loss.item<double>()
            << " torch=" << ref.item<double>());
  CHECK(loss.item<double>() == Approx(ref.item<double>()).epsilon(1e-5).margin(1e-6));
  const double gerr = max_abs(s.grad().to(torch::kDouble) - s64.grad());
  INFO("max |grad kd - grad torch| = " << gerr);
  CHECK(gerr < 1e-6);
  CHECK(s.grad().sizes() == s.sizes());
}

}  // namespace

TEST_CASE("kd autograd functions match torch formulas (float32)", "[torch]") {
  for (double T : {1.0, 2.0})
    for (bool weighted : {false, true}) {
      check_against_torch("fkl", 0.0, T, weighted);
      check_against_torch("rkl", 0.0, T, weighted);
      check_against_torch("jsd", 0.5, T, weighted);
      check_against_torch("jsd", 0.1, T, weighted);
    }
}

TEST_CASE("kd autograd functions accept bfloat16 logits without a copy", "[torch]") {
  auto in = make_inputs(11, {4, 3, 50}, 2.0);
  Tensor sb = in.s.to(torch::kBFloat16), tb = in.t.to(torch::kBFloat16);
  for (std::string kind : {"fkl", "rkl", "jsd"}) {
    Tensor s = sb.clone().requires_grad_(true);
    Tensor loss = kd_loss(kind, s, tb, 0.5, {}, 1.0);
    loss.backward();
    CHECK(s.grad().scalar_type() == torch::kBFloat16);
    // Reference on the same (bf16-rounded) values in float64: kd accumulates in float or double, only the gradient is
    // stored as bf16 (relative rounding 2^-8).
    Tensor s64 = sb.to(torch::kDouble).requires_grad_(true);
    Tensor ref = ref_rows(kind, s64, tb.to(torch::kDouble), 0.5, 1.0).mean();
    ref.backward();
    INFO(kind);
    CHECK(loss.item<double>() == Approx(ref.item<double>()).epsilon(1e-5));
    CHECK(max_abs(s.grad().to(torch::kDouble) - s64.grad()) <= 4e-3 * max_abs(s64.grad()) + 1e-7);
  }
}

TEST_CASE("identical inputs give exactly zero loss and gradient", "[torch]") {
  auto in = make_inputs(3, {6, 40}, 5.0);
  for (std::string kind : {"fkl", "rkl", "jsd"}) {
    Tensor s = in.s.clone().requires_grad_(true);
    Tensor loss = kd_loss(kind, s, in.s, 0.5, {}, 1.0);
    loss.backward();
    CHECK(loss.item<double>() == 0.0);
    CHECK(max_abs(s.grad()) == 0.0);
  }
}

TEST_CASE("the memory passed to kd is the tensor's own (no copy)", "[torch]") {
  // A view into a larger buffer (contiguous slice): kd must read exactly that slice.
  auto in = make_inputs(5, {8, 30});
  Tensor big = in.s.clone();
  Tensor slice = big.narrow(0, 2, 4);  // rows 2..5, contiguous
  REQUIRE(slice.is_contiguous());
  Tensor a = kdt::forward_kl(slice, in.t.narrow(0, 2, 4).contiguous());
  Tensor b = ref_rows("fkl", in.s.narrow(0, 2, 4).to(torch::kDouble), in.t.narrow(0, 2, 4).to(torch::kDouble), 0, 1).mean();
  CHECK(a.item<double>() == Approx(b.item<double>()).epsilon(1e-5));
}

TEST_CASE("bad inputs raise c10::Error with kd's message", "[torch]") {
  auto in = make_inputs(9, {4, 10});
  CHECK_THROWS_AS(kdt::forward_kl(in.s.t(), in.t.t()), c10::Error);             // non-contiguous
  CHECK_THROWS_AS(kdt::forward_kl(in.s, in.t.narrow(1, 0, 9).contiguous()), c10::Error);  // vocabulary mismatch
  CHECK_THROWS_AS(kdt::forward_kl(in.s.to(torch::kDouble), in.t), c10::Error);  // dtype
  CHECK_THROWS_AS(kdt::jsd(in.s, in.t, 1.5), c10::Error);                       // beta out of range (kd::status)
  try {
    (void)kdt::forward_kl(in.s, in.t, {}, -1.0);
    FAIL("no error");
  } catch (const c10::Error& e) {
    CHECK(std::string(e.what()).find("temperature") != std::string::npos);
  }
}
