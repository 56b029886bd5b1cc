// kd::reference_backend: the scalar, double-precision oracle backend. Single-threaded, plain loops, O(V) scratch per call.
// Deterministic. It runs the registry's functors (kd/divergences/) in double through the shared CPU driver
// (backend/cpu_driver.hpp) and the reference row kernels (detail/reference_rows.hpp). Use it to check other backends and
// in gradient-checking tools; it is not meant to be fast.
#pragma once

#include "../detail/reference_rows.hpp"
#include "../options.hpp"
#include "../status.hpp"
#include "backend_traits.hpp"
#include "cpu_driver.hpp"
#include "executors.hpp"

KD_BEGIN_NAMESPACE

struct reference_backend {
  static constexpr backend_traits traits = {backend_traits::host, true, backend_traits::float64};
  static constexpr const char* name() noexcept { return "reference"; }

  // Precondition: arguments validated (kd::divergence_loss does it).
  template <class S, class P, class G>
  status run_divergence(const divergence& d, const student_input<S>& student, const teacher_input<P>& teacher,
                        const distill_options& opt, loss_result& result, const distill_outputs<G>& out) const {
    return detail::drive<serial_executor, S, P, G>(&detail::process_rows<detail::ref::row_kernels, S, P, G>,
                                                   serial_executor{}, d, student, teacher, opt, result, out);
  }
};

KD_END_NAMESPACE
