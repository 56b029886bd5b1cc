// Small helpers shared by the kd tool's subcommands: argument parsing, JSON output, one-line errors.
#pragma once

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

// --name value / --flag parser. `flags` take no value; every other option takes exactly one.
class args {
 public:
  args(int argc, char** argv, const std::set<std::string>& valued, const std::set<std::string>& flags) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--help" || a == "-h") { help_ = true; continue; }
      if (a.rfind("--", 0) != 0) throw usage_error("unexpected argument '" + a + "'");
      std::string key = a.substr(2), val;
      auto eq = key.find('=');
      if (eq != std::string::npos) { val = key.substr(eq + 1); key = key.substr(0, eq); }
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
    char* end = nullptr;
    double v = std::strtod(s.c_str(), &end);
    if (s.empty() || *end != '\0') throw usage_error("--" + k + ": not a number: '" + s + "'");
    return v;
  }
  std::int64_t integer(const std::string& k, std::int64_t def) const {
    if (!has(k)) return def;
    const std::string s = str(k);
    char* end = nullptr;
    long long v = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0') throw usage_error("--" + k + ": not an integer: '" + s + "'");
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
  std::map<std::string, std::string> values_;
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
