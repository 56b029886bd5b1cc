// The CPU driver of kd::lm_loss (the cross-entropy term of MiniLLM training, kd/lm_loss.hpp), shared by the reference
// and the SIMD backends: a backend's row kernels give each labelled row's log-sum-exp (pass 1, nothing written, every
// value error found and the smallest offending row reported) and the gradient (q_j - onehot(label)_j) * scale / T
// (pass 2: the kernels' softmax gradient, then the label's entry recomputed in double from the input, which the
// gradient may overwrite in place). Loss and reductions in row order on the calling thread: deterministic.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../detail/row_io.hpp"
#include "../options.hpp"
#include "../status.hpp"
#include "cpu_driver.hpp"

// The SIMD row kernels inline here: GCC 12's AVX-512 intrinsics' -W(maybe-)uninitialized false positives (GCC bug
// 105593; see detail/simd_divergence.hpp) are reported at this point of instantiation.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

KD_BEGIN_NAMESPACE
namespace detail::lm {

// Precondition: arguments validated (kd::lm_loss does it).
template <class K, class Executor, class S, class G>
status run(const Executor& exec, const student_input<S>& student, const label_view& labels,
           const distill_options& options, loss_result& result, const mut_rows<G>& grad) {
  const auto& z = student.x;
  const std::int64_t R = z.rows, n = z.cols;
  const double inv_t = 1.0 / options.temperature;
  std::vector<lse_result> lse(static_cast<std::size_t>(R));
  run_rows(exec, R, n, [&](std::int64_t r0, std::int64_t r1) {
    typename K::template scratch<S, S, G> sc(n);
    for (std::int64_t r = r0; r < r1; ++r)
      if (labels[r] != options.ignore_index) lse[r] = K::student_lse(z.row(r), n, inv_t, sc);
  });
  double sum = 0.0;
  std::int64_t count = 0;
  for (std::int64_t r = 0; r < R; ++r) {
    const std::int64_t y = labels[r];
    if (y == options.ignore_index) continue;
    const lse_result& l = lse[r];
    if (l.error == row_error::student_out_of_range)
      return make_error(errc::non_finite_input, "student",
                        "finite logits whose |x| / T exceeds the floating-point range (temperature too small)",
                        l.value, r);
    if (l.error != row_error::none)
      return make_error(errc::non_finite_input, "student", "a labelled row holds NaN or +inf, or is fully masked",
                        l.value, r);
    const double lq = (to_double(z.row(r)[y]) * inv_t - l.lse.max) - l.lse.log_sum;
    if (lq == -std::numeric_limits<double>::infinity())
      return make_error(errc::support_mismatch, "labels", "the student gives probability 0 to the label", lq, r);
    sum += -lq;
    ++count;
  }
  double den = 1.0;
  if (options.reduction == reduction::mean) den = static_cast<double>(count);
  else if (options.reduction == reduction::normalizer) den = options.normalizer;
  const double scale = den > 0.0 ? 1.0 / den : 0.0;
  result.valid_rows = count;
  result.denominator = den > 0.0 ? den : 1.0;
  result.loss = sum * scale;
  if (!grad.data) return ok_status();
  run_rows(exec, R, n, [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      G* g = grad.row(r);
      const std::int64_t y = labels[r];
      if (y == options.ignore_index || scale == 0.0) {
        std::fill(g, g + n, from_double<G>(0.0));
        continue;
      }
      const row_lse& l = lse[r].lse;
      const double qy = std::exp((to_double(z.row(r)[y]) * inv_t - l.max) - l.log_sum);
      const double gy = inv_t * scale * (qy - 1.0);
      K::softmax_grad(z.row(r), n, inv_t, l, scale * inv_t, g);
      g[y] = from_double<G>(gy);
    }
  });
  return ok_status();
}

}  // namespace detail::lm
KD_END_NAMESPACE

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
