// libFuzzer target: the SIMD backend (float32 arithmetic) against the double reference backend on fuzzed rows, with the
// precision tolerances of the tests (not the gross-error bound of fuzz_divergence's invariant 5).
//
// The fuzzer's bytes choose the structure of a case: a registered divergence and its parameters (inside their ranges),
// the input dtype (float32 / bfloat16), rows (1-3), vocabulary (1-5000, crossing the SIMD chunk of 2048 entries and
// every lane remainder), temperature, logit scale, masked entries (-inf on both sides, or on one side where the
// divergence allows it), identical or near-identical rows, and a dominant token 16-40 nats ahead of the rest (a
// confident row, the fault class of docs/numerics.md "Confident rows") placed in any lane. Values come from a PRNG
// seeded by the bytes. Invariants:
//   - both backends return the same status code (and argument);
//   - per row, on confident rows (the section-1 tolerances): |l - l_ref| <= max(1e-5 |l_ref|, 1e-12, the
//     float32 floor 4 (t_s + t_t) 2^-24 umax where the two tails nearly cancel) and
//     every gradient entry within max(1e-5 of the row's largest entry, the float32 floor 4 c (t_s + t_t) 2^-24 umax)
//     (tests/test_simd_dominant.cpp derives both);
//   - on other rows, the SIMD suite's tolerance (tests/test_simd_util.hpp): e = 8 2^-24 (|y|max + 1),
//     |l - l_ref| <= e (1 + |l_ref|), |g - g_ref| <= e (c (1 + |l_ref|) + |g_ref|), c = 1 / T;
//   - ABKD's losses also get its own conditioning e sum_j (|v_j| + |w_j|) / (alpha + beta) (alpha_beta.hpp);
//   - per-row values >= 0 on both backends;
//   - TVD entries whose log-ratio is within float32 rounding of 0 may take either side of the jump of sign(q - p).
#include <kd/backend/reference.hpp>
#include <kd/backend/simd.hpp>
#include <kd/divergence.hpp>
#include <cstdlib>
#include <random>

#include "fuzz_common.hpp"

namespace {

using namespace kdfuzz;

kd::divergence draw_divergence(reader& in) {
  const kd::divergence_info& info = kd::divergence_registry().items[in.range(0, kd::divergence_count - 1)];
  double p[2] = {0.0, 0.0};
  for (int i = 0; i < info.n_params; ++i) {
    const kd::param_spec& s = info.params[i];
    const double fr[] = {0.1, 0.5, 0.9, 0.01, 0.99};
    switch (in.range(0, 6)) {
      case 0: p[i] = s.example; break;
      case 1: p[i] = s.lo_open ? s.lo + 1e-6 * (s.hi - s.lo) : s.lo; break;  // the edges the registry allows
      case 2: p[i] = s.hi_open ? s.hi - 1e-6 * (s.hi - s.lo) : s.hi; break;
      default: p[i] = s.lo + fr[in.range(0, 4)] * (s.hi - s.lo);
    }
    if (p[i] != 0.0 && std::abs(p[i]) < s.min_nonzero) p[i] = s.min_nonzero;
  }
  if (info.kind == kd::divergence_kind::alpha_beta) {
    // ABKD in its float32-conditioned region: alpha, beta in [1/4, 1], or the KL endpoints (1, 0) / (0, 1). Small
    // exponents amplify rounding by ~1 / (alpha beta |d|) (alpha_beta.hpp, "Accuracy"; tests/test_registry.cpp
    // measures it); this target's tolerances are those of the well-conditioned divergences.
    const int k = static_cast<int>(in.range(0, 5));
    if (k == 0) return kd::divergence::of(info.kind, 1.0, 0.0);
    if (k == 1) return kd::divergence::of(info.kind, 0.0, 1.0);
    for (double& v : p) v = 0.25 + 0.75 * static_cast<double>(in.range(0, 100)) / 100.0;
  }
  return kd::divergence::of(info.kind, p[0], p[1]);
}

// 1 - p_max from a row's sum of exp(u) split into the entries at the maximum (cnt) and the rest.
inline double tail_mass(double cnt, double tail) { return (cnt - 1.0 + tail) / (cnt + tail); }

template <class Z>
void run_case(reader& in) {
  const kd::divergence d = draw_divergence(in);
  const std::int64_t rows = in.range(1, 3);
  const std::int64_t V = in.flag() ? in.range(1, 40) : in.range(1, 5000);
  const double temps[] = {1.0, 2.0, 0.5, 3.0, 0.25, 1.5};
  const double T = temps[in.range(0, 5)];
  const double scale = in.flag() ? 1.0 : 3.0;
  const int mask_mode = static_cast<int>(in.range(0, 3));  // 0 none, 1 shared -inf entries, 2 student-only, 3 teacher-only
  const int rel = static_cast<int>(in.range(0, 3));        // 0 independent, 1 identical, 2 teacher = student + tiny, 3 bf16
  const bool dominant = in.flag();
  const double gap = 16.0 + static_cast<double>(in.range(0, 24));
  std::mt19937 gen(in.u32());
  std::normal_distribution<double> nd(0.0, scale);
  std::vector<Z> zs(static_cast<std::size_t>(rows * V)), zt(zs.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t top = in.range(0, V - 1);
    for (std::int64_t j = 0; j < V; ++j) {
      double s = nd(gen), t = nd(gen);
      if (rel == 1) t = s;
      if (rel == 2) t = s + 1e-3 * nd(gen);
      if (rel == 3) t = static_cast<double>(static_cast<float>(kd::bfloat16(static_cast<float>(s))));
      if (dominant && j == top) {
        s += gap * T;
        t += gap * T + (rel == 1 ? 0.0 : 0.3);
      }
      if (mask_mode != 0 && j != top && (gen() % 7) == 0) {
        if (mask_mode != 3) s = -inf;
        if (mask_mode != 2) t = -inf;
      }
      zs[r * V + j] = kd::from_double<Z>(s);
      zt[r * V + j] = kd::from_double<Z>(t);
    }
  }

  if (std::getenv("KD_FUZZ_DEBUG")) {
    std::fprintf(stderr, "%s(%g, %g) dtype %s rows %lld V %lld T %g scale %g mask %d rel %d dominant %d gap %g\n",
                 kd::divergence_name(d.kind), d.param, d.param2, std::is_same_v<Z, float> ? "float" : "bf16",
                 (long long)rows, (long long)V, T, scale, mask_mode, rel, int(dominant), gap);
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t j = 0; j < V; ++j)
        if (kd::to_double(zs[r * V + j]) > 10.0 || kd::to_double(zt[r * V + j]) > 10.0)
          std::fprintf(stderr, "  row %lld top %lld: %g %g\n", (long long)r, (long long)j, kd::to_double(zs[r * V + j]),
                       kd::to_double(zt[r * V + j]));
  }
  kd::distill_options o;
  o.temperature = T;
  o.reduction = kd::reduction::sum;
  std::vector<float> gs(zs.size()), gt(zs.size()), pr(static_cast<std::size_t>(rows));
  kd::distill_outputs<float> out;
  out.grad_student = kd::mut_rows<float>(gs.data(), rows, V);
  out.grad_teacher = kd::mut_rows<float>(gt.data(), rows, V);
  out.per_row = pr.data();
  kd::loss_result res;
  const kd::status sf = kd::divergence_loss(d, kd::student_logits(zs.data(), rows, V), kd::teacher_logits(zt.data(), rows, V),
                                            o, res, out, kd::simd_backend<>{});
  // The reference one row at a time: its loss in double (per_row is float32).
  std::vector<double> gsd(zs.size()), gtd(zs.size()), prd(static_cast<std::size_t>(rows));
  kd::status sr;
  for (std::int64_t r = 0; r < rows && sr.ok(); ++r) {
    kd::distill_outputs<double> od;
    od.grad_student = kd::mut_rows<double>(gsd.data() + r * V, 1, V);
    od.grad_teacher = kd::mut_rows<double>(gtd.data() + r * V, 1, V);
    kd::loss_result rr;
    sr = kd::divergence_loss(d, kd::student_logits(zs.data() + r * V, 1, V), kd::teacher_logits(zt.data() + r * V, 1, V),
                             o, rr, od, kd::reference_backend{});
    prd[r] = rr.loss;
  }
  KD_FUZZ_CHECK(sf.code == sr.code, "%s(%g, %g): simd %s, reference %s", kd::divergence_name(d.kind), d.param, d.param2,
                sf.to_string().c_str(), sr.to_string().c_str());
  if (!sf.ok()) {
    KD_FUZZ_CHECK(std::string(sf.argument) == sr.argument, "%s vs %s", sf.argument, sr.argument);
    return;
  }
  const double c = 1.0 / T;
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t o0 = r * V;
    KD_FUZZ_CHECK(pr[r] >= 0.0f && prd[r] >= 0.0, "row %lld: negative divergence %g / %g", (long long)r, double(pr[r]),
                  prd[r]);
    // The row's exponent range and tail masses, in double from the same inputs.
    double ms = -inf, mt = -inf, ymax = 0.0;
    for (std::int64_t j = 0; j < V; ++j) {
      const double a = kd::to_double(zs[o0 + j]) / T, b = kd::to_double(zt[o0 + j]) / T;
      ms = std::max(ms, a);
      mt = std::max(mt, b);
      if (std::isfinite(a)) ymax = std::max(ymax, std::abs(a));
      if (std::isfinite(b)) ymax = std::max(ymax, std::abs(b));
    }
    // Sums of exp(u) with the entries at the maximum counted apart (a confident tail is below 2^-53 of them).
    double ss_cnt = 0.0, ss_tail = 0.0, st_cnt = 0.0, st_tail = 0.0, umax = 0.0, lead_s = inf, lead_t = inf;
    for (std::int64_t j = 0; j < V; ++j) {
      const double us = kd::to_double(zs[o0 + j]) / T - ms, ut = kd::to_double(zt[o0 + j]) / T - mt;
      if (us < 0.0) lead_s = std::min(lead_s, -us);
      if (ut < 0.0) lead_t = std::min(lead_t, -ut);
      if (us == 0.0 && ss_cnt > 0.0) lead_s = 0.0;  // two entries at the maximum
      if (ut == 0.0 && st_cnt > 0.0) lead_t = 0.0;
      (us == 0.0 ? ss_cnt : ss_tail) += std::exp(us);
      (ut == 0.0 ? st_cnt : st_tail) += std::exp(ut);
      if (std::isfinite(us)) umax = std::max(umax, -us);
      if (std::isfinite(ut)) umax = std::max(umax, -ut);
    }
    const double ss = ss_cnt + ss_tail, st = st_cnt + st_tail, log_ss = std::log(ss), log_st = std::log(st);
    // The reference's log-probabilities of entry j, in double.
    const auto log_q = [&](std::int64_t j) { return kd::to_double(zs[o0 + j]) / T - ms - log_ss; };
    const auto log_p = [&](std::int64_t j) { return kd::to_double(zt[o0 + j]) / T - mt - log_st; };
    const bool masked_row = ms == -inf || mt == -inf;  // a fully masked side: the row does not count
    if (masked_row) continue;
    const double tail = tail_mass(ss_cnt, ss_tail) + tail_mass(st_cnt, st_tail);
    const double l = prd[r], e = 8.0 * 0x1p-24 * (ymax + 1.0);
    // Confident (section 1 of the issue): on both sides one token is ahead of every other by at least 16 nats.
    // ABKD with exponents below 1 is excluded: its tail terms x^a y^b ~ e^-(a + b) gap are not tail-mass sized, and its
    // confident-row floor is not this one's (general tolerance there).
    const bool confident = dominant && lead_s >= 16.0 && lead_t >= 16.0 &&
                           !(d.kind == kd::divergence_kind::alpha_beta && kd::canonical_divergence(d).kind == d.kind);
    // The float32 floor of a confident row (tests/test_simd_dominant.cpp): each tail sum carries up to 2^-24 umax of
    // its tail mass, and a row whose two tails nearly cancel (a teacher equal to the student except at the top
    // token) has a loss far below its tail masses: found by this target, 3.4e-5 relative at V = 2080, T = 3.
    const double loss_floor = 4.0 * tail * std::ldexp(umax, -24);
    // ABKD's D_j = (v_j + w_j) / (alpha + beta) cancels where |d| is small (alpha_beta.hpp, "Accuracy"): its float32
    // error is e sum_j (|v_j| + |w_j|) / (alpha + beta), up to ~4 / ((alpha + beta) |d|) times KL's (found by this
    // target: 1e-5 relative at alpha = 0, beta = 0.01).
    double ab_cond = 0.0;
    if (d.kind == kd::divergence_kind::alpha_beta && d.param + d.param2 > 0.0) {
      const auto f = kd::divergences::alpha_beta::make(d.param, d.param2);
      for (std::int64_t j = 0; j < V; ++j) {
        const double lq = log_q(j), lp = log_p(j);
        double v = 0.0, w = 0.0, dj = 0.0;
        f.terms(lp, lq, lp - lq, v, w, dj);  // x = p (teacher), y = q
        if (std::isfinite(v) && std::isfinite(w)) ab_cond += (std::abs(v) + std::abs(w)) / (d.param + d.param2);
      }
    }
    // alpha = beta = 0: D = sum_j d_j^2 / 2, whose float32 error is sum_j |d_j| times d_j's rounding, a few 2^-24
    // (|log p_j| + |log q_j|): the squares weight the log-ratios by themselves, not by probabilities.
    if (d.kind == kd::divergence_kind::alpha_beta && d.param + d.param2 == 0.0)
      for (std::int64_t j = 0; j < V; ++j) {
        const double lq = log_q(j), lp = log_p(j);
        if (std::isfinite(lq) && std::isfinite(lp)) ab_cond += std::abs(lp - lq) * (std::abs(lp) + std::abs(lq) + 1.0) / (ymax + 1.0);
      }
    const double ltol = confident ? std::max({1e-5 * std::abs(l), 1e-12, loss_floor}) + e * ab_cond
                                  : e * (1.0 + std::abs(l) + ab_cond);
    KD_FUZZ_CHECK(std::abs(double(pr[r]) - l) <= ltol, "%s(%g, %g) V %lld T %g row %lld%s: loss %.9g vs %.9g (tol %.3g)",
                  kd::divergence_name(d.kind), d.param, d.param2, (long long)V, T, (long long)r,
                  confident ? " (confident)" : "", double(pr[r]), l, ltol);
    // TVD's gradient has a jump where p_j = q_j (s = sign(q - p)): an entry whose log-ratio is within float32 rounding
    // of 0 (|d| <= e) may take either sign, changing its own entry by up to c y_j and every entry's centring by
    // c y_i sum_k y_k over such k. Those are allowed (amb_q / amb_p: that mass per side).
    const bool tvd = d.kind == kd::divergence_kind::tvd;
    double amb_q = 0.0, amb_p = 0.0;
    std::vector<char> amb(static_cast<std::size_t>(V), 0);
    if (tvd)
      for (std::int64_t j = 0; j < V; ++j) {
        const double lq = log_q(j), lp = log_p(j);
        if (std::abs(lq - lp) <= 8.0 * 0x1p-24 * (ymax + 1.0)) {
          amb[j] = 1;
          amb_q += std::exp(lq);
          amb_p += std::exp(lp);
        }
      }
    for (int side = 0; side < 2; ++side) {
      const std::vector<float>& g = side ? gt : gs;
      const std::vector<double>& gd = side ? gtd : gsd;
      double gm = 0.0;
      for (std::int64_t j = 0; j < V; ++j) gm = std::max(gm, std::abs(gd[o0 + j]));
      const double floor_bound = 4.0 * c * tail * std::ldexp(umax, -24);
      for (std::int64_t j = 0; j < V; ++j) {
        const double gref = gd[o0 + j], err = std::abs(double(g[o0 + j]) - gref);
        double tol = confident ? std::max(1e-5 * gm, floor_bound) : e * (c * (1.0 + std::abs(l)) + std::abs(gref));
        if (d.kind == kd::divergence_kind::alpha_beta && d.param + d.param2 == 0.0) {
          // D = sum d^2 / 2: every entry's gradient is O(|d_j|) (w_j = -d_j), whatever its probability, so it carries
          // d_j's own rounding, a few 2^-24 (|log p_j| + |log q_j| + 1), and y_j times the sum of those.
          double sum_r = 0.0, rj = 0.0, yj = 0.0;
          for (std::int64_t i = 0; i < V; ++i) {
            const double lq = log_q(i), lp = log_p(i);
            const double ri = std::isfinite(lq) && std::isfinite(lp) ? std::abs(lq) + std::abs(lp) + 1.0 : 0.0;
            sum_r += ri;
            if (i == j) {
              rj = ri;
              yj = std::exp(side ? lp : lq);
            }
          }
          tol += 8.0 * 0x1p-24 * c * (rj + yj * sum_r);
        }
        if (tvd) {
          const double lv = side ? log_p(j) : log_q(j);
          tol += c * std::exp(lv) * ((amb[j] ? 1.0 : 0.0) + (side ? amb_p : amb_q));
        }
        KD_FUZZ_CHECK(err <= tol, "%s(%g, %g) V %lld T %g row %lld %s[%lld]%s: %.9g vs %.9g (error %.3g, tol %.3g)",
                      kd::divergence_name(d.kind), d.param, d.param2, (long long)V, T, (long long)r,
                      side ? "grad_teacher" : "grad_student", (long long)j, confident ? " (confident)" : "",
                      double(g[o0 + j]), gref, err, tol);
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  reader in(data, size);
  if (in.flag()) run_case<float>(in);
  else run_case<kd::bfloat16>(in);
  return 0;
}
