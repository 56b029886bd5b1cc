// Rows where one token dominates (a confident teacher / student, 16-40 nats ahead of the rest) and near-identical rows:
// the float32 SIMD backend against the double reference (docs/numerics.md, "Confident rows").
//
// Tolerances: per-row losses within 1e-5 relative or 1e-12 nats absolute, whichever is larger, and gradients within
// 1e-5 of the row's largest entry or the float32 floor bound derived in check_dominant, whichever is larger, for every
// registered divergence. A confident row's losses and gradients are functions of its tail (mass ~V e^-gap): float32
// lane sums used to round the tail away against the top token's exp(0) = 1 (losses off by 0.4% to 60%, gradients by
// up to 4.5% of the largest entry); log-ratios formed from two log-probabilities of size ~gap carried ~gap 2^-24
// absolute error into every tail term (JSD and skew gradients off by up to 2e-3 of the largest entry); the top token's
// centring s_j - sum_i y_i s_i (TVD) was of the size of the tail mass while y_top rounded to 1 (errors of 100%), and
// xsimd's sign() turned padded lanes into NaN gradients. Measured worst now on this grid: 2.2e-5 of the largest entry
// (alpha_beta(1, 0), i.e. forward KL, V = 1000, gap 25, T = 2) and 1.3e-5 (forward KL, V = 1000, gap 16, T = 2: two
// tails within 2% of each other), every other case below 1e-5; each within 3% of the floor bound (docs/numerics.md,
// "Confident rows").
// The reference itself is accurate there because it counts the entries at the maximum apart from the tail
// (log S = log(cnt) + log1p(tail / cnt)) and works in double.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "test_simd_util.hpp"
#if defined(KD_TEST_DISPATCH)
#include <kd/backend/dispatch.hpp>
#endif

namespace {

struct dom_case {
  std::int64_t V;
  double gap, T;
  std::uint32_t seed;
};

// Two rows: N(0, 1) logits, the student's token 7 (row 0) / 8 (row 1) raised by gap * T, the teacher's by gap * T + 0.3
// (same top token, slightly different confidence). Row 1 puts the top token in lane 0 of a batch, after a tail term.
void make_rows(const dom_case& c, std::vector<float>& zs, std::vector<float>& zt) {
  std::mt19937 gen(c.seed);
  std::normal_distribution<double> nd(0, 1);
  zs.resize(2 * c.V);
  zt.resize(2 * c.V);
  for (auto& v : zs) v = float(nd(gen));
  for (auto& v : zt) v = float(nd(gen));
  for (std::int64_t r = 0; r < 2; ++r) {
    zs[r * c.V + 7 + r] += float(c.gap * c.T);
    zt[r * c.V + 7 + r] += float(c.gap * c.T + 0.3);
  }
}

// 1 - p_max of a row of logits at temperature T, in double, the entries below the maximum summed apart (summed
// after the top entry's exp(0) = 1 they would round away: a confident row's tail is below 2^-53).
inline double tail_mass(const float* z, std::int64_t V, double T) {
  double m = -HUGE_VAL;
  for (std::int64_t j = 0; j < V; ++j) m = std::max(m, double(z[j]) / T);
  double cnt = 0.0, tail = 0.0;
  for (std::int64_t j = 0; j < V; ++j) {
    const double u = double(z[j]) / T - m;
    if (u == 0.0) cnt += 1.0;
    else tail += std::exp(u);
  }
  return (cnt - 1.0 + tail) / (cnt + tail);  // p_max = 1 / (cnt + tail) of the sum relative to the max
}

template <class Backend>
void check_dominant(const Backend& be, const kd::divergence& d, const dom_case& c, bool check_grad) {
  std::vector<float> zs, zt;
  make_rows(c, zs, zt);
  std::vector<float> gs(zs.size()), per_row(2);
  kd::distill_options o;
  o.temperature = c.T;
  o.reduction = kd::reduction::sum;
  kd::distill_outputs<float> out;
  out.grad_student = kd::mut_rows<float>(gs.data(), 2, c.V);
  out.per_row = per_row.data();
  kd::loss_result res;
  REQUIRE(kd::divergence_loss(d, kd::student_logits(zs.data(), 2, c.V), kd::teacher_logits(zt.data(), 2, c.V), o, res,
                              out, be)
              .ok());
  for (std::int64_t r = 0; r < 2; ++r) {
    std::vector<double> gd(c.V);
    kd::distill_outputs<double> od;
    od.grad_student = kd::mut_rows<double>(gd.data(), 1, c.V);
    kd::loss_result rr;
    REQUIRE(kd::divergence_loss(d, kd::student_logits(zs.data() + r * c.V, 1, c.V),
                                kd::teacher_logits(zt.data() + r * c.V, 1, c.V), o, rr, od, kd::reference_backend{})
                .ok());
    INFO(kdt::describe(d) << " V=" << c.V << " gap=" << c.gap << " T=" << c.T << " row " << r << ": " << per_row[r]
                          << " vs " << rr.loss);
    CHECK(std::abs(per_row[r] - rr.loss) <= std::max(1e-5 * std::abs(rr.loss), 1e-12));
    if (!check_grad) continue;
    double gm = 0.0, ge = 0.0;
    for (std::int64_t j = 0; j < c.V; ++j) gm = std::max(gm, std::abs(gd[j]));
    for (std::int64_t j = 0; j < c.V; ++j) {
      const double e = std::abs(gs[r * c.V + j] - gd[j]);
      if (!(e <= ge)) ge = e;  // NaN-aware: a NaN entry makes ge NaN and fails the check below
    }
    // The target is 1e-5 of the largest entry. Its floor in float32: every tail entry's exponent u_j = z_j / T - M is
    // a float of size up to umax ~ gap + |z|max / T, rounded to 2^-24 umax, so every tail sum (the log-sum-exps, the
    // functors' sums) carries up to 2^-24 umax of the tail mass t = 1 - p_max, and the top token's gradient is a
    // combination of such sums with O(1) coefficients: c (t_s + t_t) 2^-24 umax, k = 4 for the few sums involved.
    // Where that exceeds 1e-5 of the largest entry (rows whose two tails nearly cancel) it is the bound; measured
    // worst 2.2e-5 of the largest entry, 3% of this bound (docs/numerics.md).
    const double c_scale = 1.0 / c.T;  // reduction sum, weight 1, no T^2: c = 1 / T
    double mz_s = -HUGE_VAL, mz_t = -HUGE_VAL;
    for (std::int64_t j = 0; j < c.V; ++j) {
      mz_s = std::max(mz_s, double(zs[r * c.V + j]) / c.T);
      mz_t = std::max(mz_t, double(zt[r * c.V + j]) / c.T);
    }
    const double tail = tail_mass(&zs[r * c.V], c.V, c.T) + tail_mass(&zt[r * c.V], c.V, c.T);
    double umax = 0.0;
    for (std::int64_t j = 0; j < c.V; ++j)
      umax = std::max({umax, mz_s - double(zs[r * c.V + j]) / c.T, mz_t - double(zt[r * c.V + j]) / c.T});
    const double floor_bound = 4.0 * c_scale * tail * std::ldexp(umax, -24);
    INFO("gradient error " << ge << " of largest entry " << gm << " (float32 floor bound " << floor_bound << ")");
    CHECK(ge <= std::max(1e-5 * gm, floor_bound));
  }
}

bool kl_family(const kd::divergence& d) {
  const kd::divergence c = kd::canonical_divergence(d);
  return c.kind == kd::divergence_kind::forward_kl || c.kind == kd::divergence_kind::reverse_kl;
}

// full: every registered divergence over V in {1k, 32k, 150k}, gaps 0-40, T in {1, 2}, and 256k for KL; otherwise
// (the run-time dispatched instruction sets) a smaller grid that still crosses chunk and lane boundaries.
template <class Backend>
void dominant_grid(const Backend& be, bool full) {
  std::uint32_t seed = 1;
  for (const auto& d : kdt::kAllDivergences) {
    if (!full && !kl_family(d) && d.kind != kd::divergence_kind::jsd) continue;
    for (std::int64_t V : {1000, 32000 + 7, 150000}) {
      if ((!full || !kl_family(d)) && V == 150000) continue;  // 150k: the KL family (time)
      for (double gap : {0.0, 16.0, 20.0, 25.0, 30.0, 40.0})
        for (double T : {1.0, 2.0}) check_dominant(be, d, {V, gap, T, seed++}, true);
    }
  }
  if (!full) return;
  // 256k vocabulary, KL only (the slowest case of the grid).
  for (const auto& d : {kd::divergence::forward_kl(), kd::divergence::reverse_kl()})
    for (double gap : {20.0, 40.0}) check_dominant(be, d, {256000, gap, 1.0, seed++}, true);
}

}  // namespace

TEST_CASE("confident rows: float32 losses within 1e-5 of the double reference, gradients within 1e-5 of the max",
          "[dominant]") {
  dominant_grid(kd::simd_backend<>{}, true);
}

#if defined(KD_TEST_DISPATCH)
TEST_CASE("confident rows on every run-time dispatched instruction set", "[dominant][dispatch]") {
  for (kd::simd_isa isa : {kd::simd_isa::sse2, kd::simd_isa::sse4_2, kd::simd_isa::avx2, kd::simd_isa::avx512}) {
    if (!kd::simd_isa_available(isa)) continue;
    INFO(kd::simd_isa_name(isa));
    dominant_grid(kd::dispatch_backend{isa, 2}, false);
  }
}
#endif

TEST_CASE("divergences are never negative; the unclamped kernels are accurate on near-identical rows", "[dominant]") {
  // Teacher = student rounded to bf16 (as when teacher log-probs are stored in 16 bits): the divergences are ~1e-6..1e-9
  // and float32 rounding used to make some of them negative. Per-row values must be >= 0, and the SIMD row kernels'
  // unclamped value must agree with the double reference to the loss tolerance of test_simd_util.hpp (a row clearly
  // below 0 beyond rounding would be a bug that the clamp must not hide).
  const std::int64_t V = 5000;
  auto z = kdt::random_logits<double>(3, V, 77, 3.0, 0.0);
  std::vector<float> zs(z.size()), zt(z.size());
  for (std::size_t i = 0; i < z.size(); ++i) {
    zs[i] = float(z[i]);
    zt[i] = float(kd::bfloat16(float(z[i])));
  }
  std::vector<kd::divergence> cases = kdt::kAllDivergences;
  cases.push_back(kd::divergence::skew_kl(0.999999));
  cases.push_back(kd::divergence::skew_reverse_kl(0.999999));
  for (const auto& d : cases) {
    INFO(kdt::describe(d));
    std::vector<float> per_row(3);
    kd::distill_outputs<float> out;
    out.per_row = per_row.data();
    kd::loss_result res;
    REQUIRE(kd::divergence_loss(d, kd::student_logits(zs.data(), 3, V), kd::teacher_logits(zt.data(), 3, V), {}, res,
                                out, kd::simd_backend<>{})
                .ok());
    CHECK(res.loss >= 0.0);
    for (std::int64_t r = 0; r < 3; ++r) {
      CHECK(per_row[r] >= 0.0f);
      // The unclamped row value straight from the row kernels.
      kd::detail::row_io<float, float, float> io{zs.data() + r * V, zt.data() + r * V, nullptr, nullptr, V};
      kd::detail::row_params rp;
      const kd::divergence cd = kd::canonical_divergence(d);
      const double raw = kd::visit_divergence<double>(
          cd.kind,
          [&](auto e) {
            using E = decltype(e);
            typename kd::detail::simd::row_kernels<xsimd::default_arch>::template scratch<float, float, float> sc(V);
            return kd::detail::simd::row_kernels<xsimd::default_arch>::row<E>(E::make(cd.param, cd.param2), io, rp, sc)
                .loss;
          },
          0.0);
      kd::loss_result rr;
      REQUIRE(kd::divergence_loss(d, kd::student_logits(zs.data() + r * V, 1, V),
                                  kd::teacher_logits(zt.data() + r * V, 1, V), {}, rr, kd::distill_outputs<float>{},
                                  kd::reference_backend{})
                  .ok());
      // The loss tolerance of the SIMD suite (test_simd_util.hpp): e (1 + |l|), e = 8 2^-24 (|y|max + 1): each
      // log-probability carries float32 rounding of y - M (|y| up to |y|max), which the divergence of near-identical
      // rows does not cancel.
      double ymax = 0.0;
      for (std::int64_t j = 0; j < V; ++j) ymax = std::max({ymax, std::abs(double(zs[r * V + j])), std::abs(double(zt[r * V + j]))});
      const double tol = 8.0 * std::ldexp(1.0, -24) * (ymax + 1.0) * (1.0 + rr.loss);
      INFO("row " << r << " raw " << raw << " reference " << rr.loss);
      CHECK(std::abs(raw - rr.loss) <= tol);
    }
  }
}

TEST_CASE("confident rows: the float32 policy gradient against the double reference",
          "[dominant][pg]") {
  // One sequence of L = 4 positions; each row has one token ahead by gap (student) / gap + 0.3 (teacher), and the
  // sampled tokens alternate between the top token and a tail token, so the long-term term's one-hot lands on both.
  // Both presets (paper, reference code), T in {1, 2}. The gradient rows mix the single-step reverse-KL term (a
  // difference of tail sums on such rows) with A (onehot - q) / T, whose top-token entry is the tail mass.
  // Tolerance per entry: the larger of 1e-5 of the row's largest entry and, on confident rows (gap >= 16), the float32
  // floor of check_dominant with the row's term scale c = (|A_t| + 1) max(1, w_t) s / T (A_t, w_t: the advantage and
  // importance weight kd reports, s = 1 / L for the mean reduction), or on ordinary rows (gap 0) the SIMD suite's
  // e M_j, e = 8 2^-24 (|y|max + 1), M_j = c (onehot_j + q_j (1 + |log q_j - log p_j| + KL)) the entry's term
  // magnitudes (the terms cancel: measured 1.02e-5 of the largest entry at gap 0, V = 1000, T = 2); plus the
  // difference of the two backends' long-term coefficients (below) times |onehot_j - q_j|.
  kd::pg_options presets[2] = {kd::pg_options::paper(), kd::pg_options::reference_code()};
  std::uint32_t seed = 900;
  for (const std::int64_t V : {1000, 32000 + 7})
    for (double gap : {0.0, 16.0, 25.0, 40.0})
      for (double T : {1.0, 2.0})
        for (const kd::pg_options& preset : presets) {
          const std::int64_t L = 4;
          std::mt19937 gen(seed++);
          std::normal_distribution<double> nd(0, 1);
          std::vector<float> zs(L * V), zt(L * V);
          for (auto& v : zs) v = float(nd(gen));
          for (auto& v : zt) v = float(nd(gen));
          std::vector<std::int64_t> tokens(L);
          for (std::int64_t t = 0; t < L; ++t) {
            const std::int64_t top = 5 + 3 * t;
            zs[t * V + top] += float(gap * T);
            zt[t * V + top] += float(gap * T + 0.3);
            tokens[t] = t % 2 ? top + 11 : top;
          }
          kd::pg_options o = preset;
          o.temperature = T;
          kd::pg_sequences seq;
          seq.batch = 1;
          seq.time = L;
          seq.tokens = kd::label_view(tokens.data(), L);
          std::vector<float> g(L * V);
          std::vector<double> gd(L * V);
          kd::pg_outputs<float> out;
          out.grad_student = kd::mut_rows<float>(g.data(), L, V);
          std::vector<float> adv(L), iw(L);
          out.advantages = adv.data();
          out.importance_weights = iw.data();
          kd::pg_outputs<double> od;
          od.grad_student = kd::mut_rows<double>(gd.data(), L, V);
          std::vector<float> adv_r(L), iw_r(L);
          od.advantages = adv_r.data();
          od.importance_weights = iw_r.data();
          kd::pg_diagnostics d1, d2;
          REQUIRE(kd::policy_gradient(kd::student_logits(zs.data(), L, V), kd::teacher_logits(zt.data(), L, V), seq, o,
                                      out, d1, kd::simd_backend<>{})
                      .ok());
          REQUIRE(kd::policy_gradient(kd::student_logits(zs.data(), L, V), kd::teacher_logits(zt.data(), L, V), seq, o,
                                      od, d2, kd::reference_backend{})
                      .ok());
          const double s_red = o.reduction == kd::reduction::mean ? 1.0 / double(L) : 1.0;
          for (std::int64_t t = 0; t < L; ++t) {
            // The row's log-probabilities, exponent range and tail masses in double.
            double ms = -HUGE_VAL, mt = -HUGE_VAL, ymax = 0.0;
            for (std::int64_t j = 0; j < V; ++j) {
              ms = std::max(ms, double(zs[t * V + j]) / T);
              mt = std::max(mt, double(zt[t * V + j]) / T);
              ymax = std::max({ymax, std::abs(double(zs[t * V + j]) / T), std::abs(double(zt[t * V + j]) / T)});
            }
            double ss = 0.0, stt = 0.0, umax = 0.0;
            for (std::int64_t j = 0; j < V; ++j) {
              const double us = double(zs[t * V + j]) / T - ms, ut = double(zt[t * V + j]) / T - mt;
              ss += std::exp(us);
              stt += std::exp(ut);
              umax = std::max({umax, -us, -ut});
            }
            double kl = 0.0;
            for (std::int64_t j = 0; j < V; ++j) {
              const double lq = double(zs[t * V + j]) / T - ms - std::log(ss), lp = double(zt[t * V + j]) / T - mt - std::log(stt);
              kl += std::exp(lq) * (lq - lp);
            }
            const double w = std::max(1.0, double(iw[t])), c_row = (std::abs(double(adv[t])) + 1.0) * w * s_red / T;
            const double tail = tail_mass(&zs[t * V], V, T) + tail_mass(&zt[t * V], V, T);
            const double floor_bound = 4.0 * c_row * tail * std::ldexp(umax, -24), e = 8.0 * 0x1p-24 * (ymax + 1.0);
            // The long-term coefficient A_t w_t s / T as each backend computed it: the rewards are log-ratios of
            // float32 log-probabilities (a tail token's carry ~2^-24 gap absolute), and A_t sums and may whiten them,
            // so A_t itself differs; that difference times |onehot_j - q_j| is not the kernels' error and is added.
            const double dc = std::abs(double(adv[t]) * iw[t] - double(adv_r[t]) * iw_r[t]) * s_red / T;
            double gm = 0.0;
            for (std::int64_t j = 0; j < V; ++j) gm = std::max(gm, std::abs(gd[t * V + j]));
            double worst = 0.0;  // error / tolerance
            std::int64_t jw = -1;
            for (std::int64_t j = 0; j < V; ++j) {
              const double lq = double(zs[t * V + j]) / T - ms - std::log(ss), lp = double(zt[t * V + j]) / T - mt - std::log(stt);
              const double mj = c_row * ((j == tokens[t] ? 1.0 : 0.0) + std::exp(lq) * (1.0 + std::abs(lq - lp) + kl));
              const double tol = std::max(1e-5 * gm, gap >= 16.0 ? floor_bound : e * mj) +
                                 dc * std::abs((j == tokens[t] ? 1.0 : 0.0) - std::exp(lq));
              const double r = std::abs(double(g[t * V + j]) - gd[t * V + j]) / tol;
              if (!(r <= worst)) {
                worst = r;
                jw = j;
              }
            }
            INFO("V=" << V << " gap=" << gap << " T=" << T << " preset " << (&preset == presets ? "paper" : "reference")
                      << " row " << t << ": worst error / tolerance " << worst << " at entry " << jw << " (sampled "
                      << tokens[t] << "; " << (jw >= 0 ? g[t * V + jw] : 0.0f) << " vs " << (jw >= 0 ? gd[t * V + jw] : 0.0)
                      << "; largest entry " << gm << ", floor " << floor_bound << ", dc " << dc << ", tail " << tail << ", umax " << umax << ", c " << c_row << ")");
            CHECK(worst <= 1.0);
          }
        }
}
