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

KD_BEGIN_NAMESPACE
namespace detail::ref {

// The loss of functor f over one row of log-probabilities lx, ly (finish() applied, so f then holds the row constants
// its grad() needs).
template <class F>
inline double functor_row_loss(F& f, const double* lx, const double* ly, std::int64_t n) noexcept {
  double sums[F::n_sums] = {};
  bool mismatch = false;
  for (std::int64_t j = 0; j < n; ++j) f.accumulate(lx[j], ly[j], sums, mismatch);
  f.finish(sums, mismatch);
  return f.loss;
}

struct row_kernels {
  template <class S, class P, class G>
  struct scratch {
    std::vector<double> lq, lp;
    explicit scratch(std::int64_t n) : lq(static_cast<std::size_t>(n)), lp(static_cast<std::size_t>(n)) {}
  };

  // One row of the divergence entry E with functor f0 (see simd::row_kernels for the contract).
  template <class E, class S, class P, class G>
  static row_result row(const typename E::functor& f0, const row_io<S, P, G>& io, const row_params& rp,
                        scratch<S, P, G>& sc) noexcept {
    using F = typename E::functor;
    const std::int64_t n = io.n;
    double* lq = sc.lq.data();
    double* lp = sc.lp.data();
    const double lse_s = load_log_probs(io.zs, n, rp.inv_t, lq);
    const double lse_t = load_log_probs(io.zt, n, rp.inv_t, lp);
    constexpr double ninf = -std::numeric_limits<double>::infinity();
    row_result res =
        check_pass1(lse_s, lse_t, lse_s == ninf && all_ninf(io.zs, n), lse_t == ninf && all_ninf(io.zt, n), rp);
    if (res.error != row_error::none) return res;
    const double* lx = E::x_is_student ? lq : lp;
    const double* ly = E::x_is_student ? lp : lq;
    F f = f0;
    res.loss = functor_row_loss(f, lx, ly, n);
    if (!std::isfinite(res.loss)) return {res.loss, row_error::support_mismatch, res.loss};
    for (std::int64_t j = 0; j < n && (io.gs || io.gt); ++j) {
      double gx, gy;
      f.grad(lx[j], ly[j], gx, gy);
      const double gq = E::x_is_student ? gx : gy, gp = E::x_is_student ? gy : gx;
      if (io.gs) io.gs[j] = from_double<G>(rp.c * gq);
      if (io.gt) io.gt[j] = from_double<G>(rp.c * gp);
    }
    return res;
  }
};

}  // namespace detail::ref
KD_END_NAMESPACE
