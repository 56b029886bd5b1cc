// The CPU driver of kd::topk_divergence_loss (kd/topk_teacher.hpp: the contract, the modes and their formulas), shared
// by the reference and the SIMD backends; K is a backend's row kernels (detail::ref::row_kernels,
// detail::simd::row_kernels<Arch>).
//
// One row, with its k support ids sorted (O(k) scratch):
//   1. student statistics from the kernels' side_stats_of (detail/shard_stats.hpp) over the entries outside the
//      support ("rest": each L1-sized chunk copied with its support entries set to -inf) and over the gathered support
//      entries, merged into the whole row's: the row's log-sum-exp, the support's and the rest's, each a sum of
//      positive terms (no 1 - sum), with the errors of the whole row in kd::divergence_loss's order (masked, NaN / +inf,
//      out of range, not normalized); the cost does not grow with k beyond O(k);
//   2. the compressed rows in double (k + 1 entries with the tail bucket, k otherwise): the student's log q from the
//      kernels' log_prob (the arithmetic of their log-sum-exp), the teacher's stored values;
//   3. the divergence's loss and gradient on the compressed rows: the registry's functor in double
//      (detail::ref::functor_row_loss and the functor's grad), or the unnormalized forward KL's sum;
//   4. the gradient row in one pass of the kernels' softmax_grad (the tail bucket's g_tail q_j / q_tail, the
//      unnormalized KL's P_S q_j) or zeros, then the k support entries from step 3.
// Everything read from the student row is read before the gradient row is written, so the gradient may be the student
// buffer (in place). Rows are planned and reduced as in kd::divergence_loss (backend/cpu_driver.hpp: plan_and_run,
// reduce_rows): deterministic for any thread count.
// Precondition: arguments validated (kd::topk_divergence_loss does it).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "../detail/reference_rows.hpp"
#include "../detail/reference_topk.hpp"
#include "../detail/row_io.hpp"
#include "../detail/row_plan.hpp"
#include "../detail/shard_stats.hpp"
#include "../divergences/kl.hpp"
#include "../divergences/registry.hpp"
#include "../options.hpp"
#include "../status.hpp"
#include "../topk_teacher_input.hpp"
#include "cpu_driver.hpp"

KD_BEGIN_NAMESPACE
namespace detail::topk {

// Per-thread scratch: O(k) and one chunk of the student row.
template <class S>
struct scratch {
  static constexpr std::int64_t chunk = 2048;                 // entries per pass-1 chunk (stays in L1)
  std::vector<std::pair<std::int64_t, std::int64_t>> order;  // (token id, position in the row), sorted by id
  std::vector<double> lq, lp, gq;                            // compressed rows (k + 1) and the student's gradient there
  std::vector<S> buf;                                        // a chunk of the row with the support masked; the support
  explicit scratch(std::int64_t k)
      : order(static_cast<std::size_t>(k)),
        lq(static_cast<std::size_t>(k + 1)),
        lp(static_cast<std::size_t>(k + 1)),
        gq(static_cast<std::size_t>(k + 1)),
        buf(static_cast<std::size_t>(std::max<std::int64_t>(k, chunk))) {}
};

// The statistics of the entries of z[0..V) outside the sorted support (rest) and of the support entries (sup): each
// L1-sized chunk is copied with its support entries set to -inf and passed to the kernels' side_stats_of (cost
// independent of k), the support entries are gathered into one buffer (one call).
template <class K, class S>
void student_sides(const S* z, std::int64_t V, double inv_t, const std::pair<std::int64_t, std::int64_t>* ord,
                   std::int64_t k, scratch<S>& sc, side_stats& rest, side_stats& sup) noexcept {
  S* buf = sc.buf.data();
  const S masked = from_double<S>(-std::numeric_limits<double>::infinity());
  std::int64_t i = 0;  // next support id (sorted)
  for (std::int64_t j0 = 0; j0 < V; j0 += scratch<S>::chunk) {
    const std::int64_t len = std::min(scratch<S>::chunk, V - j0);
    if (i < k && ord[i].first < j0 + len) {
      std::copy(z + j0, z + j0 + len, buf);
      for (; i < k && ord[i].first < j0 + len; ++i) buf[ord[i].first - j0] = masked;
      merge_side(rest, K::side_stats_of(buf, len, inv_t));
    } else {
      merge_side(rest, K::side_stats_of(z + j0, len, inv_t));
    }
  }
  for (std::int64_t t = 0; t < k; ++t) buf[t] = z[ord[t].first];
  sup = K::side_stats_of(buf, k, inv_t);
}

// One row (see the header comment). Writes the gradient row g (when not null) only for a valid row.
template <class K, class E, class S, class P, class G>
row_result topk_row(const typename E::functor& f0, const S* z, std::int64_t V, const std::int64_t* ids, const P* tp,
                    std::int64_t k, topk_mode mode, const row_params& rp, G* g, scratch<S>& sc) noexcept {
  constexpr double ninf = -std::numeric_limits<double>::infinity();
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  auto* ord = sc.order.data();
  for (std::int64_t i = 0; i < k; ++i) ord[i] = {ids[i], i};
  std::sort(ord, ord + k);

  // 1. Student statistics: the rest (gaps), the support, the whole row.
  side_stats rest, sup;
  student_sides<K>(z, V, rp.inv_t, ord, k, sc, rest, sup);
  side_stats all = rest;
  merge_side(all, sup);

  double* lq = sc.lq.data();
  double* lp = sc.lp.data();
  bool t_nan = false, t_pinf = false, t_all_ninf = true;
  for (std::int64_t i = 0; i < k; ++i) {
    const double v = to_double(tp[i]);
    lp[i] = v;
    t_nan = t_nan || std::isnan(v);
    t_pinf = t_pinf || v == std::numeric_limits<double>::infinity();
    t_all_ninf = t_all_ninf && v == ninf;
  }
  const bool fin_s = !all.nan && !all.pinf;
  const bool renorm = mode == topk_mode::renormalize, tail = mode == topk_mode::tail_bucket;
  if ((fin_s && all.max == ninf && all.all_ninf) ||
      (renorm && fin_s && sup.max == ninf && sup.all_ninf) ||
      ((renorm || (tail && k == V)) && !t_nan && !t_pinf && t_all_ninf))
    return {0.0, row_error::masked, 0.0};
  if (!fin_s) return {nan, row_error::student_non_finite, all.nan ? nan : std::numeric_limits<double>::infinity()};
  if (t_nan || t_pinf)
    return {nan, row_error::teacher_non_finite, t_nan ? nan : std::numeric_limits<double>::infinity()};
  if (all.out_of_range > 0.0 || all.max == ninf)
    return {nan, row_error::student_out_of_range, all.out_of_range > 0.0 ? all.out_of_range : ninf};
  const row_lse l_all{all.max, all.sum.log()};
  if (rp.check_student_norm && std::abs(l_all.value()) > log_probs_tolerance)
    return {nan, row_error::student_not_normalized, l_all.value()};
  const double lse_t = ref::log_sum_exp(lp, k);  // finite or -inf here
  if (!renorm && lse_t > log_probs_tolerance) return {nan, row_error::teacher_not_normalized, lse_t};

  // 2. The compressed rows.
  const std::int64_t nc = tail ? k + 1 : k;
  const row_lse l_q = renorm ? row_lse{sup.max, sup.sum.log()} : l_all;
  for (std::int64_t i = 0; i < k; ++i) lq[i] = K::log_prob(z, ids[i], rp.inv_t, l_q);
  if (renorm) {
    for (std::int64_t i = 0; i < k; ++i) lp[i] -= lse_t;
  } else if (tail) {
    lq[k] = rest.max == ninf ? ninf : (rest.max - all.max) + (rest.sum.log() - all.sum.log());
    // The stored values as given with their tail, unless there is no tail: no entries outside the support (k = V: the
    // bucket is empty on both sides) or stored probabilities that sum to 1 or more (within the tolerance); then the
    // support is renormalized (never a correction of rounding size where a tail exists: on a confident teacher's
    // top token, log p ~ -1e-10, it would be a large relative change).
    if (k == V || !(lse_t < 0.0)) {
      lp[k] = ninf;
      if (lse_t != ninf && lse_t != 0.0)
        for (std::int64_t i = 0; i < k; ++i) lp[i] -= lse_t;
    } else {
      lp[k] = ref::log1mexp(lse_t);
    }
  }

  // 3. The loss (and the functor's gradient on the compressed rows).
  double loss;
  typename E::functor f = f0;
  const double* x = E::x_is_student ? lq : lp;
  const double* y = E::x_is_student ? lp : lq;
  if (mode == topk_mode::unnormalized_forward_kl) {
    rm::kl_row kl;  // x = the stored teacher, y = the student
    double acc[1] = {0.0};
    bool mismatch = false;
    for (std::int64_t i = 0; i < k; ++i) kl.accumulate(lp[i], lq[i], lp[i] - lq[i], acc, mismatch);
    if (mismatch) return {std::numeric_limits<double>::infinity(), row_error::support_mismatch_student,
                          std::numeric_limits<double>::infinity()};
    loss = acc[0];
  } else {
    loss = ref::functor_row_loss(f, x, y, nc);
    if (!std::isfinite(loss)) return {loss, mismatch_side(lq, lp, nc, !E::x_is_student), loss};
  }
  if (!g) return {loss, row_error::none, 0.0};

  // 4. The gradient row.
  const double c = rp.c;
  if (mode == topk_mode::unnormalized_forward_kl) {
    double mass = 0.0;
    for (std::int64_t i = 0; i < k; ++i) mass += std::exp(lp[i]);
    K::softmax_grad(z, V, rp.inv_t, l_all, c * mass, g);
    for (std::int64_t i = 0; i < k; ++i) g[ids[i]] = from_double<G>(c * (mass * std::exp(lq[i]) - std::exp(lp[i])));
    return {loss, row_error::none, 0.0};
  }
  double* gq = sc.gq.data();
  for (std::int64_t j = 0; j < nc; ++j) {
    double gx, gy;
    f.grad(x[j], y[j], x[j] - y[j], gx, gy);
    gq[j] = E::x_is_student ? gx : gy;
  }
  // The whole row in one pass (the support entries are then overwritten: everything read from z at the support was
  // read above, so this holds in place too).
  if (tail && rest.max != ninf) K::softmax_grad(z, V, rp.inv_t, row_lse{rest.max, rest.sum.log()}, c * gq[k], g);
  else fill_row(g, V, 0.0);
  for (std::int64_t i = 0; i < k; ++i) g[ids[i]] = from_double<G>(c * gq[i]);
  return {loss, row_error::none, 0.0};
}

template <class K, class Executor, class S, class P, class G>
status run(const Executor& exec, const divergence& d0, const student_input<S>& student,
           const topk_teacher_input<P>& teacher, const distill_options& opt, loss_result& result,
           const distill_outputs<G>& out) {
  const divergence d = canonical_divergence(d0);
  const auto& zs = student.x;
  const std::int64_t R = zs.rows, V = zs.cols, k = teacher.indices.cols;
  std::vector<double> weights(static_cast<std::size_t>(R)), loss(static_cast<std::size_t>(R)),
      value(static_cast<std::size_t>(R));
  std::vector<row_error> err(static_cast<std::size_t>(R));
  for (std::int64_t r = 0; r < R; ++r) weights[r] = row_weight(opt, r);
  const double inv_t = 1.0 / opt.temperature;
  const bool check_s = student.kind == input_kind::log_probs && opt.temperature == 1.0;
  const bool clamp = teacher.mode != topk_mode::unnormalized_forward_kl;  // the other modes' values are divergences >= 0
  const mut_rows<G>& gs = out.grad_student;

  const bool in_place = gs.data && static_cast<const void*>(gs.data) == zs.data;
  const row_plan plan = plan_and_run(opt, weights, err, gs.data != nullptr, in_place, [&](const row_plan& p) {
    run_rows(exec, R, V, [&](std::int64_t b, std::int64_t e) {
      visit_divergence<int>(
          d.kind,
          [&](auto entry) {
            using E = decltype(entry);
            const typename E::functor f = E::make(d.param, d.param2);
            scratch<S> sc(k);
            for (std::int64_t r = b; r < e; ++r) {
              const double w = weights[r];
              G* g = gs.data ? gs.row(r) : nullptr;
              err[r] = row_error::none;
              loss[r] = 0.0;
              if (w == 0.0 || p.empty_mean) {
                fill_row(g, V, 0.0);
                continue;
              }
              row_params rp;
              rp.inv_t = inv_t;
              rp.c = w * p.scale * inv_t;
              rp.check_student_norm = check_s;
              const row_result res = topk_row<K, E>(f, zs.row(r), V, teacher.indices.row(r),
                                                    teacher.log_probs.row(r), k, teacher.mode, rp, g, sc);
              err[r] = res.error;
              if (res.error == row_error::masked) {
                fill_row(g, V, 0.0);
                continue;
              }
              const double l = clamp && res.error == row_error::none && res.loss < 0.0 ? 0.0 : res.loss;
              loss[r] = l * w * p.loss_scale;
              if (res.error != row_error::none) {
                value[r] = res.value;
                fill_row(g, V, std::numeric_limits<double>::quiet_NaN());
              }
            }
            return 0;
          },
          0);
    });
  }, [&](double f) { scale_rows(gs, weights.data(), f); });
  return reduce_rows(
      loss.data(), R, [&](std::int64_t r) { return std::make_pair(err[r], value[r]); }, plan, out.per_row, result);
}

}  // namespace detail::topk
KD_END_NAMESPACE
