// kd::topk_divergence_loss: a full-vocabulary student against a teacher given as top-k ids and log-probs, every mode,
// every registered divergence, on the reference backend (double), the SIMD backend and every kd::dispatch instruction
// set.
//
// Oracles (none of them is the fused driver):
//   tail_bucket   the composed path kd had before: topk_with_tail (student), topk_with_tail_from_log_probs (teacher),
//                 the dense kd::divergence_loss on the k + 1 compressed log-probs, topk_with_tail_backward; with k = V,
//                 the dense divergence on the full rows.
//   renormalize   the dense kd::divergence_loss on the k support logits of each side (the teacher's values times T as
//                 logits at temperature T), its gradient scattered to the support.
//   unnormalized_forward_kl  its formula in plain double loops.
//   and central finite differences of the reference backend's loss for every mode and divergence.
// Tolerances. Reference vs oracles: both in double, differing in the order of sums over V <= 64 terms and in the
// compressed rows' normalization: 2^-40 relative (about 2^13 ulps: V 2^-53 per sum, a few sums and logs, and the
// conditioning of log1mexp near a tail of 1e-3, which amplifies by 1 / tail). Finite differences with step h = 1e-5 on
// rows of moderate scale: truncation h^2 |f'''| / 6 ~ 1e-10 and rounding 2^-53 |f| / h ~ 1e-11, so 1e-7 absolute on
// each derivative is a margin of 1000. SIMD vs reference: the bound of every SIMD path of kd (tests/test_simd_util.hpp):
// eps = 8 2^-24 (max |z| / T + 1) relative to the scale of the terms (the float32 rounding of z / T - max).
#include <catch2/catch.hpp>

#include <kd/topk_teacher.hpp>
#if defined(KD_TEST_DISPATCH)
#include <kd/backend/dispatch.hpp>
#endif

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

#include "test_util.hpp"

namespace {

constexpr double ninf = -std::numeric_limits<double>::infinity();

struct result {
  kd::status st;
  double loss = 777.0;
  std::vector<double> g, per_row;
};

// One call with S-typed student rows, float32 (or P-typed) teacher values, G-typed gradients; outputs pre-filled with
// a poison value.
template <class G = double, class S, class P, class Backend>
result run(const kd::divergence& d, const std::vector<S>& zs, std::int64_t rows, std::int64_t V,
           const std::vector<std::int64_t>& idx, const std::vector<P>& tlp, std::int64_t k, kd::topk_mode mode,
           const kd::distill_options& o, const Backend& be, bool grad = true) {
  result res;
  std::vector<G> g(zs.size(), G(777.0));
  std::vector<float> pr(static_cast<std::size_t>(rows), 777.0f);
  kd::distill_outputs<G> out;
  if (grad) out.grad_student = kd::mut_rows<G>(g.data(), rows, V);
  out.per_row = pr.data();
  kd::loss_result lr;
  lr.loss = 777.0;
  res.st = kd::topk_divergence_loss(d, kd::student_logits(zs.data(), rows, V),
                                    kd::teacher_topk(idx.data(), tlp.data(), rows, k, mode), o, lr, out, be);
  res.loss = lr.loss;
  for (const G& v : g) res.g.push_back(static_cast<double>(v));
  for (float v : pr) res.per_row.push_back(v);
  return res;
}

// Distinct random ids per row (k of V), always including `must` when >= 0 (e.g. a row's top token).
std::vector<std::int64_t> random_ids(std::int64_t rows, std::int64_t V, std::int64_t k, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<std::int64_t> out, perm(static_cast<std::size_t>(V));
  for (std::int64_t r = 0; r < rows; ++r) {
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), gen);
    out.insert(out.end(), perm.begin(), perm.begin() + k);
  }
  return out;
}

// The teacher's stored top-k: log-softmax of teacher logits (T = 1), gathered at the ids.
std::vector<double> gather_log_probs(const std::vector<double>& zt, std::int64_t rows, std::int64_t V,
                                     const std::vector<std::int64_t>& idx, std::int64_t k) {
  std::vector<double> lp(zt.size()), out;
  REQUIRE(kd::log_softmax(kd::const_rows<double>(zt.data(), rows, V), kd::mut_rows<double>(lp.data(), rows, V), 1.0,
                          kd::reference_backend{})
              .ok());
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = 0; i < k; ++i) out.push_back(lp[r * V + idx[r * k + i]]);
  return out;
}

// Oracle of tail_bucket: the composed path (sum reduction, all rows valid).
result composed_tail(const kd::divergence& d, const std::vector<double>& zs, std::int64_t rows, std::int64_t V,
                     const std::vector<std::int64_t>& idx, const std::vector<double>& tlp, std::int64_t k, double T) {
  const kd::reference_backend ref;
  std::vector<double> tc(rows * (k + 1)), sc(rows * (k + 1)), gc(rows * (k + 1));
  kd::const_rows<std::int64_t> iv(idx.data(), rows, k);
  REQUIRE(kd::topk_with_tail_from_log_probs(kd::const_rows<double>(tlp.data(), rows, k),
                                            kd::mut_rows<double>(tc.data(), rows, k + 1), ref)
              .ok());
  REQUIRE(kd::topk_with_tail(kd::const_rows<double>(zs.data(), rows, V), iv, T,
                             kd::mut_rows<double>(sc.data(), rows, k + 1), ref)
              .ok());
  kd::distill_options o;
  o.reduction = kd::reduction::sum;
  kd::distill_outputs<double> out;
  out.grad_student = kd::mut_rows<double>(gc.data(), rows, k + 1);
  kd::loss_result lr;
  result res;
  res.st = kd::divergence_loss(d, kd::student_log_probs(sc.data(), rows, k + 1),
                               kd::teacher_log_probs(tc.data(), rows, k + 1), o, lr, out, ref);
  REQUIRE(res.st.ok());
  res.loss = lr.loss;
  res.g.assign(zs.size(), 0.0);
  REQUIRE(kd::topk_with_tail_backward(kd::const_rows<double>(zs.data(), rows, V), iv, T,
                                      kd::const_rows<double>(gc.data(), rows, k + 1),
                                      kd::mut_rows<double>(res.g.data(), rows, V), ref)
              .ok());
  return res;
}

// Oracle of renormalize: the dense divergence on the support (sum reduction).
result dense_on_support(const kd::divergence& d, const std::vector<double>& zs, std::int64_t rows, std::int64_t V,
                        const std::vector<std::int64_t>& idx, const std::vector<double>& tlp, std::int64_t k,
                        double T) {
  std::vector<double> s(rows * k), t(rows * k), gk(rows * k);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = 0; i < k; ++i) {
      s[r * k + i] = zs[r * V + idx[r * k + i]];
      t[r * k + i] = tlp[r * k + i] * T;
    }
  kd::distill_options o;
  o.reduction = kd::reduction::sum;
  o.temperature = T;
  kd::distill_outputs<double> out;
  out.grad_student = kd::mut_rows<double>(gk.data(), rows, k);
  kd::loss_result lr;
  result res;
  res.st = kd::divergence_loss(d, kd::student_logits(s.data(), rows, k), kd::teacher_logits(t.data(), rows, k), o, lr,
                               out, kd::reference_backend{});
  REQUIRE(res.st.ok());
  res.loss = lr.loss;
  res.g.assign(zs.size(), 0.0);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = 0; i < k; ++i) res.g[r * V + idx[r * k + i]] = gk[r * k + i];
  return res;
}

// Oracle of unnormalized_forward_kl: sum_i p_i (log p_i - log q_i), gradient (1/T)(P q_j - p_j), plain loops.
result unnormalized_fkl(const std::vector<double>& zs, std::int64_t rows, std::int64_t V,
                        const std::vector<std::int64_t>& idx, const std::vector<double>& tlp, std::int64_t k,
                        double T) {
  result res;
  res.loss = 0.0;
  res.g.assign(zs.size(), 0.0);
  for (std::int64_t r = 0; r < rows; ++r) {
    const double* z = zs.data() + r * V;
    double m = ninf;
    for (std::int64_t j = 0; j < V; ++j) m = std::max(m, z[j] / T);
    double s = 0.0;
    for (std::int64_t j = 0; j < V; ++j) s += std::exp(z[j] / T - m);
    const double lse = m + std::log(s);
    double mass = 0.0;
    for (std::int64_t i = 0; i < k; ++i) mass += std::exp(tlp[r * k + i]);
    for (std::int64_t j = 0; j < V; ++j) res.g[r * V + j] = mass * std::exp(z[j] / T - lse) / T;
    for (std::int64_t i = 0; i < k; ++i) {
      const double lp = tlp[r * k + i], lq = z[idx[r * k + i]] / T - lse;
      if (lp != ninf) res.loss += std::exp(lp) * (lp - lq);
      res.g[r * V + idx[r * k + i]] -= std::exp(lp) / T;
    }
  }
  return res;
}

void check_close(const result& a, const result& b, double rel, double abs_g, const std::string& what) {
  INFO(what);
  REQUIRE(a.st.ok());
  CHECK(std::abs(a.loss - b.loss) <= rel * (1.0 + std::abs(b.loss)));
  REQUIRE(a.g.size() == b.g.size());
  double worst = 0.0;
  std::size_t at = 0;
  for (std::size_t i = 0; i < a.g.size(); ++i) {
    const double e = std::abs(a.g[i] - b.g[i]) / (abs_g + rel * std::abs(b.g[i]));
    if (!(e <= worst)) worst = e, at = i;
  }
  INFO("worst gradient error / tolerance " << worst << " at " << at << ": " << a.g[at] << " vs " << b.g[at]);
  CHECK(worst <= 1.0);
}

const kd::topk_mode kModes[3] = {kd::topk_mode::tail_bucket, kd::topk_mode::renormalize,
                                 kd::topk_mode::unnormalized_forward_kl};

std::vector<kd::divergence> divergences_for(kd::topk_mode m) {
  if (m == kd::topk_mode::unnormalized_forward_kl) return {kd::divergence::forward_kl()};
  return kdt::kAllDivergences;
}

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

}  // namespace

namespace {

// Every registered divergence, ks support sizes, T = 1 and 2: the reference backend's fused call against
// oracle(d, zs, rows, V, idx, tlp, k, T) on random rows (sum reduction).
template <class Oracle>
void check_against_oracle(kd::topk_mode mode, std::int64_t V, std::initializer_list<std::int64_t> ks,
                          std::uint32_t seed, Oracle oracle) {
  const std::int64_t rows = 5;
  const auto zs = kdt::random_logits(rows, V, seed, 2.5), zt = kdt::random_logits(rows, V, seed + 1, 2.5);
  for (std::int64_t k : ks) {
    const auto idx = random_ids(rows, V, k, seed + 2 + static_cast<std::uint32_t>(k));
    const auto tlp = gather_log_probs(zt, rows, V, idx, k);
    for (double T : {1.0, 2.0}) {
      kd::distill_options o;
      o.temperature = T;
      o.reduction = kd::reduction::sum;
      for (const auto& d : kdt::kAllDivergences) {
        const result a = run(d, zs, rows, V, idx, tlp, k, mode, o, kd::reference_backend{});
        const result b = oracle(d, zs, rows, V, idx, tlp, k, T);
        check_close(a, b, std::ldexp(1.0, -40), std::ldexp(1.0, -40),
                    kdt::describe(d) + " k=" + std::to_string(k) + " T=" + std::to_string(T));
      }
    }
  }
}

}  // namespace

TEST_CASE("topk teacher, tail_bucket: the fused call equals the composed top-k path for every divergence",
          "[topk_teacher]") {
  check_against_oracle(kd::topk_mode::tail_bucket, 64, {1, 7, 63}, 101, composed_tail);
}

TEST_CASE("topk teacher, tail_bucket with k = V is the dense divergence", "[topk_teacher]") {
  const std::int64_t rows = 4, V = 23;
  const auto zs = kdt::random_logits(rows, V, 111, 2.0), zt = kdt::random_logits(rows, V, 112, 2.0);
  const auto idx = random_ids(rows, V, V, 113);
  const auto tlp = gather_log_probs(zt, rows, V, idx, V);
  std::vector<double> tfull(rows * V);  // the teacher's log-probs as a dense row (logits at T = 1)
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = 0; i < V; ++i) tfull[r * V + idx[r * V + i]] = tlp[r * V + i];
  kd::distill_options o;
  o.reduction = kd::reduction::sum;
  for (const auto& d : kdt::kAllDivergences) {
    const result a = run(d, zs, rows, V, idx, tlp, V, kd::topk_mode::tail_bucket, o, kd::reference_backend{});
    result b;
    b.g.assign(zs.size(), 0.0);
    kd::distill_outputs<double> out;
    out.grad_student = kd::mut_rows<double>(b.g.data(), rows, V);
    kd::loss_result lr;
    b.st = kd::divergence_loss(d, kd::student_logits(zs.data(), rows, V), kd::teacher_log_probs(tfull.data(), rows, V),
                               o, lr, out, kd::reference_backend{});
    REQUIRE(b.st.ok());
    b.loss = lr.loss;
    check_close(a, b, std::ldexp(1.0, -40), std::ldexp(1.0, -40), kdt::describe(d));
  }
}

TEST_CASE("topk teacher, renormalize: the dense divergence on the support, zero gradient elsewhere", "[topk_teacher]") {
  check_against_oracle(kd::topk_mode::renormalize, 50, {1, 6, 50}, 121, dense_on_support);
}

TEST_CASE("topk teacher, unnormalized forward KL: its formula, negative values kept", "[topk_teacher]") {
  const std::int64_t rows = 6, V = 40;
  auto zs = kdt::random_logits(rows, V, 131, 2.0);
  const auto zt = kdt::random_logits(rows, V, 132, 2.0);
  const std::int64_t k = 5;
  const auto idx = random_ids(rows, V, k, 133);
  const auto tlp = gather_log_probs(zt, rows, V, idx, k);
  // Row 0: the student puts almost all its mass on the teacher's support: the truncated sum is negative.
  for (std::int64_t i = 0; i < k; ++i) zs[idx[i]] = 12.0;
  for (double T : {1.0, 0.5, 3.0}) {
    kd::distill_options o;
    o.temperature = T;
    o.reduction = kd::reduction::sum;
    const result a =
        run(kd::divergence::forward_kl(), zs, rows, V, idx, tlp, k, kd::topk_mode::unnormalized_forward_kl, o,
            kd::reference_backend{});
    const result b = unnormalized_fkl(zs, rows, V, idx, tlp, k, T);
    check_close(a, b, std::ldexp(1.0, -40), std::ldexp(1.0, -40), "T=" + std::to_string(T));
    CHECK(a.per_row[0] < 0.0f);
  }
}

TEST_CASE("topk teacher: gradients match finite differences of the loss (double, every mode and divergence)",
          "[topk_teacher]") {
  const std::int64_t rows = 2, V = 17, k = 4;
  const auto zs = kdt::random_logits(rows, V, 141, 1.5), zt = kdt::random_logits(rows, V, 142, 1.5);
  const auto idx = random_ids(rows, V, k, 143);
  const auto tlp = gather_log_probs(zt, rows, V, idx, k);
  const double h = 1e-5;
  for (kd::topk_mode mode : kModes)
    for (const auto& d : divergences_for(mode)) {
      kd::distill_options o;
      o.temperature = 1.5;
      o.reduction = kd::reduction::sum;
      const result a = run(d, zs, rows, V, idx, tlp, k, mode, o, kd::reference_backend{});
      REQUIRE(a.st.ok());
      double worst = 0.0;
      for (std::size_t j = 0; j < zs.size(); ++j) {
        auto zp = zs, zm = zs;
        zp[j] += h;
        zm[j] -= h;
        const double fp = run(d, zp, rows, V, idx, tlp, k, mode, o, kd::reference_backend{}, false).loss;
        const double fm = run(d, zm, rows, V, idx, tlp, k, mode, o, kd::reference_backend{}, false).loss;
        worst = std::max(worst, std::abs((fp - fm) / (2 * h) - a.g[j]));
      }
      INFO(kdt::describe(d) << " mode " << kd::topk_mode_name(mode) << ": worst |fd - grad| " << worst);
      CHECK(worst <= 1e-7);
    }
}

namespace {

// SIMD (or dispatch) backend vs the reference backend on float inputs: loss, per-row values and gradients.
template <class Backend>
void check_simd(const Backend& be, const std::string& name) {
  const std::int64_t rows = 7, V = 300, k = 20;
  auto zs = kdt::random_logits<float>(rows, V, 151, 3.0);
  const auto zt = kdt::random_logits(rows, V, 152, 3.0);
  // Row 1: a confident student (top token ahead by 25 nats) whose top token is on the support; row 2: off it.
  const auto idx = random_ids(rows, V, k, 153);
  for (std::int64_t j = 0; j < V; ++j) zs[V + j] = 0.1f * static_cast<float>(j % 5);
  zs[V + idx[k + 3]] = 25.0f;
  for (std::int64_t j = 0; j < V; ++j) zs[2 * V + j] = 0.1f * static_cast<float>(j % 5);
  std::int64_t off = 0;
  while (std::find(idx.begin() + 2 * k, idx.begin() + 3 * k, off) != idx.begin() + 3 * k) ++off;
  zs[2 * V + off] = 25.0f;
  const auto tlp = cast<float>(gather_log_probs(zt, rows, V, idx, k));
  const std::vector<double> zsd(zs.begin(), zs.end());
  const std::vector<double> tlpd(tlp.begin(), tlp.end());
  std::vector<float> w = {1.0f, 0.5f, 2.0f, 0.0f, 1.0f, 1.0f, 3.0f};
  for (kd::topk_mode mode : kModes)
    for (const auto& d : divergences_for(mode))
      for (double T : {1.0, 2.0}) {
        kd::distill_options o;
        o.temperature = T;
        o.reduction = kd::reduction::mean;
        o.row_weights = w.data();
        const result a = run<float>(d, zs, rows, V, idx, tlp, k, mode, o, be);
        const result b = run<double>(d, zsd, rows, V, idx, tlpd, k, mode, o, kd::reference_backend{});
        INFO(name << " " << kdt::describe(d) << " mode " << kd::topk_mode_name(mode) << " T=" << T);
        REQUIRE(a.st.ok());
        REQUIRE(b.st.ok());
        double zmax = 0.0;
        for (float v : zs) zmax = std::max(zmax, std::abs(double(v)));
        const double eps = 8.0 * std::ldexp(1.0, -24) * (zmax / T + 1.0);
        double lmax = 0.0;
        for (double v : b.per_row) lmax = std::max(lmax, std::abs(v));
        CHECK(std::abs(a.loss - b.loss) <= eps * (1.0 + lmax) * rows);
        for (std::int64_t r = 0; r < rows; ++r) CHECK(std::abs(a.per_row[r] - b.per_row[r]) <= eps * (1.0 + lmax) * 3.0);
        const double gscale = 3.0 / 8.5 / T;  // the largest row scale: weight / sum of weights / T
        double worst = 0.0;
        for (std::size_t j = 0; j < a.g.size(); ++j)
          worst = std::max(worst, std::abs(a.g[j] - b.g[j]) / (eps * (gscale * (1.0 + lmax) + std::abs(b.g[j]))));
        INFO("worst gradient error / tolerance " << worst);
        CHECK(worst <= 1.0);
      }
}

}  // namespace

TEST_CASE("topk teacher: the SIMD backend and every dispatch instruction set agree with the reference",
          "[topk_teacher][simd]") {
  check_simd(kd::default_backend{}, "default");
#if defined(KD_TEST_DISPATCH)
  for (kd::simd_isa isa : {kd::simd_isa::sse2, kd::simd_isa::sse4_2, kd::simd_isa::avx2, kd::simd_isa::avx512})
    if (kd::simd_isa_available(isa)) check_simd(kd::dispatch_backend{isa, 1}, kd::simd_isa_name(isa));
#endif
}

TEST_CASE("topk teacher: a confident student's tail mass comes from a log-sum-exp, not 1 - sum", "[topk_teacher]") {
  // V = 1000, the student's top token ahead by 40 nats: q_tail = 999 e^-40 / (1 + 999 e^-40) = 4.2e-15, far below
  // float32's 2^-24 of 1 (1 - q_top is 0 in float32). The teacher: top token p = 1 - 1e-10, stored as log(p).
  const std::int64_t V = 1000, k = 1;
  std::vector<float> zs(V, 0.0f);
  zs[7] = 40.0f;
  const std::vector<std::int64_t> idx = {7};
  const double p_tail = 1e-10;
  const std::vector<float> tlp = {static_cast<float>(std::log1p(-p_tail))};
  const double p_top = std::exp(double(tlp[0])), pt = -std::expm1(double(tlp[0]));  // the stored value's own tail
  const double q_tail = 999.0 * std::exp(-40.0) / (1.0 + 999.0 * std::exp(-40.0)), q_top = 1.0 / (1.0 + 999.0 * std::exp(-40.0));
  const double log_q_top = -std::log1p(999.0 * std::exp(-40.0));  // log forms: log(p_top) would lose 1e-6 of 1e-10
  const double fkl = p_top * (double(tlp[0]) - log_q_top) + pt * (std::log(pt) - std::log(q_tail));
  kd::distill_options o;
  o.reduction = kd::reduction::sum;
  const result ref = run(kd::divergence::forward_kl(), std::vector<double>(zs.begin(), zs.end()), 1, V, idx,
                         std::vector<double>(tlp.begin(), tlp.end()), k, kd::topk_mode::tail_bucket, o,
                         kd::reference_backend{});
  const result simd = run<float>(kd::divergence::forward_kl(), zs, 1, V, idx, tlp, k, kd::topk_mode::tail_bucket, o,
                                 kd::default_backend{});
  // The loss is 9.2e-10, from the tail alone: relative accuracy of the tail's sums (double: 1e-12; float32 lanes with
  // double chunk sums: 1e-6).
  CHECK(ref.loss == Approx(fkl).epsilon(1e-9));
  CHECK(simd.loss == Approx(fkl).epsilon(1e-5));
  // Gradient off the support: (q_tail - p_tail) q_j / q_tail = (q_tail - p_tail) / 999 each (FKL's dKL/dz = q - p).
  const double g_off = (q_tail - pt) / 999.0;
  CHECK(ref.g[0] == Approx(g_off).epsilon(1e-9));
  CHECK(simd.g[0] == Approx(g_off).epsilon(1e-5));
  CHECK(ref.g[7] == Approx(pt - q_tail).epsilon(1e-9));  // q_top - p_top without the cancellation
  CHECK(simd.g[7] == Approx(pt - q_tail).epsilon(1e-5));
  (void)q_top;
}

TEST_CASE("topk teacher: masks, ignored rows with padding ids, in place, threads, bf16", "[topk_teacher]") {
  const std::int64_t rows = 6, V = 40, k = 4;
  auto zs = kdt::random_logits<float>(rows, V, 161, 2.0, 0.1);
  const auto zt = kdt::random_logits(rows, V, 162, 2.0);
  auto idx = random_ids(rows, V, k, 163);
  auto tlp = cast<float>(gather_log_probs(zt, rows, V, idx, k));
  for (std::int64_t r = 0; r < rows; ++r)  // masked entries off the support only (forward KL is +inf on them)
    for (std::int64_t i = 0; i < k; ++i)
      if (std::isinf(zs[r * V + idx[r * k + i]])) zs[r * V + idx[r * k + i]] = 0.5f;
  const float nf = -std::numeric_limits<float>::infinity();
  for (std::int64_t j = 0; j < V; ++j) zs[2 * V + j] = nf;  // row 2: the student fully masked: does not count
  for (std::int64_t i = 0; i < k; ++i) idx[4 * k + i] = -1;  // row 4: ignored, padding ids
  std::vector<std::int64_t> labels = {0, 1, 2, 3, -100, 5};
  kd::distill_options o;
  o.labels = kd::label_view(labels.data(), rows);
  for (kd::topk_mode mode : kModes) {
    INFO(kd::topk_mode_name(mode));
    const auto d = kd::divergence::forward_kl();
    const result a = run<float>(d, zs, rows, V, idx, tlp, k, mode, o, kd::default_backend{});
    REQUIRE(a.st.ok());
    for (std::int64_t j = 0; j < V; ++j) {
      CHECK(a.g[2 * V + j] == 0.0);
      CHECK(a.g[4 * V + j] == 0.0);
    }
    CHECK(a.per_row[2] == 0.0f);
    CHECK(a.per_row[4] == 0.0f);
    // mean over the 4 rows that count: the same as the sum of those rows / 4
    kd::distill_options os = o;
    os.reduction = kd::reduction::sum;
    const result s = run<float>(d, zs, rows, V, idx, tlp, k, mode, os, kd::default_backend{});
    CHECK(a.loss == Approx(s.loss / 4.0).epsilon(1e-6));
    // In place: the gradient written over the student buffer.
    auto buf = zs;
    kd::loss_result lr;
    kd::distill_outputs<float> out;
    out.grad_student = kd::mut_rows<float>(buf.data(), rows, V);
    REQUIRE(kd::topk_divergence_loss(d, kd::student_logits(buf.data(), rows, V),
                                     kd::teacher_topk(idx.data(), tlp.data(), rows, k, mode), o, lr, out)
                .ok());
    // Row 2 (masked) changes the mean's denominator after pass 1: in place, the written rows are rescaled by 5/4, one
    // more float32 rounding of each entry (2^-24 relative; the test allows 2^-22).
    CHECK(lr.loss == a.loss);
    for (std::size_t j = 0; j < buf.size(); ++j) CHECK(double(buf[j]) == Approx(a.g[j]).epsilon(std::ldexp(1.0, -22)));
  }
  // Bitwise identical for any thread count (enough elements for the executor: 2^16).
  {
    const std::int64_t R = 64, W = 5000, kk = 16;
    const auto z = kdt::random_logits<float>(R, W, 171, 3.0);
    const auto id = random_ids(R, W, kk, 172);
    const auto lp = cast<float>(gather_log_probs(kdt::random_logits(R, W, 173, 3.0), R, W, id, kk));
    kd::distill_options om;
    const auto d = kd::divergence::jsd(0.5);
    const result one = run<float>(d, z, R, W, id, lp, kk, kd::topk_mode::tail_bucket, om,
                                  kd::simd_backend<>{kd::thread_executor{1}});
    const result two = run<float>(d, z, R, W, id, lp, kk, kd::topk_mode::tail_bucket, om,
                                  kd::simd_backend<>{kd::thread_executor{2}});
    CHECK(one.loss == two.loss);
    CHECK(std::memcmp(one.g.data(), two.g.data(), one.g.size() * sizeof(double)) == 0);
  }
  // bf16 student: the reference on the same (rounded) values.
  {
    std::vector<kd::bfloat16> zb;
    for (float v : zs) zb.push_back(kd::bfloat16(v));
    std::vector<double> zbd;
    for (const auto& v : zb) zbd.push_back(static_cast<double>(static_cast<float>(v)));
    const auto d = kd::divergence::reverse_kl();
    const result a = run<float>(d, zb, rows, V, idx, tlp, k, kd::topk_mode::tail_bucket, o, kd::default_backend{});
    const result b = run<double>(d, zbd, rows, V, idx, std::vector<double>(tlp.begin(), tlp.end()), k,
                                 kd::topk_mode::tail_bucket, o, kd::reference_backend{});
    REQUIRE(a.st.ok());
    CHECK(a.loss == Approx(b.loss).epsilon(1e-5));
  }
}

TEST_CASE("topk teacher: value errors name the side and the first row", "[topk_teacher]") {
  const std::int64_t rows = 4, V = 30, k = 3;
  const auto zs = kdt::random_logits<float>(rows, V, 181, 2.0);
  const auto zt = kdt::random_logits(rows, V, 182, 2.0);
  const auto idx = random_ids(rows, V, k, 183);
  const auto tlp = cast<float>(gather_log_probs(zt, rows, V, idx, k));
  kd::distill_options o;
  auto expect = [&](const std::vector<float>& s, const std::vector<float>& t, kd::topk_mode mode,
                    const kd::divergence& d, kd::errc code, const char* arg, std::int64_t row) {
    for (int b = 0; b < 2; ++b) {
      const result a = b == 0 ? run<float>(d, s, rows, V, idx, t, k, mode, o, kd::default_backend{})
                              : run<float>(d, s, rows, V, idx, t, k, mode, o, kd::reference_backend{});
      INFO(kd::topk_mode_name(mode) << " " << arg << " backend " << b);
      CHECK(a.st.code == code);
      CHECK(std::string(a.st.argument) == arg);
      CHECK(a.st.row == row);
      for (std::int64_t j = 0; j < V; ++j) CHECK(std::isnan(a.g[row * V + j]));
      const std::int64_t other = row == 0 ? 1 : 0;
      for (std::int64_t j = 0; j < V; ++j) CHECK(std::isfinite(a.g[other * V + j]));
    }
  };
  for (kd::topk_mode mode : kModes) {
    auto t = tlp;
    t[2 * k + 1] = std::numeric_limits<float>::quiet_NaN();
    expect(zs, t, mode, kd::divergence::forward_kl(), kd::errc::non_finite_input, "teacher", 2);
    auto s = zs;
    s[1 * V + 5] = std::numeric_limits<float>::infinity();
    expect(s, tlp, mode, kd::divergence::forward_kl(), kd::errc::non_finite_input, "student", 1);
  }
  // Stored probabilities summing to more than 1 (by more than 0.05 nats).
  auto t = tlp;
  for (std::int64_t i = 0; i < k; ++i) t[3 * k + i] = std::log(0.5f);
  expect(zs, t, kd::topk_mode::tail_bucket, kd::divergence::forward_kl(), kd::errc::not_normalized, "teacher", 3);
  expect(zs, t, kd::topk_mode::unnormalized_forward_kl, kd::divergence::forward_kl(), kd::errc::not_normalized,
         "teacher", 3);
  // ... which renormalize accepts (any scores).
  CHECK(run<float>(kd::divergence::forward_kl(), zs, rows, V, idx, t, k, kd::topk_mode::renormalize, o,
                   kd::default_backend{})
            .st.ok());
  // Reverse KL against a teacher with no tail mass (its top-k sums to exactly 1) while the student has some: +inf.
  auto t1 = tlp;
  t1[1 * k + 0] = 0.0f;
  t1[1 * k + 1] = -std::numeric_limits<float>::infinity();
  t1[1 * k + 2] = -std::numeric_limits<float>::infinity();
  expect(zs, t1, kd::topk_mode::tail_bucket, kd::divergence::reverse_kl(), kd::errc::support_mismatch, "teacher", 1);
  // Forward KL where the student is -inf on a support token the teacher gives mass.
  auto s0 = zs;
  s0[0 * V + idx[0]] = -std::numeric_limits<float>::infinity();
  expect(s0, tlp, kd::topk_mode::unnormalized_forward_kl, kd::divergence::forward_kl(), kd::errc::support_mismatch,
         "student", 0);
}

TEST_CASE("topk teacher: argument errors name the argument and leave outputs untouched", "[topk_teacher]") {
  const std::int64_t rows = 3, V = 8, k = 2;
  std::vector<float> zs(rows * V, 0.0f), tl(rows * k, -1.0f), g(rows * V, 5.0f);
  std::vector<std::int64_t> idx = {0, 1, 2, 3, 4, 5};
  kd::distill_options o;
  auto call = [&](const kd::divergence& d, const std::vector<std::int64_t>& id, std::int64_t kk, kd::topk_mode mode,
                  std::int64_t trows, const kd::distill_outputs<float>& out) {
    kd::loss_result lr;
    lr.loss = 42.0;
    kd::topk_teacher_input<float> t{kd::const_rows<std::int64_t>(id.data(), trows, kk),
                                    kd::const_rows<float>(tl.data(), trows, kk), mode};
    const kd::status st = kd::topk_divergence_loss(d, kd::student_logits(zs.data(), rows, V), t, o, lr, out);
    CHECK(lr.loss == 42.0);
    for (float v : g) CHECK(v == 5.0f);
    return st;
  };
  kd::distill_outputs<float> out;
  out.grad_student = kd::mut_rows<float>(g.data(), rows, V);
  const auto fkl = kd::divergence::forward_kl();
  auto arg_of = [](const kd::status& s) { return std::string(s.argument ? s.argument : ""); };
  kd::status st = call(fkl, {0, 1, 2, 8, 4, 5}, k, kd::topk_mode::tail_bucket, rows, out);
  CHECK(st.code == kd::errc::invalid_argument);
  CHECK(arg_of(st) == "teacher.indices");
  CHECK(st.row == 1);
  st = call(fkl, {0, 1, 2, 2, 4, 5}, k, kd::topk_mode::tail_bucket, rows, out);
  CHECK(arg_of(st) == "teacher.indices");
  CHECK(st.row == 1);
  st = call(fkl, idx, k, kd::topk_mode::tail_bucket, rows - 1, out);
  CHECK(arg_of(st) == "teacher.indices");
  st = call(kd::divergence::reverse_kl(), idx, k, kd::topk_mode::unnormalized_forward_kl, rows, out);
  CHECK(arg_of(st) == "teacher.mode");
  st = call(fkl, idx, k, static_cast<kd::topk_mode>(7), rows, out);
  CHECK(arg_of(st) == "teacher.mode");
  kd::distill_outputs<float> bad = out;
  bad.grad_teacher = kd::mut_rows<float>(tl.data(), rows, k);
  st = call(fkl, idx, k, kd::topk_mode::tail_bucket, rows, bad);
  CHECK(arg_of(st) == "grad_teacher");
  bad = out;
  bad.grad_student = kd::mut_rows<float>(g.data(), rows, V - 1);
  st = call(fkl, idx, k, kd::topk_mode::tail_bucket, rows, bad);
  CHECK(arg_of(st) == "grad_student");
  // A shape mismatch between the ids and the values.
  {
    kd::loss_result lr;
    kd::topk_teacher_input<float> t{kd::const_rows<std::int64_t>(idx.data(), rows, k),
                                    kd::const_rows<float>(tl.data(), rows, 1), kd::topk_mode::tail_bucket};
    CHECK(arg_of(kd::topk_divergence_loss(fkl, kd::student_logits(zs.data(), rows, V), t, o, lr, out)) ==
          "teacher.log_probs");
  }
  // k > V.
  {
    std::vector<std::int64_t> many(rows * 9);
    std::vector<float> vals(rows * 9, -3.0f);
    kd::loss_result lr;
    kd::topk_teacher_input<float> t{kd::const_rows<std::int64_t>(many.data(), rows, 9),
                                    kd::const_rows<float>(vals.data(), rows, 9), kd::topk_mode::tail_bucket};
    CHECK(arg_of(kd::topk_divergence_loss(fkl, kd::student_logits(zs.data(), rows, V), t, o, lr, out)) ==
          "teacher.indices");
  }
  for (float v : g) CHECK(v == 5.0f);
}
