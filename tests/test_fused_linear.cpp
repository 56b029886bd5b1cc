// kd::fused_linear_divergence against the unfused path, computed here in double with plain loops: logits = transform(h
// W^T + b), kd::divergence_loss on the reference backend, then the chain rule and the backward products. Every
// registered divergence, chunk sizes that do and do not divide N and V (chunk 1, tile 1), a teacher head or teacher
// logits, logit_scale and softcapping, masks and reductions; finite differences of the fused loss itself (the chain
// rule checked without the unfused code); argument and value errors.
//
// Tolerances. Double fused vs double unfused: the same arithmetic up to the order of sums over V and H (the matrix
// products' blocking, the tiles' split of each row), so 2^-53 times the sum of term magnitudes, bounded by 2^-40
// relative to the gradient scale. Float fused (SIMD backend) vs double unfused, per entry, derived from the float format:
//   logits: a float32 dot product of length H errs by <= (H + 2) 2^-24 sum_k |h_k w_k| (+ the bias), call it dz;
//   dL/dz:  the SIMD kernels' bound 8 2^-24 (max |z| / T + 1) (tests/test_simd_util.hpp), plus 4 dz / T for the logit
//           errors (each probability and log-ratio moves by <= dz / T), times the gradient scale (1 + max loss);
//   products: grad_hidden[r, k] = sum_j dz_rj W_jk errs by sum_j e_rj |W_jk| + V 2^-24 sum_j |dz_rj W_jk| (e: the dL/dz
//           error), and likewise grad_weight (over N rows) and grad_bias.
#include <catch2/catch.hpp>

#include <kd/fused_linear.hpp>

#include <random>

#include "test_util.hpp"

namespace {

struct problem {
  std::int64_t N = 13, H = 9, Ht = 7, V = 37;
  std::vector<double> hs, ws, bs, ht, wt, bt, tl;
  double s_scale = 1.0, s_cap = 0.0, t_scale = 1.0, t_cap = 0.0;
  explicit problem(std::uint32_t seed, double wscale = 1.0) {
    std::mt19937 g(seed);
    std::normal_distribution<double> n01(0.0, 1.0);
    auto fill = [&](std::vector<double>& v, std::int64_t n, double sc) {
      v.resize(static_cast<std::size_t>(n));
      for (auto& x : v) x = sc * n01(g);
    };
    fill(hs, N * H, 1.0);
    fill(ws, V * H, wscale);
    fill(bs, V, 0.5);
    fill(ht, N * Ht, 1.0);
    fill(wt, V * Ht, wscale);
    fill(bt, V, 0.5);
    fill(tl, N * V, 2.0);
  }
};

// max_j z[r, j] / T.
double ninf_max(const std::vector<double>& z, std::int64_t r, std::int64_t V, double t) {
  double m = -std::numeric_limits<double>::infinity();
  for (std::int64_t j = 0; j < V; ++j) m = std::max(m, z[r * V + j] / t);
  return m;
}

double transform(double a, double s, double c) { return c > 0.0 ? c * std::tanh(s * a / c) : s * a; }

std::vector<double> logits(const std::vector<double>& h, const std::vector<double>& w, const std::vector<double>* b,
                           std::int64_t N, std::int64_t H, std::int64_t V, double s, double c) {
  std::vector<double> z(static_cast<std::size_t>(N * V));
  for (std::int64_t r = 0; r < N; ++r)
    for (std::int64_t j = 0; j < V; ++j) {
      double a = 0.0;
      for (std::int64_t k = 0; k < H; ++k) a += h[r * H + k] * w[j * H + k];
      if (b) a += (*b)[j];
      z[r * V + j] = transform(a, s, c);
    }
  return z;
}

struct grads {
  kd::status st;
  kd::loss_result r;
  std::vector<double> gh, gw, gb, per_row, dz;
};

// The unfused path in double.
grads unfused(const kd::divergence& d, const problem& p, bool teacher_head, const kd::distill_options& o) {
  const auto zs = logits(p.hs, p.ws, &p.bs, p.N, p.H, p.V, p.s_scale, p.s_cap);
  const auto zt = teacher_head ? logits(p.ht, p.wt, &p.bt, p.N, p.Ht, p.V, p.t_scale, p.t_cap) : p.tl;
  grads g;
  g.dz.assign(zs.size(), 0.0);
  std::vector<float> pr(static_cast<std::size_t>(p.N));
  kd::distill_outputs<double> out;
  out.grad_student = kd::mut_rows<double>(g.dz.data(), p.N, p.V);
  out.per_row = pr.data();
  g.st = kd::divergence_loss(d, kd::student_logits(zs.data(), p.N, p.V), kd::teacher_logits(zt.data(), p.N, p.V), o,
                             g.r, out, kd::reference_backend{});
  g.per_row.assign(pr.begin(), pr.end());
  for (std::int64_t i = 0; i < p.N * p.V; ++i) {  // chain rule through the transform
    const double zz = zs[i];
    g.dz[i] *= p.s_cap > 0.0 ? p.s_scale * (1.0 - (zz / p.s_cap) * (zz / p.s_cap)) : p.s_scale;
  }
  g.gh.assign(static_cast<std::size_t>(p.N * p.H), 0.0);
  g.gw.assign(static_cast<std::size_t>(p.V * p.H), 0.0);
  g.gb.assign(static_cast<std::size_t>(p.V), 0.0);
  for (std::int64_t r = 0; r < p.N; ++r)
    for (std::int64_t j = 0; j < p.V; ++j) {
      const double dz = g.dz[r * p.V + j];
      g.gb[j] += dz;
      for (std::int64_t k = 0; k < p.H; ++k) {
        g.gh[r * p.H + k] += dz * p.ws[j * p.H + k];
        g.gw[j * p.H + k] += dz * p.hs[r * p.H + k];
      }
    }
  return g;
}

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <class T, class Backend>
grads fused(const kd::divergence& d, const problem& p, bool teacher_head, const kd::distill_options& o,
            kd::fused_linear_options fo, const Backend& be, std::vector<float>* entropy = nullptr) {
  const auto hs = cast<T>(p.hs), ws = cast<T>(p.ws), bs = cast<T>(p.bs), ht = cast<T>(p.ht), wt = cast<T>(p.wt),
             bt = cast<T>(p.bt), tl = cast<T>(p.tl);
  kd::linear_head<T> sh{kd::const_rows<T>(hs.data(), p.N, p.H), kd::const_rows<T>(ws.data(), p.V, p.H), bs.data(),
                        p.s_scale, p.s_cap};
  std::vector<T> gh(static_cast<std::size_t>(p.N * p.H), T(777)), gw(static_cast<std::size_t>(p.V * p.H), T(777)),
      gb(static_cast<std::size_t>(p.V), T(777));
  std::vector<float> pr(static_cast<std::size_t>(p.N), 777.0f);
  kd::fused_linear_outputs<T> out;
  out.grad_hidden = kd::mut_rows<T>(gh.data(), p.N, p.H);
  out.grad_weight = kd::mut_rows<T>(gw.data(), p.V, p.H);
  out.grad_bias = gb.data();
  out.per_row = pr.data();
  if (entropy) {
    entropy->assign(static_cast<std::size_t>(p.N), 777.0f);
    out.student_entropy = entropy->data();
  }
  grads g;
  if (teacher_head) {
    kd::linear_head<T> th{kd::const_rows<T>(ht.data(), p.N, p.Ht), kd::const_rows<T>(wt.data(), p.V, p.Ht), bt.data(),
                          p.t_scale, p.t_cap};
    g.st = kd::fused_linear_divergence(d, sh, th, o, fo, g.r, out, be);
  } else {
    g.st = kd::fused_linear_divergence(d, sh, kd::teacher_logits(tl.data(), p.N, p.V), o, fo, g.r, out, be);
  }
  g.gh.assign(gh.begin(), gh.end());
  g.gw.assign(gw.begin(), gw.end());
  g.gb.assign(gb.begin(), gb.end());
  g.per_row.assign(pr.begin(), pr.end());
  return g;
}

// |a - b| <= bound_i for every entry; reports the worst ratio.
void check_within(const std::vector<double>& a, const std::vector<double>& b, const std::vector<double>& bound,
                  const char* what) {
  REQUIRE(a.size() == b.size());
  double worst = 0.0;
  std::size_t nan_bad = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) {
      nan_bad += std::isnan(a[i]) != std::isnan(b[i]);
      continue;
    }
    worst = std::max(worst, std::abs(a[i] - b[i]) / (bound[i] + 1e-300));
  }
  INFO(what << ": worst error / bound " << worst << ", NaN mismatches " << nan_bad);
  CHECK(nan_bad == 0);
  CHECK(worst <= 1.0);
}

// Double fused vs double unfused: 2^-40 relative to the scale of each output.
void check_double(const grads& got, const grads& ref, const problem& p) {
  REQUIRE(got.st.code == ref.st.code);
  CHECK(got.st.row == ref.st.row);
  CHECK(got.r.valid_rows == ref.r.valid_rows);
  CHECK(got.r.denominator == ref.r.denominator);
  const double e = std::ldexp(1.0, -40);
  CHECK(std::abs(got.r.loss - ref.r.loss) <= e * (1.0 + std::abs(ref.r.loss)));
  auto scale_of = [](const std::vector<double>& v) {
    double m = 0.0;
    for (double x : v) m = std::isfinite(x) ? std::max(m, std::abs(x)) : m;
    return m;
  };
  auto bound = [&](const std::vector<double>& v, double floor) {
    return std::vector<double>(v.size(), e * (scale_of(v) + floor));
  };
  check_within(got.per_row, ref.per_row, bound(ref.per_row, 1.0), "per_row");
  check_within(got.gh, ref.gh, bound(ref.gh, 1e-300), "grad_hidden");
  check_within(got.gw, ref.gw, bound(ref.gw, 1e-300), "grad_weight");
  check_within(got.gb, ref.gb, bound(ref.gb, 1e-300), "grad_bias");
  (void)p;
}

// Float fused (SIMD) vs double unfused, by the bound of the header comment.
void check_float(const grads& got, const grads& ref, const problem& p, bool teacher_head, double temperature) {
  REQUIRE(got.st.code == ref.st.code);
  CHECK(got.r.valid_rows == ref.r.valid_rows);
  const double u = std::ldexp(1.0, -24);
  // dz: the float32 logits' error bound (the larger of the two models'); ymax: max |z| / T.
  auto dot_bound = [&](const std::vector<double>& h, const std::vector<double>& w, const std::vector<double>& b,
                       std::int64_t H, double s) {
    double m = 0.0;
    for (std::int64_t r = 0; r < p.N; ++r)
      for (std::int64_t j = 0; j < p.V; ++j) {
        double a = std::abs(b[j]);
        for (std::int64_t k = 0; k < H; ++k) a += std::abs(h[r * H + k] * w[j * H + k]);
        m = std::max(m, std::abs(s) * a);
      }
    return (double(H) + 2.0) * u * m;
  };
  double dz = dot_bound(p.hs, p.ws, p.bs, p.H, p.s_scale);
  if (teacher_head) dz = std::max(dz, dot_bound(p.ht, p.wt, p.bt, p.Ht, p.t_scale));
  const auto zs = logits(p.hs, p.ws, &p.bs, p.N, p.H, p.V, p.s_scale, p.s_cap);
  const auto zt = teacher_head ? logits(p.ht, p.wt, &p.bt, p.N, p.Ht, p.V, p.t_scale, p.t_cap) : p.tl;
  double ymax = 0.0;
  for (double v : zs) ymax = std::max(ymax, std::abs(v) / temperature);
  for (double v : zt) ymax = std::max(ymax, std::abs(v) / temperature);
  double lmax = 0.0;
  for (double v : ref.per_row) lmax = std::isfinite(v) ? std::max(lmax, std::abs(v)) : lmax;
  const double eps = 8.0 * u * (ymax + 1.0) + 4.0 * dz / temperature;
  const double gscale = std::abs(p.s_scale) / temperature / ref.r.denominator;
  CHECK(std::abs(got.r.loss - ref.r.loss) <= eps * (double(p.N) / ref.r.denominator + std::abs(ref.r.loss)));
  std::vector<double> bpr(ref.per_row.size());
  for (std::size_t r = 0; r < bpr.size(); ++r) bpr[r] = eps * (1.0 + std::abs(ref.per_row[r]));
  check_within(got.per_row, ref.per_row, bpr, "per_row");
  // e_rj: the bound on dL/da_rj.
  std::vector<double> e(ref.dz.size());
  for (std::size_t i = 0; i < e.size(); ++i) e[i] = eps * (gscale * (1.0 + lmax) + std::abs(ref.dz[i]));
  std::vector<double> bh(ref.gh.size(), 0.0), bw(ref.gw.size(), 0.0), bb(ref.gb.size(), 0.0);
  for (std::int64_t r = 0; r < p.N; ++r)
    for (std::int64_t j = 0; j < p.V; ++j) {
      const double er = e[r * p.V + j], a = std::abs(ref.dz[r * p.V + j]);
      bb[j] += er + double(p.N) * u * a;
      for (std::int64_t k = 0; k < p.H; ++k) {
        bh[r * p.H + k] += (er + double(p.V) * u * a) * std::abs(p.ws[j * p.H + k]);
        bw[j * p.H + k] += (er + double(p.N) * u * a) * std::abs(p.hs[r * p.H + k]);
      }
    }
  check_within(got.gh, ref.gh, bh, "grad_hidden");
  check_within(got.gw, ref.gw, bw, "grad_weight");
  check_within(got.gb, ref.gb, bb, "grad_bias");
}

const std::vector<kd::fused_linear_options> kChunkings = {{0, 0}, {1, 1}, {4, 5}, {13, 37}, {5, 16}, {6, 36}, {100, 0}};

}  // namespace

TEST_CASE("fused_linear: every divergence and chunking equals the unfused path (teacher head, scale, softcap)") {
  problem p(5);
  p.s_scale = 1.3;
  p.s_cap = 4.0;
  p.t_scale = 0.8;
  for (double temperature : {1.0, 2.0}) {
    kd::distill_options o;
    o.temperature = temperature;
    for (const auto& d : kdt::kAllDivergences) {
      INFO(kdt::describe(d) << " T " << temperature);
      const grads ref = unfused(d, p, true, o);
      REQUIRE(ref.st.ok());
      for (const auto& fo : kChunkings) {
        INFO("chunk_rows " << fo.chunk_rows << " tile_vocab " << fo.tile_vocab);
        check_double(fused<double>(d, p, true, o, fo, kd::reference_backend{}), ref, p);
        check_float(fused<float>(d, p, true, o, fo, kd::default_backend{}), ref, p, true, temperature);
      }
    }
  }
}

TEST_CASE("fused_linear: precomputed teacher logits, labels, row weights, reductions, masked teacher rows") {
  problem p(9);
  const double ninf = -std::numeric_limits<double>::infinity();
  for (std::int64_t j = 0; j < p.V; ++j) p.tl[4 * p.V + j] = ninf;  // row 4: the teacher fully masked
  for (std::int64_t j = 0; j < 10; ++j) p.tl[6 * p.V + j] = ninf;   // row 6: partly masked
  std::vector<std::int64_t> labels(static_cast<std::size_t>(p.N), 1);
  labels[2] = -100;
  std::vector<float> w(static_cast<std::size_t>(p.N), 1.0f);
  w[7] = 0.0f, w[8] = 1.5f;
  for (auto red : {kd::reduction::mean, kd::reduction::sum, kd::reduction::none, kd::reduction::normalizer}) {
    kd::distill_options o;
    o.reduction = red;
    o.normalizer = 20.0;
    o.labels = kd::label_view(labels.data(), p.N);
    o.row_weights = w.data();
    // (forward KL: the teacher's zeros in row 6 are fine; reverse KL would be +inf there, tested below)
    for (const auto& d : {kd::divergence::forward_kl(), kd::divergence::jsd(0.5), kd::divergence::tvd()}) {
      INFO(kdt::describe(d) << " reduction " << kd::reduction_name(red));
      const grads ref = unfused(d, p, false, o);
      REQUIRE(ref.st.ok());
      for (const auto& fo : kChunkings) {
        INFO("chunk_rows " << fo.chunk_rows << " tile_vocab " << fo.tile_vocab);
        check_double(fused<double>(d, p, false, o, fo, kd::reference_backend{}), ref, p);
        check_float(fused<float>(d, p, false, o, fo, kd::default_backend{}), ref, p, false, 1.0);
      }
    }
  }
}

TEST_CASE("fused_linear: finite differences of the fused loss (double) check the chain rule and the entropy") {
  problem p(13, 0.6);
  p.N = 5;
  p.s_scale = 0.7;
  p.s_cap = 3.0;
  kd::distill_options o;
  o.temperature = 1.5;
  o.t2_scale = true;
  const kd::fused_linear_options fo{2, 8};
  for (const auto& d : {kd::divergence::forward_kl(), kd::divergence::reverse_kl(), kd::divergence::jsd(0.3)}) {
    INFO(kdt::describe(d));
    std::vector<float> ent;
    const grads g = fused<double>(d, p, true, o, fo, kd::reference_backend{}, &ent);
    REQUIRE(g.st.ok());
    auto loss_at = [&](std::vector<double>& v, std::size_t i, double delta) {
      const double keep = v[i];
      v[i] = keep + delta;
      const double l = fused<double>(d, p, true, o, fo, kd::reference_backend{}).r.loss;
      v[i] = keep;
      return l;
    };
    // Central differences with step 1e-5: truncation ~ h^2 |L'''| ~ 1e-10, rounding ~ 2^-53 |L| / h ~ 1e-11.
    auto fd = [&](std::vector<double>& v, std::size_t i) {
      const double h = 1e-5;
      return (loss_at(v, i, h) - loss_at(v, i, -h)) / (2 * h);
    };
    for (std::size_t i : {std::size_t{0}, std::size_t{7}, std::size_t{23}}) CHECK(std::abs(fd(p.hs, i) - g.gh[i]) <= 1e-8);
    for (std::size_t i : {std::size_t{1}, std::size_t{100}, std::size_t{300}}) CHECK(std::abs(fd(p.ws, i) - g.gw[i]) <= 1e-8);
    for (std::size_t i : {std::size_t{0}, std::size_t{36}}) CHECK(std::abs(fd(p.bs, i) - g.gb[i]) <= 1e-8);
    // Entropy of the student at T, from the logits directly.
    const auto zs = logits(p.hs, p.ws, &p.bs, p.N, p.H, p.V, p.s_scale, p.s_cap);
    for (std::int64_t r = 0; r < p.N; ++r) {
      double m = ninf_max(zs, r, p.V, o.temperature), s = 0.0, e = 0.0;
      for (std::int64_t j = 0; j < p.V; ++j) s += std::exp(zs[r * p.V + j] / o.temperature - m);
      for (std::int64_t j = 0; j < p.V; ++j) {
        const double lq = zs[r * p.V + j] / o.temperature - m - std::log(s);
        e -= std::exp(lq) * lq;
      }
      CHECK(std::abs(ent[r] - e) <= 4e-7 * e);  // float32 output: half an ulp is 6e-8 relative
    }
  }
}

TEST_CASE("fused_linear: a -inf bias entry (a padded vocabulary) leaves the entropy and the loss finite, any tiling") {
  problem p(21);
  p.bs[3] = -std::numeric_limits<double>::infinity();  // the student never puts mass on token 3
  kd::distill_options o;
  const grads ref = unfused(kd::divergence::reverse_kl(), p, true, o);
  REQUIRE(ref.st.ok());
  const auto zs = logits(p.hs, p.ws, &p.bs, p.N, p.H, p.V, 1.0, 0.0);
  for (const auto& fo : {kd::fused_linear_options{4, 0}, kd::fused_linear_options{4, 8}}) {
    INFO("tile_vocab " << fo.tile_vocab);
    std::vector<float> ent;
    const grads g = fused<double>(kd::divergence::reverse_kl(), p, true, o, fo, kd::reference_backend{}, &ent);
    REQUIRE(g.st.ok());
    check_double(g, ref, p);
    for (std::int64_t r = 0; r < p.N; ++r) {
      const double m = ninf_max(zs, r, p.V, 1.0);
      double s = 0.0, e = 0.0;
      for (std::int64_t j = 0; j < p.V; ++j) s += std::exp(zs[r * p.V + j] - m);
      for (std::int64_t j = 0; j < p.V; ++j)
        if (j != 3) e -= std::exp(zs[r * p.V + j] - m - std::log(s)) * (zs[r * p.V + j] - m - std::log(s));
      CHECK(std::isfinite(ent[r]));
      CHECK(std::abs(ent[r] - e) <= 4e-7 * e);
    }
  }
}

TEST_CASE("fused_linear: argument errors name the argument and touch no output; value errors name the row") {
  problem p(3);
  std::vector<float> hs = cast<float>(p.hs), ws = cast<float>(p.ws), bs = cast<float>(p.bs), tl = cast<float>(p.tl);
  std::vector<float> gh(static_cast<std::size_t>(p.N * p.H), 5.0f);
  kd::distill_options o;
  kd::loss_result r;
  kd::fused_linear_outputs<float> out;
  out.grad_hidden = kd::mut_rows<float>(gh.data(), p.N, p.H);
  auto head = [&](std::int64_t wcols, double scale, double cap) {
    return kd::linear_head<float>{kd::const_rows<float>(hs.data(), p.N, p.H),
                                  kd::const_rows<float>(ws.data(), p.V, wcols), bs.data(), scale, cap};
  };
  auto expect = [&](kd::status st, const char* arg) {
    CHECK(st.code == kd::errc::invalid_argument);
    CHECK(std::string(st.argument) == arg);
    for (float v : gh) CHECK(v == 5.0f);
  };
  const auto t = kd::teacher_logits(tl.data(), p.N, p.V);
  const auto d = kd::divergence::reverse_kl();
  expect(kd::fused_linear_divergence(d, head(p.H - 1, 1.0, 0.0), t, o, {}, r, out), "student_weight");
  expect(kd::fused_linear_divergence(d, head(p.H, 0.0, 0.0), t, o, {}, r, out), "logit_scale");
  expect(kd::fused_linear_divergence(d, head(p.H, 1.0, -1.0), t, o, {}, r, out), "softcap");
  expect(kd::fused_linear_divergence(d, head(p.H, 1.0, 0.0), t, o, {-1, 0}, r, out), "chunk_rows");
  expect(kd::fused_linear_divergence(d, head(p.H, 1.0, 0.0), kd::teacher_logits(tl.data(), p.N, p.V - 1), o, {}, r, out),
         "teacher");
  kd::fused_linear_outputs<float> ob = out;
  float gb[1];
  ob.grad_bias = gb;
  auto nob = head(p.H, 1.0, 0.0);
  nob.bias = nullptr;
  expect(kd::fused_linear_divergence(d, nob, t, o, {}, r, ob), "grad_bias");
  kd::fused_linear_outputs<float> inplace = out;
  inplace.grad_bias = bs.data();  // in place over the bias: refused
  expect(kd::fused_linear_divergence(d, head(p.H, 1.0, 0.0), t, o, {}, r, inplace), "grad_bias");
  // Reverse KL with the teacher's zero where the student has mass (row 5): +inf, naming the teacher.
  tl[5 * p.V + 4] = -std::numeric_limits<float>::infinity();
  const auto sm = kd::fused_linear_divergence(d, head(p.H, 1.0, 0.0), t, o, {3, 7}, r, out);
  CHECK(sm.code == kd::errc::support_mismatch);
  CHECK(std::string(sm.argument) == "teacher");
  CHECK(sm.row == 5);
  CHECK(std::isinf(r.loss));
  tl[5 * p.V + 4] = 0.0f;
  // A NaN hidden state in row 3: that row's gradient is NaN, the error names the student and the row.
  hs[3 * p.H + 2] = std::numeric_limits<float>::quiet_NaN();
  const auto st = kd::fused_linear_divergence(d, head(p.H, 1.0, 0.0), t, o, {2, 10}, r, out);
  CHECK(st.code == kd::errc::non_finite_input);
  CHECK(std::string(st.argument) == "student");
  CHECK(st.row == 3);
  CHECK(std::isnan(gh[3 * p.H]));
  CHECK(std::isfinite(gh[0]));
}
