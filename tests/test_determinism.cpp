// Determinism: losses, per-row values and gradients are bitwise identical across repeated runs and across thread counts,
// for every backend (reference, simd_backend<> with 1 / 2 / 3 / 7 threads, the default backend) and every input dtype
// (float, double, bfloat16, half), every divergence; and for the fused MiniLLM policy-gradient call (kd::policy_gradient).
// The inputs are big enough (rows * V >= 2^16 elements) that the SIMD backend really splits rows over threads.
#include <catch2/catch.hpp>

#include <cstring>

#include "test_util.hpp"

#include <kd/policy_gradient.hpp>

using kd::divergence;

namespace {

constexpr std::int64_t kRows = 67;   // odd, so 2 / 3 / 7 threads get uneven row ranges
constexpr std::int64_t kCols = 4099;  // 67 * 4099 = 274633 >= 2^16: the SIMD backend uses its executor

struct snapshot {
  kd::status st;
  double loss = 0.0;
  std::int64_t valid_rows = 0;
  std::vector<float> gs, gt, per_row;
};

bool same_bits(const snapshot& a, const snapshot& b) {
  return a.st.code == b.st.code && a.st.row == b.st.row && std::memcmp(&a.loss, &b.loss, sizeof a.loss) == 0 &&
         a.valid_rows == b.valid_rows && a.gs.size() == b.gs.size() &&
         std::memcmp(a.gs.data(), b.gs.data(), a.gs.size() * sizeof(float)) == 0 &&
         std::memcmp(a.gt.data(), b.gt.data(), a.gt.size() * sizeof(float)) == 0 &&
         std::memcmp(a.per_row.data(), b.per_row.data(), a.per_row.size() * sizeof(float)) == 0;
}

template <class T>
struct inputs {
  std::vector<T> s, t;
  std::vector<std::int64_t> labels;
  std::vector<float> weights;
  inputs() {
    auto zs = kdt::random_logits<double>(kRows, kCols, 11, 3.0, 0.05);
    auto zt = kdt::random_logits<double>(kRows, kCols, 12, 3.0, 0.0);
    for (std::size_t i = 0; i < zs.size(); ++i)  // the same masked (-inf) entries on both sides: no support mismatch
      if (zs[i] == kdt::ninf || zt[i] == kdt::ninf) zs[i] = zt[i] = kdt::ninf;
    s.resize(zs.size());
    t.resize(zt.size());
    for (std::size_t i = 0; i < zs.size(); ++i) s[i] = kd::from_double<T>(zs[i]), t[i] = kd::from_double<T>(zt[i]);
    labels.resize(kRows);
    weights.resize(kRows);
    for (std::int64_t r = 0; r < kRows; ++r) {
      labels[r] = r % 9 == 4 ? -100 : r;
      weights[r] = 0.25f + static_cast<float>(r % 5);
    }
  }
};

template <class T, class Backend>
snapshot run(const divergence& d, const inputs<T>& in, const Backend& backend) {
  snapshot sn;
  sn.gs.assign(in.s.size(), -1.0f);
  sn.gt.assign(in.t.size(), -1.0f);
  sn.per_row.assign(kRows, -1.0f);
  kd::distill_options o;
  o.temperature = 2.0;
  o.labels = kd::label_view(in.labels.data(), kRows);
  o.row_weights = in.weights.data();
  kd::distill_outputs<float> out;
  out.grad_student = kd::mut_rows<float>(sn.gs.data(), kRows, kCols);
  out.grad_teacher = kd::mut_rows<float>(sn.gt.data(), kRows, kCols);
  out.per_row = sn.per_row.data();
  kd::loss_result r;
  sn.st = kd::divergence_loss(d, kd::student_logits(in.s.data(), kRows, kCols), kd::teacher_logits(in.t.data(), kRows, kCols),
                              o, r, out, backend);
  sn.loss = r.loss;
  sn.valid_rows = r.valid_rows;
  return sn;
}

const std::vector<divergence>& kAll = kdt::kAllDivergences;  // every registered divergence

}  // namespace

TEMPLATE_TEST_CASE("divergences are bitwise deterministic across runs and thread counts", "[determinism]", float, double,
                   kd::bfloat16, kd::half) {
  const inputs<TestType> in;
  for (const auto& d : kAll) {
    INFO(kd::divergence_name(d.kind) << " " << kd::dtype_name<TestType>());
    // Reference backend: two runs.
    const snapshot ref1 = run(d, in, kd::reference_backend{});
    REQUIRE(ref1.st.ok());
    CHECK(same_bits(ref1, run(d, in, kd::reference_backend{})));
    // SIMD backend: serial, then 1, 2, 3, 7 threads, each twice; all equal to the serial result bit for bit.
    const snapshot serial = run(d, in, kd::simd_backend<xsimd::default_arch, kd::serial_executor>{});
    REQUIRE(serial.st.ok());
    for (int threads : {1, 2, 3, 7}) {
      const kd::simd_backend<> b{kd::thread_executor{threads}};
      INFO("threads " << threads);
      CHECK(same_bits(serial, run(d, in, b)));
      CHECK(same_bits(serial, run(d, in, b)));
    }
    // The default backend (all hardware threads) too.
    CHECK(same_bits(serial, run(d, in, kd::default_backend{})));
  }
}

TEST_CASE("value errors are deterministic too: same code, same first row, same NaN rows, any thread count",
          "[determinism]") {
  inputs<float> in;
  in.s[static_cast<std::size_t>(41 * kCols + 7)] = std::numeric_limits<float>::quiet_NaN();  // row 41 (not ignored)
  in.s[static_cast<std::size_t>(60 * kCols + 1)] = std::numeric_limits<float>::infinity();   // row 60
  const snapshot serial = run(divergence::reverse_kl(), in, kd::simd_backend<xsimd::default_arch, kd::serial_executor>{});
  CHECK(serial.st.code == kd::errc::non_finite_input);
  CHECK(serial.st.row == 41);
  for (int threads : {2, 3, 7}) {
    const snapshot s = run(divergence::reverse_kl(), in, kd::simd_backend<>{kd::thread_executor{threads}});
    CHECK(s.st.code == serial.st.code);
    CHECK(s.st.row == serial.st.row);
    // NaN rows compare by bits: the same NaN payloads in the same places.
    CHECK(std::memcmp(s.gs.data(), serial.gs.data(), s.gs.size() * sizeof(float)) == 0);
  }
  const snapshot r1 = run(divergence::reverse_kl(), in, kd::reference_backend{});
  CHECK(r1.st.code == kd::errc::non_finite_input);
  CHECK(r1.st.row == 41);
}

namespace {

struct pg_snapshot {
  kd::status st;
  double loss = 0.0, pg_loss = 0.0, single = 0.0;
  std::vector<float> grad, rewards, adv, iw, logq;
};

bool same_bits(const pg_snapshot& a, const pg_snapshot& b) {
  auto eq = [](const std::vector<float>& x, const std::vector<float>& y) {
    return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
  };
  return a.st.code == b.st.code && std::memcmp(&a.loss, &b.loss, sizeof(double)) == 0 &&
         std::memcmp(&a.pg_loss, &b.pg_loss, sizeof(double)) == 0 && std::memcmp(&a.single, &b.single, sizeof(double)) == 0 &&
         eq(a.grad, b.grad) && eq(a.rewards, b.rewards) && eq(a.adv, b.adv) && eq(a.iw, b.iw) && eq(a.logq, b.logq);
}

template <class Backend>
pg_snapshot run_pg(const kd::pg_options& o, const Backend& backend) {
  constexpr std::int64_t B = 5, L = 13, V = 4111;  // 65 rows * 4111 >= 2^16
  static const auto zs = kdt::random_logits<float>(B * L, V, 21, 2.0);
  static const auto zt = kdt::random_logits<float>(B * L, V, 22, 2.0);
  static std::vector<std::int64_t> tokens, labels;
  static std::vector<std::uint8_t> mask;
  static std::vector<float> old_lp;
  if (tokens.empty()) {
    for (std::int64_t r = 0; r < B * L; ++r) {
      tokens.push_back((r * 7919) % V);
      labels.push_back(r % 5 == 0 ? -100 : (r * 31) % V);
      mask.push_back(static_cast<std::uint8_t>((r % L) < L - (r / L)));  // sequence b has b padded positions at its end
      old_lp.push_back(-8.0f - 0.01f * static_cast<float>(r % 17));
    }
  }
  kd::pg_sequences seq;
  seq.batch = B;
  seq.time = L;
  seq.tokens = kd::label_view(tokens.data(), B * L);
  seq.mask = kd::mask_view(mask.data(), B * L);
  seq.old_log_probs = old_lp.data();
  seq.lm_labels = kd::label_view(labels.data(), B * L);
  pg_snapshot sn;
  sn.grad.assign(static_cast<std::size_t>(B * L * V), -1.0f);
  sn.rewards.assign(B * L, -1.0f);
  sn.adv = sn.rewards;
  sn.iw = sn.rewards;
  sn.logq = sn.rewards;
  kd::pg_outputs<float> out;
  out.grad_student = kd::mut_rows<float>(sn.grad.data(), B * L, V);
  out.rewards = sn.rewards.data();
  out.advantages = sn.adv.data();
  out.importance_weights = sn.iw.data();
  out.log_probs = sn.logq.data();
  kd::pg_diagnostics diag;
  sn.st = kd::policy_gradient(kd::student_logits(zs.data(), B * L, V), kd::teacher_logits(zt.data(), B * L, V), seq, o, out,
                              diag, backend);
  sn.loss = diag.loss;
  sn.pg_loss = diag.pg_loss;
  sn.single = diag.single_step_loss;
  return sn;
}

}  // namespace

TEST_CASE("the fused policy-gradient call is bitwise deterministic across runs and thread counts", "[determinism][pg]") {
  kd::pg_options variants[3] = {kd::pg_options::paper(), kd::pg_options::reference_code(), kd::pg_options::exact()};
  variants[1].lm_weight = 0.5;
  for (const auto& o : variants) {
    const pg_snapshot ref1 = run_pg(o, kd::reference_backend{});
    REQUIRE(ref1.st.ok());
    CHECK(same_bits(ref1, run_pg(o, kd::reference_backend{})));
    const pg_snapshot serial = run_pg(o, kd::simd_backend<xsimd::default_arch, kd::serial_executor>{});
    REQUIRE(serial.st.ok());
    for (int threads : {1, 2, 3, 7}) {
      INFO("threads " << threads);
      const kd::simd_backend<> b{kd::thread_executor{threads}};
      CHECK(same_bits(serial, run_pg(o, b)));
      CHECK(same_bits(serial, run_pg(o, b)));
    }
  }
}
