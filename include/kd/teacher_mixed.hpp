// Teacher-mixed sampling (MiniLLM, Gu et al. arXiv 2306.08543 Sec. 2.2): draw each token from s = alpha p + (1 - alpha) q,
// p = softmax(teacher / T), q = softmax(student / T), by inverting the cumulative distribution at a caller-provided uniform.
//
//   kd::status kd::sample_teacher_mixed(student, teacher, alpha, temperature, uniforms, tokens,
//                                       behaviour_log_probs = nullptr, student_log_probs = nullptr)
//
// student, teacher     [rows, V] logits (or log-probs), one row per sequence at the current step (kd::student_logits(...))
// alpha                in [0, 1]: 0 = on-policy (sample from q), 1 = sample from the teacher
// uniforms             [rows] u in [0, 1) (e.g. kd::counter_uniform(seed, b * L + t), kd/counter_rng.hpp)
// tokens               [rows] int64 out: the smallest j with u < sum_{i<=j} s_i (cumulative sum in double; a u beyond the
//                      rounded total picks the last token with s_j > 0)
// behaviour_log_probs  optional [rows] out: log s(y) (nats); student_log_probs: optional [rows] out: log q(y) (store it as
//                      the policy gradient's old_log_probs)
// Deterministic: the same inputs and uniforms give the same tokens on every run and machine (double arithmetic, fixed order).
// Errors: argument errors (shapes, alpha, temperature, u outside [0, 1), null pointers) before any output is written;
// a row with NaN/+inf or fully masked -> errc::non_finite_input naming the side and the row, also before any output.
// O(V) scratch; reference (double) arithmetic: sampling is O(rows * V) once per step, negligible next to the model.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "backend/reference.hpp"
#include "detail/reference_math.hpp"
#include "detail/validate.hpp"
#include "options.hpp"
#include "status.hpp"

KD_BEGIN_NAMESPACE

template <class S, class P>
status sample_teacher_mixed(const student_input<S>& student, const teacher_input<P>& teacher, double alpha,
                            double temperature, const double* uniforms, std::int64_t* tokens,
                            float* behaviour_log_probs = nullptr, float* student_log_probs = nullptr) {
  if (status s = detail::validate_rows(student.x, "student"); !s) return s;
  if (status s = detail::validate_rows(teacher.x, "teacher"); !s) return s;
  if (teacher.x.rows != student.x.rows || teacher.x.cols != student.x.cols)
    return make_error(errc::invalid_argument, "teacher", "shape must equal the student's [rows, V]");
  if (!(alpha >= 0.0 && alpha <= 1.0)) return make_error(errc::invalid_argument, "alpha", "must be in [0, 1]", alpha);
  if (status s = detail::validate_temperature(temperature); !s) return s;
  const std::int64_t rows = student.x.rows, n = student.x.cols;
  if (rows > 0 && uniforms == nullptr) return make_error(errc::invalid_argument, "uniforms", "is null");
  if (rows > 0 && tokens == nullptr) return make_error(errc::invalid_argument, "tokens", "is null");
  for (std::int64_t r = 0; r < rows; ++r)
    if (!(uniforms[r] >= 0.0 && uniforms[r] < 1.0))
      return make_error(errc::invalid_argument, "uniforms", "must be in [0, 1)", uniforms[r], r);

  const double inv_t = 1.0 / temperature;
  std::vector<double> lq(n), lp(n);
  std::vector<std::int64_t> tok(rows);
  std::vector<double> lsy(rows), lqy(rows);
  const double la = alpha > 0.0 ? std::log(alpha) : detail::ref::ninf;
  const double l1a = alpha < 1.0 ? std::log1p(-alpha) : detail::ref::ninf;
  for (std::int64_t r = 0; r < rows; ++r) {
    const double lse_q = detail::ref::load_log_probs(student.x.row(r), n, inv_t, lq.data());
    if (!std::isfinite(lse_q))
      return make_error(errc::non_finite_input, "student", "row holds NaN or +inf, or is fully masked", lse_q, r);
    const double lse_p = detail::ref::load_log_probs(teacher.x.row(r), n, inv_t, lp.data());
    if (!std::isfinite(lse_p))
      return make_error(errc::non_finite_input, "teacher", "row holds NaN or +inf, or is fully masked", lse_p, r);
    const auto log_s = [&](std::int64_t j) {
      if (alpha == 0.0) return lq[j];
      if (alpha == 1.0) return lp[j];
      return detail::ref::logaddexp(la + lp[j], l1a + lq[j]);
    };
    const double u = uniforms[r];
    double c = 0.0;
    std::int64_t pick = -1, last = -1;
    for (std::int64_t j = 0; j < n; ++j) {
      const double ls = log_s(j);
      if (ls == detail::ref::ninf) continue;
      last = j;
      c += std::exp(ls);
      if (u < c) {
        pick = j;
        break;
      }
    }
    if (pick < 0) pick = last;  // u beyond the rounded total
    tok[r] = pick;
    lsy[r] = log_s(pick);
    lqy[r] = lq[pick];
  }
  for (std::int64_t r = 0; r < rows; ++r) {
    tokens[r] = tok[r];
    if (behaviour_log_probs) behaviour_log_probs[r] = static_cast<float>(lsy[r]);
    if (student_log_probs) student_log_probs[r] = static_cast<float>(lqy[r]);
  }
  return ok_status();
}

KD_END_NAMESPACE
