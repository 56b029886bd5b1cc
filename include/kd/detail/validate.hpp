// Argument checks shared by every backend. They run before any output is written (outputs stay untouched on error).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "../divergence_spec.hpp"
#include "../options.hpp"
#include "../status.hpp"

KD_BEGIN_NAMESPACE
namespace detail {

template <class T>
status validate_rows(const const_rows<T>& x, const char* name) {
  if (x.rows < 0) return make_error(errc::invalid_argument, name, "rows must be >= 0", double(x.rows));
  if (x.cols < 1) return make_error(errc::invalid_argument, name, "cols (vocabulary size) must be >= 1", double(x.cols));
  if (x.row_stride < x.cols)
    return make_error(errc::invalid_argument, name, "row_stride must be >= cols", double(x.row_stride));
  if (x.rows > 0 && x.data == nullptr) return make_error(errc::invalid_argument, name, "data is null");
  return ok_status();
}

inline status validate_temperature(double t) {
  // 1 / T must be finite too: a subnormal T (< ~5.6e-309) makes 1/T = inf and 0 * inf = NaN logits (found by fuzzing).
  if (!(std::isfinite(t) && t > 0.0 && std::isfinite(1.0 / t)))
    return make_error(errc::invalid_argument, "temperature", "must be finite and > 0 (and 1/T finite)", t);
  return ok_status();
}

// Output view `out` named `name` must have the shape of input `in`, and either be exactly the input buffer (in place) or not
// overlap it nor the other input `other`.
template <class G, class T, class U>
status validate_grad(const mut_rows<G>& out, const const_rows<T>& in, const const_rows<U>& other, const char* name) {
  if (out.data == nullptr) return ok_status();
  if (out.rows != in.rows || out.cols != in.cols)
    return make_error(errc::invalid_argument, name, "shape must equal the corresponding input's [rows, cols]");
  if (out.row_stride < out.cols) return make_error(errc::invalid_argument, name, "row_stride must be >= cols");
  const_rows<G> o(out.data, out.rows, out.cols, out.row_stride);
  if (overlaps(o, in) && !same_buffer(o, in))
    return make_error(errc::invalid_argument, name,
                      "overlaps its input without being the same buffer (in place needs same dtype, data and row_stride)");
  if (overlaps(o, other)) return make_error(errc::invalid_argument, name, "overlaps the other model's input");
  return ok_status();
}

inline status validate_options(const distill_options& o, std::int64_t rows) {
  if (status s = validate_temperature(o.temperature); !s) return s;
  if (o.reduction == reduction::normalizer && !(std::isfinite(o.normalizer) && o.normalizer > 0.0))
    return make_error(errc::invalid_argument, "normalizer", "must be finite and > 0 with reduction::normalizer",
                      o.normalizer);
  if (!o.labels.empty() && o.labels.size != rows)
    return make_error(errc::invalid_argument, "labels", "must have one entry per row", double(o.labels.size));
  double w_max = 1.0, w_min = 1.0;  // over positive weights
  if (o.row_weights) {
    w_max = 0.0;
    w_min = std::numeric_limits<double>::infinity();
    for (std::int64_t r = 0; r < rows; ++r) {
      const double w = o.row_weights[r];
      if (!(std::isfinite(w) && w >= 0.0))
        return make_error(errc::invalid_argument, "row_weights", "must be finite and >= 0", w, r);
      if (w > 0.0) w_max = std::max(w_max, w), w_min = std::min(w_min, w);
    }
    if (w_max == 0.0) w_min = 1.0;
  }
  // Every scale a backend applies must be finite: T^2 (t2_scale), w T^2 (per-row values) and w T^2 / (denominator T)
  // (gradients, bounded here with the smallest possible denominator). Otherwise inf * 0 puts NaN into rows whose loss or
  // gradient is exactly 0, under an ok status (found by fuzzing: T = 1e300 with t2_scale, normalizer = 1e-319).
  const double t2 = o.t2_scale ? o.temperature * o.temperature : 1.0;
  const double d0 = o.reduction == reduction::normalizer ? o.normalizer : (o.reduction == reduction::mean ? w_min : 1.0);
  const double grad_scale = w_max * (t2 / d0) / o.temperature;
  if (!(std::isfinite(t2) && std::isfinite(w_max * t2) && std::isfinite(t2 / d0) && std::isfinite(grad_scale)))
    return make_error(errc::invalid_argument,
                      o.reduction == reduction::normalizer ? "normalizer" : (o.row_weights ? "row_weights" : "temperature"),
                      "the loss or gradient scale w T^2 / (denominator T) overflows double", grad_scale);
  return ok_status();
}

// A parameter value against its registry range (param_spec).
inline status validate_param(const param_spec& p, double v) {
  const bool lo_ok = p.lo_open ? v > p.lo : v >= p.lo, hi_ok = p.hi_open ? v < p.hi : v <= p.hi;
  if (!(lo_ok && hi_ok)) return make_error(errc::invalid_argument, p.name, p.range_text, v);
  if (v != 0.0 && std::abs(v) < p.min_nonzero)
    return make_error(errc::invalid_argument, p.name, p.range_text, v);
  return ok_status();
}

// The kind must be registered and each of its parameters in range (kd/divergences/registry.hpp).
inline status validate_divergence(const divergence& d) {
  return visit_divergence<status>(
      d.kind,
      [&](auto e) {
        using E = decltype(e);
        const double v[2] = {d.param, d.param2};
        for (int i = 0; i < E::n_params; ++i)
          if (status s = validate_param(E::params[i], v[i]); !s) return s;
        return ok_status();
      },
      make_error(errc::invalid_argument, "divergence", "unknown divergence kind (not in kd/divergences/registry.hpp)"));
}

template <class S, class P, class G>
status validate_divergence_call(const divergence& d, const student_input<S>& student, const teacher_input<P>& teacher,
                                const distill_options& opt, const distill_outputs<G>& out) {
  if (status s = validate_divergence(d); !s) return s;
  if (status s = validate_rows(student.x, "student"); !s) return s;
  if (status s = validate_rows(teacher.x, "teacher"); !s) return s;
  if (teacher.x.rows != student.x.rows)
    return make_error(errc::invalid_argument, "teacher", "must have as many rows as the student", double(teacher.x.rows));
  if (teacher.x.cols != student.x.cols)
    return make_error(errc::invalid_argument, "teacher",
                      "vocabulary (cols) differs from the student's: pass views restricted to the shared vocabulary "
                      "(cols = true vocab, row_stride = padded width); see docs/conventions.md",
                      double(teacher.x.cols));
  if (status s = validate_options(opt, student.x.rows); !s) return s;
  if (status s = validate_grad(out.grad_student, student.x, teacher.x, "grad_student"); !s) return s;
  if (status s = validate_grad(out.grad_teacher, teacher.x, student.x, "grad_teacher"); !s) return s;
  if (out.grad_student.data && out.grad_teacher.data) {
    const_rows<G> a(out.grad_student.data, out.grad_student.rows, out.grad_student.cols, out.grad_student.row_stride);
    const_rows<G> b(out.grad_teacher.data, out.grad_teacher.rows, out.grad_teacher.cols, out.grad_teacher.row_stride);
    if (overlaps(a, b)) return make_error(errc::invalid_argument, "grad_teacher", "overlaps grad_student");
  }
  return ok_status();
}

}  // namespace detail
KD_END_NAMESPACE
