// Regression tests of issue "Correctness round", section 3, for kd::policy_gradient: NaN masks, the fully-masked-row
// policy, importance weights beyond the float range, and the TRL length normalization (each failed before its fix).
#include <catch2/catch.hpp>

#include <kd/policy_gradient.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
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
