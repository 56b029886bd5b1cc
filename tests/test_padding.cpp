// kd::zero_padding_columns (issue "Correctness round" 3.6): the gradient of a padded vocabulary (row_stride > cols) is
// written only on the view's cols columns; the helper completes it with zeros on the padding columns.
#include <catch2/catch.hpp>

#include <kd/forward_kl.hpp>
#include <kd/padding.hpp>

#include <string>
#include <vector>

TEST_CASE("zero_padding_columns completes a padded-vocabulary gradient", "[padding]") {
  // rows 3, true vocabulary 5, padded width 8: logits [3, 8] whose last 3 columns are padding.
  const std::int64_t rows = 3, V = 5, W = 8;
  std::vector<float> zs(rows * W), zt(rows * W), g(rows * W, 777.f);
  for (std::int64_t i = 0; i < rows * W; ++i) {
    zs[i] = static_cast<float>((i * 7) % 5) * 0.5f;
    zt[i] = static_cast<float>((i * 3) % 4) * 0.7f;
  }
  kd::distill_options o;
  kd::loss_result r;
  kd::distill_outputs<float> out;
  out.grad_student = kd::mut_rows<float>(g.data(), rows, V, W);
  REQUIRE(kd::forward_kl(kd::student_logits(zs.data(), rows, V, W), kd::teacher_logits(zt.data(), rows, V, W), o, r, out)
              .ok());
  // the divergence writes columns [0, V) only: the padding still holds 777 (what the helper is for)
  for (std::int64_t row = 0; row < rows; ++row)
    for (std::int64_t j = V; j < W; ++j) REQUIRE(g[row * W + j] == 777.f);
  const std::vector<float> before = g;
  REQUIRE(kd::zero_padding_columns(out.grad_student, W).ok());
  for (std::int64_t row = 0; row < rows; ++row)
    for (std::int64_t j = 0; j < W; ++j) {
      INFO(row << ", " << j);
      CHECK(g[row * W + j] == (j < V ? before[row * W + j] : 0.0f));
    }
  // padded_cols == cols: nothing to do; a contiguous view: nothing to do
  REQUIRE(kd::zero_padding_columns(out.grad_student, V).ok());
  REQUIRE(kd::zero_padding_columns(kd::mut_rows<float>(g.data(), rows * W, 1), 1).ok());
}

TEST_CASE("zero_padding_columns: 16-bit and double gradients, a stride wider than the padded width", "[padding]") {
  // stride 10, padded vocabulary 7, true vocabulary 4: columns [4, 7) are zeroed, [7, 10) (another tensor) are not.
  std::vector<kd::bfloat16> b(2 * 10, kd::bfloat16(5.0f));
  REQUIRE(kd::zero_padding_columns(kd::mut_rows<kd::bfloat16>(b.data(), 2, 4, 10), 7).ok());
  std::vector<double> d(2 * 10, 5.0);
  REQUIRE(kd::zero_padding_columns(kd::mut_rows<double>(d.data(), 2, 4, 10), 7).ok());
  for (int r = 0; r < 2; ++r)
    for (int j = 0; j < 10; ++j) {
      const float want = (j >= 4 && j < 7) ? 0.0f : 5.0f;
      CHECK(static_cast<float>(b[r * 10 + j]) == want);
      CHECK(d[r * 10 + j] == want);
    }
  // zero rows: ok, nothing written (data may be null)
  CHECK(kd::zero_padding_columns(kd::mut_rows<kd::half>(nullptr, 0, 4, 8), 8).ok());
}

TEST_CASE("zero_padding_columns: argument errors name the argument and write nothing", "[padding]") {
  std::vector<float> g(2 * 8, 777.f);
  auto expect = [&](kd::mut_rows<float> v, std::int64_t padded, const char* arg) {
    const kd::status st = kd::zero_padding_columns(v, padded);
    INFO(st.to_string());
    CHECK(st.code == kd::errc::invalid_argument);
    CHECK(std::string(st.argument) == arg);
    for (float x : g) REQUIRE(x == 777.f);
  };
  expect(kd::mut_rows<float>(g.data(), 2, 5, 8), 4, "padded_cols");   // < cols
  expect(kd::mut_rows<float>(g.data(), 2, 5, 8), 9, "padded_cols");   // > row_stride
  expect(kd::mut_rows<float>(g.data(), 2, 5, 4), 5, "grad");          // row_stride < cols
  expect(kd::mut_rows<float>(nullptr, 2, 5, 8), 8, "grad");           // null data
  expect(kd::mut_rows<float>(g.data(), -1, 5, 8), 8, "grad");         // rows < 0
  expect(kd::mut_rows<float>(g.data(), 2, 0, 8), 8, "grad");          // cols < 1
}
