// The reference backend's row kernels: any registered divergence functor (kd/divergences/*.hpp) over one row in double
// precision, one entry at a time, with O(V) double scratch. Plain loops written for clarity: the oracle every other
// backend is tested against. Its independence from the functors it shares with them comes from tests that do not share
// the code: finite differences of this backend's loss, literal values computed outside kd, and the math properties
// (tests/test_registry.cpp, test_vectors.cpp, test_properties.cpp), plus a frozen copy of the original double loops
// (tests/frozen_oracle.hpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../tensor.hpp"
#include "../divergences/registry.hpp"
#include "reference_math.hpp"
#include "row_io.hpp"
#include "shard_stats.hpp"

KD_BEGIN_NAMESPACE
namespace detail::ref {

// The loss of functor f over one row of log-probabilities lx, ly, d = lx - ly in double (finish() applied, so f then holds the row constants
// its grad() needs).
template <class F>
inline double functor_row_loss(F& f, const double* lx, const double* ly, std::int64_t n) noexcept {
  double sums[F::n_sums] = {};
  bool mismatch = false;
  for (std::int64_t j = 0; j < n; ++j) f.accumulate(lx[j], ly[j], lx[j] - ly[j], sums, mismatch);
  f.finish(sums, mismatch);
  return f.loss;
}

// The reference row kernels (the contract is described at detail::simd::row_kernels). The gradient pass reloads the
// row's log-probabilities (it may run long after the statistics pass: the policy gradient's second pass).
struct row_kernels {
  template <class S, class P, class G>
  struct scratch {
    std::vector<double> lq, lp;
    explicit scratch(std::int64_t n) : lq(static_cast<std::size_t>(n)), lp(static_cast<std::size_t>(n)) {}
  };

  template <class E, class S, class P, class G>
  static row_stats<typename E::functor> stats(const typename E::functor& f0, const row_io<S, P, G>& io,
                                              const row_params& rp, scratch<S, P, G>& sc) noexcept {
    using F = typename E::functor;
    const std::int64_t n = io.n;
    double* lq = sc.lq.data();
    double* lp = sc.lp.data();
    row_stats<F> st;
    const double lse_s = load_log_probs(io.zs, n, rp.inv_t, lq, &st.s.max, &st.s.log_sum);
    const double lse_t = load_log_probs(io.zt, n, rp.inv_t, lp, &st.t.max, &st.t.log_sum);
    constexpr double ninf = -std::numeric_limits<double>::infinity();
    st.res = check_pass1(lse_s, lse_t, lse_s == ninf && all_ninf(io.zs, n), lse_t == ninf && all_ninf(io.zt, n), rp);
    if (st.res.error != row_error::none) return st;
    st.res = check_range(io.zs, io.zt, n, rp.inv_t);  // the float32 range rule (row_io.hpp): as the SIMD kernels
    if (st.res.error != row_error::none) return st;
    st.f = f0;
    st.res.loss = functor_row_loss(st.f, E::x_is_student ? lq : lp, E::x_is_student ? lp : lq, n);
    if (!std::isfinite(st.res.loss)) st.res = {st.res.loss, row_error::support_mismatch, st.res.loss};
    return st;
  }

  template <class E, class S, class P, class G>
  static void grad(const row_stats<typename E::functor>& st, const row_io<S, P, G>& io, const row_params& rp,
                   scratch<S, P, G>& sc) noexcept {
    const std::int64_t n = io.n;
    double* lq = sc.lq.data();
    double* lp = sc.lp.data();
    log_probs_given(io.zs, n, rp.inv_t, st.s, lq);  // with the row's statistics: also a shard of a row
    log_probs_given(io.zt, n, rp.inv_t, st.t, lp);
    const double* lx = E::x_is_student ? lq : lp;
    const double* ly = E::x_is_student ? lp : lq;
    for (std::int64_t j = 0; j < n; ++j) {
      double gx, gy;
      st.f.grad(lx[j], ly[j], lx[j] - ly[j], gx, gy);
      const double gq = E::x_is_student ? gx : gy, gp = E::x_is_student ? gy : gx;
      if (io.gs) io.gs[j] = from_double<G>(rp.c_q != 0.0 ? rp.c * gq + rp.c_q * std::exp(lq[j]) : rp.c * gq);
      if (io.gt) io.gt[j] = from_double<G>(rp.c * gp);
    }
  }

  // lp_j = (z_j / T - max) - log_sum of a row (or a shard of it) with log-sum-exp parts `lse`: bitwise the values
  // load_log_probs gives a whole row.
  template <class T>
  static void log_probs_given(const T* z, std::int64_t n, double inv_t, const row_lse& lse, double* lp) noexcept {
    for (std::int64_t j = 0; j < n; ++j) lp[j] = (to_double(z[j]) * inv_t - lse.max) - lse.log_sum;
  }

  // Step 1 of a sharded row (detail/shard_stats.hpp): one side's statistics over the shard z[0..n), in double.
  template <class T>
  static side_stats side_stats_of(const T* z, std::int64_t n, double inv_t) noexcept {
    side_stats st;
    for (std::int64_t j = 0; j < n; ++j) {
      const double v = to_double(z[j]) * inv_t;
      if (std::isnan(v)) st.nan = true;
      else if (v == pinf && to_double(z[j]) == pinf) st.pinf = true;
      else if (v > st.max) st.max = v;
      if (!(to_double(z[j]) == ninf)) st.all_ninf = false;
    }
    double oor = 0.0;
    if (scan_range(z, n, inv_t, &oor) == range_class::out_of_range) st.out_of_range = oor;
    if (st.nan || st.pinf || st.max == ninf || st.max == pinf) {
      if (st.max == pinf) st.max = ninf;  // finite entries that overflowed: out of range (recorded above)
      return st;
    }
    for (std::int64_t j = 0; j < n; ++j) {
      const double v = to_double(z[j]) * inv_t;
      if (v == st.max) st.sum.cnt += 1.0;
      else st.sum.tail += std::exp(v - st.max);
    }
    return st;
  }

  // Step 2 of a sharded row: the functor's sums over the shard (io: the shard's entries; st: the ROW's statistics,
  // combined over all shards), added to out.
  template <class E, class S, class P, class G, int K>
  static void shard_sums_of(const typename E::functor& f, const row_io<S, P, G>& io, const row_params& rp,
                            const row_stats<typename E::functor>& st, std::int64_t, std::int64_t,
                            shard_sums<K>& out, scratch<S, P, G>& sc) noexcept {
    const std::int64_t n = io.n;
    double* lq = sc.lq.data();
    double* lp = sc.lp.data();
    log_probs_given(io.zs, n, rp.inv_t, st.s, lq);
    log_probs_given(io.zt, n, rp.inv_t, st.t, lp);
    const double* lx = E::x_is_student ? lq : lp;
    const double* ly = E::x_is_student ? lp : lq;
    bool mismatch = false;
    for (std::int64_t j = 0; j < n; ++j) f.accumulate(lx[j], ly[j], lx[j] - ly[j], out.sums, mismatch);
    if (mismatch) shard_zero_flags(io.zs, io.zt, n, out);
    out.mismatch = out.mismatch || mismatch;
  }

  // One row of the divergence entry E with functor f0 (see simd::row_kernels for the contract).
  template <class E, class S, class P, class G>
  static row_result row(const typename E::functor& f0, const row_io<S, P, G>& io, const row_params& rp,
                        scratch<S, P, G>& sc) noexcept {
    const auto st = stats<E>(f0, io, rp, sc);
    if (st.res.error == row_error::none && (io.gs || io.gt)) grad<E>(st, io, rp, sc);
    return st.res;
  }

  template <class S, class Scratch>
  static lse_result student_lse(const S* z, std::int64_t n, double inv_t, Scratch& sc) noexcept {
    row_lse parts;
    const double lse = load_log_probs(z, n, inv_t, sc.lq.data(), &parts.max, &parts.log_sum);
    return check_student_lse(parts, lse, lse == -std::numeric_limits<double>::infinity() && all_ninf(z, n));
  }

  // log q_j of one entry (see simd::row_kernels::log_prob).
  template <class S>
  static double log_prob(const S* z, std::int64_t j, double inv_t, const row_lse& lse) noexcept {
    return (to_double(z[j]) * inv_t - lse.max) - lse.log_sum;
  }

  // g_j = c_q q_j.
  template <class S, class G>
  static void softmax_grad(const S* z, std::int64_t n, double inv_t, const row_lse& lse, double c_q, G* g) noexcept {
    for (std::int64_t j = 0; j < n; ++j)
      g[j] = from_double<G>(c_q * std::exp((to_double(z[j]) * inv_t - lse.max) - lse.log_sum));
  }
};

}  // namespace detail::ref
KD_END_NAMESPACE
