// A row split into vocabulary shards (the vocabulary-parallel driver's processes, the fused-linear driver's tiles): what
// one shard's pass over its entries yields, how shards' results combine, and how the combined statistics become the
// row's log-sum-exps and its first value error, in the order every backend reports them (row_io.hpp). Plain data: the
// row kernels fill it (detail::ref::row_kernels, detail::simd::row_kernels: side_stats, shard_sums), the drivers
// combine it (backend/shard_driver.hpp, backend/fused_linear_driver.hpp).
//
// A row's divergence is a sum over entries once both log-sum-exps are known (the functors' accumulate / finish,
// kd/divergences/), so a sharded row takes three steps with a combine after each of the first two:
//   1. side statistics per shard (max of z / T, sum of exp relative to it, error flags)   -> combine (max, then sum)
//   2. the functor's sums per shard, with the combined log-sum-exps                      -> combine (sum)
//   3. finish (the row's loss, identical everywhere) and each shard's gradient entries.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "row_io.hpp"

KD_BEGIN_NAMESPACE
namespace detail {

// One side (student or teacher) of one row over one shard of its entries.
struct side_stats {
  double max = -std::numeric_limits<double>::infinity();  // max of z / T in the kernel's arithmetic (-inf: none finite)
  split_sum sum;                                           // sum of exp(z / T - max), entries at max counted apart
  std::int64_t max_chunk = -1;  // SIMD kernels: the shard's chunk holding max (compensated sums there); -1 none
  bool nan = false, pinf = false;  // the shard has a NaN / a +inf entry
  bool all_ninf = true;            // every entry is -inf (in double): a fully masked shard
  double out_of_range = 0.0;       // |z| / T of a finite entry beyond the float32 range (row_io.hpp), 0: none
};

// b's statistics joined into a's (the same row and side, another shard). a.max_chunk is kept only where a's maximum
// stays the row's (a driver merging tiles keeps its own bookkeeping of where the maximum is).
inline void merge_side(side_stats& a, const side_stats& b) noexcept {
  if (b.max > a.max) {
    if (a.max != -std::numeric_limits<double>::infinity()) a.sum.rescale(std::exp(a.max - b.max));
    else a.sum = {};
    a.sum.cnt += b.sum.cnt;
    a.sum.tail += b.sum.tail;
    a.max = b.max;
    a.max_chunk = -1;
  } else if (b.max == a.max) {
    a.sum.cnt += b.sum.cnt;
    a.sum.tail += b.sum.tail;
  } else if (b.max != -std::numeric_limits<double>::infinity()) {
    a.sum.tail += (b.sum.cnt + b.sum.tail) * std::exp(b.max - a.max);
  }
  a.nan = a.nan || b.nan;
  a.pinf = a.pinf || b.pinf;
  a.all_ninf = a.all_ninf && b.all_ninf;
  a.out_of_range = a.out_of_range > b.out_of_range ? a.out_of_range : b.out_of_range;
}

// The first value error of a row from its combined statistics (none: the row's log-sum-exps are in `s`, `t`), in the
// order of the SIMD kernels' careful path (simd_divergence.hpp careful_stats; the reference reports the same errors):
// masked, non-finite (student, teacher), out of range (student, teacher), not normalized (student, teacher).
inline row_result finish_sides(const side_stats& s, const side_stats& t, const row_params& rp, row_lse& ls,
                               row_lse& lt) noexcept {
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  constexpr double ninf = -std::numeric_limits<double>::infinity();
  const bool fin_s = !s.nan && !s.pinf, fin_t = !t.nan && !t.pinf;
  if ((fin_s && s.max == ninf && s.all_ninf) || (fin_t && t.max == ninf && t.all_ninf))
    return {0.0, row_error::masked, 0.0};
  if (!fin_s) return {nan, row_error::student_non_finite, s.nan ? nan : std::numeric_limits<double>::infinity()};
  if (!fin_t) return {nan, row_error::teacher_non_finite, t.nan ? nan : std::numeric_limits<double>::infinity()};
  if (s.out_of_range > 0.0 || s.max == ninf)
    return {nan, row_error::student_out_of_range, s.out_of_range > 0.0 ? s.out_of_range : ninf};
  if (t.out_of_range > 0.0 || t.max == ninf)
    return {nan, row_error::teacher_out_of_range, t.out_of_range > 0.0 ? t.out_of_range : ninf};
  ls = {s.max, s.sum.log()};
  lt = {t.max, t.sum.log()};
  const double lse_s = ls.value(), lse_t = lt.value();
  if (rp.check_student_norm && (lse_s > log_probs_tolerance || lse_s < -log_probs_tolerance))
    return {nan, row_error::student_not_normalized, lse_s};
  if (rp.check_teacher_norm && (lse_t > log_probs_tolerance || lse_t < -log_probs_tolerance))
    return {nan, row_error::teacher_not_normalized, lse_t};
  return {};
}

// What step 2 of a shard adds to its row: the functor's sums, its mismatch flag (some entry has mass on one side and
// probability 0 on the other), and which side holds such a zero (for the error's argument name).
template <int K>
struct shard_sums {
  double sums[K > 0 ? K : 1] = {};
  bool mismatch = false;
  bool zero_s = false, zero_t = false;  // a -inf student (teacher) entry where the other side is not -inf

  void merge(const shard_sums& b) noexcept {
    for (int i = 0; i < K; ++i) sums[i] += b.sums[i];
    mismatch = mismatch || b.mismatch;
    zero_s = zero_s || b.zero_s;
    zero_t = zero_t || b.zero_t;
  }
};

// The zero flags of a shard (mismatch_side of backend/cpu_driver.hpp, per shard), scanned by the kernels only in shards
// whose own sums met a mismatch (a divergence that is +inf where y = 0 names the y side whenever both sides have zeros,
// so the shards without a mismatch cannot change the answer for it).
template <class S, class P, int K>
inline void shard_zero_flags(const S* zs, const P* zt, std::int64_t n, shard_sums<K>& out) noexcept {
  constexpr double ninf = -std::numeric_limits<double>::infinity();
  for (std::int64_t j = 0; j < n; ++j) {
    const bool ms = static_cast<double>(zs[j]) == ninf, mt = static_cast<double>(zt[j]) == ninf;
    out.zero_s = out.zero_s || (ms && !mt);
    out.zero_t = out.zero_t || (mt && !ms);
  }
}

// The error of a row whose combined functor finished at +inf (support mismatch), naming the side with the zero.
template <int K>
inline row_error mismatch_error(const shard_sums<K>& c, bool y_is_student) noexcept {
  if (c.zero_s != c.zero_t) return c.zero_s ? row_error::support_mismatch_student : row_error::support_mismatch_teacher;
  return y_is_student ? row_error::support_mismatch_student : row_error::support_mismatch_teacher;
}

}  // namespace detail
KD_END_NAMESPACE
