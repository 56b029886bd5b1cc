// libFuzzer target for kd/softmax.hpp: softmax, log_softmax, log_sum_exp, softmax_backward and log_softmax_backward, over
// every input element type (float, double, bfloat16, half) and output type (float, double, the input type: in place),
// strided rows, temperatures, -inf masks, NaN / +inf / type-max / subnormal values and malformed views.
// Invariants:
//  1. Invalid arguments (an independent predicate from the documented contract) <=> errc::invalid_argument naming the
//     argument, with every buffer byte-identical to before.
//  2. Forward, status ok: softmax entries in [0, 1], masked (-inf) entries exactly 0, each row sums to 1 within
//     (n + 2) eps_G + 16 n 2^-53 (every entry is exp(l) rounded once to G; the double log-sum-exp errs by n 2^-53); a fully
//     masked row is all 0 (softmax) / all -inf (log_softmax). (The fuzzer found rows off by 3e-13 when log-probs were
//     x/T - (max + log s); kd now computes (x/T - max) - log s, exact whatever |x| / T.)
//     log_softmax entries <= 0, masked entries -inf.
//     A NaN / +inf row gives errc::non_finite_input naming the first such row; that row is NaN, the others are written as
//     usual. In place equals out of place bitwise.
//  3. Backward: each dx_j equals the formula recomputed in double from the same stored y and dy, within
//     eps_G |ref_j| + 8 n 2^-53 (|y_j dy_j| + |y_j| sum_i |y_i dy_i|) / T (softmax) and the analogue for log_softmax;
//     masked entries get exactly 0.
#include "fuzz_common.hpp"

#include <cinttypes>

using namespace kdfuzz;

namespace {

const double kTemperatures[] = {1.0, 2.0, 0.05, 1e-3, 100.0, 0.0, -1.0, qnan, inf, 1e-310, 1e-300, 0.5};

template <class T, class G>
void run_case(reader& in) {
  const int op = in.u8() % 5;  // 0 softmax, 1 log_softmax, 2 log_sum_exp, 3 softmax_backward, 4 log_softmax_backward
  const std::int64_t rows = in.range(0, 5);
  const std::int64_t cols = in.range(1, 33);
  const std::int64_t xs = cols + (in.flag() ? in.range(0, 2) : 0);
  const std::int64_t ys = cols + (in.flag() ? in.range(0, 2) : 0);
  const bool in_place = std::is_same_v<T, G> && in.u8() % 3 == 0;
  const std::uint8_t cb = in.u8();
  const int corrupt = cb < 200 ? 0 : 1 + cb % 6;
  const double temp = draw_param(in, kTemperatures, sizeof kTemperatures / sizeof kTemperatures[0]);
  const special sp = static_cast<special>(in.u8() % 3);
  const double scale = (in.u8() % 2) ? 4.0 : 1000.0;

  buffer<T> bx(rows, cols, xs, qnan);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t j = 0; j < cols; ++j) bx.at(r, j) = kd::from_double<T>(draw_value<T>(in, scale, sp));
  buffer<G> by(rows, cols, ys, -6.0);
  std::vector<float> lse(static_cast<std::size_t>(rows), -6.0f);

  kd::const_rows<T> X(bx.data(), rows, cols, xs);
  kd::mut_rows<G> Y(by.data(), rows, cols, ys);
  if (in_place) Y = kd::mut_rows<G>(reinterpret_cast<G*>(bx.data()), rows, cols, xs);
  float* lse_out = lse.empty() ? nullptr : lse.data();

  // Backward: y (and dy) are T-typed inputs; y = softmax / log_softmax of X computed by kd (so rows are distributions).
  buffer<T> bdy(rows, cols, xs, qnan);
  buffer<T> bys(rows, cols, xs, qnan);
  if (op >= 3) {
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t j = 0; j < cols; ++j) bdy.at(r, j) = kd::from_double<T>(draw_value<T>(in, 2.0, special::finite_only));
    kd::mut_rows<T> ys_view(bys.data(), rows, cols, xs);
    kd::status pre = op == 3 ? kd::softmax(X, ys_view, 1.0) : kd::log_softmax(X, ys_view, 1.0);
    (void)pre;  // NaN rows stay NaN (the backward does not check values)
  }
  kd::const_rows<T> Ys(bys.data(), rows, cols, xs), DY(bdy.data(), rows, cols, xs);
  if (op >= 3 && in_place) Y = kd::mut_rows<G>(reinterpret_cast<G*>(bdy.data()), rows, cols, xs);  // dx over dy

  switch (corrupt) {
    case 1: X.rows = -1, Ys.rows = -1; break;
    case 2: X.cols = 0, Ys.cols = 0; break;
    case 3: X.row_stride = cols - 1, Ys.row_stride = cols - 1; break;
    case 4: X.data = nullptr, Ys.data = nullptr; break;
    case 5: Y.cols = cols + 1; break;
    case 6: Y.rows = rows + 1; if (op == 2) lse_out = nullptr; break;
    default: break;
  }

  // ---- the contract ----
  auto view_ok = [](const void* d, std::int64_t r, std::int64_t c, std::int64_t s) {
    return r >= 0 && c >= 1 && s >= c && (r == 0 || d != nullptr);
  };
  bool invalid = !(std::isfinite(temp) && temp > 0.0 && std::isfinite(1.0 / temp));
  const kd::const_rows<T>& in_view = op >= 3 ? Ys : X;
  invalid |= !view_ok(in_view.data, in_view.rows, in_view.cols, in_view.row_stride);
  if (op == 2) {
    invalid |= X.rows > 0 && lse_out == nullptr;
  } else {
    const kd::const_rows<T>& alias_in = op >= 3 ? DY : X;  // the output may alias exactly this input
    invalid |= !view_ok(Y.data, Y.rows, Y.cols, Y.row_stride);
    invalid |= Y.rows != in_view.rows || Y.cols != in_view.cols;
    const span ysp = span_of<G>(Y.data, Y.rows, Y.cols, Y.row_stride);
    const span asp = span_of<T>(alias_in.data, alias_in.rows, alias_in.cols, alias_in.row_stride);
    const bool same = static_cast<const void*>(Y.data) == static_cast<const void*>(alias_in.data) &&
                      std::is_same_v<T, G> && Y.rows == alias_in.rows && Y.cols == alias_in.cols &&
                      Y.row_stride == alias_in.row_stride;
    invalid |= ysp.intersects(asp) && !same;
  }

  const auto x_before = bx.bytes(), y_before = by.bytes(), dy_before = bdy.bytes(), ys_before = bys.bytes();
  const auto l_before = bytes_of(lse.data(), lse.size());
  kd::status st;
  switch (op) {
    case 0: st = kd::softmax(X, Y, temp); break;
    case 1: st = kd::log_softmax(X, Y, temp); break;
    case 2: st = kd::log_sum_exp(X, temp, lse_out); break;
    case 3: st = kd::softmax_backward(Ys, DY, Y, temp); break;
    default: st = kd::log_softmax_backward(Ys, DY, Y, temp); break;
  }
  if (invalid) {
    KD_FUZZ_CHECK(st.code == kd::errc::invalid_argument, "op %d: expected invalid_argument, got %s (corruption %d)", op,
                  st.to_string().c_str(), corrupt);
    KD_FUZZ_CHECK(st.argument && *st.argument, "invalid_argument must name the argument");
    KD_FUZZ_CHECK(bx.bytes() == x_before && by.bytes() == y_before && bdy.bytes() == dy_before &&
                      bys.bytes() == ys_before && bytes_of(lse.data(), lse.size()) == l_before,
                  "op %d: a buffer changed on an argument error", op);
    return;
  }
  KD_FUZZ_CHECK(st.code != kd::errc::invalid_argument, "op %d: valid call rejected: %s", op, st.to_string().c_str());

  // Pre-call input values in double (X may have been overwritten in place).
  buffer<T> bx0 = bx;
  if (!x_before.empty()) std::memcpy(static_cast<void*>(bx0.v.data()), x_before.data(), x_before.size());
  const double n = static_cast<double>(cols);
  if (op <= 2) {
    std::int64_t first_bad = -1;
    for (std::int64_t r = 0; r < rows && first_bad < 0; ++r)
      for (std::int64_t j = 0; j < cols; ++j) {
        const double v = kd::to_double(bx0.at(r, j));
        if (std::isnan(v) || v == inf) { first_bad = r; break; }
      }
    double max_abs = 0.0;
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t j = 0; j < cols; ++j)
        if (std::isfinite(kd::to_double(bx0.at(r, j)))) max_abs = std::max(max_abs, std::abs(kd::to_double(bx0.at(r, j))));
    if (max_abs / temp < 1e300) {  // x / T does not overflow double
      if (first_bad < 0) KD_FUZZ_CHECK(st.ok(), "op %d: finite inputs gave %s", op, st.to_string().c_str());
      else
        KD_FUZZ_CHECK(st.code == kd::errc::non_finite_input && st.row == first_bad, "op %d: expected non_finite row %" PRId64
                      ", got %s", op, first_bad, st.to_string().c_str());
    }
    if (op == 2) return;
    for (std::int64_t r = 0; r < rows; ++r) {
      const G* y = Y.row(r);
      bool masked_row = true;
      for (std::int64_t j = 0; j < cols; ++j) masked_row &= kd::to_double(bx0.at(r, j)) == -inf;
      bool bad_row = false;
      for (std::int64_t j = 0; j < cols; ++j) {
        const double v = kd::to_double(bx0.at(r, j));
        bad_row |= std::isnan(v) || v == inf;
      }
      if (bad_row) {
        if (max_abs / temp < 1e300)
          for (std::int64_t j = 0; j < cols; ++j) KD_FUZZ_CHECK(std::isnan(kd::to_double(y[j])), "bad row not NaN");
        continue;
      }
      if (max_abs / temp >= 1e300) continue;
      double sum = 0.0;
      for (std::int64_t j = 0; j < cols; ++j) {
        const double v = kd::to_double(y[j]);
        const bool masked = kd::to_double(bx0.at(r, j)) == -inf;
        if (op == 0) {
          KD_FUZZ_CHECK(v >= 0.0 && v <= 1.0, "softmax entry %g outside [0, 1]", v);
          if (masked) KD_FUZZ_CHECK(v == 0.0, "masked softmax entry %g", v);
          sum += v;
        } else {
          KD_FUZZ_CHECK(v <= 0.0 && !std::isnan(v), "log_softmax entry %g > 0", v);
          if (masked) KD_FUZZ_CHECK(v == -inf, "masked log_softmax entry %g", v);
        }
      }
      if (op == 0) {
        if (masked_row) KD_FUZZ_CHECK(sum == 0.0, "fully masked softmax row sums to %g", sum);
        else
          KD_FUZZ_CHECK(std::abs(sum - 1.0) <=
                            (n + 2.0) * type_eps<G>() + 16.0 * n * 0x1p-53 + n * type_denorm_min<G>(),
                        "softmax row %" PRId64 " sums to 1 %+.3g", r, sum - 1.0);
      }
    }
    return;
  }
  // Backward: recompute in double from the same stored y and dy.
  for (std::int64_t r = 0; r < rows; ++r) {
    const T *y = bys.data() + r * xs, *dy = reinterpret_cast<const T*>(dy_before.data()) + r * xs;
    double dot = 0.0, dot_abs = 0.0, sum = 0.0;
    bool finite_row = true;
    for (std::int64_t j = 0; j < cols; ++j) {
      const double yj = kd::to_double(y[j]), dyj = kd::to_double(dy[j]);
      finite_row &= !std::isnan(yj);
      if (op == 3 && yj != 0.0) dot += yj * dyj, dot_abs += std::abs(yj * dyj);
      if (op == 4 && yj != -inf) sum += dyj, dot_abs += std::abs(dyj);
    }
    if (!finite_row) continue;
    for (std::int64_t j = 0; j < cols; ++j) {
      const double yj = kd::to_double(y[j]), dyj = kd::to_double(dy[j]);
      const double got = kd::to_double(Y.row(r)[j]);
      double ref, err;
      if (op == 3) {
        ref = yj == 0.0 ? 0.0 : yj * (dyj - dot) / temp;
        err = 8.0 * n * 0x1p-53 * (std::abs(yj * dyj) + std::abs(yj) * dot_abs) / temp;
      } else {
        ref = yj == -inf ? 0.0 : (dyj - std::exp(yj) * sum) / temp;
        err = 8.0 * n * 0x1p-53 * (std::abs(dyj) + std::exp(yj) * dot_abs) / temp;
      }
      if (std::isnan(err)) err = inf;  // 0 * inf when a sum of |dy| overflowed: no usable bound for this entry
      if (yj == (op == 3 ? 0.0 : -inf)) KD_FUZZ_CHECK(got == 0.0, "masked entry has gradient %g", got);
      if (!std::isfinite(ref) || std::abs(ref) > type_max<G>() * 0.5) continue;
      KD_FUZZ_CHECK(got == ref || std::abs(got - ref) <= type_eps<G>() * std::abs(ref) + err + type_denorm_min<G>(),
                    "op %d: dx[%" PRId64 ",%" PRId64 "] = %.9g, double formula %.17g (%s -> %s, T %g, in place %d)", op,
                    r, j, got, ref, kd::dtype_name<T>(), kd::dtype_name<G>(), temp, int(in_place));
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  reader in(data, size);
  const int ti = in.u8(), gi = in.u8() % 3;
  with_dtype(ti, [&](auto tag) {
    using T = decltype(tag);
    if (gi == 0) run_case<T, float>(in);
    else if (gi == 1) run_case<T, double>(in);
    else run_case<T, T>(in);
  });
  return 0;
}
