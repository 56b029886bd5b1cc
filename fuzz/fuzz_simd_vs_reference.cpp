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
//   - per row, on confident rows (the section-1 tolerances): |l - l_ref| <= max(1e-5 |l_ref|, 1e-12) and
//     every gradient entry within max(1e-5 of the row's largest entry, the float32 floor 4 c (t_s + t_t) 2^-24 umax)
//     (tests/test_simd_dominant.cpp derives both);
//   - on other rows, the SIMD suite's tolerance (tests/test_simd_util.hpp): e = 8 2^-24 (|y|max + 1),
//     |l - l_ref| <= e (1 + |l_ref|), |g - g_ref| <= e (c (1 + |l_ref|) + |g_ref|), c = 1 / T;
//   - per-row values >= 0 on both backends.
#include <kd/backend/reference.hpp>
#include <kd/backend/simd.hpp>
#include <kd/divergence.hpp>
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
  return kd::divergence::of(info.kind, p[0], p[1]);
}

template <class T>
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
  std::vector<T> zs(static_cast<std::size_t>(rows * V)), zt(zs.size());
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
      zs[r * V + j] = kd::from_double<T>(s);
      zt[r * V + j] = kd::from_double<T>(t);
    }
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
  std::vector<double> gsd(zs.size()), gtd(zs.size()), prd(static_cast<std::size_t>(rows));
  kd::distill_outputs<double> od;
  od.grad_student = kd::mut_rows<double>(gsd.data(), rows, V);
  od.grad_teacher = kd::mut_rows<double>(gtd.data(), rows, V);
  od.per_row = prd.data();
  kd::loss_result rr;
  const kd::status sr = kd::divergence_loss(d, kd::student_logits(zs.data(), rows, V), kd::teacher_logits(zt.data(), rows, V),
                                            o, rr, od, kd::reference_backend{});
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
    double ss = 0.0, st = 0.0, umax = 0.0;
    for (std::int64_t j = 0; j < V; ++j) {
      const double us = kd::to_double(zs[o0 + j]) / T - ms, ut = kd::to_double(zt[o0 + j]) / T - mt;
      ss += std::exp(us);
      st += std::exp(ut);
      if (std::isfinite(us)) umax = std::max(umax, -us);
      if (std::isfinite(ut)) umax = std::max(umax, -ut);
    }
    const bool masked_row = ms == -inf || mt == -inf;  // a fully masked side: the row does not count
    if (masked_row) continue;
    const double l = prd[r], e = 8.0 * 0x1p-24 * (ymax + 1.0);
    const bool confident = dominant && umax >= 16.0;
    const double ltol = confident ? std::max(1e-5 * std::abs(l), 1e-12) : e * (1.0 + std::abs(l));
    KD_FUZZ_CHECK(std::abs(double(pr[r]) - l) <= ltol, "%s(%g, %g) V %lld T %g row %lld%s: loss %.9g vs %.9g (tol %.3g)",
                  kd::divergence_name(d.kind), d.param, d.param2, (long long)V, T, (long long)r,
                  confident ? " (confident)" : "", double(pr[r]), l, ltol);
    const double tail = (1.0 - 1.0 / ss) + (1.0 - 1.0 / st);
    for (int side = 0; side < 2; ++side) {
      const std::vector<float>& g = side ? gt : gs;
      const std::vector<double>& gd = side ? gtd : gsd;
      double gm = 0.0;
      for (std::int64_t j = 0; j < V; ++j) gm = std::max(gm, std::abs(gd[o0 + j]));
      const double floor_bound = 4.0 * c * tail * std::ldexp(umax, -24);
      for (std::int64_t j = 0; j < V; ++j) {
        const double gref = gd[o0 + j], err = std::abs(double(g[o0 + j]) - gref);
        const double tol = confident ? std::max(1e-5 * gm, floor_bound) : e * (c * (1.0 + std::abs(l)) + std::abs(gref));
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
