// The backend protocol (kd/backend/protocol.hpp): every operation takes a backend value the same way. Which backends
// implement which operation (checked at compile time here, and by tests/protocol_check.sh for the error message);
// a user-written backend with one operation; kd::dispatch_backend serving the policy gradient and the LM loss with the
// results of kd::simd_backend<Arch> for the same instruction set; the side a support mismatch names.
#include <catch2/catch.hpp>

#include <kd/backend.hpp>
#include <kd/divergence.hpp>
#include <kd/lm_loss.hpp>
#include <kd/policy_gradient.hpp>
#include <kd/softmax.hpp>
#include <kd/topk.hpp>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "test_util.hpp"

#if KD_TEST_DISPATCH
#include <kd/backend/dispatch.hpp>
#endif

namespace {

using rows_f = kd::const_rows<float>;
using mrows_f = kd::mut_rows<float>;

template <class B>
constexpr bool implements_all() {
  using namespace kd;
  return detail::has_run_divergence<B, divergence, student_input<float>, teacher_input<float>, distill_options,
                                    loss_result, distill_outputs<float>> &&
         detail::has_run_policy_gradient<B, student_input<float>, teacher_input<float>, pg_sequences, pg_options,
                                         pg_outputs<float>, pg_diagnostics> &&
         detail::has_run_lm_loss<B, student_input<float>, label_view, distill_options, loss_result, mut_rows<float>> &&
         detail::has_run_log_sum_exp<B, rows_f, double, float*> &&
         detail::has_run_softmax<B, rows_f, mrows_f, double, softmax_form> &&
         detail::has_run_softmax_backward<B, rows_f, rows_f, mrows_f, double, softmax_form> &&
         detail::has_run_topk_with_tail<B, rows_f, const_rows<std::int64_t>, double, mrows_f> &&
         detail::has_run_topk_with_tail_from_log_probs<B, rows_f, mrows_f> &&
         detail::has_run_topk_with_tail_backward<B, rows_f, const_rows<std::int64_t>, double, rows_f, mrows_f>;
}

// A user's backend with one operation: the divergences, forwarded to the reference backend.
struct divergence_only_backend {
  template <class S, class P, class G>
  kd::status run_divergence(const kd::divergence& d, const kd::student_input<S>& s, const kd::teacher_input<P>& t,
                            const kd::distill_options& o, kd::loss_result& r, const kd::distill_outputs<G>& out) const {
    return kd::reference_backend{}.run_divergence(d, s, t, o, r, out);
  }
};

static_assert(implements_all<kd::reference_backend>());
static_assert(implements_all<kd::simd_backend<>>());
static_assert(implements_all<kd::default_backend>());
#if KD_TEST_DISPATCH
static_assert(implements_all<kd::dispatch_backend>());
#endif
static_assert(kd::detail::has_run_divergence<divergence_only_backend, kd::divergence, kd::student_input<float>,
                                             kd::teacher_input<float>, kd::distill_options, kd::loss_result,
                                             kd::distill_outputs<float>>);
static_assert(!kd::detail::has_run_softmax<divergence_only_backend, rows_f, mrows_f, double, kd::softmax_form>);
static_assert(!kd::detail::has_run_policy_gradient<divergence_only_backend, kd::student_input<float>,
                                                   kd::teacher_input<float>, kd::pg_sequences, kd::pg_options,
                                                   kd::pg_outputs<float>, kd::pg_diagnostics>);

// A small MiniLLM batch: B sequences of L positions over V tokens.
struct pg_case {
  std::int64_t B = 3, L = 5, V = 300;
  std::vector<float> zs, zt, old_lp;
  std::vector<std::int64_t> tok, lm;
  std::vector<std::uint8_t> mask;
  explicit pg_case(unsigned seed) {
    const std::int64_t R = B * L;
    zs = kdt::random_logits<float>(R, V, seed, 1.5);
    zt = kdt::random_logits<float>(R, V, seed + 1, 1.5);
    tok.resize(R);
    lm.resize(R);
    mask.resize(R);
    old_lp.resize(R);
    for (std::int64_t r = 0; r < R; ++r) {
      tok[r] = (r * 37 + 11) % V;
      lm[r] = r % 4 == 0 ? -100 : (r * 53 + 7) % V;
      mask[r] = r % L != L - 1 || r / L == 0;  // the last position of all but the first sequence is padding
      old_lp[r] = static_cast<float>(-1.0 - 0.1 * (r % 7));
    }
  }
  kd::pg_sequences seq() const {
    kd::pg_sequences s;
    s.batch = B;
    s.time = L;
    s.tokens = kd::label_view(tok.data(), B * L);
    s.mask = kd::mask_view(mask.data(), B * L);
    s.old_log_probs = old_lp.data();
    s.lm_labels = kd::label_view(lm.data(), B * L);
    return s;
  }
};

struct pg_out {
  kd::status st;
  std::vector<float> g, adv;
  kd::pg_diagnostics d;
};

template <class Backend>
pg_out run_pg(const pg_case& c, const kd::pg_options& o, const Backend& be) {
  pg_out r;
  r.g.assign(c.zs.size(), 777.0f);
  r.adv.assign(static_cast<std::size_t>(c.B * c.L), 777.0f);
  kd::pg_outputs<float> out;
  out.grad_student = kd::mut_rows<float>(r.g.data(), c.B * c.L, c.V);
  out.advantages = r.adv.data();
  r.st = kd::policy_gradient(kd::student_logits(c.zs.data(), c.B * c.L, c.V),
                             kd::teacher_logits(c.zt.data(), c.B * c.L, c.V), c.seq(), o, out, r.d, be);
  return r;
}

kd::pg_options pg_opts() {
  kd::pg_options o = kd::pg_options::reference_code();
  o.lm_weight = 0.5;
  o.temperature = 1.5;
  return o;
}

}  // namespace

TEST_CASE("protocol: a user backend with only run_divergence serves kd::divergence_loss", "[protocol]") {
  const auto zs = kdt::random_logits<float>(4, 50, 1), zt = kdt::random_logits<float>(4, 50, 2);
  std::vector<float> g1(zs.size()), g2(zs.size());
  kd::loss_result r1, r2;
  kd::distill_outputs<float> o1, o2;
  o1.grad_student = kd::mut_rows<float>(g1.data(), 4, 50);
  o2.grad_student = kd::mut_rows<float>(g2.data(), 4, 50);
  const auto s = kd::student_logits(zs.data(), 4, 50);
  const auto t = kd::teacher_logits(zt.data(), 4, 50);
  REQUIRE(kd::divergence_loss(kd::divergence::jsd(0.3), s, t, kd::distill_options{}, r1, o1, divergence_only_backend{}).ok());
  REQUIRE(kd::divergence_loss(kd::divergence::jsd(0.3), s, t, kd::distill_options{}, r2, o2, kd::reference_backend{}).ok());
  CHECK(r1.loss == r2.loss);
  CHECK(g1 == g2);
  // argument errors come from the public function, before the backend is called
  kd::distill_options bad;
  bad.temperature = -1.0;
  const kd::status e = kd::divergence_loss(kd::divergence::jsd(0.3), s, t, bad, r1, o1, divergence_only_backend{});
  CHECK(e.code == kd::errc::invalid_argument);
  CHECK(std::string(e.argument) == "temperature");
}

TEST_CASE("protocol: policy gradient and LM loss on the SIMD backend agree with the reference", "[protocol][pg]") {
  const pg_case c(7);
  const kd::pg_options o = pg_opts();
  const pg_out ref = run_pg(c, o, kd::reference_backend{});
  const pg_out fast = run_pg(c, o, kd::simd_backend<>{kd::thread_executor{2}});
  REQUIRE(ref.st.ok());
  REQUIRE(fast.st.ok());
  double gmax = 0.0, worst = 0.0;
  for (std::size_t i = 0; i < ref.g.size(); ++i) {
    gmax = std::max(gmax, double(std::abs(ref.g[i])));
    worst = std::max(worst, double(std::abs(fast.g[i] - ref.g[i])));
  }
  // float32 log-probabilities of |z| / T <= ~3: a few 2^-24 (|z| / T + log V) relative to the row's scale
  CHECK(worst <= 2e-5 * gmax);
  CHECK(fast.d.loss == Approx(ref.d.loss).epsilon(1e-5));

  std::vector<float> g1(c.zs.size()), g2(c.zs.size());
  kd::loss_result r1, r2;
  kd::distill_options lo;
  lo.temperature = 1.5;
  const auto s = kd::student_logits(c.zs.data(), c.B * c.L, c.V);
  const kd::label_view labels(c.lm.data(), c.B * c.L);
  REQUIRE(kd::lm_loss(s, labels, lo, r1, kd::mut_rows<float>(g1.data(), c.B * c.L, c.V), kd::reference_backend{}).ok());
  REQUIRE(kd::lm_loss(s, labels, lo, r2, kd::mut_rows<float>(g2.data(), c.B * c.L, c.V), kd::simd_backend<>{}).ok());
  CHECK(r2.loss == Approx(r1.loss).epsilon(1e-6));
  CHECK(r1.valid_rows == r2.valid_rows);
  double lw = 0.0;
  for (std::size_t i = 0; i < g1.size(); ++i) lw = std::max(lw, double(std::abs(g1[i] - g2[i])));
  CHECK(lw <= 1e-6);  // q_j in float32: 2^-24 (|z| / T + log V) ~ 1e-6 of a gradient scale 1 / (T * rows) < 1
}

#if KD_TEST_DISPATCH
TEST_CASE("protocol: kd::dispatch_backend serves the policy gradient and the LM loss", "[protocol][pg][dispatch]") {
  const pg_case c(11);
  const kd::pg_options o = pg_opts();
  // The library's SSE2 kernels are those of kd::simd_backend<xsimd::sse2> (this file is compiled for SSE2 or more).
  const pg_out sse2 = run_pg(c, o, kd::dispatch_backend{kd::simd_isa::sse2, 2});
  const pg_out here = run_pg(c, o, kd::simd_backend<xsimd::sse2, kd::thread_executor>{kd::thread_executor{1}});
  REQUIRE(sse2.st.ok());
  REQUIRE(here.st.ok());
  CHECK(std::memcmp(sse2.g.data(), here.g.data(), sse2.g.size() * sizeof(float)) == 0);
  CHECK(sse2.adv == here.adv);
  CHECK(sse2.d.loss == here.d.loss);
  const pg_out ref = run_pg(c, o, kd::reference_backend{});
  for (kd::simd_isa isa : {kd::simd_isa::sse2, kd::simd_isa::sse4_2, kd::simd_isa::avx2, kd::simd_isa::avx512}) {
    if (!kd::simd_isa_available(isa)) continue;
    INFO(kd::simd_isa_name(isa));
    const pg_out d = run_pg(c, o, kd::dispatch_backend{isa, 1});
    REQUIRE(d.st.ok());
    double gmax = 0.0, worst = 0.0;
    for (std::size_t i = 0; i < ref.g.size(); ++i) {
      gmax = std::max(gmax, double(std::abs(ref.g[i])));
      worst = std::max(worst, double(std::abs(d.g[i] - ref.g[i])));
    }
    CHECK(worst <= 2e-5 * gmax);
    std::vector<float> g(c.zs.size());
    kd::loss_result r;
    REQUIRE(kd::lm_loss(kd::student_logits(c.zs.data(), c.B * c.L, c.V), kd::label_view(c.lm.data(), c.B * c.L),
                        kd::distill_options{}, r, kd::mut_rows<float>(g.data(), c.B * c.L, c.V),
                        kd::dispatch_backend{isa, 2})
                .ok());
    CHECK(r.valid_rows == 11);
  }
  // errors are those of the other backends (argument checks in the public function)
  pg_case bad(3);
  bad.tok[0] = bad.V;
  const pg_out e = run_pg(bad, o, kd::dispatch_backend{});
  CHECK(e.st.code == kd::errc::invalid_argument);
  CHECK(std::string(e.st.argument) == "tokens");
}
#endif

TEST_CASE("protocol: softmax and top-k take a backend; every kd backend gives the reference result", "[protocol]") {
  const auto x = kdt::random_logits<float>(3, 40, 5);
  std::vector<float> a(x.size()), b(x.size());
  REQUIRE(kd::log_softmax(rows_f(x.data(), 3, 40), mrows_f(a.data(), 3, 40), 2.0, kd::reference_backend{}).ok());
  REQUIRE(kd::log_softmax(rows_f(x.data(), 3, 40), mrows_f(b.data(), 3, 40), 2.0, kd::simd_backend<>{}).ok());
  CHECK(a == b);
  const std::int64_t idx[6] = {0, 5, 1, 2, 39, 7};
  std::vector<float> ta(9), tb(9);
  const kd::const_rows<std::int64_t> iv(idx, 3, 2);
  REQUIRE(kd::topk_with_tail(rows_f(x.data(), 3, 40), iv, 1.0, mrows_f(ta.data(), 3, 3), kd::reference_backend{}).ok());
  REQUIRE(kd::topk_with_tail(rows_f(x.data(), 3, 40), iv, 1.0, mrows_f(tb.data(), 3, 3)).ok());
  CHECK(ta == tb);
}

TEST_CASE("support mismatch names the side that has the zero", "[protocol][errors]") {
  // row 0: the student has a -inf where the teacher has mass; forward KL(p || q) is +inf because of the student
  std::vector<float> zs = {0.0f, -INFINITY, 1.0f, 0.5f}, zt = {0.0f, 0.3f, 1.0f, 0.5f};
  const auto run = [&](kd::divergence d, auto be) {
    kd::loss_result r;
    return kd::divergence_loss(d, kd::student_logits(zs.data(), 1, 4), kd::teacher_logits(zt.data(), 1, 4),
                               kd::distill_options{}, r, kd::distill_outputs<float>{}, be);
  };
  for (int k = 0; k < 2; ++k) {
    const kd::status ref = k == 0 ? run(kd::divergence::forward_kl(), kd::reference_backend{})
                                  : run(kd::divergence::forward_kl(), kd::default_backend{});
    CHECK(ref.code == kd::errc::support_mismatch);
    CHECK(std::string(ref.argument) == "student");
  }
  // reverse KL(q || p) of the same rows is finite (the student's zero is harmless); swap the roles for the teacher
  CHECK(run(kd::divergence::reverse_kl(), kd::default_backend{}).ok());
  std::swap(zs, zt);
  for (int k = 0; k < 2; ++k) {
    const kd::status st = k == 0 ? run(kd::divergence::reverse_kl(), kd::reference_backend{})
                                 : run(kd::divergence::reverse_kl(), kd::default_backend{});
    CHECK(st.code == kd::errc::support_mismatch);
    CHECK(std::string(st.argument) == "teacher");
  }
  // skew KL(p || a p + (1 - a) q) at alpha = 0 is forward KL: the student again
  std::swap(zs, zt);
  CHECK(std::string(run(kd::divergence::skew_kl(0.0), kd::default_backend{}).argument) == "student");
}
