// The vocabulary-parallel driver: a divergence over rows whose vocabulary is split across processes, each holding a
// contiguous shard of both sides' logits (kd/vocab_parallel.hpp is the public face). Runs a backend's row kernels K
// (side_stats_of, shard_sums_of, grad: detail/reference_rows.hpp, detail/simd_divergence.hpp) on the local shard, in
// the three steps of detail/shard_stats.hpp, with the caller's collectives between them:
//
//   step 1   side statistics of every row            -> max_buffer() all-reduced with MAX, then
//            finish_max(): sums relative to the row maxima -> sum_buffer() all-reduced with SUM, then
//            finish_lse(): each row's log-sum-exps and pass-1 error, the row plan (masked rows drop out here)
//   step 2   the functor's sums of every valid row   -> sums_buffer() all-reduced with SUM, then
//            finish_sums(): each row's loss (identical on every process), errors, the reduced loss
//   step 3   write_gradients(): the local shard's gradient entries.
//
// Every process must pass the same rows, options and divergence; the results (loss, per-row values, errors) are then
// identical on all of them, and the gradients of the concatenated shards equal the unsharded call's to float rounding
// (docs/numerics.md). Precondition: arguments validated (kd::vocab_parallel_divergence does it).
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "../detail/row_io.hpp"
#include "../detail/row_plan.hpp"
#include "../detail/shard_stats.hpp"
#include "../divergences/registry.hpp"
#include "../options.hpp"
#include "../status.hpp"
#include "cpu_driver.hpp"

KD_BEGIN_NAMESPACE
namespace detail::shard {

inline constexpr int max_fields = 10;  // per row in max_buffer
inline constexpr int sum_fields = 4;   // per row in sum_buffer

// One call's state across the steps, for divergence entry E, row kernels K, on executor X.
template <class E, class K, class X, class S, class P, class G>
class rows_state {
 public:
  using F = typename E::functor;
  static constexpr int n_sums = F::n_sums;
  static constexpr int sums_fields = n_sums + 3;

  rows_state(const X& exec, const divergence& d, const student_input<S>& student, const teacher_input<P>& teacher,
             const distill_options& opt, const distill_outputs<G>& out)
      : exec_(exec), f0_(E::make(d.param, d.param2)), s_(student.x), t_(teacher.x), opt_(opt), out_(out) {
    const std::int64_t n = s_.rows;
    const auto un = static_cast<std::size_t>(n);
    weights_.resize(un);
    sides_.resize(un);
    stats_.resize(un);
    loss_.assign(un, 0.0);
    for (std::int64_t r = 0; r < n; ++r) weights_[r] = row_weight(opt, r);
    rp_.inv_t = 1.0 / opt.temperature;
    rp_.check_student_norm = student.kind == input_kind::log_probs && opt.temperature == 1.0;
    rp_.check_teacher_norm = teacher.kind == input_kind::log_probs && opt.temperature == 1.0;
    max_buf_.assign(un * max_fields, 0.0);
    sum_buf_.assign(un * sum_fields, 0.0);
    sums_buf_.assign(un * sums_fields, 0.0);
  }

  // Step 1: the local side statistics; fills max_buffer().
  void local_statistics() {
    const double inv_t = rp_.inv_t;
    rows([&](std::int64_t r) {
      double* m = &max_buf_[static_cast<std::size_t>(r) * max_fields];
      for (int i = 0; i < max_fields; ++i) m[i] = 0.0;
      m[0] = m[1] = -std::numeric_limits<double>::infinity();
      if (weights_[r] == 0.0) return;
      side_stats& a = sides_[r][0];
      side_stats& b = sides_[r][1];
      a = K::side_stats_of(s_.data + r * s_.row_stride, s_.cols, inv_t);
      b = K::side_stats_of(t_.data + r * t_.row_stride, t_.cols, inv_t);
      m[0] = a.max;
      m[1] = b.max;
      m[2] = a.nan, m[3] = a.pinf, m[4] = b.nan, m[5] = b.pinf;
      m[6] = a.out_of_range, m[7] = b.out_of_range;
      m[8] = a.all_ninf ? 0.0 : 1.0, m[9] = b.all_ninf ? 0.0 : 1.0;
    });
  }
  std::vector<double>& max_buffer() noexcept { return max_buf_; }

  // After max_buffer() was all-reduced with MAX: the local sums relative to the row maxima; fills sum_buffer().
  void finish_max() {
    rows([&](std::int64_t r) {
      double* u = &sum_buf_[static_cast<std::size_t>(r) * sum_fields];
      const double* m = &max_buf_[static_cast<std::size_t>(r) * max_fields];
      for (int i = 0; i < sum_fields; ++i) u[i] = 0.0;
      if (weights_[r] == 0.0) return;
      for (int side = 0; side < 2; ++side) {
        side_stats& a = sides_[r][side];
        const double gmax = m[side];
        if (a.max == gmax) {  // this shard holds the row's maximum (perhaps among others)
          u[2 * side] = a.sum.cnt;
          u[2 * side + 1] = a.sum.tail;
        } else {
          a.max_chunk = -1;
          if (a.max != -std::numeric_limits<double>::infinity())
            u[2 * side + 1] = (a.sum.cnt + a.sum.tail) * std::exp(a.max - gmax);
        }
      }
    });
  }
  std::vector<double>& sum_buffer() noexcept { return sum_buf_; }

  // After sum_buffer() was all-reduced with SUM: each row's log-sum-exps and first pass-1 error; the row plan.
  void finish_lse() {
    const std::int64_t n = s_.rows;
    for (std::int64_t r = 0; r < n; ++r) {
      row_stats<F>& st = stats_[r];
      st.res = {};
      if (weights_[r] == 0.0) continue;
      const double* m = &max_buf_[static_cast<std::size_t>(r) * max_fields];
      const double* u = &sum_buf_[static_cast<std::size_t>(r) * sum_fields];
      side_stats g[2];
      for (int side = 0; side < 2; ++side) {
        g[side].max = m[side];
        g[side].sum = {u[2 * side], u[2 * side + 1]};
        g[side].nan = m[2 + 2 * side] > 0.0;
        g[side].pinf = m[3 + 2 * side] > 0.0;
        g[side].out_of_range = m[6 + side];
        g[side].all_ninf = !(m[8 + side] > 0.0);
      }
      st.res = finish_sides(g[0], g[1], rp_, st.s, st.t);
      if (st.res.error == row_error::masked) weights_[r] = 0.0;
    }
    plan_ = make_row_plan(opt_, weights_.data(), n);
  }

  // Step 2: the functor's sums of every valid row over the local shard; fills sums_buffer().
  void local_sums() {
    rows_with_scratch([&](std::int64_t r, typename K::template scratch<S, P, G>& sc) {
      double* u = &sums_buf_[static_cast<std::size_t>(r) * sums_fields];
      for (int i = 0; i < sums_fields; ++i) u[i] = 0.0;
      const row_stats<F>& st = stats_[r];
      if (weights_[r] == 0.0 || st.res.error != row_error::none) return;
      shard_sums<n_sums> acc;
      K::template shard_sums_of<E>(f0_, io(r), rp_, st, sides_[r][0].max_chunk, sides_[r][1].max_chunk, acc, sc);
      for (int i = 0; i < n_sums; ++i) u[i] = acc.sums[i];
      u[n_sums] = acc.mismatch, u[n_sums + 1] = acc.zero_s, u[n_sums + 2] = acc.zero_t;
    });
  }
  std::vector<double>& sums_buffer() noexcept { return sums_buf_; }

  // After sums_buffer() was all-reduced with SUM: each row's loss and error; the reduced loss and the first error.
  status finish_sums(loss_result& result) {
    const std::int64_t n = s_.rows;
    for (std::int64_t r = 0; r < n; ++r) {
      row_stats<F>& st = stats_[r];
      loss_[r] = 0.0;
      if (weights_[r] == 0.0) continue;
      if (st.res.error == row_error::none) {
        const double* u = &sums_buf_[static_cast<std::size_t>(r) * sums_fields];
        shard_sums<n_sums> acc;
        for (int i = 0; i < n_sums; ++i) acc.sums[i] = u[i];
        acc.mismatch = u[n_sums] > 0.0, acc.zero_s = u[n_sums + 1] > 0.0, acc.zero_t = u[n_sums + 2] > 0.0;
        st.f = f0_;
        st.f.finish(acc.sums, acc.mismatch);
        st.res.loss = st.f.loss;
        if (!std::isfinite(st.res.loss)) st.res = {st.res.loss, mismatch_error(acc, !E::x_is_student), st.res.loss};
      }
      // Clamped at 0 as the unsharded driver does (backend/cpu_driver.hpp); errors keep their NaN / +inf.
      const double l = st.res.error == row_error::none && st.res.loss < 0.0 ? 0.0 : st.res.loss;
      loss_[r] = l * weights_[r] * plan_.loss_scale;
    }
    return reduce_rows(
        loss_.data(), n,
        [&](std::int64_t r) {
          return weights_[r] == 0.0 ? std::make_pair(row_error::none, 0.0)
                                    : std::make_pair(stats_[r].res.error, stats_[r].res.value);
        },
        plan_, out_.per_row, result);
  }

  // Step 3: the local shard's gradient entries (zeros for rows that do not count, NaN for rows with errors).
  void write_gradients() {
    if (!out_.grad_student.data && !out_.grad_teacher.data) return;
    const std::int64_t n = s_.cols;
    rows_with_scratch([&](std::int64_t r, typename K::template scratch<S, P, G>& sc) {
      const row_io<S, P, G> x = io(r);
      const row_stats<F>& st = stats_[r];
      if (weights_[r] == 0.0 || plan_.empty_mean) {
        fill_row(x.gs, n, 0.0);
        fill_row(x.gt, n, 0.0);
        return;
      }
      if (st.res.error != row_error::none) {
        fill_row(x.gs, n, std::numeric_limits<double>::quiet_NaN());
        fill_row(x.gt, n, std::numeric_limits<double>::quiet_NaN());
        return;
      }
      row_params rp = rp_;
      rp.c = weights_[r] * plan_.scale * rp_.inv_t;
      K::template grad<E>(st, x, rp, sc);
    });
  }

 private:
  row_io<S, P, G> io(std::int64_t r) const noexcept {
    G* gs = out_.grad_student.data ? out_.grad_student.data + r * out_.grad_student.row_stride : nullptr;
    G* gt = out_.grad_teacher.data ? out_.grad_teacher.data + r * out_.grad_teacher.row_stride : nullptr;
    return {s_.data + r * s_.row_stride, t_.data + r * t_.row_stride, gs, gt, s_.cols};
  }
  template <class Fn>
  void rows(Fn fn) {
    run_rows(exec_, s_.rows, s_.cols, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t r = b; r < e; ++r) fn(r);
    });
  }
  template <class Fn>
  void rows_with_scratch(Fn fn) {
    run_rows(exec_, s_.rows, s_.cols, [&](std::int64_t b, std::int64_t e) {
      typename K::template scratch<S, P, G> sc(s_.cols);
      for (std::int64_t r = b; r < e; ++r) fn(r, sc);
    });
  }

  X exec_;
  F f0_;
  const_rows<S> s_;
  const_rows<P> t_;
  distill_options opt_;
  distill_outputs<G> out_;
  row_params rp_;
  row_plan plan_;
  std::vector<double> weights_, loss_;
  std::vector<std::array<side_stats, 2>> sides_;
  std::vector<row_stats<F>> stats_;
  std::vector<double> max_buf_, sum_buf_, sums_buf_;
};

// The whole call with a communicator (kd/vocab_parallel.hpp: all_reduce_max / all_reduce_sum over double arrays).
template <class K, class X, class Comm, class S, class P, class G>
status run(const X& exec, const Comm& comm, const divergence& d0, const student_input<S>& student,
           const teacher_input<P>& teacher, const distill_options& opt, loss_result& result,
           const distill_outputs<G>& out) {
  const divergence d = canonical_divergence(d0);
  return visit_divergence<status>(
      d.kind,
      [&](auto entry) {
        using E = decltype(entry);
        rows_state<E, K, X, S, P, G> st(exec, d, student, teacher, opt, out);
        st.local_statistics();
        comm.all_reduce_max(st.max_buffer().data(), static_cast<std::int64_t>(st.max_buffer().size()));
        st.finish_max();
        comm.all_reduce_sum(st.sum_buffer().data(), static_cast<std::int64_t>(st.sum_buffer().size()));
        st.finish_lse();
        st.local_sums();
        comm.all_reduce_sum(st.sums_buffer().data(), static_cast<std::int64_t>(st.sums_buffer().size()));
        const status s = st.finish_sums(result);
        st.write_gradients();
        return s;
      },
      make_error(errc::invalid_argument, "divergence", "unknown divergence kind"));
}

}  // namespace detail::shard
KD_END_NAMESPACE
