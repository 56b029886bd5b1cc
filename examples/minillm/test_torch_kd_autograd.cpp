// The kd autograd functions (kd_torch.hpp) against libtorch's own formulas on the same tensors: values and gradients
// (torch autograd through log_softmax / kl_div), float32 and bfloat16, row weights, grad_output scaling, bad inputs; and the
// MiniLLM policy-gradient Function (kd::policy_gradient) against the same estimator written with torch ops.
// Torch's headers define their own CHECK macro (c10 logging), so Catch is used with prefixed macros only.
#define CATCH_CONFIG_MAIN
#define CATCH_CONFIG_PREFIX_ALL
#include <catch2/catch.hpp>

#include "kd_torch.hpp"
#include "minillm_pg.hpp"

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
  CATCH_INFO(kind << " beta=" << beta << " T=" << T << " weighted=" << weighted << " kd=" << loss.item<double>()
            << " torch=" << ref.item<double>());
  CATCH_CHECK(loss.item<double>() == Approx(ref.item<double>()).epsilon(1e-5).margin(1e-6));
  const double gerr = max_abs(s.grad().to(torch::kDouble) - s64.grad());
  CATCH_INFO("max |grad kd - grad torch| = " << gerr);
  CATCH_CHECK(gerr < 1e-6);
  CATCH_CHECK(s.grad().sizes() == s.sizes());
}

}  // namespace

CATCH_TEST_CASE("kd autograd functions match torch formulas (float32)", "[torch]") {
  for (double T : {1.0, 2.0})
    for (bool weighted : {false, true}) {
      check_against_torch("fkl", 0.0, T, weighted);
      check_against_torch("rkl", 0.0, T, weighted);
      check_against_torch("jsd", 0.5, T, weighted);
      check_against_torch("jsd", 0.1, T, weighted);
    }
}

CATCH_TEST_CASE("kd autograd functions accept bfloat16 logits without a copy", "[torch]") {
  auto in = make_inputs(11, {4, 3, 50}, 2.0);
  Tensor sb = in.s.to(torch::kBFloat16), tb = in.t.to(torch::kBFloat16);
  for (std::string kind : {"fkl", "rkl", "jsd"}) {
    Tensor s = sb.clone().requires_grad_(true);
    Tensor loss = kd_loss(kind, s, tb, 0.5, {}, 1.0);
    loss.backward();
    CATCH_CHECK(s.grad().scalar_type() == torch::kBFloat16);
    // Reference on the same (bf16-rounded) values in float64: kd accumulates in float or double, only the gradient is
    // stored as bf16 (relative rounding 2^-8).
    Tensor s64 = sb.to(torch::kDouble).requires_grad_(true);
    Tensor ref = ref_rows(kind, s64, tb.to(torch::kDouble), 0.5, 1.0).mean();
    ref.backward();
    CATCH_INFO(kind);
    CATCH_CHECK(loss.item<double>() == Approx(ref.item<double>()).epsilon(1e-5));
    CATCH_CHECK(max_abs(s.grad().to(torch::kDouble) - s64.grad()) <= 4e-3 * max_abs(s64.grad()) + 1e-7);
  }
}

CATCH_TEST_CASE("identical inputs give exactly zero loss and gradient", "[torch]") {
  auto in = make_inputs(3, {6, 40}, 5.0);
  for (std::string kind : {"fkl", "rkl", "jsd"}) {
    Tensor s = in.s.clone().requires_grad_(true);
    Tensor loss = kd_loss(kind, s, in.s, 0.5, {}, 1.0);
    loss.backward();
    CATCH_CHECK(loss.item<double>() == 0.0);
    CATCH_CHECK(max_abs(s.grad()) == 0.0);
  }
}

CATCH_TEST_CASE("the memory passed to kd is the tensor's own (no copy)", "[torch]") {
  // A view into a larger buffer (contiguous slice): kd must read exactly that slice.
  auto in = make_inputs(5, {8, 30});
  Tensor big = in.s.clone();
  Tensor slice = big.narrow(0, 2, 4);  // rows 2..5, contiguous
  CATCH_REQUIRE(slice.is_contiguous());
  Tensor a = kdt::forward_kl(slice, in.t.narrow(0, 2, 4).contiguous());
  Tensor b = ref_rows("fkl", in.s.narrow(0, 2, 4).to(torch::kDouble), in.t.narrow(0, 2, 4).to(torch::kDouble), 0, 1).mean();
  CATCH_CHECK(a.item<double>() == Approx(b.item<double>()).epsilon(1e-5));
}

CATCH_TEST_CASE("bad inputs raise c10::Error with kd's message", "[torch]") {
  auto in = make_inputs(9, {4, 10});
  CATCH_CHECK_THROWS_AS(kdt::forward_kl(in.s.t(), in.t.t()), c10::Error);             // non-contiguous
  CATCH_CHECK_THROWS_AS(kdt::forward_kl(in.s, in.t.narrow(1, 0, 9).contiguous()), c10::Error);  // vocabulary mismatch
  CATCH_CHECK_THROWS_AS(kdt::forward_kl(in.s.to(torch::kDouble), in.t), c10::Error);  // dtype
  CATCH_CHECK_THROWS_AS(kdt::jsd(in.s, in.t, 1.5), c10::Error);                       // beta out of range (kd::status)
  try {
    (void)kdt::forward_kl(in.s, in.t, {}, -1.0);
    CATCH_FAIL("no error");
  } catch (const c10::Error& e) {
    CATCH_CHECK(std::string(e.what()).find("temperature") != std::string::npos);
  }
}

CATCH_TEST_CASE("MiniLLM policy gradient matches the estimator written with torch ops", "[torch][pg]") {
  // B = 3 responses of L = 6 positions over V = 23; response 1 ends after 4 tokens, response 2 after 2 (padding after).
  torch::manual_seed(21);
  const std::int64_t B = 3, L = 6, V = 23;
  Tensor s = torch::randn({B, L, V}) * 2.0, t = torch::randn({B, L, V}) * 2.0;
  Tensor y = torch::randint(0, V, {B, L}, torch::kLong);
  Tensor mask = torch::ones({B, L});
  mask.index_put_({1, torch::indexing::Slice(4, L)}, 0.0f);
  mask.index_put_({2, torch::indexing::Slice(2, L)}, 0.0f);
  y.index_put_({2, torch::indexing::Slice(2, L)}, 999);  // garbage at padding: must never be read
  const double alpha = 0.2;
  for (double clip : {0.0}) {
    kd::pg_options opt = kd::pg_options::paper();
    opt.alpha = alpha;
    opt.clip_range = clip;
    kd::pg_diagnostics diag;
    Tensor sv = s.clone().requires_grad_(true);
    Tensor loss = kdt::policy_gradient(sv, t, y, mask, opt, &diag);
    (loss * 1.5).backward();

    // Torch reference (float64): single-step KL(q_t || p_t) exact over the vocabulary, plus the long-term term
    // -w_t A_t log q(y_t) with A_t = mean of the future rewards r_t' = log p(y_t') - log q(y_t'), t' > t (paper Eq. 6, 0 when
    // there is none) and w_t = q(y_t) / (alpha p(y_t) + (1 - alpha) q(y_t)); A and w are constants; token mean.
    Tensor s64 = s.to(torch::kDouble).requires_grad_(true);
    Tensor lq = torch::log_softmax(s64, -1), lp = torch::log_softmax(t.to(torch::kDouble), -1);
    Tensor yc = torch::where(mask > 0, y, torch::zeros_like(y)).unsqueeze(2);
    Tensor lqy = lq.gather(2, yc).squeeze(2), lpy = lp.gather(2, yc).squeeze(2);
    Tensor m = mask.to(torch::kDouble);
    Tensor A, w;
    {
      torch::NoGradGuard ng;
      Tensor r = (lpy - lqy) * m;
      Tensor future = r.flip({1}).cumsum(1).flip({1}) - r;
      Tensor count = m.flip({1}).cumsum(1).flip({1}) - m;
      A = torch::where(count > 0, future / count.clamp_min(1), torch::zeros_like(future));
      w = lqy.exp() / (alpha * lpy.exp() + (1 - alpha) * lqy.exp());
    }
    const double n = m.sum().item<double>();
    Tensor kl_t = (lq.exp() * (lq - lp)).sum(-1);
    Tensor ref = ((kl_t * m).sum() - (w * A * lqy * m).sum()) / n;
    (ref * 1.5).backward();
    const double gerr = max_abs(sv.grad().to(torch::kDouble) - s64.grad());
    CATCH_INFO("max |grad kd - grad torch| = " << gerr << ", max |grad| = " << max_abs(s64.grad()));
    CATCH_CHECK(gerr < 1e-6);
    CATCH_CHECK(diag.valid_tokens == static_cast<std::int64_t>(n));
    CATCH_CHECK(diag.token_reverse_kl == Approx((kl_t * m).sum().item<double>() / n).epsilon(1e-5));
    // padded rows get exactly zero gradient
    CATCH_CHECK(max_abs(sv.grad().index({2, torch::indexing::Slice(2, L)})) == 0.0);
  }
}
