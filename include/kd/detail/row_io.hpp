// The contract between a backend's row kernels and the shared CPU driver (backend/cpu_driver.hpp): one row's inputs,
// outputs, scales, and what the row kernel reports back. Plain data, instruction-set independent.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "../version.hpp"

KD_BEGIN_NAMESPACE
namespace detail {

// What went wrong in a row (mapped to a kd::status, with its argument name and message, by the driver alone).
enum class row_error : std::uint8_t {
  none = 0,
  masked,                  // not an error: one side is fully masked (every entry -inf): the row does not count
  student_non_finite,
  teacher_non_finite,
  student_out_of_range,    // finite entries whose |z| / T leaves the compute type's range (e.g. float32 at T = 1e-300)
  teacher_out_of_range,
  student_not_normalized,
  teacher_not_normalized,
  support_mismatch,        // the divergence is +inf; the driver names the side with the zero (below)
  support_mismatch_student,  // the student has probability 0 (a -inf logit) where the teacher has mass
  support_mismatch_teacher,  // the teacher has probability 0 where the student has mass
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
  double inv_t = 1.0;
  double c = 0.0;                   // gradient scale: weight * plan.scale * inv_t
  double c_q = 0.0;                 // adds c_q * q_j to the student gradient (the policy gradient's epilogue); 0: none
  // Online (KL) path: form log q_j - log p_j from the raw logit difference (z_s - z_t) / T minus a row constant instead
  // of from the two log-probabilities. Exact where the models' logits agree (low T, docs/pitfalls.md #14); the
  // default form is exact near each row's maximum (confident rows, docs/numerics.md). The policy gradient sets it.
  bool raw_log_ratio = false;
  bool check_student_norm = false;  // declared log_probs at T = 1
  bool check_teacher_norm = false;
};

// sum_j exp(u_j) of a row relative to its running maximum (u = y - max <= 0), as the count of entries AT the maximum
// (exp(0) = 1 each) and the tail of all others, kept apart: log S = log(cnt) + log1p(tail / cnt) then keeps the
// tail's relative precision. A confident row (top token ahead by 16-40 nats) has tail ~ V e^-gap, at or below the
// rounding of 1 in double, and every divergence of such a row is a function of that tail.
struct split_sum {
  double cnt = 0.0, tail = 0.0;
  // The maximum moved up by -log f (f < 1): the old maxima join the tail.
  void rescale(double f) noexcept {
    tail = (tail + cnt) * f;
    cnt = 0.0;
  }
  double total() const noexcept { return cnt + tail; }
  double log() const noexcept { return cnt > 0.0 ? std::log(cnt) + std::log1p(tail / cnt) : std::log(tail); }
};

// A row's log-sum-exp of z / T kept as max + log_sum (log_sum = log sum_j exp(z_j / T - max), small): log-probabilities
// are formed as (z_j / T - max) - log_sum, exact near the max where the mass is (detail/simd_divergence.hpp).
struct row_lse {
  double max = 0.0, log_sum = 0.0;
  double value() const noexcept { return max + log_sum; }
};

// What the statistics pass of a row found, enough for its gradient pass without recomputing the sums: the loss (or the
// error), both sides' log-sum-exps, and the functor F after finish() (its row constants for grad()).
template <class F>
struct row_stats {
  row_result res;
  row_lse s, t;
  F f{};
  bool online = false;  // SIMD kernels: computed by the online (fused) path; its gradient pass must match it
};

// A student-only row (LM loss, policy-gradient rows that need no teacher): its log-sum-exp, or why it has none
// (row_error::masked: every entry -inf; *_out_of_range / *_non_finite as check_pass1).
struct lse_result {
  row_lse lse;
  row_error error = row_error::none;
  double value = 0.0;
};

// |log-sum-exp| above this at T = 1 means an input declared as log-probs is not normalized (docs/errors.md).
inline constexpr double log_probs_tolerance = 0.05;

// True when every entry of x[0..n) is -inf (a fully masked row), compared in double.
template <class T>
inline bool all_ninf(const T* x, std::int64_t n) noexcept {
  for (std::int64_t j = 0; j < n; ++j)
    if (!(static_cast<double>(x[j]) == -std::numeric_limits<double>::infinity())) return false;
  return true;
}

// The normalisation and finiteness checks of pass 1, in the order every backend reports them. lse_* are the rows'
// log-sum-exps of z / T (NaN: the row has a NaN; +inf: it has +inf; -inf: every z / T is -inf). A row whose
// log-sum-exp is -inf is fully masked when every entry is -inf (masked_s / masked_t, checked by the caller only then),
// else its finite entries overflowed when divided by T.
inline row_result check_pass1(double lse_s, double lse_t, bool masked_s, bool masked_t,
                              const row_params& rp) noexcept {
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  constexpr double ninf = -std::numeric_limits<double>::infinity();
  if ((lse_s == ninf && masked_s) || (lse_t == ninf && masked_t)) return {0.0, row_error::masked, 0.0};
  if (lse_s == ninf) return {nan, row_error::student_out_of_range, lse_s};
  if (lse_t == ninf) return {nan, row_error::teacher_out_of_range, lse_t};
  if (!std::isfinite(lse_s)) return {nan, row_error::student_non_finite, lse_s};
  if (!std::isfinite(lse_t)) return {nan, row_error::teacher_non_finite, lse_t};
  if (rp.check_student_norm && (lse_s > log_probs_tolerance || lse_s < -log_probs_tolerance))
    return {nan, row_error::student_not_normalized, lse_s};
  if (rp.check_teacher_norm && (lse_t > log_probs_tolerance || lse_t < -log_probs_tolerance))
    return {nan, row_error::teacher_not_normalized, lse_t};
  return {};
}

// The range rule every backend applies (docs/errors.md): a row with an entry inside the float32 range whose |z| / T is
// above FLT_MAX (the temperature pushed it out of the range of the default SIMD backend) is out of range, an error on
// every backend, so that the double reference and the float32 kernels agree on what is an error. (float64 inputs
// already beyond FLT_MAX are left to each backend, as before.) Scans z[0..n) in double: a NaN or +inf entry gives
// non_finite (reported first, as pass 1 does); a finite entry beyond the range out_of_range, with *value = |z| / T.
enum class range_class : std::uint8_t { ok, non_finite, out_of_range };
template <class T>
inline range_class scan_range(const T* z, std::int64_t n, double inv_t, double* value) noexcept {
  constexpr double flt_max = 3.4028234663852886e38;
  range_class r = range_class::ok;
  for (std::int64_t j = 0; j < n; ++j) {
    const double x = static_cast<double>(z[j]);
    if (x != x || x == std::numeric_limits<double>::infinity()) {
      *value = x;
      return range_class::non_finite;
    }
    if (std::abs(x) <= flt_max && std::abs(x) * inv_t > flt_max && r == range_class::ok) {
      r = range_class::out_of_range;
      *value = std::abs(x) * inv_t;
    }
  }
  return r;
}

// The range rule for a row whose pass 1 found no error: its out_of_range error (student first), or none.
template <class S, class P>
inline row_result check_range(const S* zs, const P* zt, std::int64_t n, double inv_t) noexcept {
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  double v = 0.0;
  if (scan_range(zs, n, inv_t, &v) == range_class::out_of_range) return {nan, row_error::student_out_of_range, v};
  if (scan_range(zt, n, inv_t, &v) == range_class::out_of_range) return {nan, row_error::teacher_out_of_range, v};
  return {};
}

// A float32 pass 1 that failed (NaN / inf log-sum-exp) reclassified in double by the rule above, in the reference's
// order: non-finite entries (student, then teacher), then entries beyond the range (student, then teacher). A row with
// neither overflowed only within rounding of FLT_MAX: out of range on the side whose log-sum-exp failed.
template <class S, class P>
inline row_result refine_pass1(const S* zs, const P* zt, std::int64_t n, double inv_t, row_result failed) noexcept {
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  double vs = 0.0, vt = 0.0;
  const range_class cs = scan_range(zs, n, inv_t, &vs), ct = scan_range(zt, n, inv_t, &vt);
  if (cs == range_class::non_finite) return {nan, row_error::student_non_finite, vs};
  if (ct == range_class::non_finite) return {nan, row_error::teacher_non_finite, vt};
  if (cs == range_class::out_of_range) return {nan, row_error::student_out_of_range, vs};
  if (ct == range_class::out_of_range) return {nan, row_error::teacher_out_of_range, vt};
  const bool student = failed.error == row_error::student_non_finite || failed.error == row_error::student_out_of_range;
  return {nan, student ? row_error::student_out_of_range : row_error::teacher_out_of_range, failed.value};
}

// The checks of a student-only row (lse = its log-sum-exp of z / T, masked: every entry -inf), in check_pass1's order.
inline lse_result check_student_lse(row_lse parts, double lse, bool masked) noexcept {
  constexpr double ninf = -std::numeric_limits<double>::infinity();
  lse_result r;
  r.lse = parts;
  r.value = lse;
  if (lse == ninf) r.error = masked ? row_error::masked : row_error::student_out_of_range;
  else if (!std::isfinite(lse)) r.error = row_error::student_non_finite;
  return r;
}

}  // namespace detail
KD_END_NAMESPACE
