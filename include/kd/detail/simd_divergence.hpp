// The SIMD driver's row kernels: run any registered divergence functor (kd/divergences/*.hpp) over one row in float32
// lanes of instruction set A, with double accumulation of per-chunk partial sums. The divergences' formulas live in the
// functors alone; this file holds only the passes over memory.
//
// Row [n] of student z_s and teacher z_t (float32 / float64 / bf16 / fp16), temperature T (inv_t = 1/T), gradient scale
// c (row weight * reduction scale / T). A functor is written in (x, y) form (x = the student when the registry entry
// says x_is_student), on log-probabilities lx, ly.
//
// Two paths:
//  * online (functors with an online form, i.e. KL: forward_kl, reverse_kl and the endpoints defined as them), used when
//    the row has no -inf / NaN / +inf: pass A reads both rows once (L1-sized chunks, online max / sum-exp of both sides
//    and the functor's running sum D with the same rescaling), which gives both log-sum-exps and the loss; pass B reads
//    the rows again (from L2/L3) and writes the gradients. Exponentials per element: 2 in pass A, 1 (reverse KL,
//    student gradient) or 2 (forward KL) in pass B. Identical rows give D = 0 and equal log-sum-exps, hence exactly 0
//    loss and gradient.
//  * careful (every functor; online rows with masked / non-finite entries): pass 1 log-sum-exps (reporting NaN / +inf
//    like the reference), pass 2 the functor's sums (accumulate / finish), pass 3 its gradients (grad).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../divergences/registry.hpp"
#include "../options.hpp"
#include "row_io.hpp"
#include "simd_math.hpp"
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

template <class F, class = void>
struct has_online : std::false_type {};
template <class F>
struct has_online<F, std::enable_if_t<F::has_online>> : std::true_type {};

// -------------------------------------------------------------------------------------------------------------------
// Online two-pass row of a functor F with an online form (KL(x || y): F::online_*). x_is_student selects which side is
// x. Returns false when the row has a non-finite value in pass A (nothing has been written then): the caller takes the
// careful path. Precision: log-probabilities are formed as (y - M) - log S, never y - lse: y - M is exact near the max
// (where the mass is) and log S <= log V is small, so float32 rounding stays near 2^-24 * log V instead of
// 2^-24 * |lse|; likewise D is accumulated over u = (y_x - M_x) - (y_y - M_y) and re-based when a running max moves.
template <class A, class F, class S, class P, class G>
inline bool online_row(bool x_is_student, const row_io<S, P, G>& io, const row_params& rp, row_result& res) noexcept {
  using b = fbatch<A>;
  constexpr float ninf = -std::numeric_limits<float>::infinity();
  const std::int64_t n = io.n;
  const float inv_t = static_cast<float>(rp.inv_t);
  const b it(inv_t);
  alignas(64) float bs[chunk], bt[chunk];
  float ms = ninf, mt = ninf;
  // ss, st: sum exp(y - M) per side (entries at the max counted apart, split_sum); dd: the functor's online sum, all
  // w.r.t. the current maxes.
  split_sum ss, st;
  double dd = 0.0;
  // Pass A: online max / sum-exp of both rows plus D, chunk by chunk.
  for (std::int64_t j0 = 0; j0 < n; j0 += chunk) {
    const std::int64_t len = n - j0 < chunk ? n - j0 : chunk;
    const float* cs = load_chunk<A>(io.zs + j0, len, bs);
    const float* ct = load_chunk<A>(io.zt + j0, len, bt);
    // max(z) / T == max(z / T) (T > 0, rounding is monotonic). NaN / +inf show up as NaN sums below.
    const float cms = chunk_max_raw<A>(cs, len) * inv_t, cmt = chunk_max_raw<A>(ct, len) * inv_t;
    if (!(cms > ninf && cmt > ninf)) return false;  // a fully masked chunk (or a NaN max): careful path
    const float ns = cms > ms ? cms : ms, nt = cmt > mt ? cmt : mt;
    if (ns != ms || nt != mt) {
      const double fs = std::exp(static_cast<double>(ms) - ns), ft = std::exp(static_cast<double>(mt) - nt);
      const double sx = x_is_student ? ss.total() : st.total();
      if (sx > 0.0) {  // re-base D: shift = (M_x' - M_x) - (M_y' - M_y)
        const double shift =
            x_is_student ? (double(ns) - ms) - (double(nt) - mt) : (double(nt) - mt) - (double(ns) - ms);
        dd = F::online_rebase(dd, sx, shift, x_is_student ? fs : ft);
      }
      if (ns != ms) ss.rescale(fs);
      if (nt != mt) st.rescale(ft);
      ms = ns;
      mt = nt;
    }
    const b mbs(ms), mbt(mt);
    // The chunk that holds a running maximum counts the entries AT the maximum apart from the tail (split_sum): its
    // top lane would otherwise add exp(0) = 1 and absorb every tail term below 2^-24 of a confident row.
    const bool hot = cms == ms || cmt == mt;
    const b zero(0.0f), one(1.0f);
    b as(0.0f), at(0.0f), ad(0.0f), ns_(0.0f), nt_(0.0f);
    auto add = [&](const b& us, const b& ut, const b& es, const b& et, const xsimd::batch_bool<float, A>& valid) {
      if (hot) {
        const auto zs_ = us == zero, zt_ = ut == zero;
        as += xsimd::select(zs_, zero, es);
        at += xsimd::select(zt_, zero, et);
        ns_ += xsimd::select(zs_ && valid, one, zero);
        nt_ += xsimd::select(zt_ && valid, one, zero);
      } else {
        as += es;
        at += et;
      }
    };
    std::int64_t j = 0;
    for (; j + width<A> <= len; j += width<A>) {
      const b us = xsimd::fms(b::load_unaligned(cs + j), it, mbs), ut = xsimd::fms(b::load_unaligned(ct + j), it, mbt);
      const b es = exp_nonpos<A>(us), et = exp_nonpos<A>(ut);
      add(us, ut, es, et, xsimd::batch_bool<float, A>(true));
      ad = x_is_student ? F::online_term(es, us, ut, ad) : F::online_term(et, ut, us, ad);
    }
    if (j < len) {  // tail: pad with 0 (finite), mask the contributions
      const auto m = lane_mask<A>(len - j);
      const b us = xsimd::fms(load_padded<A>(cs, j, len, 0.0f), it, mbs);
      const b ut = xsimd::fms(load_padded<A>(ct, j, len, 0.0f), it, mbt);
      const b es = xsimd::select(m, exp_nonpos<A>(us), b(0.0f)), et = xsimd::select(m, exp_nonpos<A>(ut), b(0.0f));
      add(us, ut, es, et, m);
      ad = x_is_student ? F::online_term(es, us, ut, ad) : F::online_term(et, ut, us, ad);
    }
    ss.tail += hsum<A>(as);
    st.tail += hsum<A>(at);
    if (hot) {
      ss.cnt += hsum<A>(ns_);
      st.cnt += hsum<A>(nt_);
    }
    dd += hsum<A>(ad);
  }
  if (!(std::isfinite(ss.total()) && std::isfinite(st.total()) && std::isfinite(dd))) return false;
  const double lns = ss.log(), lnt = st.log();
  const double lse_s = ms + lns, lse_t = mt + lnt;
  const row_result chk = check_pass1(lse_s, lse_t, false, false, rp);
  if (chk.error != row_error::none) {
    res = chk;
    return true;
  }
  const double loss =
      x_is_student ? F::online_loss(dd, ss.total(), lns, lnt) : F::online_loss(dd, st.total(), lnt, lns);
  res.loss = loss;
  res.error = row_error::none;
  if (!io.gs && !io.gt) return true;

  // Pass B: gradients. lq = (ys - Ms) - log Ss, q = exp(lq) (same for p).
  const b mbs(ms), mbt(mt), ls(static_cast<float>(lns)), lt(static_cast<float>(lnt)), kb(static_cast<float>(loss)),
      cb(static_cast<float>(rp.c));
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
      const b us = xsimd::fms(zs, it, mbs), ut = xsimd::fms(zt, it, mbt);
      const b lq = us - ls, lp = ut - lt;
      b gq, gp;
      if (x_is_student) {  // x = q: gq = grad_x, gp = grad_y
        const b q = exp_nonpos<A>(lq);
        if (gs) gq = F::online_grad_x(cb, q, lq, lp, kb);
        if (gt) gp = F::online_grad_y(cb, lq, lp, q, exp_nonpos<A>(lp));
      } else {  // x = p: gq = grad_y, gp = grad_x
        const b p = exp_nonpos<A>(lp);
        if (gs) gq = F::online_grad_y(cb, lp, lq, p, exp_nonpos<A>(lq));
        if (gt) gp = F::online_grad_x(cb, p, lp, lq, kb);
      }
      if (gs) store(gs, j, gq);
      if (gt) store(gt, j, gp);
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
// Careful three-pass row of any functor F: x_is_student says whether the functor's x is the student (q) or the teacher.
template <class A, class F, class S, class P, class G>
inline void careful_row(F kern, bool x_is_student, const row_io<S, P, G>& io, const row_params& rp,
                        row_result& res) noexcept {
  using b = fbatch<A>;
  const std::int64_t n = io.n;
  const float inv_t = static_cast<float>(rp.inv_t);
  // Pass 1: log-sum-exps, with the reference's error order.
  const online_lse<A> st_s = row_logsumexp<A>(io.zs, n, inv_t), st_t = row_logsumexp<A>(io.zt, n, inv_t);
  const double lse_s = st_s.value(), lse_t = st_t.value();
  constexpr double ninf = -std::numeric_limits<double>::infinity();
  res = check_pass1(lse_s, lse_t, lse_s == ninf && all_ninf(io.zs, n), lse_t == ninf && all_ninf(io.zt, n), rp);
  if (res.error != row_error::none) return;

  // Log-probabilities as (y - M) - log S (see online_row for why).
  const b it(inv_t), ms(st_s.max), mt(st_t.max), ls(static_cast<float>(st_s.sum.log())),
      lt(static_cast<float>(st_t.sum.log()));
  const float ninff = -std::numeric_limits<float>::infinity();
  alignas(64) float bs[chunk], bt[chunk];
  // x / y log-probs of the batch at j of the current chunk (tail lanes padded with -inf: they contribute 0).
  auto logp = [&](const float* cs, const float* ct, std::int64_t j, std::int64_t len, b& lx, b& ly) {
    const b lq = xsimd::fms(load_padded<A>(cs, j, len, ninff), it, ms) - ls;
    const b lp = xsimd::fms(load_padded<A>(ct, j, len, ninff), it, mt) - lt;
    lx = x_is_student ? lq : lp;
    ly = x_is_student ? lp : lq;
  };

  // Pass 2: the functor's sums.
  constexpr int k = F::n_sums;
  double sums[k] = {};
  bool mismatch = false;
  for (std::int64_t j0 = 0; j0 < n; j0 += chunk) {
    const std::int64_t len = n - j0 < chunk ? n - j0 : chunk;
    const float* cs = load_chunk<A>(io.zs + j0, len, bs);
    const float* ct = load_chunk<A>(io.zt + j0, len, bt);
    b acc[k], sum[k], comp[k];
    for (int i = 0; i < k; ++i) sum[i] = comp[i] = b(0.0f);
    xsimd::batch_bool<float, A> mm(false);
    // The chunk that holds either row's maximum accumulates with compensation (kahan_add; see online_row).
    const bool hot = j0 / chunk == st_s.max_chunk || j0 / chunk == st_t.max_chunk;
    for (std::int64_t j = 0; j < len; j += width<A>) {
      b lx, ly;
      logp(cs, ct, j, len, lx, ly);
      if (hot) {
        for (int i = 0; i < k; ++i) acc[i] = b(0.0f);
        kern.accumulate(lx, ly, acc, mm);
        for (int i = 0; i < k; ++i) kahan_add<A>(sum[i], comp[i], acc[i]);
      } else {
        kern.accumulate(lx, ly, sum, mm);
      }
    }
    for (int i = 0; i < k; ++i) sums[i] += hsum<A>(sum[i]) + hsum<A>(comp[i]);
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
  const b cb(static_cast<float>(rp.c));
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

// The row kernels of instruction set A, as the shared CPU driver calls them (backend/cpu_driver.hpp).
template <class A>
struct row_kernels {
  template <class S, class P, class G>
  struct scratch {
    explicit scratch(std::int64_t) {}
  };
  // One row of the divergence entry E with functor f. Writes the gradients (scaled by rp.c) when the row is valid; on an
  // error (or a masked row) writes nothing.
  template <class E, class S, class P, class G>
  static row_result row(const typename E::functor& f, const row_io<S, P, G>& io, const row_params& rp,
                        scratch<S, P, G>&) noexcept {
    using F = typename E::functor;
    row_result res;
    if constexpr (has_online<F>::value)
      if (online_row<A, F>(E::x_is_student, io, rp, res)) return res;
    careful_row<A>(f, E::x_is_student, io, rp, res);
    return res;
  }
};

}  // namespace detail::simd
KD_END_NAMESPACE

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
