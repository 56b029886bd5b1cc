// Backends are values passed as the last argument of every kd call (CUB/Thrust-style execution policy):
//   kd::reference_backend{}  scalar double-precision oracle (tests, gradient checks)
//   kd::default_backend      the best backend compiled in (currently the reference backend; see docs/performance.md)
// A backend is any type with a `run_divergence` member template of the signature used in kd/divergence.hpp.
#pragma once

#include "backend/reference.hpp"

KD_BEGIN_NAMESPACE

using default_backend = reference_backend;

KD_END_NAMESPACE
