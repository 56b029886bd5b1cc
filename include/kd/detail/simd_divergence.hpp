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
//    like the reference), pass 2 the functor's sums (accumulate / finish), pass 3 its gradients (grad). Functors with a
//    split gradient (row_math.hpp: JSD, the skew KLs, alpha-beta) in a whole-row call: pass 2 also stores the
//    gradient's parts in per-thread scratch rows, pass 3 adds c prob with one exponential per entry and side
//    (split_fix) instead of the functor's terms again.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <type_traits>

#include "../divergences/registry.hpp"
#include "../options.hpp"
#include "reference_rows.hpp"
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

template <class F, class = void>
struct has_online : std::false_type {};
template <class F>
struct has_online<F, std::enable_if_t<F::has_online>> : std::true_type {};
template <class F, class = void>
struct has_split_grad : std::false_type {};
template <class F>
struct has_split_grad<F, std::enable_if_t<F::split_grad>> : std::true_type {};

// The two forms of a log-ratio u_x - u_y (u = z / T - M, per side) and their float32 error bounds: from the u's,
// about 2^-24 (|u_x| + |u_y|) (exact near the maxima, where u = 0); from the raw logit difference, (z_x - z_y) / T -
// (M_x - M_y), about 2^-24 |z_x - z_y| / T (exact where the models' logits agree, at any T). raw_lane picks, per lane,
// the raw form where its bound is the smaller one.
template <class A>
KD_SIMD_INLINE xsimd::batch_bool<float, A> raw_lane(const fbatch<A>& zd, const fbatch<A>& it, const fbatch<A>& us,
                                                     const fbatch<A>& ut) noexcept {
  return xsimd::abs(zd) * it < xsimd::abs(us) + xsimd::abs(ut);
}

// lx - ly - KL of the online gradient pass: (lx - ly) - KL, or with Raw the per-lane choice of raw_lane, the raw form
// being (z_x - z_y) / T - k with k = (lse_x - lse_y) + KL rounded once (kb); kub = KL.
template <class A, bool Raw>
KD_SIMD_INLINE fbatch<A> log_ratio_kl(const fbatch<A>& zd, const fbatch<A>& it, const fbatch<A>& us,
                                      const fbatch<A>& ut, const fbatch<A>& lratio, const fbatch<A>& kb,
                                      const fbatch<A>& kub) noexcept {
  if constexpr (Raw)
    return xsimd::select(raw_lane<A>(zd, it, us, ut), xsimd::fms(zd, it, kb), lratio - kub);
  else
    return lratio - kb;
}

// d = lx - ly of the careful passes, per lane (raw_lane) in one of two forms, each exact where its inputs are small:
//   from the max-relative u's:  (u_x - u_y) - (log S_x - log S_y), the constant ku taken in double and rounded once
//                               (exact near both maxima: a confident row's top token, whose d is tail-sized);
//   raw:                        (z_x - z_y) / T - (lse_x - lse_y), the constant as a float pair k_hi + k_lo (rounded
//                               once to float it would shift every raw lane's d by the same ~2^-24 |k|, an error that
//                               does not average out over the row).
// A confident row's tail has u_x, u_y ~ -gap, whose difference carries ~gap 2^-24 absolute rounding; the raw form
// carries that of the logit difference alone. The functors take d for every log-ratio they need
// (kd/divergences/row_math.hpp). Lanes with a -inf logit take the u form (+-inf, or NaN where both are -inf: the
// functors mask those). ux, uy: the x and y sides' u; zd = z_x - z_y.
template <class A>
KD_SIMD_INLINE fbatch<A> careful_log_ratio(const fbatch<A>& zd, const fbatch<A>& it, const fbatch<A>& ux,
                                           const fbatch<A>& uy, const fbatch<A>& ku, const fbatch<A>& k_hi,
                                           const fbatch<A>& k_lo) noexcept {
  return xsimd::select(raw_lane<A>(zd, it, ux, uy), xsimd::fms(zd, it, k_hi) - k_lo, (ux - uy) - ku);
}

// -------------------------------------------------------------------------------------------------------------------
// Online form of a functor F with one (KL(x || y): F::online_*): the statistics pass (pass A) and the gradient pass
// (pass B). x_is_student selects which side is x. Precision: log-probabilities are formed as (y - M) - log S, never
// y - lse: y - M is exact near the max (where the mass is) and log S <= log V is small, so float32 rounding stays near
// 2^-24 * log V instead of 2^-24 * |lse|; likewise D is accumulated over u = (y_x - M_x) - (y_y - M_y) and re-based
// when a running max moves.
//
// Pass A reads both rows once: online max / sum-exp of both sides plus D, chunk by chunk. Returns false when the row has
// a masked or non-finite value (the caller then takes the careful path); else st holds the loss (or the pass-1 error).
template <class A, class F, bool Raw, class S, class P, class G>
inline bool online_stats(bool x_is_student, const row_io<S, P, G>& io, const row_params& rp,
                         row_stats<F>& st) noexcept {
  using b = fbatch<A>;
  constexpr float ninf = -std::numeric_limits<float>::infinity();
  const std::int64_t n = io.n;
  const float inv_t = static_cast<float>(rp.inv_t);
  const b it(inv_t);
  alignas(64) float bs[chunk], bt[chunk];
  float ms = ninf, mt = ninf;
  // ss, st: sum exp(y - M) per side (entries at the max counted apart, split_sum); dd: the functor's online sum, all
  // w.r.t. the current maxes.
  split_sum ss, sst;
  double dd = 0.0;
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
      const double sx = x_is_student ? ss.total() : sst.total();
      if (sx > 0.0) {  // re-base D: shift = (M_x' - M_x) - (M_y' - M_y)
        const double shift =
            x_is_student ? (double(ns) - ms) - (double(nt) - mt) : (double(nt) - mt) - (double(ns) - ms);
        dd = F::online_rebase(dd, sx, shift, x_is_student ? fs : ft);
      }
      if (ns != ms) ss.rescale(fs);
      if (nt != mt) sst.rescale(ft);
      ms = ns;
      mt = nt;
    }
    const b mbs(ms), mbt(mt);
    // du = u_x - u_y: u_x - u_y (exact near the maxima), or with Raw from the raw logit difference (z_x - z_y) / T -
    // (M_x - M_y) (exact where the two models' logits agree, at any T; row_params::raw_log_ratio).
    const b dmb(static_cast<float>(x_is_student ? double(ms) - mt : double(mt) - ms));
    const auto du = [&](const b& zs, const b& zt, const b& us, const b& ut) {
      const b u = x_is_student ? b(us - ut) : b(ut - us);
      if constexpr (Raw) {
        const b zd = x_is_student ? b(zs - zt) : b(zt - zs);
        return xsimd::select(raw_lane<A>(zd, it, us, ut), xsimd::fms(zd, it, dmb), u);
      } else {
        return u;
      }
    };
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
      const b zs = b::load_unaligned(cs + j), zt = b::load_unaligned(ct + j);
      const b us = xsimd::fms(zs, it, mbs), ut = xsimd::fms(zt, it, mbt);
      const b es = exp_nonpos<A>(us), et = exp_nonpos<A>(ut);
      add(us, ut, es, et, xsimd::batch_bool<float, A>(true));
      ad = F::online_term(x_is_student ? es : et, du(zs, zt, us, ut), ad);
    }
    if (j < len) {  // tail: pad with 0 (finite), mask the contributions
      const auto m = lane_mask<A>(len - j);
      const b zs = load_padded<A>(cs, j, len, 0.0f), zt = load_padded<A>(ct, j, len, 0.0f);
      const b us = xsimd::fms(zs, it, mbs), ut = xsimd::fms(zt, it, mbt);
      const b es = xsimd::select(m, exp_nonpos<A>(us), b(0.0f)), et = xsimd::select(m, exp_nonpos<A>(ut), b(0.0f));
      add(us, ut, es, et, m);
      ad = F::online_term(x_is_student ? es : et, du(zs, zt, us, ut), ad);
    }
    ss.tail += hsum<A>(as);
    sst.tail += hsum<A>(at);
    if (hot) {
      ss.cnt += hsum<A>(ns_);
      sst.cnt += hsum<A>(nt_);
    }
    dd += hsum<A>(ad);
  }
  if (!(std::isfinite(ss.total()) && std::isfinite(sst.total()) && std::isfinite(dd))) return false;
  const double lns = ss.log(), lnt = sst.log();
  st.s = {static_cast<double>(ms), lns};
  st.t = {static_cast<double>(mt), lnt};
  st.online = true;
  st.res = check_pass1(st.s.value(), st.t.value(), false, false, rp);
  if (st.res.error != row_error::none) return true;
  st.res.loss =
      x_is_student ? F::online_loss(dd, ss.total(), lns, lnt) : F::online_loss(dd, sst.total(), lnt, lns);
  return true;
}

// Pass B: the gradients of a row whose statistics came from online_stats. lq = (ys - Ms) - log Ss, q = exp(lq) (same
// for p). WithQ adds rp.c_q * q to the student gradient.
template <class A, class F, bool WithQ, bool Raw, class S, class P, class G>
inline void online_grad(bool x_is_student, const row_stats<F>& st, const row_io<S, P, G>& io,
                        const row_params& rp) noexcept {
  using b = fbatch<A>;
  const std::int64_t n = io.n;
  const b it(static_cast<float>(rp.inv_t));
  alignas(64) float bs[chunk], bt[chunk];
  const b mbs(static_cast<float>(st.s.max)), mbt(static_cast<float>(st.t.max)), ls(static_cast<float>(st.s.log_sum)),
      lt(static_cast<float>(st.t.log_sum)), cb(static_cast<float>(rp.c)), cqb(static_cast<float>(rp.c_q)),
      lsd(static_cast<float>(st.s.log_sum - st.t.log_sum));
  // lx - ly - KL: (lx - ly) - KL, or with Raw (z_x - z_y) / T - k, k = (lse_x - lse_y) + KL from the parts, in double,
  // rounded once.
  const double lse_d = (st.s.max - st.t.max) + (st.s.log_sum - st.t.log_sum);
  const b kb(static_cast<float>(Raw ? (x_is_student ? lse_d : -lse_d) + st.res.loss : st.res.loss)),
      kub(static_cast<float>(st.res.loss));
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
      // lq - lp as (u_s - u_t) - (log S_s - log S_t), the constant taken in double and rounded once: exact near the
      // maxima (a confident row's top token, whose gradient is a difference of tail-sized log-probabilities).
      const b dqp = (us - ut) - lsd;
      b gq, gp;
      if (x_is_student) {  // x = q: gq = grad_x, gp = grad_y
        const b q = exp_nonpos<A>(lq);
        if (gs) {
          gq = F::online_grad_x(cb, q, log_ratio_kl<A, Raw>(zs - zt, it, us, ut, dqp, kb, kub));
          if constexpr (WithQ) gq = xsimd::fma(cqb, q, gq);
        }
        if (gt) gp = F::online_grad_y(cb, dqp, q, exp_nonpos<A>(lp));
      } else {  // x = p: gq = grad_y, gp = grad_x
        const b p = exp_nonpos<A>(lp);
        if (gs) {
          const b q = exp_nonpos<A>(lq);
          gq = F::online_grad_y(cb, -dqp, p, q);
          if constexpr (WithQ) gq = xsimd::fma(cqb, q, gq);
        }
        if (gt) gp = F::online_grad_x(cb, p, log_ratio_kl<A, Raw>(zt - zs, it, us, ut, -dqp, kb, kub));
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
}

// careful_log_ratio's row constants, from the row's parts in double: lse_x - lse_y as a float pair hi + lo, and
// log S_x - log S_y rounded once.
struct log_ratio_constants {
  float hi, lo, ku;
};
template <class F>
inline log_ratio_constants careful_constants(bool x_is_student, const row_stats<F>& st) noexcept {
  const double v0 = (st.s.max - st.t.max) + (st.s.log_sum - st.t.log_sum), ku0 = st.s.log_sum - st.t.log_sum;
  const double v = x_is_student ? v0 : -v0;
  const float hi = static_cast<float>(v);
  return {hi, static_cast<float>(v - static_cast<double>(hi)), static_cast<float>(x_is_student ? ku0 : -ku0)};
}

// Pass 2 of the careful form: the functor's sums over the entries of io (a whole row, or a shard of one: st holds the
// ROW's log-sum-exps either way), added to sums[0..n_sums) and mismatch. hot_s / hot_t: the index of the chunk of io
// that holds the row's student / teacher maximum (-1: none); those chunks accumulate with compensation (kahan_add).
// Split (functors with a split gradient): also stores rp.c times the gradient's parts (row_math.hpp) of the student /
// teacher side into part_s / part_t (float [n] each, nullptr: that side is not wanted), which split_fix completes.
template <class A, bool Split = false, class F, class S, class P, class G>
inline void careful_sums(const F& kern, bool x_is_student, const row_io<S, P, G>& io, const row_params& rp,
                         const row_stats<F>& st, std::int64_t hot_s, std::int64_t hot_t, double* sums,
                         bool& mismatch, float* part_s = nullptr, float* part_t = nullptr) noexcept {
  const std::int64_t n = io.n;
  const float inv_t = static_cast<float>(rp.inv_t);
  using b = fbatch<A>;
  const b it(inv_t), ms(static_cast<float>(st.s.max)), mt(static_cast<float>(st.t.max)), ls(static_cast<float>(st.s.log_sum)),
      lt(static_cast<float>(st.t.log_sum));
  const log_ratio_constants kc = careful_constants(x_is_student, st);
  const b k_hi(kc.hi), k_lo(kc.lo), ku(kc.ku), cb(static_cast<float>(rp.c));
  const float ninff = -std::numeric_limits<float>::infinity();
  alignas(64) float bs[chunk], bt[chunk];
  // Pass 2: the functor's sums. Log-probabilities as (y - M) - log S (see online_stats for why).
  constexpr int k = F::n_sums;
  for (std::int64_t j0 = 0; j0 < n; j0 += chunk) {
    const std::int64_t len = n - j0 < chunk ? n - j0 : chunk;
    const float* cs = load_chunk<A>(io.zs + j0, len, bs);
    const float* ct = load_chunk<A>(io.zt + j0, len, bt);
    b acc[k], sum[k], comp[k];
    for (int i = 0; i < k; ++i) sum[i] = comp[i] = b(0.0f);
    xsimd::batch_bool<float, A> mm(false);
    // The chunk that holds either row's maximum accumulates with compensation (kahan_add; see online_stats).
    const bool hot = j0 / chunk == hot_s || j0 / chunk == hot_t;
    for (std::int64_t j = 0; j < len; j += width<A>) {
      const b zs = load_padded<A>(cs, j, len, ninff), zt = load_padded<A>(ct, j, len, ninff);
      const b us = xsimd::fms(zs, it, ms), ut = xsimd::fms(zt, it, mt);
      const b lq = us - ls, lp = ut - lt;
      const b& lx = x_is_student ? lq : lp;
      const b& ly = x_is_student ? lp : lq;
      const b d = x_is_student ? careful_log_ratio<A>(zs - zt, it, us, ut, ku, k_hi, k_lo)
                               : careful_log_ratio<A>(zt - zs, it, ut, us, ku, k_hi, k_lo);
      if constexpr (Split) {
        b px, py;
        if (hot) {
          for (int i = 0; i < k; ++i) acc[i] = b(0.0f);
          kern.accumulate_split(lx, ly, d, acc, mm, px, py);
          for (int i = 0; i < k; ++i) kahan_add<A>(sum[i], comp[i], acc[i]);
        } else {
          kern.accumulate_split(lx, ly, d, sum, mm, px, py);
        }
        if (part_s) store_partial<A>(part_s + j0, j, len, cb * (x_is_student ? px : py));
        if (part_t) store_partial<A>(part_t + j0, j, len, cb * (x_is_student ? py : px));
      } else if (hot) {
        for (int i = 0; i < k; ++i) acc[i] = b(0.0f);
        kern.accumulate(lx, ly, d, acc, mm);
        for (int i = 0; i < k; ++i) kahan_add<A>(sum[i], comp[i], acc[i]);
      } else {
        kern.accumulate(lx, ly, d, sum, mm);
      }
    }
    for (int i = 0; i < k; ++i) sums[i] += hsum<A>(sum[i]) + hsum<A>(comp[i]);
    if (xsimd::any(mm)) mismatch = true;
  }
}

// -------------------------------------------------------------------------------------------------------------------
// Careful form of any functor F (x_is_student: whether the functor's x is the student q or the teacher p). Statistics:
// pass 1 log-sum-exps (reporting NaN / +inf / masked rows like the reference), pass 2 the functor's sums.
// Split: pass 2 also stores the gradient's parts into part_s / part_t (careful_sums); split_fix completes them.
template <class A, bool Split = false, class F, class S, class P, class G>
inline void careful_stats(F kern, bool x_is_student, const row_io<S, P, G>& io, const row_params& rp,
                          row_stats<F>& st, float* part_s = nullptr, float* part_t = nullptr) noexcept {
  const std::int64_t n = io.n;
  const float inv_t = static_cast<float>(rp.inv_t);
  // Pass 1: log-sum-exps, with the reference's error order.
  const online_lse<A> st_s = row_logsumexp<A>(io.zs, n, inv_t), st_t = row_logsumexp<A>(io.zt, n, inv_t);
  const double lse_s = st_s.value(), lse_t = st_t.value();
  constexpr double ninf = -std::numeric_limits<double>::infinity();
  st.online = false;
  st.res = check_pass1(lse_s, lse_t, lse_s == ninf && all_ninf(io.zs, n), lse_t == ninf && all_ninf(io.zt, n), rp);
  if (st.res.error == row_error::student_non_finite || st.res.error == row_error::teacher_non_finite ||
      st.res.error == row_error::student_out_of_range || st.res.error == row_error::teacher_out_of_range)
    st.res = refine_pass1(io.zs, io.zt, n, rp.inv_t, st.res);  // in double, by the range rule (row_io.hpp)
  if (st.res.error != row_error::none) return;
  // Finite entries beyond the float range (|z| / T > FLT_MAX) that became -inf here (probability 0) are out of range
  // by the same rule: possible only when 1 / T > 1 or an input is float64.
  if (rp.inv_t > 1.0 || std::is_same_v<S, double> || std::is_same_v<P, double>) {
    st.res = check_range(io.zs, io.zt, n, rp.inv_t);
    if (st.res.error != row_error::none) return;
  }
  st.s = {static_cast<double>(st_s.max), st_s.sum.log()};
  st.t = {static_cast<double>(st_t.max), st_t.sum.log()};

  constexpr int k = F::n_sums;
  double sums[k] = {};
  bool mismatch = false;
  careful_sums<A, Split>(kern, x_is_student, io, rp, st, st_s.max_chunk, st_t.max_chunk, sums, mismatch, part_s,
                         part_t);
  kern.finish(sums, mismatch);
  st.f = kern;
  st.res.loss = kern.loss;
  if (!std::isfinite(st.res.loss)) {
    st.res.error = row_error::support_mismatch;
    st.res.value = st.res.loss;
  }
}

// Pass 3: the gradients of a row whose statistics came from careful_stats (tail lanes padded with -inf: they
// contribute 0). WithQ adds rp.c_q * q to the student gradient.
template <class A, class F, bool WithQ, class S, class P, class G>
inline void careful_grad(bool x_is_student, const row_stats<F>& st, const row_io<S, P, G>& io,
                         const row_params& rp) noexcept {
  using b = fbatch<A>;
  const std::int64_t n = io.n;
  const F& kern = st.f;
  const b it(static_cast<float>(rp.inv_t)), ms(static_cast<float>(st.s.max)), mt(static_cast<float>(st.t.max)),
      ls(static_cast<float>(st.s.log_sum)), lt(static_cast<float>(st.t.log_sum));
  const log_ratio_constants kc = careful_constants(x_is_student, st);
  const b k_hi(kc.hi), k_lo(kc.lo), ku(kc.ku);
  const float ninff = -std::numeric_limits<float>::infinity();
  alignas(64) float bs[chunk], bt[chunk];
  const b cb(static_cast<float>(rp.c)), cqb(static_cast<float>(rp.c_q));
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
      const b zs = load_padded<A>(cs, j, len, ninff), zt = load_padded<A>(ct, j, len, ninff);
      const b us = xsimd::fms(zs, it, ms), ut = xsimd::fms(zt, it, mt);
      const b lq = us - ls, lp = ut - lt;
      b gx, gy;
      if (x_is_student) kern.grad(lq, lp, careful_log_ratio<A>(zs - zt, it, us, ut, ku, k_hi, k_lo), gx, gy);
      else kern.grad(lp, lq, careful_log_ratio<A>(zt - zs, it, ut, us, ku, k_hi, k_lo), gx, gy);
      b gq = cb * (x_is_student ? gx : gy);
      const b gp = cb * (x_is_student ? gy : gx);
      if constexpr (WithQ) gq = xsimd::fma(cqb, exp_nonpos<A>(lq), gq);
      if (gs) store_partial<A>(gs, j, len, gq);
      if (gt) store_partial<A>(gt, j, len, gp);
    }
    if (io.gs) ogs.flush(len);
    if (io.gt) ogt.flush(len);
  }
}

// g_j = coef q_j (+ add_j where add is not null), q_j = exp((z_j / T - max) - log_sum) in the arithmetic of the passes
// above (masked entries exactly 0); float arithmetic, rounded once to G.
template <class A, class S, class G>
inline void softmax_times(const S* z, std::int64_t n, double inv_t, const row_lse& lse, double coef, const float* add,
                          G* g) noexcept {
  using b = fbatch<A>;
  const b it(static_cast<float>(inv_t)), mb(static_cast<float>(lse.max)), ls(static_cast<float>(lse.log_sum)),
      cb(static_cast<float>(coef));
  const float ninff = -std::numeric_limits<float>::infinity();
  alignas(64) float bz[chunk];
  grad_sink<A, G> og{g, {}};
  for (std::int64_t j0 = 0; j0 < n; j0 += chunk) {
    const std::int64_t len = n - j0 < chunk ? n - j0 : chunk;
    const float* cz = load_chunk<A>(z + j0, len, bz);
    og.dst = g + j0;
    float* t = og.target();
    if (add) {
      const float* a = add + j0;
      for (std::int64_t j = 0; j < len; j += width<A>) {
        const b q = exp_nonpos<A>(xsimd::fms(load_padded<A>(cz, j, len, ninff), it, mb) - ls);
        store_partial<A>(t, j, len, xsimd::fma(cb, q, load_padded<A>(a, j, len, 0.0f)));
      }
    } else {
      for (std::int64_t j = 0; j < len; j += width<A>)
        store_partial<A>(t, j, len, cb * exp_nonpos<A>(xsimd::fms(load_padded<A>(cz, j, len, ninff), it, mb) - ls));
    }
    og.flush(len);
  }
}

// Pass 3 of the split form: completes the parts careful_stats<A, true> stored in part_s / part_t,
// g = part + (rp.c c_side [+ rp.c_q on the student side]) prob (one exponential per entry and side; the functor's
// terms are not recomputed). Reads only the inputs and the parts, so gradients may overwrite the inputs (in place).
template <class A, class F, class S, class P, class G>
inline void split_fix(bool x_is_student, const row_stats<F>& st, const row_io<S, P, G>& io, const row_params& rp,
                      const float* part_s, const float* part_t) noexcept {
  double cx = 0.0, cy = 0.0;
  st.f.grad_coefs(cx, cy);
  // In place, the gradient overwrites the logits: each chunk is converted (load_chunk) before its gradient is stored.
  if (io.gs) softmax_times<A>(io.zs, io.n, rp.inv_t, st.s, rp.c * (x_is_student ? cx : cy) + rp.c_q, part_s, io.gs);
  if (io.gt) softmax_times<A>(io.zt, io.n, rp.inv_t, st.t, rp.c * (x_is_student ? cy : cx), part_t, io.gt);
}

// The row kernels of instruction set A, as the shared CPU drivers call them (backend/cpu_driver.hpp,
// backend/pg_driver.hpp, backend/lm_driver.hpp). The same contract as detail::ref::row_kernels:
//   stats<E>(f, io, rp, sc)      the row's loss and log-sum-exps (writes nothing)
//   grad<E>(st, io, rp, sc)      its gradients from those statistics: rp.c times the functor's, plus rp.c_q * q on the
//                                student side (precondition: st.res.error == none)
//   row<E>(f, io, rp, sc)        both (the divergence call)
//   student_lse(z, n, inv_t, sc) a student-only row's log-sum-exp (or why it has none)
//   softmax_grad(z, n, inv_t, lse, c_q, g)   g_j = c_q q_j
template <class A>
struct row_kernels {
  // Rows at a temperature whose 1 / T overflows float32 (T below ~2.9e-39) run on the reference row kernels: by the
  // range rule (row_io.hpp) their only valid entries are zeros and -inf, which the float kernels would turn into
  // 0 * inf = NaN. Their double scratch is allocated on first use.
  // Split gradients (row<E>) keep their parts in two float rows per thread, allocated on first use: they stay in
  // cache from row to row, and the gradient rows are written once, in pass 3.
  template <class S, class P, class G>
  struct scratch {
    std::int64_t n;
    std::unique_ptr<ref::row_kernels::scratch<S, P, G>> ref;
    std::unique_ptr<float[]> parts;
    explicit scratch(std::int64_t n_) : n(n_) {}
    ref::row_kernels::scratch<S, P, G>& reference() {
      if (!ref) ref = std::make_unique<ref::row_kernels::scratch<S, P, G>>(n);
      return *ref;
    }
    float* part(int side) {  // side 0: student, 1: teacher
      if (!parts) parts.reset(new float[2 * static_cast<std::size_t>(n)]);
      return parts.get() + side * n;
    }
  };
  static bool float_inv_t(double inv_t) noexcept {
    return static_cast<float>(inv_t) <= std::numeric_limits<float>::max();
  }

  template <class E, class S, class P, class G>
  static row_stats<typename E::functor> stats(const typename E::functor& f, const row_io<S, P, G>& io,
                                              const row_params& rp, scratch<S, P, G>& sc) noexcept {
    using F = typename E::functor;
    if (!float_inv_t(rp.inv_t)) return ref::row_kernels::stats<E>(f, io, rp, sc.reference());
    row_stats<F> st;
    if constexpr (has_online<F>::value)
      if (rp.raw_log_ratio ? online_stats<A, F, true>(E::x_is_student, io, rp, st)
                           : online_stats<A, F, false>(E::x_is_student, io, rp, st)) {
        st.f = f;  // the online gradient pass takes the loss from st.res
        return st;
      }
    careful_stats<A>(f, E::x_is_student, io, rp, st);
    return st;
  }

  template <class E, class S, class P, class G>
  static void grad(const row_stats<typename E::functor>& st, const row_io<S, P, G>& io, const row_params& rp,
                   scratch<S, P, G>& sc) noexcept {
    using F = typename E::functor;
    if (!float_inv_t(rp.inv_t)) return ref::row_kernels::grad<E>(st, io, rp, sc.reference());
    const bool with_q = rp.c_q != 0.0 && io.gs;
    if constexpr (has_online<F>::value)
      if (st.online) {
        if (rp.raw_log_ratio) {
          if (with_q) online_grad<A, F, true, true>(E::x_is_student, st, io, rp);
          else online_grad<A, F, false, true>(E::x_is_student, st, io, rp);
        } else {
          if (with_q) online_grad<A, F, true, false>(E::x_is_student, st, io, rp);
          else online_grad<A, F, false, false>(E::x_is_student, st, io, rp);
        }
        return;
      }
    if (with_q) careful_grad<A, F, true>(E::x_is_student, st, io, rp);
    else careful_grad<A, F, false>(E::x_is_student, st, io, rp);
  }

  // Step 1 of a sharded row (detail/shard_stats.hpp): one side's statistics over the shard z[0..n), in the arithmetic
  // of careful_stats' pass 1 (float32 max of z / T, double sums), classified by the range rule in double where pass 1
  // failed or could have hidden an out-of-range entry (1 / T > 1, float64 input), as careful_stats does.
  template <class T>
  static side_stats side_stats_of(const T* z, std::int64_t n, double inv_t) noexcept {
    if (!float_inv_t(inv_t)) return ref::row_kernels::side_stats_of(z, n, inv_t);
    const online_lse<A> l = row_logsumexp<A>(z, n, static_cast<float>(inv_t));
    side_stats st;
    const bool failed = l.flags.nan || l.flags.pinf;
    if (!failed) {
      st.max = static_cast<double>(l.max);
      st.sum = l.sum;
      st.max_chunk = l.max_chunk;
    }
    st.all_ninf = !failed && l.max == -std::numeric_limits<float>::infinity() && all_ninf(z, n);
    if (failed || inv_t > 1.0 || std::is_same_v<T, double>) {
      double v = 0.0;
      const range_class rc = scan_range(z, n, inv_t, &v);
      if (rc == range_class::non_finite) {
        st.nan = v != v;
        st.pinf = !st.nan;
      } else if (rc == range_class::out_of_range) {
        st.out_of_range = v;
      } else if (failed) {  // overflowed only within rounding of FLT_MAX (refine_pass1)
        st.out_of_range = std::numeric_limits<double>::infinity();
      }
      if (failed) st.max = -std::numeric_limits<double>::infinity();
    }
    return st;
  }

  // Step 2 of a sharded row: the functor's sums over the shard io with the ROW's statistics st (careful_sums), added
  // to out. hot_s / hot_t: the shard's chunk holding the row's student / teacher maximum (-1: none).
  template <class E, class S, class P, class G, int K>
  static void shard_sums_of(const typename E::functor& f, const row_io<S, P, G>& io, const row_params& rp,
                            const row_stats<typename E::functor>& st, std::int64_t hot_s, std::int64_t hot_t,
                            shard_sums<K>& out, scratch<S, P, G>& sc) noexcept {
    if (!float_inv_t(rp.inv_t))
      return ref::row_kernels::shard_sums_of<E>(f, io, rp, st, hot_s, hot_t, out, sc.reference());
    bool mismatch = false;
    careful_sums<A>(f, E::x_is_student, io, rp, st, hot_s, hot_t, out.sums, mismatch);
    if (mismatch) shard_zero_flags(io.zs, io.zt, io.n, out);
    out.mismatch = out.mismatch || mismatch;
  }

  // Step 3 of a sharded row is grad<E> with st.online == false (careful_grad: elementwise given the row's statistics).

  // One row of the divergence entry E with functor f. Writes the gradients (scaled by rp.c) when the row is valid; on an
  // error (or a masked row) writes nothing.
  template <class E, class S, class P, class G>
  static row_result row(const typename E::functor& f, const row_io<S, P, G>& io, const row_params& rp,
                        scratch<S, P, G>& sc) noexcept {
    using F = typename E::functor;
    // Split gradients (row_math.hpp): pass 2 stores the parts in the scratch rows, pass 3 adds c prob.
    if constexpr (has_split_grad<F>::value && !has_online<F>::value) {
      if ((io.gs || io.gt) && float_inv_t(rp.inv_t)) {
        float* part_s = io.gs ? sc.part(0) : nullptr;
        float* part_t = io.gt ? sc.part(1) : nullptr;
        row_stats<F> st;
        careful_stats<A, true>(f, E::x_is_student, io, rp, st, part_s, part_t);
        if (st.res.error == row_error::none) split_fix<A>(E::x_is_student, st, io, rp, part_s, part_t);
        return st.res;
      }
    }
    const auto st = stats<E>(f, io, rp, sc);
    if (st.res.error == row_error::none && (io.gs || io.gt)) grad<E>(st, io, rp, sc);
    return st.res;
  }

  template <class S, class Scratch>
  static lse_result student_lse(const S* z, std::int64_t n, double inv_t, Scratch&) noexcept {
    const online_lse<A> l = row_logsumexp<A>(z, n, static_cast<float>(inv_t));
    const double v = l.value();
    return check_student_lse({static_cast<double>(l.max), l.sum.log()}, v,
                             v == -std::numeric_limits<double>::infinity() && all_ninf(z, n));
  }

  // log q_j of one entry, in the arithmetic of the kernels above (u = fms(z, 1/T, max) in float32 lanes, then
  // - log_sum in double), so that a driver's per-entry terms (the policy gradient's one-hot entries, log q(y_t)) agree
  // with the row's log-sum-exp to rounding: with |z| / T ~ 100 the float32 z / T differs from the exact one by
  // ~ 2^-24 |z| / T, which would otherwise show as q(y) = 1 + 4e-6 on a confident row.
  template <class S>
  static double log_prob(const S* z, std::int64_t j, double inv_t, const row_lse& lse) noexcept {
    using b = fbatch<A>;
    const b u = xsimd::fms(b(elem_to_float<A>(z[j])), b(static_cast<float>(inv_t)), b(static_cast<float>(lse.max)));
    return static_cast<double>(u.get(0)) - lse.log_sum;
  }

  // g_j = c_q q_j, q_j = exp((z_j / T - max) - log_sum) (masked entries exactly 0).
  template <class S, class G>
  static void softmax_grad(const S* z, std::int64_t n, double inv_t, const row_lse& lse, double c_q, G* g) noexcept {
    softmax_times<A>(z, n, inv_t, lse, c_q, nullptr, g);
  }
};

}  // namespace detail::simd
KD_END_NAMESPACE

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
