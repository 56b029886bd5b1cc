// The kd tool's .npy reader/writer: round trips and every malformed-file class gives a one-line npy_error.
#include <catch2/catch.hpp>

#include <cstdio>
#include <string>

#include "npy.hpp"

using kdtool::npy_error;

namespace {

std::vector<unsigned char> make_npy(const std::string& header_dict, std::size_t data_bytes, int version = 1) {
  std::string h = header_dict;
  const std::size_t pre = version == 1 ? 10 : 12;
  while ((pre + h.size() + 1) % 64) h += ' ';
  h += '\n';
  std::vector<unsigned char> b = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<unsigned char>(version), 0};
  if (version == 1) {
    b.push_back(h.size() & 0xff);
    b.push_back(h.size() >> 8);
  } else {
    for (int i = 0; i < 4; ++i) b.push_back((h.size() >> (8 * i)) & 0xff);
  }
  b.insert(b.end(), h.begin(), h.end());
  b.resize(b.size() + data_bytes, 0);
  return b;
}

}  // namespace

TEST_CASE("npy round trip float32 and int64", "[npy]") {
  const std::string path = "test_npy_roundtrip.npy";
  std::vector<float> v = {1.5f, -2.f, 3.25f, 0.f, 7.f, -INFINITY};
  kdtool::save_npy(path, v.data(), {2, 3});
  auto a = kdtool::load_npy(path);
  CHECK(a.dtype == kdtool::npy_dtype::f32);
  CHECK(a.shape == std::vector<std::int64_t>{2, 3});
  CHECK(a.to_float() == v);
  std::vector<std::int64_t> iv = {5, -100, 7};
  kdtool::save_npy(path, iv.data(), {3});
  auto b = kdtool::load_npy(path);
  CHECK(b.shape == std::vector<std::int64_t>{3});
  CHECK(b.to_int64() == iv);
  std::remove(path.c_str());
}

TEST_CASE("npy parses versions 1 and 2, float16 and bool", "[npy]") {
  auto f16 = make_npy("{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }", 4, 2);
  f16[f16.size() - 4] = 0x00;
  f16[f16.size() - 3] = 0x3c;  // 1.0 in float16
  auto a = kdtool::parse_npy(f16.data(), f16.size());
  CHECK(a.get_double(0) == 1.0);
  CHECK(a.get_double(1) == 0.0);
  auto bl = make_npy("{'descr': '|b1', 'fortran_order': False, 'shape': (1, 3), }", 3);
  CHECK(kdtool::parse_npy(bl.data(), bl.size()).size() == 3);
  auto empty = make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 0), }", 0);  // a zero dimension anywhere
  CHECK(kdtool::parse_npy(empty.data(), empty.size()).size() == 0);
  auto empty3 = make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 0, 4), }", 0);
  CHECK(kdtool::parse_npy(empty3.data(), empty3.size()).shape == std::vector<std::int64_t>{2, 0, 4});
  auto scalar = make_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (), }", 8);
  CHECK(kdtool::parse_npy(scalar.data(), scalar.size()).size() == 1);
}

TEST_CASE("malformed npy files are rejected with a reason", "[npy][errors]") {
  auto expect = [](std::vector<unsigned char> b, const std::string& fragment) {
    try {
      kdtool::parse_npy(b.data(), b.size(), "x.npy");
      FAIL("accepted a malformed file, expected: " << fragment);
    } catch (const npy_error& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(fragment) != std::string::npos);
    }
  };
  expect({'n', 'o', 'p', 'e', 0, 0, 0, 0, 0, 0, 0}, "bad magic");
  expect(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 23), "shorter");
  expect(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 25), "longer");
  expect(make_npy("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", 8), "unsupported dtype");
  expect(make_npy("{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }", 16), "unsupported dtype");
  expect(make_npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", 8), "Fortran");
  expect(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (999999999999, 999999999999), }", 8), "");
  expect(make_npy("{'descr': '<f4', 'fortran_order': False, }", 8), "shape");
  expect(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 8, 7), "version");
  auto trunc = make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 8);
  trunc.resize(20);
  expect(trunc, "truncated");
  CHECK_THROWS_AS(kdtool::load_npy("/nonexistent/file.npy"), npy_error);
}
