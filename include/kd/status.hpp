// Error policy of kd (see docs/errors.md).
//
// Every kd entry point returns a kd::status value; it never throws, never aborts and never allocates to report an error, so
// the same mechanism works inside trainers built with -fno-exceptions and in CUDA host code. A status carries:
//   code      what went wrong (kd::errc),
//   argument  the name of the offending argument ("teacher", "temperature", ...), a static string,
//   message   a static, human-readable reason,
//   row       for value errors found during the computation, the smallest offending row index (else -1),
//   value     the offending number where one exists (a temperature, a log-sum-exp), else NaN.
// Argument errors (errc::invalid_argument) are reported before any output is written: outputs are untouched.
// Value errors found during the computation (non-finite inputs, support mismatch, unnormalized log-probs) are reported after
// the pass; docs/errors.md says what the outputs hold then.
// Users who prefer exceptions call kd::throw_if_error(st), which throws kd::error (a std::runtime_error).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <string>

#include "version.hpp"

KD_BEGIN_ISA_FREE_NAMESPACE  // errc, status: plain data types of kd::dispatch's signatures (kd/version.hpp)

enum class errc : int {
  ok = 0,
  invalid_argument = 1,   // shape, stride, null pointer, range or aliasing error in an argument; outputs untouched
  non_finite_input = 2,   // a NaN or +inf logit (or log-prob) in the named tensor
  support_mismatch = 3,   // the divergence is +inf: one side has probability 0 where the other has mass
  not_normalized = 4,     // an input declared as log-probs does not sum to 1 (|logsumexp| > 0.05 nats at T = 1)
  unsupported = 5,        // the requested backend or dtype is not available in this build
};

KD_END_ISA_FREE_NAMESPACE

KD_BEGIN_NAMESPACE

inline const char* errc_name(errc c) noexcept {
  switch (c) {
    case errc::ok: return "ok";
    case errc::invalid_argument: return "invalid argument";
    case errc::non_finite_input: return "non-finite input";
    case errc::support_mismatch: return "support mismatch";
    case errc::not_normalized: return "not normalized";
    case errc::unsupported: return "unsupported";
  }
  return "unknown";
}

KD_END_NAMESPACE

KD_BEGIN_ISA_FREE_NAMESPACE  // plain data types of kd::dispatch's signatures (kd/version.hpp)

struct [[nodiscard]] status {
  errc code = errc::ok;
  const char* argument = "";
  const char* message = "";
  std::int64_t row = -1;
  double value = std::numeric_limits<double>::quiet_NaN();

  constexpr bool ok() const noexcept { return code == errc::ok; }
  constexpr explicit operator bool() const noexcept { return ok(); }

  // "kd: invalid argument 'temperature': must be finite and > 0 (got -1)"
  std::string to_string() const {
    if (ok()) return "kd: ok";
    std::string s = "kd: ";
    s += errc_name(code);
    if (argument && *argument) { s += " '"; s += argument; s += "'"; }
    if (message && *message) { s += ": "; s += message; }
    if (row >= 0) { s += " (first offending row "; s += std::to_string(row); s += ")"; }
    if (!std::isnan(value)) {
      char buf[64];
      std::snprintf(buf, sizeof buf, " (got %.9g)", value);
      s += buf;
    }
    return s;
  }
};

KD_END_ISA_FREE_NAMESPACE

KD_BEGIN_NAMESPACE

inline constexpr status ok_status() noexcept { return status{}; }

inline status make_error(errc code, const char* argument, const char* message,
                         double value = std::numeric_limits<double>::quiet_NaN(), std::int64_t row = -1) noexcept {
  status s;
  s.code = code;
  s.argument = argument;
  s.message = message;
  s.value = value;
  s.row = row;
  return s;
}

namespace detail {
// The first value error wins (smallest row); backends combine per-row and per-thread errors with this.
inline void keep_first_error(status& first, const status& s) noexcept {
  if (s.ok()) return;
  if (first.ok() || s.row < first.row) first = s;
}
}  // namespace detail

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
// Exception type for callers who want exceptions (kd itself never throws). Not available under -fno-exceptions.
class error : public std::runtime_error {
 public:
  explicit error(const status& s) : std::runtime_error(s.to_string()), status_(s) {}
  const kd::status& status() const noexcept { return status_; }

 private:
  kd::status status_;
};

inline void throw_if_error(const status& s) {
  if (!s.ok()) throw error(s);
}
#endif

KD_END_NAMESPACE
