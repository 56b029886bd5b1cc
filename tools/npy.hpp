// Minimal, strict NumPy .npy reader/writer for the kd tool (format versions 1.0, 2.0, 3.0; little-endian; C order).
// Supported dtypes: float16 '<f2', float32 '<f4', float64 '<f8', int32 '<i4', int64 '<i8', uint8 '|u1', bool '|b1'.
// Every malformed input (bad magic, header, dtype, shape, size overflow, truncated data) is a npy_error with a one-line reason;
// the reader never reads or allocates beyond what the file's own size allows.
#pragma once

#include <Eigen/Core>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <type_traits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace kdtool {

struct npy_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class npy_dtype { f16, f32, f64, i32, i64, u8, b1 };

inline const char* npy_dtype_name(npy_dtype d) {
  switch (d) {
    case npy_dtype::f16: return "float16";
    case npy_dtype::f32: return "float32";
    case npy_dtype::f64: return "float64";
    case npy_dtype::i32: return "int32";
    case npy_dtype::i64: return "int64";
    case npy_dtype::u8: return "uint8";
    case npy_dtype::b1: return "bool";
  }
  return "?";
}

inline std::size_t npy_itemsize(npy_dtype d) {
  switch (d) {
    case npy_dtype::f16: return 2;
    case npy_dtype::f32: return 4;
    case npy_dtype::f64: return 8;
    case npy_dtype::i32: return 4;
    case npy_dtype::i64: return 8;
    case npy_dtype::u8:
    case npy_dtype::b1: return 1;
  }
  return 0;
}

struct npy_array {
  npy_dtype dtype = npy_dtype::f32;
  std::vector<std::int64_t> shape;
  std::vector<unsigned char> data;  // raw little-endian elements, C order

  std::int64_t size() const {
    std::int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
  }
  bool is_float() const { return dtype == npy_dtype::f16 || dtype == npy_dtype::f32 || dtype == npy_dtype::f64; }
  bool is_int() const { return dtype == npy_dtype::i32 || dtype == npy_dtype::i64; }

  // Element i converted to double / int64 (no bounds check beyond size()).
  double get_double(std::int64_t i) const {
    const unsigned char* p = data.data() + static_cast<std::size_t>(i) * npy_itemsize(dtype);
    switch (dtype) {
      case npy_dtype::f16: { std::uint16_t b; std::memcpy(&b, p, 2); return double(float(Eigen::numext::bit_cast<Eigen::half>(b))); }
      case npy_dtype::f32: { float f; std::memcpy(&f, p, 4); return f; }
      case npy_dtype::f64: { double f; std::memcpy(&f, p, 8); return f; }
      case npy_dtype::i32: { std::int32_t v; std::memcpy(&v, p, 4); return v; }
      case npy_dtype::i64: { std::int64_t v; std::memcpy(&v, p, 8); return double(v); }
      case npy_dtype::u8:
      case npy_dtype::b1: return *p;
    }
    return 0;
  }
  std::int64_t get_int(std::int64_t i) const {
    const unsigned char* p = data.data() + static_cast<std::size_t>(i) * npy_itemsize(dtype);
    switch (dtype) {
      case npy_dtype::i32: { std::int32_t v; std::memcpy(&v, p, 4); return v; }
      case npy_dtype::i64: { std::int64_t v; std::memcpy(&v, p, 8); return v; }
      case npy_dtype::u8:
      case npy_dtype::b1: return *p;
      default: return static_cast<std::int64_t>(get_double(i));
    }
  }
  std::vector<float> to_float() const {
    std::vector<float> v(static_cast<std::size_t>(size()));
    for (std::int64_t i = 0; i < size(); ++i) v[i] = static_cast<float>(get_double(i));
    return v;
  }
  std::vector<double> to_double() const {
    std::vector<double> v(static_cast<std::size_t>(size()));
    for (std::int64_t i = 0; i < size(); ++i) v[i] = get_double(i);
    return v;
  }
  std::vector<std::int64_t> to_int64() const {
    std::vector<std::int64_t> v(static_cast<std::size_t>(size()));
    for (std::int64_t i = 0; i < size(); ++i) v[i] = get_int(i);
    return v;
  }
};

namespace npy_detail {

inline std::string header_value(const std::string& h, const std::string& key) {
  const std::string k = "'" + key + "'";
  auto pos = h.find(k);
  if (pos == std::string::npos) throw npy_error("header has no " + k);
  pos = h.find(':', pos + k.size());
  if (pos == std::string::npos) throw npy_error("header: no value for " + k);
  ++pos;
  while (pos < h.size() && h[pos] == ' ') ++pos;
  if (pos >= h.size()) throw npy_error("header: no value for " + k);
  std::size_t end;
  if (h[pos] == '\'') {
    end = h.find('\'', pos + 1);
    if (end == std::string::npos) throw npy_error("header: unterminated string for " + k);
    return h.substr(pos + 1, end - pos - 1);
  }
  if (h[pos] == '(') {
    end = h.find(')', pos);
    if (end == std::string::npos) throw npy_error("header: unterminated shape tuple");
    return h.substr(pos, end - pos + 1);
  }
  end = h.find_first_of(",}", pos);
  if (end == std::string::npos) throw npy_error("header: bad value for " + k);
  return h.substr(pos, end - pos);
}

inline std::vector<std::int64_t> parse_shape(const std::string& t) {
  std::vector<std::int64_t> shape;
  std::size_t i = 1;  // after '('
  while (i < t.size()) {
    while (i < t.size() && (t[i] == ' ' || t[i] == ',')) ++i;
    if (i >= t.size() || t[i] == ')') break;
    if (t[i] < '0' || t[i] > '9') throw npy_error("header: bad shape " + t);
    std::int64_t v = 0;
    while (i < t.size() && t[i] >= '0' && t[i] <= '9') {
      if (v > (std::int64_t(1) << 40)) throw npy_error("header: dimension too large in " + t);
      v = v * 10 + (t[i] - '0');
      ++i;
    }
    while (i < t.size() && t[i] == 'L') ++i;
    shape.push_back(v);
    if (shape.size() > 8) throw npy_error("header: more than 8 dimensions");
  }
  return shape;
}

}  // namespace npy_detail

// Parses a whole .npy file held in memory. `what` names the file in error messages.
inline npy_array parse_npy(const unsigned char* buf, std::size_t len, const std::string& what = "array") {
  static const unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (len < 10 || std::memcmp(buf, magic, 6) != 0) throw npy_error(what + ": not a .npy file (bad magic)");
  const int major = buf[6];
  std::size_t hlen, off;
  if (major == 1) {
    hlen = buf[8] | (std::size_t(buf[9]) << 8);
    off = 10;
  } else if (major == 2 || major == 3) {
    if (len < 12) throw npy_error(what + ": truncated header");
    hlen = buf[8] | (std::size_t(buf[9]) << 8) | (std::size_t(buf[10]) << 16) | (std::size_t(buf[11]) << 24);
    off = 12;
  } else {
    throw npy_error(what + ": unsupported .npy format version " + std::to_string(major));
  }
  if (hlen > len - off) throw npy_error(what + ": truncated header");
  const std::string h(reinterpret_cast<const char*>(buf + off), hlen);
  npy_array a;
  const std::string descr = npy_detail::header_value(h, "descr");
  if (descr == "<f2") a.dtype = npy_dtype::f16;
  else if (descr == "<f4") a.dtype = npy_dtype::f32;
  else if (descr == "<f8") a.dtype = npy_dtype::f64;
  else if (descr == "<i4") a.dtype = npy_dtype::i32;
  else if (descr == "<i8") a.dtype = npy_dtype::i64;
  else if (descr == "|u1") a.dtype = npy_dtype::u8;
  else if (descr == "|b1") a.dtype = npy_dtype::b1;
  else throw npy_error(what + ": unsupported dtype '" + descr + "' (need float16/32/64, int32/64, uint8, bool, little-endian)");
  const std::string fo = npy_detail::header_value(h, "fortran_order");
  if (fo.find("False") == std::string::npos) throw npy_error(what + ": Fortran-order arrays are not supported");
  const std::string shp = npy_detail::header_value(h, "shape");
  if (shp.empty() || shp[0] != '(') throw npy_error(what + ": bad shape in header");
  a.shape = npy_detail::parse_shape(shp);
  const std::size_t item = npy_itemsize(a.dtype);
  const std::size_t avail = len - off - hlen;
  // Element count with overflow checks (a zero dimension anywhere makes an empty array), then the exact data size.
  std::size_t count = 1;
  bool zero = false;
  for (auto s : a.shape) {
    if (s == 0) { zero = true; continue; }
    if (count > (std::size_t(1) << 50) / static_cast<std::size_t>(s)) throw npy_error(what + ": shape too large");
    count *= static_cast<std::size_t>(s);
  }
  if (zero) count = 0;
  if (count > avail / item) throw npy_error(what + ": data shorter than its shape says");
  if (count * item != avail) throw npy_error(what + ": data longer than its shape says");
  a.data.assign(buf + off + hlen, buf + off + hlen + count * item);
  return a;
}

inline npy_array load_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw npy_error(path + ": cannot open");
  std::vector<unsigned char> buf((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  return parse_npy(buf.data(), buf.size(), path);
}

// Writes a float32 (or int64 / float64) C-order array as .npy version 1.0.
template <class T>
void save_npy(const std::string& path, const T* data, const std::vector<std::int64_t>& shape) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, std::int64_t>,
                "save_npy: float, double or int64");
  const char* descr = std::is_same_v<T, float> ? "<f4" : std::is_same_v<T, double> ? "<f8" : "<i8";
  std::ostringstream h;
  h << "{'descr': '" << descr << "', 'fortran_order': False, 'shape': (";
  std::size_t n = 1;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    h << shape[i] << (shape.size() == 1 || i + 1 < shape.size() ? "," : "");
    if (i + 1 < shape.size()) h << ' ';
    n *= static_cast<std::size_t>(shape[i]);
  }
  h << "), }";
  std::string hs = h.str();
  while ((10 + hs.size() + 1) % 64 != 0) hs += ' ';
  hs += '\n';
  std::ofstream f(path, std::ios::binary);
  if (!f) throw npy_error(path + ": cannot open for writing");
  const unsigned char pre[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
  f.write(reinterpret_cast<const char*>(pre), 8);
  const unsigned char hl[2] = {static_cast<unsigned char>(hs.size() & 0xff), static_cast<unsigned char>(hs.size() >> 8)};
  f.write(reinterpret_cast<const char*>(hl), 2);
  f.write(hs.data(), static_cast<std::streamsize>(hs.size()));
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(n * sizeof(T)));
  if (!f) throw npy_error(path + ": write failed");
}

}  // namespace kdtool
