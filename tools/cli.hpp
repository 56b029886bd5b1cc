// Small helpers shared by the kd tool's subcommands: argument parsing, JSON output, one-line errors.
#pragma once

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace kdtool {

// A usage or input error: printed as one line "kd <cmd>: <message>" and exit code 2.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// --name value / --flag parser. `flags` take no value; every other option takes exactly one. Every option may be given at
// most once (a repeated option is an error, never "last one wins"). Numbers are plain decimal only: num() takes
// [+-]digits[.digits][e[+-]digits] (no hexadecimal, inf, nan or blanks, which strtod would accept) and integer()
// [+-]digits; a value outside the representable range is an error (strtod / strtoll would clamp it).
class args {
 public:
  args(int argc, char** argv, const std::set<std::string>& valued, const std::set<std::string>& flags) {
    known_ = valued;
    known_.insert(flags.begin(), flags.end());
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--help" || a == "-h") { help_ = true; continue; }
      if (a.rfind("--", 0) != 0) throw usage_error("unexpected argument '" + a + "'");
      std::string key = a.substr(2), val;
      auto eq = key.find('=');
      if (eq != std::string::npos) { val = key.substr(eq + 1); key = key.substr(0, eq); }
      if ((flags.count(key) || valued.count(key)) && values_.count(key))
        throw usage_error("--" + key + " is given more than once");
      if (flags.count(key)) {
        if (eq != std::string::npos) throw usage_error("--" + key + " takes no value");
        values_[key] = "1";
      } else if (valued.count(key)) {
        if (eq == std::string::npos) {
          if (i + 1 >= argc) throw usage_error("--" + key + " needs a value");
          val = argv[++i];
        }
        values_[key] = val;
      } else {
        throw usage_error("unknown option --" + key);
      }
    }
  }
  bool help() const { return help_; }
  // "--flag: message" when a library error's argument name (e.g. "clip_range") is one of this command's options, after
  // renames (argument -> option name) and '_' -> '-'; the message alone otherwise.
  std::string name_flag(const char* argument, const std::string& message,
                        const std::map<std::string, std::string>& renames = {}) const {
    std::string k = argument ? argument : "";
    if (auto it = renames.find(k); it != renames.end()) k = it->second;
    for (char& c : k)
      if (c == '_') c = '-';
    return known_.count(k) ? "--" + k + ": " + message : message;
  }
  bool has(const std::string& k) const { return values_.count(k) != 0; }
  std::string str(const std::string& k, const std::string& def = "") const {
    auto it = values_.find(k);
    return it == values_.end() ? def : it->second;
  }
  std::string required(const std::string& k) const {
    if (!has(k)) throw usage_error("--" + k + " is required");
    return str(k);
  }
  double num(const std::string& k, double def) const {
    if (!has(k)) return def;
    const std::string s = str(k);
    if (!is_decimal(s, true)) throw usage_error("--" + k + ": not a decimal number: '" + s + "'");
    errno = 0;
    char* end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    if (errno == ERANGE && !(std::abs(v) < 1.0))  // overflow (underflow to a subnormal or 0 is accepted)
      throw usage_error("--" + k + ": out of the range of a double: '" + s + "'");
    return v;
  }
  std::int64_t integer(const std::string& k, std::int64_t def) const {
    if (!has(k)) return def;
    const std::string s = str(k);
    if (!is_decimal(s, false)) throw usage_error("--" + k + ": not a decimal integer: '" + s + "'");
    errno = 0;
    char* end = nullptr;
    const long long v = std::strtoll(s.c_str(), &end, 10);
    if (errno == ERANGE) throw usage_error("--" + k + ": out of the range of a 64-bit integer: '" + s + "'");
    return v;
  }
  // integer() restricted to [lo, hi].
  std::int64_t integer_in(const std::string& k, std::int64_t def, std::int64_t lo, std::int64_t hi) const {
    const std::int64_t v = integer(k, def);
    if (v < lo || v > hi)
      throw usage_error("--" + k + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "] (got " +
                        str(k) + ")");
    return v;
  }
  std::string choice(const std::string& k, const std::vector<std::string>& allowed, const std::string& def) const {
    std::string v = str(k, def);
    for (auto& a : allowed)
      if (a == v) return v;
    std::string list;
    for (auto& a : allowed) list += (list.empty() ? "" : "|") + a;
    throw usage_error("--" + k + " must be one of " + list + " (got '" + v + "')");
  }

 private:
  // [+-]digits, or with fraction: [+-](digits[.digits*] | .digits)[(e|E)[+-]digits]
  static bool is_decimal(const std::string& s, bool fraction) {
    std::size_t i = 0, n = s.size();
    const auto digits = [&] {
      const std::size_t b = i;
      while (i < n && s[i] >= '0' && s[i] <= '9') ++i;
      return i - b;
    };
    if (i < n && (s[i] == '+' || s[i] == '-')) ++i;
    std::size_t m = digits();
    if (!fraction) return m > 0 && i == n;
    if (i < n && s[i] == '.') {
      ++i;
      m += digits();
    }
    if (m == 0) return false;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
      ++i;
      if (i < n && (s[i] == '+' || s[i] == '-')) ++i;
      if (digits() == 0) return false;
    }
    return i == n;
  }

  std::map<std::string, std::string> values_;
  std::set<std::string> known_;
  bool help_ = false;
};

// JSON number: finite values with 17 significant digits, NaN/inf as null.
inline std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

template <class T>
std::string json_array(const T* v, std::size_t n) {
  std::string s = "[";
  for (std::size_t i = 0; i < n; ++i) {
    if (i) s += ", ";
    s += json_number(static_cast<double>(v[i]));
  }
  return s + "]";
}

// [B, L] nested array from a flat row-major buffer.
template <class T>
std::string json_matrix(const T* v, std::int64_t rows, std::int64_t cols) {
  std::string s = "[";
  for (std::int64_t r = 0; r < rows; ++r) {
    if (r) s += ", ";
    s += json_array(v + r * cols, static_cast<std::size_t>(cols));
  }
  return s + "]";
}

inline std::string json_string(const std::string& x) {
  std::string s = "\"";
  for (char c : x) {
    if (c == '"' || c == '\\') { s += '\\'; s += c; }
    else if (static_cast<unsigned char>(c) < 0x20) { char b[8]; std::snprintf(b, sizeof b, "\\u%04x", c); s += b; }
    else s += c;
  }
  return s + "\"";
}

}  // namespace kdtool
