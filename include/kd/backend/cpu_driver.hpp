// The CPU driver shared by the reference and the SIMD backends: everything about a divergence call that is not the
// per-row arithmetic.
//
//   drive(rows_fn, executor, d, student, teacher, options, result, outputs)
//
// It makes the row plan (weights from labels / row weights, the reduction's denominator and scales), runs the rows
// through `rows_fn` (a backend's row kernels, compiled for one instruction set: process_rows<Kernels>) on the executor,
// fills the outputs of rows that do not count (zeros) and of rows with value errors (NaN), sums the per-row losses in row
// order on the calling thread (bitwise identical for any thread count), and reports the first value error in row order
// with its argument name and message (row_error_status: the one place these strings live).
// Fully masked rows (a side whose entries are all -inf) are found by the row kernels in pass 1, not by a pre-scan: when
// they change the denominator (reduction::mean) and gradients are wanted, the rows are computed a second time with the
// corrected scale (or, for gradients written in place over their input, the written rows are rescaled). Mark such rows
// with ignore_index (or weight 0) to avoid that second pass.
// Per-row values of valid rows are clamped at 0 (every registered divergence is >= 0; docs/numerics.md).
// Precondition: arguments validated (kd::divergence_loss does it).
#pragma once

#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "../detail/row_io.hpp"
#include "../detail/row_plan.hpp"
#include "../divergences/registry.hpp"
#include "../options.hpp"
#include "../status.hpp"

KD_BEGIN_NAMESPACE
namespace detail {

// Everything a row loop needs, as plain data (so a separately compiled loop can take it).
template <class S, class P, class G>
struct call {
  divergence d;  // canonical (endpoint rules applied)
  const_rows<S> s;
  const_rows<P> t;
  mut_rows<G> gs;
  mut_rows<G> gt;
  const double* weights;  // row weights from the options (0: ignored); masked rows get 0 in a second round
  double scale;           // plan.scale
  double loss_scale;      // plan.loss_scale
  bool empty_mean;
  double inv_t;
  bool check_student_norm;
  bool check_teacher_norm;
  double* row_loss;    // out: w * loss_scale * l_r
  row_error* row_err;  // out
  double* row_value;   // out: offending value
};

// Fills a gradient row (nothing when g is null) with v.
template <class G>
inline void fill_row(G* g, std::int64_t n, double v) noexcept {
  if (!g) return;
  const G x = from_double<G>(v);
  for (std::int64_t j = 0; j < n; ++j) g[j] = x;
}

// Which side's zero made a divergence +inf: the side that has a -inf entry where the other has mass. When both sides
// have such entries, the functor's y side (KL(x || y) is +inf where y has the zero).
template <class S, class P>
row_error mismatch_side(const S* zs, const P* zt, std::int64_t n, bool y_is_student) noexcept {
  constexpr double ninf = -std::numeric_limits<double>::infinity();
  bool s0 = false, t0 = false;
  for (std::int64_t j = 0; j < n; ++j) {
    const bool ms = to_double(zs[j]) == ninf, mt = to_double(zt[j]) == ninf;
    s0 = s0 || (ms && !mt);
    t0 = t0 || (mt && !ms);
  }
  if (s0 != t0) return s0 ? row_error::support_mismatch_student : row_error::support_mismatch_teacher;
  return y_is_student ? row_error::support_mismatch_student : row_error::support_mismatch_teacher;
}

template <class S, class P, class G>
using rows_fn = void (*)(const call<S, P, G>&, std::int64_t, std::int64_t);

// Rows [begin, end) with the row kernels K (reference or simd::row_kernels<Arch>: K is in the symbol, so loops compiled
// for different instruction sets never share one).
template <class K, class S, class P, class G>
void process_rows(const call<S, P, G>& c, std::int64_t begin, std::int64_t end) noexcept {
  const std::int64_t n = c.s.cols;
  visit_divergence<int>(
      c.d.kind,
      [&](auto entry) {
        using E = decltype(entry);
        const typename E::functor f = E::make(c.d.param, c.d.param2);
        typename K::template scratch<S, P, G> sc(n);
        for (std::int64_t r = begin; r < end; ++r) {
          const double w = c.weights[r];
          G* gs = c.gs.data ? c.gs.data + r * c.gs.row_stride : nullptr;
          G* gt = c.gt.data ? c.gt.data + r * c.gt.row_stride : nullptr;
          c.row_err[r] = row_error::none;
          c.row_loss[r] = 0.0;
          if (w == 0.0 || c.empty_mean) {
            fill_row(gs, n, 0.0);
            fill_row(gt, n, 0.0);
            continue;
          }
          row_io<S, P, G> io{c.s.data + r * c.s.row_stride, c.t.data + r * c.t.row_stride, gs, gt, n};
          row_params rp;
          rp.inv_t = c.inv_t;
          rp.c = w * c.scale * c.inv_t;
          rp.check_student_norm = c.check_student_norm;
          rp.check_teacher_norm = c.check_teacher_norm;
          row_result res = K::template row<E>(f, io, rp, sc);
          if (res.error == row_error::support_mismatch)
            res.error = mismatch_side(io.zs, io.zt, n, !E::x_is_student);
          c.row_err[r] = res.error;
          if (res.error == row_error::masked) {
            fill_row(gs, n, 0.0);
            fill_row(gt, n, 0.0);
            continue;
          }
          // Every registered divergence is >= 0: a valid row's value is clamped at 0 (float rounding of near-identical rows
          // gives values like -1e-8; the unclamped kernels' accuracy is tested in tests/test_simd_dominant.cpp). Errors keep
          // their NaN / +inf.
          const double l = res.error == row_error::none && res.loss < 0.0 ? 0.0 : res.loss;
          c.row_loss[r] = l * w * c.loss_scale;
          if (res.error != row_error::none) {
            c.row_value[r] = res.value;
            fill_row(gs, n, std::numeric_limits<double>::quiet_NaN());
            fill_row(gt, n, std::numeric_limits<double>::quiet_NaN());
          }
        }
        return 0;
      },
      0);
}

// The status of a row's value error: the one place the error arguments and messages live.
inline status row_error_status(row_error e, double value, std::int64_t r) noexcept {
  switch (e) {
    case row_error::none:
    case row_error::masked:
      return ok_status();
    case row_error::student_non_finite:
      return make_error(errc::non_finite_input, "student", "contains NaN or +inf", value, r);
    case row_error::teacher_non_finite:
      return make_error(errc::non_finite_input, "teacher", "contains NaN or +inf", value, r);
    case row_error::student_out_of_range:
      return make_error(errc::non_finite_input, "student",
                        "finite logits whose |x| / T exceeds the float32 range (3.4e38; temperature too small)", value,
                        r);
    case row_error::teacher_out_of_range:
      return make_error(errc::non_finite_input, "teacher",
                        "finite logits whose |x| / T exceeds the float32 range (3.4e38; temperature too small)", value,
                        r);
    case row_error::student_not_normalized:
      return make_error(errc::not_normalized, "student", "declared log_probs but logsumexp(row) != 0", value, r);
    case row_error::teacher_not_normalized:
      return make_error(errc::not_normalized, "teacher", "declared log_probs but logsumexp(row) != 0", value, r);
    case row_error::support_mismatch:
      return make_error(errc::support_mismatch, "teacher",
                        "the divergence is +inf: one side has probability 0 (a -inf logit) where the other has mass",
                        value, r);
    case row_error::support_mismatch_student:
      return make_error(errc::support_mismatch, "student",
                        "the divergence is +inf: the student has probability 0 (a -inf logit) where the teacher has mass",
                        value, r);
    case row_error::support_mismatch_teacher:
      return make_error(errc::support_mismatch, "teacher",
                        "the divergence is +inf: the teacher has probability 0 (a -inf logit) where the student has mass",
                        value, r);
  }
  return ok_status();
}

// Small problems (fewer than 2 rows or under 2^16 elements, about 50 us of the cheapest kernel) run on the calling
// thread: waking a pooled worker costs a few microseconds (thread_pool.hpp), starting a thread tens.
template <class Executor, class F>
void run_rows(const Executor& exec, std::int64_t nrows, std::int64_t cols, F f) {
  if (nrows < 2 || nrows * cols < (std::int64_t{1} << 16))
    f(std::int64_t{0}, nrows);
  else
    exec.parallel_for(nrows, f);
}

// The call's result from its rows' scaled losses loss[0..n) and errors (error_of(r) -> {row_error, offending value}):
// the losses summed in row order on the calling thread (bitwise identical for any thread count), the first value error
// in row order (masked rows are not errors), the per-row outputs (when per_row is not null) and the reduced loss.
template <class ErrorOf>
status reduce_rows(const double* loss, std::int64_t n, ErrorOf error_of, const row_plan& plan, float* per_row,
                   loss_result& result) {
  status first;
  double total = 0.0;
  for (std::int64_t r = 0; r < n; ++r) {
    total += loss[r];
    if (first.ok()) {
      const std::pair<row_error, double> e = error_of(r);
      if (e.first != row_error::none && e.first != row_error::masked) first = row_error_status(e.first, e.second, r);
    }
  }
  if (per_row)
    for (std::int64_t r = 0; r < n; ++r) per_row[r] = static_cast<float>(loss[r]);
  result.valid_rows = plan.valid_rows;
  result.denominator = plan.denominator;
  result.loss = plan.empty_mean && first.ok() ? 0.0 : total / plan.denominator;
  return first;
}

// Gradient rows of rows that count (weight > 0) times f, rounded once to G (rows that do not count hold zeros).
template <class G>
void scale_rows(const mut_rows<G>& g, const double* weights, double f) noexcept {
  if (!g.data) return;
  for (std::int64_t r = 0; r < g.rows; ++r)
    if (weights[r] > 0.0)
      for (std::int64_t j = 0; j < g.cols; ++j) g.row(r)[j] = from_double<G>(to_double(g.row(r)[j]) * f);
}

// Plans the rows from the options' weights, runs `pass(plan)` over all rows (it fills err[r]) and, when pass 1 found
// fully masked rows, plans again without them (weights[r] = 0). Where that changed the gradients' scale
// (reduction::mean) and gradients are wanted, the rows run again with the new plan, or, when a gradient was written
// over its input (in place: the input is gone), `rescale(f)` multiplies the written gradient rows by the ratio f of
// the scales (one more rounding of each entry). Returns the final plan. Shared by the drivers whose rows are planned
// like kd::divergence_loss's (this one, backend/topk_driver.hpp).
template <class Pass, class Rescale>
row_plan plan_and_run(const distill_options& opt, std::vector<double>& weights, const std::vector<row_error>& err,
                      bool wants_grad, bool in_place, Pass&& pass, Rescale&& rescale) {
  const std::int64_t nrows = static_cast<std::int64_t>(weights.size());
  row_plan plan = make_row_plan(opt, weights.data(), nrows);
  pass(plan);
  bool any_masked = false;
  for (std::int64_t r = 0; r < nrows; ++r)
    if (err[r] == row_error::masked) weights[r] = 0.0, any_masked = true;
  if (any_masked) {
    const row_plan p2 = make_row_plan(opt, weights.data(), nrows);
    const bool rescaled = p2.scale != plan.scale || p2.empty_mean != plan.empty_mean;
    const double f = plan.scale != 0.0 ? p2.scale / plan.scale : 0.0;
    plan = p2;
    if (rescaled && wants_grad) {
      if (in_place) rescale(f);
      else pass(plan);
    }
  }
  return plan;
}

template <class Executor, class S, class P, class G>
status drive(rows_fn<S, P, G> rows, const Executor& exec, const divergence& d, const student_input<S>& student,
             const teacher_input<P>& teacher, const distill_options& opt, loss_result& result,
             const distill_outputs<G>& out) {
  const auto& s = student.x;
  const auto& t = teacher.x;
  const std::int64_t nrows = s.rows;
  std::vector<double> weights(static_cast<std::size_t>(nrows)), loss(static_cast<std::size_t>(nrows)),
      value(static_cast<std::size_t>(nrows));
  std::vector<row_error> err(static_cast<std::size_t>(nrows));
  for (std::int64_t r = 0; r < nrows; ++r) weights[r] = row_weight(opt, r);

  call<S, P, G> c{canonical_divergence(d),
                  s,
                  t,
                  out.grad_student,
                  out.grad_teacher,
                  weights.data(),
                  1.0,
                  1.0,
                  false,
                  1.0 / opt.temperature,
                  student.kind == input_kind::log_probs && opt.temperature == 1.0,
                  teacher.kind == input_kind::log_probs && opt.temperature == 1.0,
                  loss.data(),
                  err.data(),
                  value.data()};
  const bool in_place = (out.grad_student.data && static_cast<const void*>(out.grad_student.data) == s.data) ||
                        (out.grad_teacher.data && static_cast<const void*>(out.grad_teacher.data) == t.data);
  const row_plan plan = plan_and_run(
      opt, weights, err, out.grad_student.data || out.grad_teacher.data, in_place,
      [&](const row_plan& p) {
        c.scale = p.scale;
        c.loss_scale = p.loss_scale;
        c.empty_mean = p.empty_mean;
        run_rows(exec, nrows, s.cols, [&c, rows](std::int64_t b, std::int64_t e) { rows(c, b, e); });
      },
      [&](double f) {
        scale_rows(out.grad_student, weights.data(), f);
        scale_rows(out.grad_teacher, weights.data(), f);
      });
  return reduce_rows(
      loss.data(), nrows, [&](std::int64_t r) { return std::make_pair(err[r], value[r]); }, plan, out.per_row, result);
}

}  // namespace detail
KD_END_NAMESPACE
