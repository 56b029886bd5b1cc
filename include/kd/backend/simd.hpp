// kd::simd_backend<Arch, Executor>: the fast CPU backend. Vectorized with xsimd for one instruction set chosen at
// compile time (Arch = xsimd::default_arch, the best one the compiler flags enable: -march=native gives AVX-512 / AVX2
// where available; plain x86-64 flags give SSE2). For run-time selection in binaries built without -m flags see
// kd/backend/dispatch.hpp (the optional compiled library kd::dispatch).
//
//   kd::divergence_loss(d, student, teacher, options, result, outputs, kd::simd_backend<>{});          // all hardware
//   threads kd::divergence_loss(..., kd::simd_backend<>{kd::thread_executor{2}});                             // 2
//   threads kd::divergence_loss(..., kd::simd_backend<xsimd::avx2, my_pool_adaptor>{my_pool_adaptor{...}});  //
//   caller's executor
//
// Work: rows are independent; each row is computed by one thread in float32 (fp32 / bf16 / fp16 inputs are converted on
// load; partial sums of each L1-sized chunk are accumulated in double), see detail/simd_divergence.hpp for the kernels.
// float64 inputs ask for double precision: they are computed by kd::reference_backend (exact in double, single thread).
// Determinism: a row's result does not depend on which thread computes it, and per-row losses are summed in row order
// on the calling thread, so results are bitwise identical for any thread count and across runs (for a fixed Arch).
// Accuracy versus kd::reference_backend (docs/simd.md): float32 rounding of the log-probabilities,
// i.e. relative errors of a few 1e-6 on losses and gradients for logits of moderate scale (they grow with |logit| / T).
// Errors: identical to kd::reference_backend (same codes, argument names, first offending row; value errors leave NaN
// gradient rows and a NaN / +inf loss). Memory: per call, three arrays of `rows` entries; no temporary proportional to
// V.
//
// Executor concept: any copyable type with `template <class F> void parallel_for(std::int64_t n, F f) const` that calls
// f(begin, end) on disjoint ranges covering [0, n), possibly concurrently, and returns when all calls have returned.
// Small problems (fewer than 2 rows or under 2^18 elements in all) run on the calling thread without the executor.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>
#include <xsimd/xsimd.hpp>

#include "../detail/row_plan.hpp"
#include "../detail/simd_divergence.hpp"
#include "../divergence_spec.hpp"
#include "../options.hpp"
#include "../status.hpp"
#include "reference.hpp"

KD_BEGIN_NAMESPACE

// Runs ranges on `threads` std::threads (0: std::thread::hardware_concurrency()); contiguous, equal row ranges.
struct thread_executor {
  int threads = 0;

  int count() const noexcept {
    if (threads > 0) return threads;
    const unsigned h = std::thread::hardware_concurrency();
    return h == 0 ? 1 : static_cast<int>(h);
  }

  template <class F>
  void parallel_for(std::int64_t n, F f) const {
    const std::int64_t t = std::min<std::int64_t>(count(), n);
    if (t <= 1) {
      if (n > 0) f(std::int64_t{0}, n);
      return;
    }
    std::vector<std::thread> pool;
    pool.reserve(static_cast<std::size_t>(t - 1));
    for (std::int64_t i = 1; i < t; ++i) pool.emplace_back([&f, i, n, t] { f(n * i / t, n * (i + 1) / t); });
    f(std::int64_t{0}, n / t);
    for (auto& th : pool) th.join();
  }
};

// Runs everything on the calling thread.
struct serial_executor {
  template <class F>
  void parallel_for(std::int64_t n, F f) const {
    if (n > 0) f(std::int64_t{0}, n);
  }
};

namespace detail::simd {

// Everything the per-instruction-set row loop needs, as plain data (so a separately compiled loop can take it).
template <class S, class P, class G>
struct call {
  divergence d;
  const_rows<S> s;
  const_rows<P> t;
  mut_rows<G> gs;
  mut_rows<G> gt;
  float* per_row;
  const double* weights;  // effective row weights (0: ignored or fully masked)
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

// Rows [begin, end) for instruction set A. Calls only Arch-templated code (safe to compile with any -m flags).
template <class A, class S, class P, class G>
void process_rows(const call<S, P, G>& c, std::int64_t begin, std::int64_t end) noexcept {
  const std::int64_t n = c.s.cols;
  const float nanf = std::numeric_limits<float>::quiet_NaN();
  for (std::int64_t r = begin; r < end; ++r) {
    const double w = c.weights[r];
    G* gs = c.gs.data ? c.gs.data + r * c.gs.row_stride : nullptr;
    G* gt = c.gt.data ? c.gt.data + r * c.gt.row_stride : nullptr;
    c.row_err[r] = row_error::none;
    if (w == 0.0 || c.empty_mean) {
      c.row_loss[r] = 0.0;
      if (c.per_row) c.per_row[r] = 0.0f;
      fill_row<A>(gs, n, 0.0f);
      fill_row<A>(gt, n, 0.0f);
      continue;
    }
    row_io<S, P, G> io{c.s.data + r * c.s.row_stride, c.t.data + r * c.t.row_stride, gs, gt, n};
    row_params rp;
    rp.inv_t = static_cast<float>(c.inv_t);
    rp.c = static_cast<float>(w * c.scale * c.inv_t);
    rp.check_student_norm = c.check_student_norm;
    rp.check_teacher_norm = c.check_teacher_norm;
    const row_result res = divergence_row<A>(c.d, io, rp);
    const double l = res.loss * w * c.loss_scale;
    c.row_loss[r] = l;
    if (c.per_row) c.per_row[r] = static_cast<float>(l);
    if (res.error != row_error::none) {
      c.row_err[r] = res.error;
      c.row_value[r] = res.value;
      fill_row<A>(gs, n, nanf);
      fill_row<A>(gt, n, nanf);
    }
  }
}

template <class S, class P, class G>
using rows_fn = void (*)(const call<S, P, G>&, std::int64_t, std::int64_t);

inline status row_error_status(row_error e, double value, std::int64_t r) noexcept {
  switch (e) {
    case row_error::none:
      return ok_status();
    case row_error::student_non_finite:
      return make_error(errc::non_finite_input, "student", "contains NaN or +inf", value, r);
    case row_error::teacher_non_finite:
      return make_error(errc::non_finite_input, "teacher", "contains NaN or +inf", value, r);
    case row_error::student_not_normalized:
      return make_error(errc::not_normalized, "student", "declared log_probs but logsumexp(row) != 0", value, r);
    case row_error::teacher_not_normalized:
      return make_error(errc::not_normalized, "teacher", "declared log_probs but logsumexp(row) != 0", value, r);
    case row_error::support_mismatch:
      return make_error(errc::support_mismatch, "teacher",
                        "the divergence is +inf: one side has probability 0 (a -inf logit) where the other has mass",
                        value, r);
  }
  return ok_status();
}

// The instruction-set independent driver: row plan, per-row weights, the parallel row loop (rows_fn, compiled for one
// instruction set), then the fixed-order reduction and the first error. Precondition: arguments validated.
template <class Executor, class S, class P, class G>
status drive(rows_fn<S, P, G> rows, const Executor& exec, const divergence& d, const student_input<S>& student,
             const teacher_input<P>& teacher, const distill_options& opt, loss_result& result,
             const distill_outputs<G>& out) {
  const auto& s = student.x;
  const auto& t = teacher.x;
  const std::int64_t nrows = s.rows;
  const row_plan plan = make_row_plan(opt, s, t);
  std::vector<double> weights(static_cast<std::size_t>(nrows)), loss(static_cast<std::size_t>(nrows)),
      value(static_cast<std::size_t>(nrows));
  std::vector<row_error> err(static_cast<std::size_t>(nrows));
  for (std::int64_t r = 0; r < nrows; ++r) weights[r] = effective_row_weight(opt, s, t, r);

  call<S, P, G> c{d,
                  s,
                  t,
                  out.grad_student,
                  out.grad_teacher,
                  out.per_row,
                  weights.data(),
                  plan.scale,
                  plan.loss_scale,
                  plan.empty_mean,
                  1.0 / opt.temperature,
                  student.kind == input_kind::log_probs && opt.temperature == 1.0,
                  teacher.kind == input_kind::log_probs && opt.temperature == 1.0,
                  loss.data(),
                  err.data(),
                  value.data()};
  // Threads only pay off for more than one row and enough work (spawning costs tens of microseconds).
  if (nrows < 2 || nrows * s.cols < (std::int64_t{1} << 18)) {
    rows(c, 0, nrows);
  } else {
    exec.parallel_for(nrows, [&c, rows](std::int64_t b, std::int64_t e) { rows(c, b, e); });
  }

  status first;
  double total = 0.0;
  for (std::int64_t r = 0; r < nrows; ++r) {  // fixed order: bitwise identical for any thread count
    total += loss[r];
    if (first.ok() && err[r] != row_error::none) first = row_error_status(err[r], value[r], r);
  }
  result.valid_rows = plan.valid_rows;
  result.denominator = plan.denominator;
  result.loss = plan.empty_mean && first.ok() ? 0.0 : total / plan.denominator;
  return first;
}

}  // namespace detail::simd

template <class Arch = xsimd::default_arch, class Executor = thread_executor>
struct simd_backend {
  using arch_type = Arch;
  Executor executor{};

  static constexpr const char* name() noexcept { return "simd"; }
  static constexpr const char* arch_name() noexcept { return Arch::name(); }

  // Precondition: arguments validated (kd::divergence_loss does it).
  template <class S, class P, class G>
  status run_divergence(const divergence& d, const student_input<S>& student, const teacher_input<P>& teacher,
                        const distill_options& opt, loss_result& result, const distill_outputs<G>& out) const {
    if constexpr (std::is_same_v<S, double> || std::is_same_v<P, double>)
      return reference_backend{}.run_divergence(d, student, teacher, opt, result, out);
    else
      return detail::simd::drive<Executor, S, P, G>(&detail::simd::process_rows<Arch, S, P, G>, executor, d, student,
                                                    teacher, opt, result, out);
  }
};

KD_END_NAMESPACE
