// Per-row divergence kernels of the SIMD backend: loss of one row and its gradients with respect to the student (and
// optionally the teacher) logits, in float32 with double accumulation of per-chunk partial sums.
//
// Row [n] of student z_s and teacher z_t (float32 / float64 / bf16 / fp16), temperature T (inv_t = 1/T), gradient scale
// c (row weight * reduction scale / T). Notation of detail/reference_math.hpp: x, y are the two distributions a
// divergence is written in (KL(x || y), ...), lx, ly their log-probabilities.
//
// Two paths:
//  * fused KL (forward_kl, reverse_kl and the endpoints jsd(0|1), skew(0) that are defined as them), used when the row
//  has no
//    -inf / NaN / +inf: pass A reads both rows once (L1-sized chunks, online max / sum-exp of both sides and the
//    running running D below with the same rescaling), which gives both log-sum-exps and the loss
//        KL(x || y) = D / S_x - log S_x + log S_y,  u_j = (yx_j - M_x) - (yy_j - M_y),  D = sum_j e^{yx_j - M_x} u_j,
//        S_x = sum_j e^{yx_j - M_x} (M = running max of y = z / T);
//    pass B reads the rows again (from L2/L3) and writes the gradients, with lx = (yx - M_x) - log S_x:
//        d/dz_y = c (y_j - x_j),   d/dz_x = c x_j (lx_j - ly_j - KL).
//    Exponentials per element: 2 in pass A, 1 (reverse KL, student gradient) or 2 (forward KL) in pass B. Identical
//    rows give D = 0 and equal log-sum-exps, hence exactly 0 loss and gradient.
//  * careful (every divergence; KL rows with masked / non-finite entries): pass 1 log-sum-exps (reporting NaN / +inf
//  like
//    the reference), pass 2 the loss and the centring sums with explicit -inf masks, pass 3 the gradients. JSD and the
//    skew divergences compute the mixture log m in log space (logaddexp, exact where lx == ly), as the reference does.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "../divergence_spec.hpp"
#include "../options.hpp"
#include "simd_row.hpp"

// GCC 12's AVX-512 min/max/scalef intrinsics start from _mm512_undefined_ps(), which -Wmaybe-uninitialized
// or -Wuninitialized report (GCC bug 105593) wherever they are inlined; the pragmas keep kd's kernels warning-free.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

KD_BEGIN_NAMESPACE
namespace detail::simd {

enum class row_error : std::uint8_t {
  none = 0,
  student_non_finite,
  teacher_non_finite,
  student_not_normalized,
  teacher_not_normalized,
  support_mismatch,
};

struct row_result {
  double loss = 0.0;  // the row's divergence in nats (unscaled); NaN / +inf with an error
  row_error error = row_error::none;
  double value = 0.0;  // the offending log-sum-exp or loss
};

// One row's inputs and outputs (gradient pointers may be null; they may equal the input pointers: in place).
template <class S, class P, class G>
struct row_io {
  const S* zs;
  const P* zt;
  G* gs;
  G* gt;
  std::int64_t n;
};

struct row_params {
  float inv_t = 1.0f;
  float c = 0.0f;                   // gradient scale: weight * plan.scale * inv_t
  bool check_student_norm = false;  // declared log_probs at T = 1
  bool check_teacher_norm = false;
};

template <class A>
inline fbatch<A> ninf_b() noexcept {
  return fbatch<A>(-std::numeric_limits<float>::infinity());
}

// Gradient output of one chunk: writes straight into float rows, else through a float buffer converted after the chunk.
template <class A, class G>
struct grad_sink {
  G* dst;
  float buf[chunk];
  float* target() noexcept {
    if constexpr (std::is_same_v<G, float>)
      return dst;
    else
      return buf;
  }
  void flush(std::int64_t n) noexcept {
    if constexpr (!std::is_same_v<G, float>) store_chunk<A>(dst, buf, n);
  }
};

template <class A, class G>
inline void fill_row(G* g, std::int64_t n, float v) noexcept {
  if (!g) return;
  for (std::int64_t j = 0; j < n; ++j) float_to_elem<A>(v, g[j]);
}

// -------------------------------------------------------------------------------------------------------------------
// Fused two-pass KL(x || y). x_is_student selects reverse KL (x = q) or forward KL (x = p). Returns false when the row
// has a non-finite value in pass A (nothing has been written then): the caller takes the careful path. Precision:
// log-probabilities are formed as (y - M) - log S, never y - lse: y - M is exact near the max (where the mass is) and
// log S <= log V is small, so float32 rounding stays near 2^-24 * log V instead of 2^-24 * |lse|; likewise D is
// accumulated over u = (y_x - M_x) - (y_y - M_y) and re-based when a running max moves.
template <class A, class S, class P, class G>
inline bool fused_kl_row(bool x_is_student, const row_io<S, P, G>& io, const row_params& rp, row_result& res) noexcept {
  using b = fbatch<A>;
  constexpr float ninf = -std::numeric_limits<float>::infinity();
  const std::int64_t n = io.n;
  const b it(rp.inv_t);
  alignas(64) float bs[chunk], bt[chunk];
  float ms = ninf, mt = ninf;
  // ss, st: sum exp(y - M) per side; dd: sum_x e_x ((y_x - M_x) - (y_y - M_y)), e_x = exp(y_x - M_x), both w.r.t.
  // current maxes.
  double ss = 0.0, st = 0.0, dd = 0.0;
  // Pass A: online max / sum-exp of both rows plus D, chunk by chunk.
  for (std::int64_t j0 = 0; j0 < n; j0 += chunk) {
    const std::int64_t len = n - j0 < chunk ? n - j0 : chunk;
    const float* cs = load_chunk<A>(io.zs + j0, len, bs);
    const float* ct = load_chunk<A>(io.zt + j0, len, bt);
    // max(z) / T == max(z / T) (T > 0, rounding is monotonic). NaN / +inf show up as NaN sums below.
    const float cms = chunk_max_raw<A>(cs, len) * rp.inv_t, cmt = chunk_max_raw<A>(ct, len) * rp.inv_t;
    if (!(cms > ninf && cmt > ninf)) return false;  // a fully masked chunk (or a NaN max): careful path
    const float ns = cms > ms ? cms : ms, nt = cmt > mt ? cmt : mt;
    if (ns != ms || nt != mt) {
      const double fs = std::exp(static_cast<double>(ms) - ns), ft = std::exp(static_cast<double>(mt) - nt);
      const double sx = x_is_student ? ss : st;
      if (sx > 0.0) {  // re-base u: (y_x - M_x') - (y_y - M_y') = u - ((M_x' - M_x) - (M_y' - M_y))
        const double shift =
            x_is_student ? (double(ns) - ms) - (double(nt) - mt) : (double(nt) - mt) - (double(ns) - ms);
        dd = (dd - sx * shift) * (x_is_student ? fs : ft);
      }
      ss *= fs;
      st *= ft;
      ms = ns;
      mt = nt;
    }
    const b mbs(ms), mbt(mt);
    b as(0.0f), at(0.0f), ad(0.0f);
    std::int64_t j = 0;
    for (; j + width<A> <= len; j += width<A>) {
      const b us = xsimd::fms(b::load_unaligned(cs + j), it, mbs), ut = xsimd::fms(b::load_unaligned(ct + j), it, mbt);
      const b es = exp_nonpos<A>(us), et = exp_nonpos<A>(ut);
      as += es;
      at += et;
      ad = x_is_student ? xsimd::fma(es, us - ut, ad) : xsimd::fma(et, ut - us, ad);
    }
    if (j < len) {  // tail: pad with 0 (finite), mask the contributions
      const auto m = lane_mask<A>(len - j);
      const b us = xsimd::fms(load_padded<A>(cs, j, len, 0.0f), it, mbs);
      const b ut = xsimd::fms(load_padded<A>(ct, j, len, 0.0f), it, mbt);
      const b es = xsimd::select(m, exp_nonpos<A>(us), b(0.0f)), et = xsimd::select(m, exp_nonpos<A>(ut), b(0.0f));
      as += es;
      at += et;
      ad = x_is_student ? xsimd::fma(es, us - ut, ad) : xsimd::fma(et, ut - us, ad);
    }
    ss += hsum<A>(as);
    st += hsum<A>(at);
    dd += hsum<A>(ad);
  }
  if (!(std::isfinite(ss) && std::isfinite(st) && std::isfinite(dd))) return false;
  const double lns = std::log(ss), lnt = std::log(st);
  const double lse_s = ms + lns, lse_t = mt + lnt;
  if (rp.check_student_norm && std::abs(lse_s) > 0.05) {
    res = {std::numeric_limits<double>::quiet_NaN(), row_error::student_not_normalized, lse_s};
    return true;
  }
  if (rp.check_teacher_norm && std::abs(lse_t) > 0.05) {
    res = {std::numeric_limits<double>::quiet_NaN(), row_error::teacher_not_normalized, lse_t};
    return true;
  }
  // KL(x || y) = sum_j x_j (lx_j - ly_j) = D / S_x - log S_x + log S_y, with lx = (y_x - M_x) - log S_x.
  const double kl = x_is_student ? dd / ss - lns + lnt : dd / st - lnt + lns;
  res.loss = kl;
  res.error = row_error::none;
  if (!io.gs && !io.gt) return true;

  // Pass B: gradients. lq = (ys - Ms) - log Ss, q = exp(lq) (same for p).
  const b mbs(ms), mbt(mt), ls(static_cast<float>(lns)), lt(static_cast<float>(lnt)), kb(static_cast<float>(kl)),
      cb(rp.c);
  grad_sink<A, G> ogs{io.gs, {}}, ogt{io.gt, {}};
  for (std::int64_t j0 = 0; j0 < n; j0 += chunk) {
    const std::int64_t len = n - j0 < chunk ? n - j0 : chunk;
    const float* cs = load_chunk<A>(io.zs + j0, len, bs);
    const float* ct = load_chunk<A>(io.zt + j0, len, bt);
    ogs.dst = io.gs ? io.gs + j0 : nullptr;
    ogt.dst = io.gt ? io.gt + j0 : nullptr;
    float* gs = io.gs ? ogs.target() : nullptr;
    float* gt = io.gt ? ogt.target() : nullptr;
    auto body = [&](std::int64_t j, const b& zs, const b& zt, auto store) {
      const b lq = xsimd::fms(zs, it, mbs) - ls, lp = xsimd::fms(zt, it, mbt) - lt;
      if (x_is_student) {  // reverse KL: gq = c q (lq - lp - KL), gp = c (p - q)
        const b q = exp_nonpos<A>(lq);
        if (gs) store(gs, j, cb * q * ((lq - lp) - kb));
        if (gt) store(gt, j, cb * (exp_nonpos<A>(lp) - q));
      } else {  // forward KL: gq = c (q - p), gp = c p (lp - lq - KL)
        const b p = exp_nonpos<A>(lp);
        if (gs) store(gs, j, cb * (exp_nonpos<A>(lq) - p));
        if (gt) store(gt, j, cb * p * ((lp - lq) - kb));
      }
    };
    std::int64_t j = 0;
    for (; j + width<A> <= len; j += width<A>)
      body(j, b::load_unaligned(cs + j), b::load_unaligned(ct + j),
           [](float* g, std::int64_t jj, const b& v) { v.store_unaligned(g + jj); });
    if (j < len)
      body(j, load_padded<A>(cs, j, len, 0.0f), load_padded<A>(ct, j, len, 0.0f),
           [len](float* g, std::int64_t jj, const b& v) { store_partial<A>(g, jj, len, v); });
    if (io.gs) ogs.flush(len);
    if (io.gt) ogt.flush(len);
  }
  return true;
}

// -------------------------------------------------------------------------------------------------------------------
// Careful-path divergences in (x, y) form (templated on Arch, like everything here, for the one-definition rule). Each
// has: accumulate(lx, ly) over the row (vector partial sums acc[0..2], mismatch flag), finish(sums) -> loss, and
// grad(lx, ly) -> (gx, gy) before the scale c. -inf lanes contribute exactly 0.

// log m for m = a x + (1 - a) y in log space; exact (= lx) where lx == ly (both -inf included).
template <class A>
KD_SIMD_INLINE fbatch<A> log_mix(const fbatch<A>& lx, const fbatch<A>& ly, const fbatch<A>& log_a,
                         const fbatch<A>& log_1ma) noexcept {
  const fbatch<A> u = lx + log_a, v = ly + log_1ma;
  const fbatch<A> m = xsimd::max(u, v);
  const fbatch<A> r = m + xsimd::log1p(exp_nonpos<A>(-xsimd::abs(u - v)));
  return xsimd::select(lx == ly, lx, r);
}

template <class A>
struct kl_kernel {  // KL(x || y)
  double loss = 0.0;
  void accumulate(const fbatch<A>& lx, const fbatch<A>& ly, fbatch<A>* acc,
                  xsimd::batch_bool<float, A>& mm) const noexcept {
    const auto xm = lx == ninf_b<A>();
    mm = mm || (!xm && (ly == ninf_b<A>()));
    acc[0] += xsimd::select(xm, fbatch<A>(0.0f), exp_nonpos<A>(lx) * (lx - ly));
  }
  bool finish(const double* s, bool mismatch) noexcept {
    loss = mismatch ? std::numeric_limits<double>::infinity() : s[0];
    return true;
  }
  void grad(const fbatch<A>& lx, const fbatch<A>& ly, fbatch<A>& gx, fbatch<A>& gy) const noexcept {
    const fbatch<A> x = exp_nonpos<A>(lx), y = exp_nonpos<A>(ly);
    gy = y - x;
    gx = xsimd::select(lx == ninf_b<A>(), fbatch<A>(0.0f), x * ((lx - ly) - fbatch<A>(static_cast<float>(loss))));
  }
};

template <class A>
struct jsd_kernel {  // b KL(x || m) + (1 - b) KL(y || m), m = b x + (1 - b) y
  double beta_d;
  float beta, log_b, log_1mb;
  double kx = 0.0, ky = 0.0, loss = 0.0;
  explicit jsd_kernel(double b)
      : beta_d(b),
        beta(static_cast<float>(b)),
        log_b(static_cast<float>(std::log(b))),
        log_1mb(static_cast<float>(std::log1p(-b))) {}
  void accumulate(const fbatch<A>& lx, const fbatch<A>& ly, fbatch<A>* acc,
                  xsimd::batch_bool<float, A>&) const noexcept {
    const fbatch<A> lm = log_mix<A>(lx, ly, fbatch<A>(log_b), fbatch<A>(log_1mb));
    acc[0] += xsimd::select(lx == ninf_b<A>(), fbatch<A>(0.0f), exp_nonpos<A>(lx) * (lx - lm));
    acc[1] += xsimd::select(ly == ninf_b<A>(), fbatch<A>(0.0f), exp_nonpos<A>(ly) * (ly - lm));
  }
  bool finish(const double* s, bool) noexcept {
    kx = s[0];
    ky = s[1];
    loss = beta_d * kx + (1.0 - beta_d) * ky;
    return true;
  }
  void grad(const fbatch<A>& lx, const fbatch<A>& ly, fbatch<A>& gx, fbatch<A>& gy) const noexcept {
    using b = fbatch<A>;
    const b lm = log_mix<A>(lx, ly, b(log_b), b(log_1mb));
    gy = xsimd::select(ly == ninf_b<A>(), b(0.0f),
                       b(1.0f - beta) * exp_nonpos<A>(ly) * ((ly - lm) - b(static_cast<float>(ky))));
    gx = xsimd::select(lx == ninf_b<A>(), b(0.0f), b(beta) * exp_nonpos<A>(lx) * ((lx - lm) - b(static_cast<float>(kx))));
  }
};

template <class A>
struct skew_kernel {  // KL(x || a x + (1 - a) y)
  float a, log_a, log_1ma;
  double loss = 0.0, yd = 0.0, xh = 0.0;
  explicit skew_kernel(double alpha)
      : a(static_cast<float>(alpha)),
        log_a(static_cast<float>(std::log(alpha))),
        log_1ma(static_cast<float>(std::log1p(-alpha))) {}
  void accumulate(const fbatch<A>& lx, const fbatch<A>& ly, fbatch<A>* acc,
                  xsimd::batch_bool<float, A>&) const noexcept {
    using b = fbatch<A>;
    const b lm = log_mix<A>(lx, ly, b(log_a), b(log_1ma));
    const b r = lx - lm, em = xsimd::expm1(r);
    const auto xm = lx == ninf_b<A>();
    const b x = exp_nonpos<A>(lx);
    acc[0] += xsimd::select(xm, b(0.0f), x * r);
    acc[1] += xsimd::select(xm, b(0.0f), x * xsimd::fnma(b(a), em, r));
    acc[2] += xsimd::select(ly == ninf_b<A>(), b(0.0f), exp_nonpos<A>(ly) * em);
  }
  bool finish(const double* s, bool) noexcept {
    loss = s[0];
    xh = s[1];
    yd = s[2];
    return true;
  }
  void grad(const fbatch<A>& lx, const fbatch<A>& ly, fbatch<A>& gx, fbatch<A>& gy) const noexcept {
    using b = fbatch<A>;
    const b lm = log_mix<A>(lx, ly, b(log_a), b(log_1ma));
    const b r = lx - lm, em = xsimd::expm1(r);
    gy = xsimd::select(ly == ninf_b<A>(), b(0.0f), b(1.0f - a) * exp_nonpos<A>(ly) * (b(static_cast<float>(yd)) - em));
    gx = xsimd::select(lx == ninf_b<A>(), b(0.0f), exp_nonpos<A>(lx) * (xsimd::fnma(b(a), em, r) - b(static_cast<float>(xh))));
  }
};

template <class A>
struct tvd_kernel {  // (1/2) sum |x - y|
  double loss = 0.0, ys = 0.0, xs = 0.0;
  static fbatch<A> sign(const fbatch<A>& v) noexcept {
    using b = fbatch<A>;
    return xsimd::select(v > b(0.0f), b(1.0f), xsimd::select(v < b(0.0f), b(-1.0f), b(0.0f)));
  }
  void accumulate(const fbatch<A>& lx, const fbatch<A>& ly, fbatch<A>* acc,
                  xsimd::batch_bool<float, A>&) const noexcept {
    const fbatch<A> x = exp_nonpos<A>(lx), y = exp_nonpos<A>(ly);
    const fbatch<A> s = sign(y - x);
    acc[0] += xsimd::abs(x - y);
    acc[1] += y * s;
    acc[2] -= x * s;  // x * sign(x - y)
  }
  bool finish(const double* s, bool) noexcept {
    loss = 0.5 * s[0];
    ys = s[1];
    xs = s[2];
    return true;
  }
  void grad(const fbatch<A>& lx, const fbatch<A>& ly, fbatch<A>& gx, fbatch<A>& gy) const noexcept {
    using b = fbatch<A>;
    const b x = exp_nonpos<A>(lx), y = exp_nonpos<A>(ly);
    const b s = sign(y - x);
    gy = b(0.5f) * y * (s - b(static_cast<float>(ys)));
    gx = b(0.5f) * x * ((-s) - b(static_cast<float>(xs)));
  }
};

// Careful three-pass row: x_is_student says whether the kernel's x is the student (q) or the teacher (p).
template <class A, class K, class S, class P, class G>
inline void careful_row(K kern, bool x_is_student, const row_io<S, P, G>& io, const row_params& rp,
                        row_result& res) noexcept {
  using b = fbatch<A>;
  const std::int64_t n = io.n;
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  // Pass 1: log-sum-exps, with the reference's error order.
  const online_lse<A> st_s = row_logsumexp<A>(io.zs, n, rp.inv_t), st_t = row_logsumexp<A>(io.zt, n, rp.inv_t);
  const double lse_s = st_s.value(), lse_t = st_t.value();
  if (!std::isfinite(lse_s)) {
    res = {nan, row_error::student_non_finite, lse_s};
    return;
  }
  if (!std::isfinite(lse_t)) {
    res = {nan, row_error::teacher_non_finite, lse_t};
    return;
  }
  if (rp.check_student_norm && std::abs(lse_s) > 0.05) {
    res = {nan, row_error::student_not_normalized, lse_s};
    return;
  }
  if (rp.check_teacher_norm && std::abs(lse_t) > 0.05) {
    res = {nan, row_error::teacher_not_normalized, lse_t};
    return;
  }

  // Log-probabilities as (y - M) - log S (see fused_kl_row for why).
  const b it(rp.inv_t), ms(st_s.max), mt(st_t.max), ls(static_cast<float>(std::log(st_s.sum))),
      lt(static_cast<float>(std::log(st_t.sum)));
  const float ninf = -std::numeric_limits<float>::infinity();
  alignas(64) float bs[chunk], bt[chunk];
  // x / y log-probs of the batch at j of the current chunk (tail lanes padded with -inf: they contribute 0).
  auto logp = [&](const float* cs, const float* ct, std::int64_t j, std::int64_t len, b& lx, b& ly) {
    const b lq = xsimd::fms(load_padded<A>(cs, j, len, ninf), it, ms) - ls;
    const b lp = xsimd::fms(load_padded<A>(ct, j, len, ninf), it, mt) - lt;
    lx = x_is_student ? lq : lp;
    ly = x_is_student ? lp : lq;
  };

  // Pass 2: loss and centring sums.
  double sums[3] = {0.0, 0.0, 0.0};
  bool mismatch = false;
  for (std::int64_t j0 = 0; j0 < n; j0 += chunk) {
    const std::int64_t len = n - j0 < chunk ? n - j0 : chunk;
    const float* cs = load_chunk<A>(io.zs + j0, len, bs);
    const float* ct = load_chunk<A>(io.zt + j0, len, bt);
    b acc[3] = {b(0.0f), b(0.0f), b(0.0f)};
    xsimd::batch_bool<float, A> mm(false);
    for (std::int64_t j = 0; j < len; j += width<A>) {
      b lx, ly;
      logp(cs, ct, j, len, lx, ly);
      kern.accumulate(lx, ly, acc, mm);
    }
    for (int i = 0; i < 3; ++i) sums[i] += hsum<A>(acc[i]);
    if (xsimd::any(mm)) mismatch = true;
  }
  kern.finish(sums, mismatch);
  res.loss = kern.loss;
  if (!std::isfinite(res.loss)) {
    res.error = row_error::support_mismatch;
    res.value = res.loss;
    return;
  }
  res.error = row_error::none;
  if (!io.gs && !io.gt) return;

  // Pass 3: gradients.
  const b cb(rp.c);
  grad_sink<A, G> ogs{io.gs, {}}, ogt{io.gt, {}};
  for (std::int64_t j0 = 0; j0 < n; j0 += chunk) {
    const std::int64_t len = n - j0 < chunk ? n - j0 : chunk;
    const float* cs = load_chunk<A>(io.zs + j0, len, bs);
    const float* ct = load_chunk<A>(io.zt + j0, len, bt);
    ogs.dst = io.gs ? io.gs + j0 : nullptr;
    ogt.dst = io.gt ? io.gt + j0 : nullptr;
    float* gs = io.gs ? ogs.target() : nullptr;
    float* gt = io.gt ? ogt.target() : nullptr;
    for (std::int64_t j = 0; j < len; j += width<A>) {
      b lx, ly, gx, gy;
      logp(cs, ct, j, len, lx, ly);
      kern.grad(lx, ly, gx, gy);
      const b gq = cb * (x_is_student ? gx : gy), gp = cb * (x_is_student ? gy : gx);
      if (gs) store_partial<A>(gs, j, len, gq);
      if (gt) store_partial<A>(gt, j, len, gp);
    }
    if (io.gs) ogs.flush(len);
    if (io.gt) ogt.flush(len);
  }
}

// One row of divergence d. Writes the gradients (scaled by rp.c) when the row is valid; on an error writes nothing.
template <class A, class S, class P, class G>
inline row_result divergence_row(const divergence& d, const row_io<S, P, G>& io, const row_params& rp) noexcept {
  row_result res;
  // Which KL a divergence reduces to at its endpoints (as the reference defines them): 1 = forward, 2 = reverse, 0 =
  // none.
  int kl = 0;
  switch (d.kind) {
    case divergence_kind::forward_kl:
      kl = 1;
      break;
    case divergence_kind::reverse_kl:
      kl = 2;
      break;
    case divergence_kind::jsd:
      kl = d.param == 0.0 ? 1 : (d.param == 1.0 ? 2 : 0);
      break;
    case divergence_kind::skew_kl:
      kl = d.param == 0.0 ? 1 : 0;
      break;
    case divergence_kind::skew_reverse_kl:
      kl = d.param == 0.0 ? 2 : 0;
      break;
    case divergence_kind::tvd:
      kl = 0;
      break;
  }
  if (kl != 0) {
    if (fused_kl_row<A>(kl == 2, io, rp, res)) return res;
    careful_row<A>(kl_kernel<A>{}, kl == 2, io, rp, res);
    return res;
  }
  switch (d.kind) {
    case divergence_kind::jsd:
      careful_row<A>(jsd_kernel<A>(d.param), false, io, rp, res);
      break;
    case divergence_kind::skew_kl:
      careful_row<A>(skew_kernel<A>(d.param), false, io, rp, res);
      break;
    case divergence_kind::skew_reverse_kl:
      careful_row<A>(skew_kernel<A>(d.param), true, io, rp, res);
      break;
    default:
      careful_row<A>(tvd_kernel<A>{}, false, io, rp, res);
      break;
  }
  return res;
}

}  // namespace detail::simd
KD_END_NAMESPACE

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
