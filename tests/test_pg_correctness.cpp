// Regression tests of issue "Correctness round", section 3, for kd::policy_gradient: NaN masks, the fully-masked-row
// policy, importance weights beyond the float range, and the TRL length normalization (each failed before its fix).
#include <catch2/catch.hpp>

#include <kd/policy_gradient.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace {

constexpr double kNinf = -std::numeric_limits<double>::infinity();

// One call on double logits [B*L, V]; every output pre-filled with 777 so "untouched" can be checked.
struct call {
  std::int64_t B = 0, L = 0, V = 0;
  std::vector<double> zs, zt;
  std::vector<std::int64_t> tok;
  kd::pg_sequences seq() const {
    kd::pg_sequences s;
    s.batch = B;
    s.time = L;
    s.tokens = kd::label_view(tok.data(), B * L);
    return s;
  }
};

struct result {
  kd::status st;
  std::vector<double> grad;
  std::vector<float> rewards, adv, iw;
  kd::pg_diagnostics d;
};

template <class Z = double, class Backend = kd::reference_backend>
result run(const call& c, const kd::pg_sequences& seq, const kd::pg_options& o, Backend be = {}) {
  const std::int64_t R = c.B * c.L;
  std::vector<Z> zs(c.zs.begin(), c.zs.end()), zt(c.zt.begin(), c.zt.end()), g(R * c.V, Z(777));
  result r;
  r.rewards.assign(R, 777.f);
  r.adv.assign(R, 777.f);
  r.iw.assign(R, 777.f);
  kd::pg_outputs<Z> out;
  out.grad_student = kd::mut_rows<Z>(g.data(), R, c.V);
  out.rewards = r.rewards.data();
  out.advantages = r.adv.data();
  out.importance_weights = r.iw.data();
  r.st = kd::policy_gradient(kd::student_logits(zs.data(), R, c.V), kd::teacher_logits(zt.data(), R, c.V), seq, o, out,
                             r.d, be);
  r.grad.assign(g.begin(), g.end());
  return r;
}

// B = 2, L = 3, V = 4, smooth random-ish logits, every token 1.
call small_call() {
  call c;
  c.B = 2;
  c.L = 3;
  c.V = 4;
  for (std::int64_t i = 0; i < c.B * c.L * c.V; ++i) {
    c.zs.push_back(std::sin(0.7 * i) * 1.5);
    c.zt.push_back(std::cos(0.3 * i) * 1.2);
  }
  c.tok.assign(c.B * c.L, 1);
  return c;
}

}  // namespace

TEST_CASE("pg: a NaN in a float mask is an argument error naming 'mask', outputs untouched", "[pg][mask][regression]") {
  const call c = small_call();
  std::vector<float> mask = {1, 1, 0, 1, std::nanf(""), 1};
  kd::pg_sequences s = c.seq();
  s.mask = kd::mask_view(mask.data(), 6);
  for (bool fast : {false, true}) {
    const result r = fast ? run<float>(c, s, kd::pg_options{}, kd::pg_fast_backend{}) : run(c, s, kd::pg_options{});
    INFO(r.st.to_string());
    CHECK(r.st.code == kd::errc::invalid_argument);
    CHECK(std::string(r.st.argument) == "mask");
    CHECK(r.st.row == 4);
    for (double g : r.grad) REQUIRE(g == 777.0);
    for (float a : r.adv) REQUIRE(a == 777.f);
  }
  // kd::pg_advantages takes the same mask view
  std::vector<float> rew(6, 0.5f), adv(6, 777.f);
  const kd::status st = kd::pg_advantages(rew.data(), kd::mask_view(mask.data(), 6), 2, 3, kd::pg_options{}, adv.data());
  CHECK(st.code == kd::errc::invalid_argument);
  CHECK(std::string(st.argument) == "mask");
  for (float a : adv) CHECK(a == 777.f);
  // +-inf and nonzero finite floats are valid, 0 and -0 padding (unchanged)
  mask[4] = INFINITY;
  s.mask = kd::mask_view(mask.data(), 6);
  CHECK(run(c, s, kd::pg_options{}).st.ok());
}

TEST_CASE("pg: without a mask, a fully masked student row (all -inf) is a padded position", "[pg][mask][regression]") {
  call c = small_call();
  for (std::int64_t j = 0; j < c.V; ++j) c.zs[4 * c.V + j] = kNinf;  // row 4 = sequence 1, t = 1
  c.tok[4] = -100;  // a padded position's token is not read either
  std::vector<std::uint8_t> explicit_mask = {1, 1, 1, 1, 0, 1};
  kd::pg_sequences with = c.seq(), without = c.seq();
  with.mask = kd::mask_view(explicit_mask.data(), 6);
  for (const kd::pg_options& o : {kd::pg_options::paper(), kd::pg_options::reference_code(), kd::pg_options::exact()}) {
    for (bool fast : {false, true}) {
      const result a = fast ? run<float>(c, without, o, kd::pg_fast_backend{}) : run(c, without, o);
      const result b = fast ? run<float>(c, with, o, kd::pg_fast_backend{}) : run(c, with, o);
      INFO(a.st.to_string());
      REQUIRE(a.st.ok());
      REQUIRE(b.st.ok());
      CHECK(a.d.valid_tokens == 5);
      CHECK(a.grad == b.grad);  // the same bits as an explicit mask marking the row as padding
      CHECK(a.adv == b.adv);
      CHECK(a.rewards == b.rewards);
      CHECK(a.d.loss == b.d.loss);
      for (std::int64_t j = 0; j < c.V; ++j) CHECK(a.grad[4 * c.V + j] == 0.0);
      CHECK(a.adv[4] == 0.0f);
    }
  }
  // Marked valid by an explicit mask, the same row is a value error (documented in docs/policy_gradient.md): a sampled
  // token with q = 0 has no reward, and skipping the position would shift the discount of the whole sequence.
  c.tok[4] = 0;
  std::vector<std::uint8_t> all(6, 1);
  kd::pg_sequences valid = c.seq();
  valid.mask = kd::mask_view(all.data(), 6);
  for (bool fast : {false, true}) {
    const result r = fast ? run<float>(c, valid, kd::pg_options{}, kd::pg_fast_backend{}) : run(c, valid, kd::pg_options{});
    CHECK(r.st.code == kd::errc::non_finite_input);
    CHECK(std::string(r.st.argument) == "student");
    CHECK(r.st.row == 4);
    for (double g : r.grad) REQUIRE(g == 777.0);
  }
}

TEST_CASE("pg: importance weights beyond the float range are capped in log space, never NaN/inf", "[pg][iw][regression]") {
  // Student and teacher disagree completely: |logit| / T = s / T > 40, the sampled token 0 has q ~ 1 and p ~ exp(-2 s / T).
  // With alpha = 1 (or 1 - 1e-12) the per-token weight q_old / s_t ~ exp(2 s / T) overflows float (and, as a prefix product
  // over 4 tokens, double): before the fix the gradients held inf and NaN under an ok status.
  for (double scale_over_t : {45.0, 60.0, 100.0}) {
    for (double T : {1.0, 0.1}) {
      call c;
      c.B = 1;
      c.L = 4;
      c.V = 5;
      const double s = scale_over_t * T;
      for (std::int64_t r = 0; r < c.L; ++r)
        for (std::int64_t j = 0; j < c.V; ++j) {
          c.zs.push_back(j == 0 ? s : -s);
          c.zt.push_back(j == 0 ? -s : s);
        }
      c.tok.assign(4, 0);
      for (double alpha : {1.0, 1.0 - 1e-12}) {
        for (auto form : {kd::importance_weight_form::per_token, kd::importance_weight_form::exact_product}) {
          kd::pg_options o;
          o.temperature = T;
          o.alpha = alpha;
          o.iw_form = form;
          INFO("s/T " << scale_over_t << " T " << T << " alpha " << alpha << " exact " << (form == kd::importance_weight_form::exact_product));
          const result ref = run(c, c.seq(), o);
          const result fast = run<float>(c, c.seq(), o, kd::pg_fast_backend{});
          REQUIRE(ref.st.ok());
          REQUIRE(fast.st.ok());
          double gmax = 0.0, worst = 0.0;
          for (std::size_t i = 0; i < ref.grad.size(); ++i) {
            REQUIRE(std::isfinite(ref.grad[i]));
            REQUIRE(std::isfinite(fast.grad[i]));
            gmax = std::max(gmax, std::abs(ref.grad[i]));
            worst = std::max(worst, std::abs(fast.grad[i] - ref.grad[i]));
          }
          CHECK(worst <= 1e-5 * gmax + 1e-35);  // + 1e-35: entries below float's normal range (1.2e-38) are subnormal
          CHECK(std::isfinite(ref.d.loss));
          CHECK(fast.d.loss == Approx(ref.d.loss).epsilon(1e-5));
          for (std::int64_t t = 0; t < c.L; ++t) {
            REQUIRE(std::isfinite(ref.adv[t]));
            REQUIRE(std::isfinite(fast.adv[t]));
            // log w_t = log q_old - log s_t ~ 2 s / T > log(1e10) = 23.03 at every token: the weight is the cap exactly,
            // both per token and as the (capped) prefix product.
            CHECK(ref.iw[t] == static_cast<float>(kd::pg_max_importance_weight));
            CHECK(fast.iw[t] == ref.iw[t]);
          }
          CHECK(ref.d.iw_clip_fraction == 1.0);
          CHECK(ref.d.iw_max == kd::pg_max_importance_weight);
        }
      }
    }
  }
}

TEST_CASE("pg: the log-space cap keeps each reward weighted by its own capped prefix weight (exact form)",
          "[pg][iw][regression]") {
  // Hand computation, L = 3, one sequence, per-token log ratios l = [30, -50, 10] (as log q_old - log s),
  // cap C = log(1e10) = 23.0259: prefix sums [30, -20, -10] clamp to [C, -20, -10], so W = [1e10, e^-20, e^-10] and the
  // ratios carried inside the advantage are W_t / W_{t-1} = [-, e^(-20 - C), e^(-10 + 20)] = [-, e^-43.03, e^10].
  // With rewards r = [r0, r1, r2], gamma = 1, no normalization, excluding the current reward:
  // A_0 = G_1 = e^(-20 - C) (r1 + e^10 r2), so W_0 A_0 = e^-20 r1 + e^-10 r2 = W_1 r1 + W_2 r2 (each reward with its own W).
  const double lr[3] = {30.0, -50.0, 10.0};
  const double rew[3] = {0.25, -0.5, 0.75};
  const bool valid[3] = {true, true, true};
  double sw[3], w[3], carried[3];
  bool clipped[3];
  kd::detail::pg::capped_weights(lr, valid, 3, true, sw, w, carried, clipped);
  const double C = std::log(kd::pg_max_importance_weight);
  CHECK(w[0] == Approx(1e10).epsilon(1e-15));
  CHECK(w[1] == Approx(std::exp(-20.0)).epsilon(1e-15));
  CHECK(w[2] == Approx(std::exp(-10.0)).epsilon(1e-15));
  CHECK(sw[0] == 1.0);
  CHECK(sw[1] == w[0]);
  CHECK(sw[2] == w[1]);
  CHECK(clipped[0]);
  CHECK(!clipped[1]);
  CHECK(!clipped[2]);
  CHECK(carried[1] == Approx(-20.0 - C).epsilon(1e-15));
  CHECK(carried[2] == Approx(10.0).epsilon(1e-15));
  double adv[3];
  kd::detail::pg::sequence_returns(rew, valid, carried, 3, 1.0, kd::length_norm::none, false, true, adv);
  CHECK(w[0] * adv[0] == Approx(w[1] * rew[1] + w[2] * rew[2]).epsilon(1e-12));
  CHECK(w[1] * adv[1] == Approx(w[2] * rew[2]).epsilon(1e-12));
  CHECK(adv[2] == 0.0);
}

namespace {
std::vector<double> advantages(const std::vector<double>& r, const std::vector<bool>& valid, double gamma,
                               kd::length_norm norm, kd::current_reward cur) {
  kd::pg_options o;
  o.gamma = gamma;
  o.length_norm = norm;
  o.current_reward = cur;
  std::unique_ptr<bool[]> v(new bool[r.size()]);
  for (std::size_t i = 0; i < r.size(); ++i) v[i] = valid[i];
  std::vector<double> a(r.size(), -1.0);
  kd::detail::pg::sequence_returns(r.data(), v.get(), nullptr, static_cast<std::int64_t>(r.size()), gamma, norm,
                                   o.includes_current_reward(), false, a.data());
  return a;
}
}  // namespace

TEST_CASE("pg returns: paper Eq. 6, LMOps reference and TRL discounted length normalization, by hand", "[pg][returns]") {
  // One padded sequence, L = 5: rewards [1, 2, X, 3, X] with mask [1, 1, 0, 1, 0] (a hole and right padding; X is never
  // read). The valid rewards in relative order are r0 = 1, r1 = 2, r2 = 3 (positions 0, 1, 3). gamma = 0.5.
  const double X = 1e30;
  const std::vector<double> r = {1, 2, X, 3, X};
  const std::vector<bool> m = {true, true, false, true, false};
  using kd::current_reward;
  using kd::length_norm;
  // paper (Eq. 6, R_{t+1} = sum_{t'>t} gamma^(t'-t-1) r_t' divided by the number of summed rewards):
  //   A0 = (r1 + 0.5 r2) / 2 = (2 + 1.5) / 2 = 1.75;  A1 = r2 / 1 = 3;  A(pos 3) = 0 (nothing after it).
  auto a = advantages(r, m, 0.5, length_norm::paper, current_reward::by_variant);
  CHECK(a == std::vector<double>{1.75, 3.0, 0.0, 0.0, 0.0});
  // reference (LMOps: R_t = r_t + gamma R_{t+1}, / n_t = valid tokens from t on, inclusive):
  //   R0 = 1 + 0.5 (2 + 0.5 * 3) = 2.75, n = 3 -> 0.91666...;  R1 = 2 + 0.5 * 3 = 3.5, n = 2 -> 1.75;  R(pos 3) = 3, n = 1.
  a = advantages(r, m, 0.5, length_norm::reference, current_reward::by_variant);
  CHECK(a[0] == Approx(2.75 / 3.0).epsilon(1e-15));
  CHECK(a[1] == 1.75);
  CHECK(a[3] == 3.0);
  CHECK((a[2] == 0.0 && a[4] == 0.0));
  // discounted (TRL: the same R_t divided by sum_{k=0}^{n_t-1} gamma^k over the remaining valid positions):
  //   D0 = 1 + 0.5 + 0.25 = 1.75 -> 2.75 / 1.75 = 1.5714285714285714;  D1 = 1 + 0.5 = 1.5 -> 3.5 / 1.5 = 2.3333...;
  //   D(pos 3) = 1 -> 3.
  a = advantages(r, m, 0.5, length_norm::discounted, current_reward::by_variant);
  CHECK(a[0] == Approx(2.75 / 1.75).epsilon(1e-15));
  CHECK(a[1] == Approx(3.5 / 1.5).epsilon(1e-15));
  CHECK(a[3] == 3.0);
  CHECK((a[2] == 0.0 && a[4] == 0.0));
  // discounted with the current reward excluded: R_{t+1} / sum_{k=0}^{n_after-1} gamma^k:
  //   A0 = (2 + 0.5 * 3) / (1 + 0.5) = 2.3333...;  A1 = 3 / 1 = 3;  A(pos 3) = 0.
  a = advantages(r, m, 0.5, length_norm::discounted, current_reward::exclude);
  CHECK(a[0] == Approx(3.5 / 1.5).epsilon(1e-15));
  CHECK(a[1] == 3.0);
  CHECK(a[3] == 0.0);
  // TRL's default (gamma = 0, A_t = r_t): discounted count 1 = 0^0, so A = the rewards; also with no normalization.
  for (auto norm : {length_norm::discounted, length_norm::none}) {
    a = advantages(r, m, 0.0, norm, current_reward::include);
    CHECK(a == std::vector<double>{1.0, 2.0, 0.0, 3.0, 0.0});
  }
  // gamma = 1: the discounted count is n_t, so discounted == reference.
  CHECK(advantages(r, m, 1.0, length_norm::discounted, current_reward::by_variant) ==
        advantages(r, m, 1.0, length_norm::reference, current_reward::by_variant));
  CHECK(kd::pg_options{}.length_norm == length_norm::paper);
  CHECK(std::string(kd::length_norm_name(length_norm::discounted)) == "discounted");
}
