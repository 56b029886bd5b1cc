// Completing gradients over padded vocabularies (docs/conventions.md, "Different vocabulary sizes").
//
// kd's losses read and write only the `cols` columns of a row view; a padded vocabulary is passed as cols = the true
// vocabulary and row_stride = the padded width, so the gradient's padding columns [cols, row_stride) are left as they
// were. An optimizer that reads the whole padded tensor needs them to be 0 (the loss does not depend on them); this helper
// writes those zeros.
#pragma once

#include <algorithm>
#include <cstdint>

#include "status.hpp"
#include "tensor.hpp"

KD_BEGIN_NAMESPACE

// Writes 0 to the columns [grad.cols, padded_cols) of every row of `grad`; columns [0, cols) and [padded_cols, row_stride)
// are not touched.
//   grad         mut_rows<G> of rows x cols (the true vocabulary), row_stride >= padded_cols; G = float, double,
//                kd::bfloat16 or kd::half. Row r's padding is grad.data + r * row_stride + [cols, padded_cols), so the
//                buffer must hold (rows - 1) * row_stride + padded_cols elements (a [rows, padded_cols] tensor with
//                row_stride = padded_cols: the usual case is padded_cols == row_stride).
//   padded_cols  the padded vocabulary width, cols <= padded_cols <= row_stride (== cols: nothing to do).
// Errors (kd::status, errc::invalid_argument, nothing written): "grad" when rows < 0, cols < 1, row_stride < cols or data
// is null with rows > 0; "padded_cols" when padded_cols < cols or > row_stride.
template <class G>
status zero_padding_columns(mut_rows<G> grad, std::int64_t padded_cols) {
  static_assert(is_element_v<G>, "kd::zero_padding_columns: G must be float, double, kd::bfloat16 or kd::half");
  if (grad.rows < 0) return make_error(errc::invalid_argument, "grad", "rows must be >= 0", double(grad.rows));
  if (grad.cols < 1) return make_error(errc::invalid_argument, "grad", "cols must be >= 1", double(grad.cols));
  if (grad.row_stride < grad.cols)
    return make_error(errc::invalid_argument, "grad", "row_stride must be >= cols", double(grad.row_stride));
  if (grad.rows > 0 && grad.data == nullptr) return make_error(errc::invalid_argument, "grad", "data is null");
  if (padded_cols < grad.cols || padded_cols > grad.row_stride)
    return make_error(errc::invalid_argument, "padded_cols", "must be in [cols, row_stride]", double(padded_cols));
  for (std::int64_t r = 0; r < grad.rows; ++r) {
    G* row = grad.row(r);
    std::fill(row + grad.cols, row + padded_cols, from_float<G>(0.0f));
  }
  return ok_status();
}

KD_END_NAMESPACE
