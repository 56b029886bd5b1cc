// What a registry entry says about a divergence (kd/divergences/registry.hpp): plain data, no code.
//
// Each divergence header defines one entry struct with these static members:
//   name, cli_name, formula, citation    names used by the API, the CLI (`kd loss --loss`), the docs and error messages
//   n_params, params[2]                  its parameters (0 to 2) with their ranges (param_spec)
//   endpoints[]                          parameter values at which it IS another divergence exactly (endpoint_rule)
//   x_is_student                         the functor is written in (x, y) form, e.g. KL(x || y); false: x = teacher p
//   functor, make(p0, p1)                the row functor and its factory from the two parameter values
#pragma once

#include <limits>

#include "../version.hpp"

KD_BEGIN_NAMESPACE

// One parameter's name and range [lo, hi] (open ends as flagged). A nonzero value below min_nonzero in magnitude is
// rejected too (the functor divides by it, or its float32 rounding would be 0). range_text is the static message of the
// range error, e.g. "must be in [0, 1)".
struct param_spec {
  const char* name = nullptr;
  double lo = 0.0, hi = 0.0;
  bool lo_open = false, hi_open = false;
  double min_nonzero = 0.0;
  const char* range_text = "";
  double example = 0.0;  // a typical value (help texts, tests)
};

// "At param[0] == p0 and param[1] == p1 (NaN: any value) this divergence is exactly `target`" (a registry name).
struct endpoint_rule {
  double p0 = std::numeric_limits<double>::quiet_NaN();
  double p1 = std::numeric_limits<double>::quiet_NaN();
  const char* target = nullptr;
};

inline constexpr double any_value = std::numeric_limits<double>::quiet_NaN();

KD_END_NAMESPACE
