// Unit tests of the MiniLLM policy-gradient pieces: discounting and length normalization (pitfall 19), masking and padding
// (pitfall 20), whitening, PPO and importance-weight clipping, argument and value errors, finite-difference checks of the
// whole written gradient (every piece) against a double surrogate, fast vs reference, chunked vs unchunked, determinism,
// in-place gradients, the LM term and teacher-mixed sampling.
#include <catch2/catch.hpp>

#include <kd/counter_rng.hpp>
#include <kd/lm_loss.hpp>
#include <kd/policy_gradient.hpp>
#include <kd/teacher_mixed.hpp>

#include "frozen_oracle.hpp"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "test_util.hpp"

namespace {

using kd::detail::pg::sequence_returns;

std::vector<double> returns(const std::vector<double>& r, const std::vector<bool>& valid, double gamma, kd::length_norm n,
                            bool incl) {
  std::unique_ptr<bool[]> v(new bool[r.size()]);
  for (std::size_t i = 0; i < r.size(); ++i) v[i] = valid[i];
  std::vector<double> a(r.size(), -1.0);
  sequence_returns(r.data(), v.get(), nullptr, static_cast<std::int64_t>(r.size()), gamma, n, incl, false, a.data());
  return a;
}

// A random batch: B sequences of L positions over V tokens, tokens drawn from the student (so rewards are typical).
struct batch {
  std::int64_t B, L, V;
  std::vector<double> zs, zt;
  std::vector<std::int64_t> tok;
  std::vector<std::uint8_t> mask;
  std::vector<float> old;

  batch(std::int64_t b, std::int64_t l, std::int64_t v, std::uint32_t seed, double masked_fraction = 0.0)
      : B(b), L(l), V(v), tok(b * l), mask(b * l, 1), old(b * l) {
    zs = kdt::random_logits<double>(B * L, V, seed, 2.0, masked_fraction);
    zt = kdt::random_logits<double>(B * L, V, seed + 1, 2.0, 0.0);
    std::mt19937 g(seed + 2);
    for (std::int64_t r = 0; r < B * L; ++r) {
      std::vector<double> w(V);
      for (std::int64_t j = 0; j < V; ++j) w[j] = std::exp(zs[r * V + j]);
      tok[r] = std::discrete_distribution<std::int64_t>(w.begin(), w.end())(g);
    }
    // right padding: sequence b has L - b % L valid positions (at least 1)
    for (std::int64_t bb = 0; bb < B; ++bb)
      for (std::int64_t t = 0; t < L; ++t) mask[bb * L + t] = t < std::max<std::int64_t>(1, L - bb % L) ? 1 : 0;
    std::normal_distribution<double> nd(0.0, 0.3);
    for (std::int64_t r = 0; r < B * L; ++r) old[r] = static_cast<float>(log_q(r, 1.0) + nd(g));
    for (auto& o : old) o = std::min(o, 0.0f);
  }
  double log_q(std::int64_t r, double T) const {
    std::vector<double> l(V);
    const double lse = kd::detail::ref::load_log_probs(&zs[r * V], V, 1.0 / T, l.data());
    (void)lse;
    return l[tok[r]];
  }
  kd::pg_sequences seq(bool with_old) const {
    kd::pg_sequences s;
    s.batch = B;
    s.time = L;
    s.tokens = kd::label_view(tok.data(), B * L);
    s.mask = kd::mask_view(mask.data(), B * L);
    if (with_old) s.old_log_probs = old.data();
    return s;
  }
};

struct run_result {
  kd::status st;
  std::vector<double> grad;
  std::vector<float> rewards, adv, iw, lq;
  kd::pg_diagnostics d;
};

template <class Z = double, class Backend = kd::reference_backend>
run_result run(const batch& bt, const kd::pg_options& o, bool with_old, Backend be = {},
               const kd::pg_sequences* seq_override = nullptr, const std::vector<double>* zs_override = nullptr) {
  run_result rr;
  const std::int64_t R = bt.B * bt.L;
  const auto& zsd = zs_override ? *zs_override : bt.zs;
  std::vector<Z> zs(zsd.begin(), zsd.end()), zt(bt.zt.begin(), bt.zt.end()), g(R * bt.V, Z(777));
  rr.rewards.assign(R, 777.f);
  rr.adv.assign(R, 777.f);
  rr.iw.assign(R, 777.f);
  rr.lq.assign(R, 777.f);
  kd::pg_outputs<Z> out;
  out.grad_student = kd::mut_rows<Z>(g.data(), R, bt.V);
  out.rewards = rr.rewards.data();
  out.advantages = rr.adv.data();
  out.importance_weights = rr.iw.data();
  out.log_probs = rr.lq.data();
  const kd::pg_sequences seq = seq_override ? *seq_override : bt.seq(with_old);
  rr.st = kd::policy_gradient(kd::student_logits(zs.data(), R, bt.V), kd::teacher_logits(zt.data(), R, bt.V), seq, o, out,
                              rr.d, be);
  rr.grad.assign(g.begin(), g.end());
  return rr;
}

// The surrogate whose gradient kd writes, recomputed in double from the logits with the advantages, importance weights and
// old log-probs held constant (as the estimator treats them): single-step sum_t sw_t KL_t + PPO surrogate + LM term.
double surrogate(const batch& bt, const std::vector<double>& zs, const kd::pg_options& o, bool with_old,
                 const std::vector<float>& adv, const std::vector<float>& iw, const std::vector<double>& sw,
                 const std::vector<std::int64_t>* lm) {
  const std::int64_t R = bt.B * bt.L, V = bt.V;
  std::vector<double> lq(V), lp(V);
  double single = 0.0, pg = 0.0, lmsum = 0.0;
  std::int64_t n = 0, nlm = 0;
  for (std::int64_t r = 0; r < R; ++r) {
    kd::detail::ref::load_log_probs(&zs[r * V], V, 1.0 / o.temperature, lq.data());
    if (lm && (*lm)[r] != o.ignore_index) {
      lmsum += -lq[(*lm)[r]];
      ++nlm;
    }
    if (!bt.mask[r]) continue;
    ++n;
    kd::detail::ref::load_log_probs(&bt.zt[r * V], V, 1.0 / o.temperature, lp.data());
    if (o.single_step) single += sw[r] * kdtest::frozen::kl(lq.data(), lp.data(), V, nullptr, nullptr);
    const double lq_old = with_old ? bt.old[r] : bt.log_q(r, o.temperature);  // constant
    const double rho = std::exp(lq[bt.tok[r]] - lq_old) * iw[r];
    pg += kd::detail::pg::ppo(adv[r], rho, o.clip_range).value;
  }
  double scale = 1.0, scale_lm = 1.0;
  if (o.reduction == kd::reduction::mean) {
    scale = 1.0 / n;
    scale_lm = nlm ? 1.0 / nlm : 0.0;
  } else if (o.reduction == kd::reduction::normalizer) {
    scale = scale_lm = 1.0 / o.normalizer;
  }
  return (single + pg) * scale + o.lm_weight * lmsum * scale_lm;
}

}  // namespace

TEST_CASE("pg returns: discounting over relative positions and the three length normalizations", "[pg][returns]") {
  const std::vector<double> r = {1, 2, 3, 4};
  const std::vector<bool> all(4, true);
  // R_{t+1} with gamma = 0.5: [2 + 1.5 + 1, 3 + 2, 4, 0]
  auto a = returns(r, all, 0.5, kd::length_norm::none, false);
  CHECK(a == std::vector<double>{4.5, 5.0, 4.0, 0.0});
  a = returns(r, all, 0.5, kd::length_norm::paper, false);  // mean of the summed future rewards
  CHECK(a == std::vector<double>{1.5, 2.5, 4.0, 0.0});
  // reference code: R_t = r_t + gamma R_{t+1} = [3.25, 4.5, 5, 4], / n_t = [4, 3, 2, 1]
  a = returns(r, all, 0.5, kd::length_norm::reference, true);
  CHECK(a == std::vector<double>{0.8125, 1.5, 2.5, 4.0});
  a = returns(r, all, 0.5, kd::length_norm::none, true);
  CHECK(a == std::vector<double>{3.25, 4.5, 5.0, 4.0});
  // LMOps _get_advantages_and_returns on rewards [1, 2, 3, 0] (last position padded, its reward 0), mask [1, 1, 1, 0],
  // gamma 0.95: lens = [3, 2, 1, 1], rw = [1 + 0.95 (2 + 0.95 * 3), 2 + 0.95 * 3, 3, 0] / lens.
  a = returns({1, 2, 3, 123.0}, {true, true, true, false}, 0.95, kd::length_norm::reference, true);
  CHECK(a[0] == Approx((1 + 0.95 * (2 + 0.95 * 3)) / 3).epsilon(1e-15));
  CHECK(a[1] == Approx((2 + 0.95 * 3) / 2).epsilon(1e-15));
  CHECK(a[2] == Approx(3.0).epsilon(1e-15));
  CHECK(a[3] == 0.0);
}

TEST_CASE("pg returns: padding never leaks, left/right padding and holes give the same advantages", "[pg][returns]") {
  const double big = 1e30;  // a padded reward, never read
  const auto right = returns({1, 2, 3, big, big}, {true, true, true, false, false}, 0.9, kd::length_norm::reference, true);
  const auto left = returns({big, big, 1, 2, 3}, {false, false, true, true, true}, 0.9, kd::length_norm::reference, true);
  const auto hole = returns({1, big, 2, big, 3}, {true, false, true, false, true}, 0.9, kd::length_norm::reference, true);
  CHECK(right[0] == left[2]);
  CHECK(right[1] == left[3]);
  CHECK(right[2] == left[4]);
  CHECK(right[0] == hole[0]);
  CHECK(right[1] == hole[2]);
  CHECK(right[2] == hole[4]);
  CHECK(left[0] == 0.0);
  CHECK(hole[1] == 0.0);
  CHECK(right[4] == 0.0);
}

TEST_CASE("pg returns: no gamma^t underflow into 0/0 on long sequences (pitfall 19)", "[pg][returns]") {
  const std::int64_t n = 5000;
  std::vector<double> r(n);
  for (std::int64_t t = 0; t < n; ++t) r[t] = std::sin(0.1 * t);
  const std::vector<bool> all(n, true);
  for (double gamma : {0.5, 0.9, 0.999}) {
    const auto a = returns(r, all, gamma, kd::length_norm::paper, false);
    for (std::int64_t t : {0LL, 100LL, 2500LL, 4000LL, 4998LL}) {
      // direct relative-position sum, truncated where gamma^k < 1e-300
      double s = 0.0, gk = 1.0;
      std::int64_t cnt = 0;
      for (std::int64_t u = t + 1; u < n; ++u, ++cnt) {
        if (gk > 1e-300) s += gk * r[u];
        gk *= gamma;
      }
      INFO("gamma " << gamma << " t " << t);
      REQUIRE(std::isfinite(a[t]));
      CHECK(a[t] == Approx(s / cnt).epsilon(1e-9).margin(1e-15));
    }
    CHECK(a[n - 1] == 0.0);
  }
}

TEST_CASE("pg: padded positions are never read (garbage logits, tokens, old log-probs) - pitfall 20", "[pg][mask]") {
  batch bt(3, 6, 37, 5);
  kd::pg_options o = kd::pg_options::reference_code();
  const auto clean = run(bt, o, true);
  REQUIRE(clean.st.ok());
  batch dirty = bt;
  for (std::int64_t r = 0; r < bt.B * bt.L; ++r)
    if (!bt.mask[r]) {
      for (std::int64_t j = 0; j < bt.V; ++j) {
        dirty.zs[r * bt.V + j] = j % 2 ? std::nan("") : -1e10;
        dirty.zt[r * bt.V + j] = j % 3 ? INFINITY : std::nan("");
      }
      dirty.tok[r] = r % 2 ? -100 : 999999;
      dirty.old[r] = r % 2 ? -1e10f : std::nanf("");
    }
  for (bool fast : {false, true}) {
    const auto d = fast ? run<float>(dirty, o, true, kd::pg_fast_backend{}) : run(dirty, o, true);
    REQUIRE(d.st.ok());
    const auto c = fast ? run<float>(bt, o, true, kd::pg_fast_backend{}) : clean;
    CHECK(d.grad == c.grad);
    CHECK(d.adv == c.adv);
    CHECK(d.rewards == c.rewards);
    CHECK(d.iw == c.iw);
    CHECK(d.d.loss == c.d.loss);
    for (std::int64_t r = 0; r < bt.B * bt.L; ++r)
      if (!bt.mask[r]) {
        CHECK(d.adv[r] == 0.0f);
        CHECK(d.rewards[r] == 0.0f);
        for (std::int64_t j = 0; j < bt.V; ++j) REQUIRE(d.grad[r * bt.V + j] == 0.0);
      }
  }
}

TEST_CASE("pg: the fused call's advantages are the returns of its rewards", "[pg][returns]") {
  batch bt(4, 7, 29, 9);
  for (auto norm : {kd::length_norm::none, kd::length_norm::paper, kd::length_norm::reference}) {
    kd::pg_options o;
    o.length_norm = norm;
    o.gamma = 0.9;
    o.reward_scale = 2.0;
    const auto res = run(bt, o, false);
    REQUIRE(res.st.ok());
    for (std::int64_t b = 0; b < bt.B; ++b) {
      std::vector<double> r(bt.L);
      std::vector<bool> v(bt.L);
      for (std::int64_t t = 0; t < bt.L; ++t) {
        r[t] = res.rewards[b * bt.L + t];
        v[t] = bt.mask[b * bt.L + t];
      }
      const auto a = returns(r, v, 0.9, norm, o.includes_current_reward());
      for (std::int64_t t = 0; t < bt.L; ++t) CHECK(res.adv[b * bt.L + t] == Approx(a[t]).epsilon(1e-6).margin(1e-6));
    }
    // rewards are (log p(y) - log q(y)) / reward_scale
    for (std::int64_t r = 0; r < bt.B * bt.L; ++r) {
      if (!bt.mask[r]) continue;
      std::vector<double> lp(bt.V);
      kd::detail::ref::load_log_probs(&bt.zt[r * bt.V], bt.V, 1.0, lp.data());
      CHECK(res.rewards[r] == Approx((lp[bt.tok[r]] - bt.log_q(r, 1.0)) / 2.0).epsilon(1e-6));
      CHECK(res.lq[r] == Approx(bt.log_q(r, 1.0)).epsilon(1e-6));
    }
  }
}

TEST_CASE("pg: whitening over valid positions only", "[pg][whiten]") {
  batch bt(5, 6, 23, 13);
  kd::pg_options o = kd::pg_options::reference_code();
  const auto res = run(bt, o, false);
  REQUIRE(res.st.ok());
  double s = 0.0, ss = 0.0;
  std::int64_t n = 0;
  for (std::int64_t r = 0; r < bt.B * bt.L; ++r) {
    if (!bt.mask[r]) {
      CHECK(res.adv[r] == 0.0f);
      continue;
    }
    s += res.adv[r];
    ss += res.adv[r] * res.adv[r];
    ++n;
  }
  const double mean = s / n, var = (ss - n * mean * mean) / (n - 1);
  CHECK(std::abs(mean) < 1e-6);
  CHECK(var == Approx(1.0).epsilon(1e-5));
  // A single valid position: x - mean = 0, no 0/0.
  std::vector<double> x = {3.0, 7.0};
  bool v[2] = {false, true};
  kd::detail::pg::whiten(x.data(), v, 2);
  CHECK(x[0] == 0.0);
  CHECK(x[1] == 0.0);
}

TEST_CASE("pg: PPO clipping zeroes exactly the clipped long-term terms", "[pg][clip]") {
  using kd::detail::pg::ppo;
  // A > 0: clipped iff rho > 1 + eps; A < 0: clipped iff rho < 1 - eps.
  CHECK(ppo(1.0, 1.5, 0.2).clipped);
  CHECK(ppo(1.0, 1.5, 0.2).dlogq == 0.0);
  CHECK(ppo(1.0, 1.5, 0.2).value == Approx(-1.2));
  CHECK_FALSE(ppo(1.0, 0.5, 0.2).clipped);
  CHECK(ppo(1.0, 0.5, 0.2).dlogq == -0.5);
  CHECK_FALSE(ppo(-1.0, 1.5, 0.2).clipped);
  CHECK(ppo(-1.0, 1.5, 0.2).dlogq == 1.5);
  CHECK(ppo(-1.0, 0.5, 0.2).clipped);
  CHECK(ppo(-1.0, 0.5, 0.2).value == Approx(0.8));
  CHECK_FALSE(ppo(2.0, 1.1, 0.2).clipped);  // inside the range: unclipped
  CHECK_FALSE(ppo(2.0, 1.5, 0.0).clipped);  // eps = 0: off

  // Fused: every position's ratio is 1.5 (old = log q - log 1.5), so positions with A > 0 are clipped.
  batch bt(3, 5, 17, 21);
  for (std::int64_t r = 0; r < bt.B * bt.L; ++r) bt.old[r] = static_cast<float>(bt.log_q(r, 1.0) - std::log(1.5));
  kd::pg_options o;
  o.clip_range = 0.2;
  o.single_step = false;
  o.length_norm = kd::length_norm::none;
  const auto res = run(bt, o, true);
  REQUIRE(res.st.ok());
  std::int64_t n = 0, clipped = 0;
  for (std::int64_t r = 0; r < bt.B * bt.L; ++r) {
    if (!bt.mask[r]) continue;
    ++n;
    double amax = 0.0;
    for (std::int64_t j = 0; j < bt.V; ++j) amax = std::max(amax, std::abs(res.grad[r * bt.V + j]));
    if (res.adv[r] > 0) {
      ++clipped;
      CHECK(amax == 0.0);
    } else if (res.adv[r] < 0) {
      CHECK(amax > 0.0);
    }
  }
  CHECK(res.d.clip_fraction == Approx(double(clipped) / n));
  CHECK(res.d.ratio_mean == Approx(1.5).epsilon(1e-6));
}

TEST_CASE("pg: importance-weight clipping", "[pg][clip]") {
  batch bt(2, 5, 11, 31);
  kd::pg_options o;
  o.alpha = 1.0;  // sampled from the teacher: weights q/p vary widely
  o.iw_form = kd::importance_weight_form::exact_product;
  const auto free = run(bt, o, false);
  o.iw_clip = 1.5;
  const auto clip = run(bt, o, false);
  REQUIRE(free.st.ok());
  REQUIRE(clip.st.ok());
  std::int64_t n = 0, nc = 0;
  for (std::int64_t r = 0; r < bt.B * bt.L; ++r) {
    if (!bt.mask[r]) continue;
    ++n;
    CHECK(clip.iw[r] == std::min(free.iw[r], 1.5f));
    if (free.iw[r] > 1.5f) ++nc;
  }
  CHECK(nc > 0);
  CHECK(clip.d.iw_clip_fraction == Approx(double(nc) / n));
  CHECK(clip.d.iw_max <= 1.5);
}

TEST_CASE("pg: argument errors name the argument and leave outputs untouched", "[pg][errors]") {
  batch bt(2, 4, 9, 41);
  kd::pg_options o;
  auto expect_arg = [&](const batch& b, const kd::pg_options& oo, const char* arg, bool with_old = false) {
    const auto res = run(b, oo, with_old);
    INFO(res.st.to_string());
    CHECK(res.st.code == kd::errc::invalid_argument);
    CHECK(std::string(res.st.argument) == arg);
    for (double g : res.grad) REQUIRE(g == 777.0);
    for (float a : res.adv) REQUIRE(a == 777.0f);
  };
  {
    batch b = bt;
    b.tok[1] = 9;  // == V at a valid position
    expect_arg(b, o, "tokens");
    b.tok[1] = -1;
    expect_arg(b, o, "tokens");
  }
  {
    batch b = bt;
    b.old[0] = std::nanf("");
    expect_arg(b, o, "old_log_probs", true);
    b.old[0] = 0.5f;
    expect_arg(b, o, "old_log_probs", true);
  }
  auto bad = [&](auto f, const char* arg) {
    kd::pg_options oo;
    f(oo);
    expect_arg(bt, oo, arg);
  };
  bad([](kd::pg_options& x) { x.gamma = 1.5; }, "gamma");
  bad([](kd::pg_options& x) { x.alpha = -0.1; }, "alpha");
  bad([](kd::pg_options& x) { x.clip_range = 1.0; }, "clip_range");
  bad([](kd::pg_options& x) { x.temperature = 0.0; }, "temperature");
  bad([](kd::pg_options& x) { x.reward_scale = 0.0; }, "reward_scale");
  bad([](kd::pg_options& x) { x.iw_clip = -1.0; }, "iw_clip");
  bad([](kd::pg_options& x) { x.lm_weight = 1.0; }, "lm_labels");
  bad([](kd::pg_options& x) { x.reduction = kd::reduction::normalizer; }, "normalizer");
  // shape mismatch
  kd::pg_sequences s = bt.seq(false);
  s.time = 5;
  const auto res = run(bt, o, false, kd::reference_backend{}, &s);
  CHECK(res.st.code == kd::errc::invalid_argument);
  CHECK(std::string(res.st.argument) == "student");
}

TEST_CASE("pg: value errors are found before any output is written", "[pg][errors]") {
  for (bool fast : {false, true}) {
    batch bt(2, 4, 9, 43);
    auto check = [&](const batch& b, kd::errc code, const char* arg, std::int64_t row) {
      kd::pg_options o;
      const auto res = fast ? run<float>(b, o, false, kd::pg_fast_backend{}) : run(b, o, false);
      INFO(res.st.to_string());
      CHECK(res.st.code == code);
      CHECK(std::string(res.st.argument) == arg);
      CHECK(res.st.row == row);
      for (double g : res.grad) REQUIRE(g == 777.0);
    };
    {
      batch b = bt;
      b.zs[2 * b.V + 3] = std::nan("");
      check(b, kd::errc::non_finite_input, "student", 2);
    }
    {
      batch b = bt;
      b.zt[1 * b.V + 0] = INFINITY;
      check(b, kd::errc::non_finite_input, "teacher", 1);
    }
    {
      batch b = bt;
      b.zt[3 * b.V + b.tok[3]] = -INFINITY;  // the teacher gives the sampled token probability 0
      check(b, kd::errc::support_mismatch, "teacher", 3);
    }
    {
      batch b = bt;
      b.zs[0 * b.V + b.tok[0]] = -INFINITY;  // the student gives the sampled token probability 0
      check(b, kd::errc::support_mismatch, "tokens", 0);
    }
  }
}

TEST_CASE("pg: finite differences of the surrogate match the written gradient (every piece)", "[pg][fd]") {
  struct variant {
    const char* name;
    kd::pg_options o;
    bool with_old;
    bool lm;
  };
  std::vector<variant> vs;
  {
    kd::pg_options o = kd::pg_options::exact();
    vs.push_back({"exact (single-step + long-term)", o, false, false});
    o.single_step = false;
    vs.push_back({"long-term only", o, false, false});
    o = kd::pg_options::paper();
    o.temperature = 2.0;
    vs.push_back({"paper, T = 2, PPO with old log-probs", o, true, false});
    o = kd::pg_options::reference_code();
    o.reward_clip = 0.5;
    o.lm_weight = 0.7;
    vs.push_back({"reference code + LM term + reward clip", o, true, true});
    o = kd::pg_options::exact();
    o.alpha = 0.3;
    o.iw_clip = 2.0;
    o.reduction = kd::reduction::normalizer;
    o.normalizer = 7.0;
    vs.push_back({"teacher-mixed exact weights, iw clip, normalizer", o, false, false});
  }
  for (const auto& v : vs) {
    batch bt(2, 4, 7, 55);
    std::vector<std::int64_t> lm(bt.B * bt.L);
    for (std::size_t r = 0; r < lm.size(); ++r) lm[r] = r % 3 == 0 ? -100 : static_cast<std::int64_t>((r * 5) % bt.V);
    kd::pg_sequences seq = bt.seq(v.with_old);
    if (v.lm) seq.lm_labels = kd::label_view(lm.data(), bt.B * bt.L);
    const auto res = run(bt, v.o, v.with_old, kd::reference_backend{}, &seq);
    REQUIRE(res.st.ok());
    // Single-step weights: exact form W_{t-1} (recomputed from the per-token weights: W_{t-1} = W_t / w_t), per-token 1.
    std::vector<double> sw(bt.B * bt.L, 1.0);
    if (v.o.iw_form == kd::importance_weight_form::exact_product) {
      for (std::int64_t b = 0; b < bt.B; ++b) {
        double cum = 0.0;
        for (std::int64_t t = 0; t < bt.L; ++t) {
          const std::int64_t r = b * bt.L + t;
          if (!bt.mask[r]) continue;
          sw[r] = std::min(std::exp(cum), v.o.iw_clip > 0 ? v.o.iw_clip : INFINITY);
          std::vector<double> lq(bt.V), lp(bt.V);
          kd::detail::ref::load_log_probs(&bt.zs[r * bt.V], bt.V, 1.0 / v.o.temperature, lq.data());
          kd::detail::ref::load_log_probs(&bt.zt[r * bt.V], bt.V, 1.0 / v.o.temperature, lp.data());
          const double lqy = lq[bt.tok[r]], lpy = lp[bt.tok[r]];
          cum += lqy - std::log(v.o.alpha * std::exp(lpy) + (1 - v.o.alpha) * std::exp(lqy));
        }
      }
    }
    const auto* lmp = v.lm ? &lm : nullptr;
    const double f0 = surrogate(bt, bt.zs, v.o, v.with_old, res.adv, res.iw, sw, lmp);
    INFO(v.name);
    CHECK(res.d.loss == Approx(f0).epsilon(1e-6));
    double worst = 0.0, gmax = 0.0;
    std::vector<double> z = bt.zs;
    for (std::size_t i = 0; i < z.size(); ++i) {
      const double h = 1e-6, x0 = z[i];
      z[i] = x0 + h;
      const double fp = surrogate(bt, z, v.o, v.with_old, res.adv, res.iw, sw, lmp);
      z[i] = x0 - h;
      const double fm = surrogate(bt, z, v.o, v.with_old, res.adv, res.iw, sw, lmp);
      z[i] = x0;
      worst = std::max(worst, std::abs((fp - fm) / (2 * h) - res.grad[i]));
      gmax = std::max(gmax, std::abs(res.grad[i]));
    }
    std::printf("[pg FD] %-52s worst |FD - grad| = %.2e (max |grad| %.3f)\n", v.name, worst, gmax);
    CHECK(worst < 2e-7 * std::max(1.0, gmax));
    CHECK(gmax > 1e-3);
  }
}

TEST_CASE("pg: fast path matches the reference oracle", "[pg][fast]") {
  struct variant {
    kd::pg_options o;
    bool with_old;
  };
  std::vector<variant> vs = {{kd::pg_options::exact(), false},
                             {kd::pg_options::paper(), true},
                             {kd::pg_options::reference_code(), true}};
  vs[1].o.temperature = 0.7;
  for (std::int64_t V : {1000, 37, 4099}) {
    for (double mf : {0.0, 0.2}) {
      batch bt(3, 5, V, 77 + static_cast<std::uint32_t>(V), mf);
      for (const auto& v : vs) {
        const auto ref = run(bt, v.o, v.with_old);
        const auto fast = run<float>(bt, v.o, v.with_old, kd::pg_fast_backend{});
        REQUIRE(ref.st.ok());
        REQUIRE(fast.st.ok());
        double gmax = 0.0;
        for (double g : ref.grad) gmax = std::max(gmax, std::abs(g));
        double worst = 0.0;
        for (std::size_t i = 0; i < ref.grad.size(); ++i) {
          REQUIRE(std::isfinite(fast.grad[i]));
          worst = std::max(worst, std::abs(fast.grad[i] - ref.grad[i]));
        }
        INFO("V " << V << " masked " << mf);
        CHECK(worst < 2e-5 * gmax);
        CHECK(fast.d.loss == Approx(ref.d.loss).epsilon(1e-5).margin(1e-7));
        CHECK(fast.d.token_reverse_kl == Approx(ref.d.token_reverse_kl).epsilon(1e-5));
        CHECK(fast.d.k3 == Approx(ref.d.k3).epsilon(1e-4));
        for (std::size_t r = 0; r < ref.adv.size(); ++r) CHECK(fast.adv[r] == Approx(ref.adv[r]).epsilon(1e-4).margin(1e-5));
      }
    }
  }
  // bf16 inputs, float gradient; and masked (-inf) entries get exactly 0 gradient.
  batch bt(2, 3, 300, 99, 0.3);
  const auto ref = run(bt, kd::pg_options::paper(), false);
  const auto f16 = run<kd::bfloat16>(bt, kd::pg_options::paper(), false, kd::pg_fast_backend{});
  REQUIRE(f16.st.ok());
  for (std::size_t i = 0; i < bt.zs.size(); ++i)
    if (std::isinf(bt.zs[i]) && bt.mask[i / bt.V]) {
      CHECK(ref.grad[i] == 0.0);
      CHECK(f16.grad[i] == 0.0);
    }
}

TEST_CASE("pg: chunked and unchunked runs agree; repeated runs are bitwise identical", "[pg][determinism]") {
  batch bt(4, 6, 101, 123);
  kd::pg_options o = kd::pg_options::paper();
  std::int64_t n = 0;
  for (auto m : bt.mask) n += m;
  o.reduction = kd::reduction::normalizer;
  o.normalizer = static_cast<double>(n);
  const auto whole = run<float>(bt, o, true, kd::pg_fast_backend{});
  const auto again = run<float>(bt, o, true, kd::pg_fast_backend{});
  REQUIRE(whole.st.ok());
  CHECK(std::memcmp(whole.grad.data(), again.grad.data(), whole.grad.size() * sizeof(double)) == 0);
  double loss_sum = 0.0;
  for (std::int64_t b = 0; b < bt.B; ++b) {  // one sequence per call
    batch one(1, bt.L, bt.V, 1);
    one.zs.assign(bt.zs.begin() + b * bt.L * bt.V, bt.zs.begin() + (b + 1) * bt.L * bt.V);
    one.zt.assign(bt.zt.begin() + b * bt.L * bt.V, bt.zt.begin() + (b + 1) * bt.L * bt.V);
    one.tok.assign(bt.tok.begin() + b * bt.L, bt.tok.begin() + (b + 1) * bt.L);
    one.mask.assign(bt.mask.begin() + b * bt.L, bt.mask.begin() + (b + 1) * bt.L);
    one.old.assign(bt.old.begin() + b * bt.L, bt.old.begin() + (b + 1) * bt.L);
    const auto part = run<float>(one, o, true, kd::pg_fast_backend{});
    REQUIRE(part.st.ok());
    loss_sum += part.d.loss;
    for (std::int64_t i = 0; i < bt.L * bt.V; ++i) REQUIRE(part.grad[i] == whole.grad[b * bt.L * bt.V + i]);
  }
  CHECK(loss_sum == Approx(whole.d.loss).epsilon(1e-12));
}

TEST_CASE("pg: in-place gradient over the student buffer", "[pg][inplace]") {
  batch bt(2, 5, 64, 7);
  const kd::pg_options o = kd::pg_options::reference_code();
  const auto ref = run<float>(bt, o, true, kd::pg_fast_backend{});
  for (bool fast : {false, true}) {
    std::vector<float> z(bt.zs.begin(), bt.zs.end()), zt(bt.zt.begin(), bt.zt.end());
    const std::int64_t R = bt.B * bt.L;
    kd::pg_outputs<float> out;
    out.grad_student = kd::mut_rows<float>(z.data(), R, bt.V);
    kd::pg_diagnostics d;
    kd::status st = fast ? kd::policy_gradient(kd::student_logits(z.data(), R, bt.V), kd::teacher_logits(zt.data(), R, bt.V),
                                               bt.seq(true), o, out, d, kd::pg_fast_backend{})
                         : kd::policy_gradient(kd::student_logits(z.data(), R, bt.V), kd::teacher_logits(zt.data(), R, bt.V),
                                               bt.seq(true), o, out, d, kd::reference_backend{});
    REQUIRE(st.ok());
    for (std::size_t i = 0; i < z.size(); ++i) REQUIRE(z[i] == Approx(ref.grad[i]).margin(1e-6));
  }
}

TEST_CASE("lm_loss: value and gradient (cross-entropy, ignore_index, token mean)", "[pg][lm]") {
  // Two rows, one ignored: loss = -log softmax([1, 2, 3])[2] = 0.40760596444438, gradient (q - onehot) / 1.
  const std::vector<float> z = {1, 2, 3, 5, 5, 5};
  const std::vector<std::int64_t> lab = {2, -100};
  for (bool fast : {false, true}) {
    std::vector<float> g(6, 9.0f);
    kd::loss_result res;
    kd::distill_options o;
    const auto st = fast ? kd::lm_loss(kd::student_logits(z.data(), 2, 3), kd::label_view(lab.data(), 2), o, res,
                                       kd::mut_rows<float>(g.data(), 2, 3), kd::pg_fast_backend{})
                         : kd::lm_loss(kd::student_logits(z.data(), 2, 3), kd::label_view(lab.data(), 2), o, res,
                                       kd::mut_rows<float>(g.data(), 2, 3), kd::reference_backend{});
    REQUIRE(st.ok());
    CHECK(res.loss == Approx(0.40760596444438).epsilon(1e-6));
    CHECK(res.valid_rows == 1);
    CHECK(g[0] == Approx(0.0900305732).epsilon(1e-5));
    CHECK(g[1] == Approx(0.2447284711).epsilon(1e-5));
    CHECK(g[2] == Approx(0.6652409558 - 1.0).epsilon(1e-5));
    CHECK(g[3] == 0.0f);
    CHECK(g[5] == 0.0f);
  }
  // A label outside [0, V) is an argument error, outputs untouched.
  const std::vector<std::int64_t> badlab = {3, 0};
  std::vector<float> g(6, 9.0f);
  kd::loss_result res;
  const auto st = kd::lm_loss(kd::student_logits(z.data(), 2, 3), kd::label_view(badlab.data(), 2), kd::distill_options{},
                              res, kd::mut_rows<float>(g.data(), 2, 3));
  CHECK(st.code == kd::errc::invalid_argument);
  CHECK(std::string(st.argument) == "labels");
  CHECK(g[0] == 9.0f);
}

TEST_CASE("teacher-mixed sampling: inverse CDF of alpha p + (1 - alpha) q, deterministic", "[pg][sampling]") {
  // student [1, 2, 3], teacher [3, 2, 1]: q = [0.0900, 0.2447, 0.6652], p reversed.
  const std::vector<double> zs = {1, 2, 3}, zt = {3, 2, 1};
  const double q[3] = {0.09003057317038046, 0.24472847105479767, 0.6652409557748219};
  for (double alpha : {0.0, 0.2, 1.0}) {
    double s[3], c[3], acc = 0.0;
    for (int j = 0; j < 3; ++j) {
      s[j] = alpha * q[2 - j] + (1 - alpha) * q[j];
      acc += s[j];
      c[j] = acc;
    }
    // uniforms just below and just above each cumulative boundary
    for (int j = 0; j < 3; ++j) {
      for (double u : {c[j] - 1e-9, c[j] + 1e-9}) {
        if (u >= 1.0) continue;
        std::int64_t tok = -1;
        float lsy = 0.0f, lqy = 0.0f;
        REQUIRE(kd::sample_teacher_mixed(kd::student_logits(zs.data(), 1, 3), kd::teacher_logits(zt.data(), 1, 3), alpha,
                                         1.0, &u, &tok, &lsy, &lqy)
                    .ok());
        const std::int64_t want = u < c[j] ? j : j + 1;
        CHECK(tok == want);
        CHECK(lsy == Approx(std::log(s[want])).epsilon(1e-6));
        CHECK(lqy == Approx(std::log(q[want])).epsilon(1e-6));
      }
    }
  }
  // u outside [0, 1) is an argument error
  double u = 1.0;
  std::int64_t tok = 42;
  auto st = kd::sample_teacher_mixed(kd::student_logits(zs.data(), 1, 3), kd::teacher_logits(zt.data(), 1, 3), 0.2, 1.0, &u,
                                     &tok);
  CHECK(st.code == kd::errc::invalid_argument);
  CHECK(tok == 42);
}

TEST_CASE("counter RNG: stateless, reproducible, uniform", "[pg][rng]") {
  CHECK(kd::counter_uniform(1, 2) == kd::counter_uniform(1, 2));
  CHECK(kd::counter_uniform(1, 2) != kd::counter_uniform(1, 3));
  CHECK(kd::counter_uniform(1, 2) != kd::counter_uniform(2, 2));
  const int n = 200000;
  double s = 0.0, s2 = 0.0;
  int bins[10] = {};
  for (int i = 0; i < n; ++i) {
    const double u = kd::counter_uniform(99, i);
    REQUIRE(u >= 0.0);
    REQUIRE(u < 1.0);
    s += u;
    s2 += u * u;
    ++bins[static_cast<int>(u * 10)];
  }
  CHECK(s / n == Approx(0.5).margin(4 * std::sqrt(1.0 / 12 / n)));
  CHECK(s2 / n - (s / n) * (s / n) == Approx(1.0 / 12).epsilon(0.01));
  double chi2 = 0.0;
  for (int b : bins) chi2 += (b - n / 10.0) * (b - n / 10.0) / (n / 10.0);
  CHECK(chi2 < 27.9);  // 9 dof, p = 0.001
}

TEST_CASE("pg: results are bitwise identical for 1 and 2 threads", "[pg][determinism]") {
  batch bt(4, 16, 4096, 202);  // 4 * 16 * 4096 = 2^18 elements (threaded path from 2^16)
  const kd::pg_options o = kd::pg_options::reference_code();
  const auto one = run<float>(bt, o, true, kd::simd_backend<>{kd::thread_executor{1}});
  const auto two = run<float>(bt, o, true, kd::simd_backend<>{kd::thread_executor{2}});
  REQUIRE(one.st.ok());
  REQUIRE(two.st.ok());
  CHECK(std::memcmp(one.grad.data(), two.grad.data(), one.grad.size() * sizeof(double)) == 0);
  CHECK(one.d.loss == two.d.loss);
  CHECK(one.adv == two.adv);
  const auto ref = run(bt, o, true);
  double gmax = 0.0, worst = 0.0;
  for (std::size_t i = 0; i < ref.grad.size(); ++i) {
    gmax = std::max(gmax, std::abs(ref.grad[i]));
    worst = std::max(worst, std::abs(two.grad[i] - ref.grad[i]));
  }
  CHECK(worst < 2e-5 * gmax);
}

TEST_CASE("pg: low temperature (T = 0.05) stays finite and close to the reference (pitfall 14)", "[pg][fast]") {
  batch bt(2, 6, 500, 303);
  for (double T : {0.05, 0.2}) {
    kd::pg_options o = kd::pg_options::paper();
    o.temperature = T;
    // tokens drawn at T = 1 may have probability ~0 at T = 0.05: use the argmax of the student (always probable)
    for (std::int64_t r = 0; r < bt.B * bt.L; ++r) {
      std::int64_t am = 0;
      for (std::int64_t j = 1; j < bt.V; ++j)
        if (bt.zs[r * bt.V + j] > bt.zs[r * bt.V + am]) am = j;
      bt.tok[r] = am;
    }
    // teacher close to the student so the rewards stay finite
    for (std::size_t i = 0; i < bt.zt.size(); ++i) bt.zt[i] = bt.zs[i] + 0.05 * std::sin(double(i));
    const auto ref = run(bt, o, false);
    const auto fast = run<float>(bt, o, false, kd::pg_fast_backend{});
    REQUIRE(ref.st.ok());
    REQUIRE(fast.st.ok());
    double gmax = 0.0, worst = 0.0;
    for (std::size_t i = 0; i < ref.grad.size(); ++i) {
      REQUIRE(std::isfinite(fast.grad[i]));
      gmax = std::max(gmax, std::abs(ref.grad[i]));
      worst = std::max(worst, std::abs(fast.grad[i] - ref.grad[i]));
    }
    std::printf("[pg T=%.2f] fast vs reference: worst |diff| %.2e of max |grad| %.3g\n", T, worst, gmax);
    CHECK(worst < 5e-5 * gmax);  // measured 1.8e-5 at T = 0.05 (float rounding of logits / T ~ 150)
  }
}

TEST_CASE("pg_advantages: the fused call's advantages from its own rewards", "[pg][returns]") {
  batch bt(5, 7, 31, 404);
  for (const kd::pg_options& o : {kd::pg_options::reference_code(), kd::pg_options::paper()}) {
    const auto res = run(bt, o, true);
    REQUIRE(res.st.ok());
    std::vector<float> a(res.rewards.size(), 555.0f);
    REQUIRE(kd::pg_advantages(res.rewards.data(), kd::mask_view(bt.mask.data(), bt.B * bt.L), bt.B, bt.L, o, a.data()).ok());
    for (std::size_t i = 0; i < a.size(); ++i) CHECK(a[i] == Approx(res.adv[i]).epsilon(1e-6).margin(1e-6));
  }
  // errors before output
  std::vector<float> r = {1.0f, std::nanf(""), 2.0f}, a(3, 555.0f);
  const std::uint8_t m[3] = {1, 1, 0};
  const kd::status st = kd::pg_advantages(r.data(), kd::mask_view(m, 3), 1, 3, kd::pg_options{}, a.data());
  CHECK(st.code == kd::errc::invalid_argument);
  CHECK(std::string(st.argument) == "rewards");
  CHECK(a[0] == 555.0f);
  const std::uint8_t m2[3] = {1, 0, 1};  // the NaN is padding: never read
  REQUIRE(kd::pg_advantages(r.data(), kd::mask_view(m2, 3), 1, 3, kd::pg_options{}, a.data()).ok());
  CHECK(a[0] == Approx(2.0f));  // paper: mean of the one future reward
  CHECK(a[1] == 0.0f);
  CHECK(a[2] == 0.0f);
}
