// The fused linear + divergence driver (kd/fused_linear.hpp is the public face): logits are formed chunk by chunk from
// hidden states and output weights (Eigen matrix products), run through a backend's row kernels K in the three steps of
// a sharded row (detail/shard_stats.hpp; each vocabulary tile is a shard), and the logits' gradient is pushed through
// the matrix products at once: no [N, V] buffer ever exists.
//
// Per chunk of R rows and tiles of W vocabulary entries (memory: 3 R W values of T plus O(R) per-row state):
//   one tile (W = V, the default): logits once, then the backend's own row kernel on each row (K::row: statistics and
//            gradient, the online form for KL, exactly as kd::divergence_loss) and the backward products: 1 forward
//            product per side plus the 2 backward products, as the unfused path;
//   several tiles: step 1 over the tiles (recomputing each tile's logits), step 2 over them again, step 3 a third time
//            with the backward products: 3 forward products per side, for memory O(R W).
// Logit transform per side (Cohere / Gemma-2): z = c tanh(s a / c) with a = h W^T + b, s = logit_scale, c =
// final_logit_softcapping (0: z = s a). Chain rule: dL/da = s (1 - (z / c)^2) dL/dz.
// Precondition: arguments validated (kd::fused_linear_divergence does it).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "../detail/row_io.hpp"
#include "../detail/row_plan.hpp"
#include "../detail/shard_stats.hpp"
#include "../divergences/registry.hpp"
#include "../fused_linear_options.hpp"
#include "../options.hpp"
#include "../status.hpp"
#include "cpu_driver.hpp"

KD_BEGIN_NAMESPACE

namespace detail::fused {

template <class T>
using mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using cmap = Eigen::Map<const mat<T>, 0, Eigen::OuterStride<>>;
template <class T>
using mmap = Eigen::Map<mat<T>, 0, Eigen::OuterStride<>>;

// The logits of rows [r0, r0 + R) and vocabulary [v0, v0 + W) of head h into z (R x W, contiguous).
template <class T>
void tile_logits(const linear_head<T>& h, std::int64_t r0, std::int64_t R, std::int64_t v0, std::int64_t W,
                 mat<T>& z) {
  const std::int64_t H = h.hidden.cols;
  cmap<T> hs(h.hidden.data + r0 * h.hidden.row_stride, R, H, Eigen::OuterStride<>(h.hidden.row_stride));
  cmap<T> w(h.weight.data + v0 * h.weight.row_stride, W, H, Eigen::OuterStride<>(h.weight.row_stride));
  z.resize(R, W);
  z.noalias() = hs * w.transpose();
  const T s = static_cast<T>(h.logit_scale), c = static_cast<T>(h.softcap);
  for (std::int64_t i = 0; i < R; ++i) {
    T* zi = z.data() + i * W;
    for (std::int64_t j = 0; j < W; ++j) {
      T a = zi[j];
      if (h.bias) a += h.bias[v0 + j];
      a *= s;
      zi[j] = h.softcap > 0.0 ? c * std::tanh(a / c) : a;
    }
  }
}

// dz (R x W) in place: dL/dz -> dL/da, given the tile's transformed logits z.
template <class T>
void chain_transform(const linear_head<T>& h, const mat<T>& z, mat<T>& dz) {
  const T s = static_cast<T>(h.logit_scale), c = static_cast<T>(h.softcap);
  const std::int64_t n = z.size();
  T* g = dz.data();
  const T* zz = z.data();
  if (h.softcap > 0.0) {
    for (std::int64_t i = 0; i < n; ++i) {
      const T u = zz[i] / c;
      g[i] *= s * (T(1) - u * u);
    }
  } else if (h.logit_scale != 1.0) {
    for (std::int64_t i = 0; i < n; ++i) g[i] *= s;
  }
}

// The whole call. Teacher: a head (teacher_head != null) or precomputed logits (teacher_logits).
template <class E, class K, class X, class T>
status run_entry(const X& exec, const divergence& d, const linear_head<T>& sh, const linear_head<T>* th,
                 const teacher_input<T>& tin, const distill_options& opt, const fused_linear_options& fo,
                 loss_result& result, const fused_linear_outputs<T>& out) {
  using F = typename E::functor;
  constexpr int k = F::n_sums;
  const const_rows<T>& tl = tin.x;
  const std::int64_t N = sh.hidden.rows, V = sh.weight.rows, H = sh.hidden.cols;
  const F f0 = E::make(d.param, d.param2);
  const std::int64_t W = fo.tile_vocab > 0 ? std::min(fo.tile_vocab, V) : V;
  const std::int64_t n_tiles = (V + W - 1) / W;
  std::int64_t R = fo.chunk_rows;
  if (R <= 0) R = 256;
  R = std::min(R, std::max<std::int64_t>(N, 1));

  // Row weights and plan. Precomputed teacher rows that are fully masked (all -inf) do not count: found up front, so
  // the plan (the mean's denominator) is final before any gradient is written.
  std::vector<double> weights(static_cast<std::size_t>(N));
  for (std::int64_t r = 0; r < N; ++r) {
    weights[r] = row_weight(opt, r);
    if (!th && weights[r] != 0.0 && all_ninf(tl.data + r * tl.row_stride, V)) weights[r] = 0.0;
  }
  const row_plan plan = make_row_plan(opt, weights.data(), N);
  row_params rp0;
  rp0.inv_t = 1.0 / opt.temperature;
  rp0.check_teacher_norm = !th && tin.kind == input_kind::log_probs && opt.temperature == 1.0;

  std::vector<double> loss(static_cast<std::size_t>(N), 0.0);
  std::vector<row_result> res(static_cast<std::size_t>(N));
  const bool want_grad = out.grad_hidden.data || out.grad_weight.data || out.grad_bias;
  if (out.grad_weight.data)
    for (std::int64_t j = 0; j < V; ++j)
      std::fill(out.grad_weight.data + j * out.grad_weight.row_stride,
                out.grad_weight.data + j * out.grad_weight.row_stride + H, T(0));
  if (out.grad_bias) std::fill(out.grad_bias, out.grad_bias + V, T(0));

  mat<T> zs, zt, dz;
  std::vector<std::array<side_stats, 2>> sides;
  std::vector<std::array<std::int64_t, 2>> hot;  // per row, side: tile * 2^32 + chunk of the row's maximum, or -1
  std::vector<row_stats<F>> st;
  std::vector<shard_sums<k>> acc;
  std::vector<double> ent;  // per row: sum q log q
  using scratch_t = typename K::template scratch<T, T, T>;

  auto logits = [&](std::int64_t r0, std::int64_t m, std::int64_t v0, std::int64_t w) {
    tile_logits(sh, r0, m, v0, w, zs);
    if (th) {
      tile_logits(*th, r0, m, v0, w, zt);
    } else {
      zt.resize(m, w);
      for (std::int64_t i = 0; i < m; ++i)
        std::copy(tl.data + (r0 + i) * tl.row_stride + v0, tl.data + (r0 + i) * tl.row_stride + v0 + w,
                  zt.data() + i * w);
    }
  };
  auto io_of = [&](std::int64_t i, std::int64_t w, T* g) {
    return row_io<T, T, T>{zs.data() + i * w, zt.data() + i * w, g, nullptr, w};
  };
  auto for_rows = [&](std::int64_t m, std::int64_t w, auto fn) {
    run_rows(exec, m, w, [&](std::int64_t b, std::int64_t e) {
      scratch_t sc(w);
      for (std::int64_t i = b; i < e; ++i) fn(i, sc);
    });
  };

  // dz (dL/dz of rows [r0, r0 + m), vocabulary [v0, v0 + w)) through the transform and the backward products.
  auto backward_tile = [&](std::int64_t r0, std::int64_t m, std::int64_t v0, std::int64_t w, bool first_tile) {
    chain_transform(sh, zs, dz);
    cmap<T> hs(sh.hidden.data + r0 * sh.hidden.row_stride, m, H, Eigen::OuterStride<>(sh.hidden.row_stride));
    cmap<T> wt(sh.weight.data + v0 * sh.weight.row_stride, w, H, Eigen::OuterStride<>(sh.weight.row_stride));
    if (out.grad_hidden.data) {
      mmap<T> gh(out.grad_hidden.data + r0 * out.grad_hidden.row_stride, m, H,
                 Eigen::OuterStride<>(out.grad_hidden.row_stride));
      if (first_tile) gh.noalias() = dz * wt;
      else gh.noalias() += dz * wt;
    }
    if (out.grad_weight.data) {
      mmap<T> gw(out.grad_weight.data + v0 * out.grad_weight.row_stride, w, H,
                 Eigen::OuterStride<>(out.grad_weight.row_stride));
      gw.noalias() += dz.transpose() * hs;
    }
    if (out.grad_bias)
      for (std::int64_t i = 0; i < m; ++i)
        for (std::int64_t j = 0; j < w; ++j) out.grad_bias[v0 + j] += dz(i, j);
  };

  for (std::int64_t r0 = 0; r0 < N; r0 += R) {
    const std::int64_t m = std::min(R, N - r0);
    sides.assign(static_cast<std::size_t>(m), {});
    hot.assign(static_cast<std::size_t>(m), {-1, -1});
    st.assign(static_cast<std::size_t>(m), {});
    acc.assign(static_cast<std::size_t>(m), {});
    ent.assign(static_cast<std::size_t>(m), 0.0);
    if (n_tiles == 1) {
      // The whole vocabulary in one tile: the backend's own row kernel, as kd::divergence_loss runs it (statistics and
      // gradient in one call; KL's online two-pass form), on the buffered logits.
      logits(r0, m, 0, V);
      if (want_grad) dz.resize(m, V);
      for_rows(m, V, [&](std::int64_t i, scratch_t& sc) {
        const std::int64_t r = r0 + i;
        T* g = want_grad ? dz.data() + i * V : nullptr;
        if (weights[r] == 0.0 || plan.empty_mean) {
          if (g) std::fill(g, g + V, T(0));
          return;
        }
        row_params rp = rp0;
        rp.c = weights[r] * plan.scale * rp0.inv_t;
        const row_io<T, T, T> x = io_of(i, V, g);
        row_result rr = K::template row<E>(f0, x, rp, sc);
        if (rr.error == row_error::support_mismatch) rr.error = mismatch_side(x.zs, x.zt, V, !E::x_is_student);
        if (rr.error != row_error::none && g)
          std::fill(g, g + V, rr.error == row_error::masked ? T(0) : std::numeric_limits<T>::quiet_NaN());
        res[r] = rr;
        const double l = rr.error == row_error::none && rr.loss < 0.0 ? 0.0 : rr.loss;
        loss[r] = rr.error == row_error::masked ? 0.0 : l * weights[r] * plan.loss_scale;
        if (out.student_entropy) {
          const lse_result ls = K::student_lse(x.zs, V, rp0.inv_t, sc);
          double e = 0.0;
          for (std::int64_t j = 0; j < V; ++j) {
            const double lq = (static_cast<double>(x.zs[j]) * rp0.inv_t - ls.lse.max) - ls.lse.log_sum;
            if (lq > -std::numeric_limits<double>::infinity()) e += std::exp(lq) * lq;  // q = 0 adds 0, not 0 * -inf
          }
          ent[i] = e;
        }
      });
      if (out.student_entropy)
        for (std::int64_t i = 0; i < m; ++i)
          out.student_entropy[r0 + i] = weights[r0 + i] == 0.0 ? 0.0f : static_cast<float>(-ent[i]);
      if (want_grad) backward_tile(r0, m, 0, V, true);
      continue;
    }
    // Several tiles. Step 1: side statistics, merged over the tiles in order.
    for (std::int64_t t = 0; t < n_tiles; ++t) {
      const std::int64_t v0 = t * W, w = std::min(W, V - v0);
      logits(r0, m, v0, w);
      for_rows(m, w, [&](std::int64_t i, scratch_t&) {
        if (weights[r0 + i] == 0.0) return;
        const row_io<T, T, T> x = io_of(i, w, nullptr);
        const side_stats a[2] = {K::side_stats_of(x.zs, w, rp0.inv_t), K::side_stats_of(x.zt, w, rp0.inv_t)};
        for (int sd = 0; sd < 2; ++sd) {
          const double before = sides[i][sd].max;
          if (t == 0) sides[i][sd] = a[sd];
          else merge_side(sides[i][sd], a[sd]);
          if (a[sd].max > before || t == 0) hot[i][sd] = a[sd].max_chunk < 0 ? -1 : (t << 32) + a[sd].max_chunk;
        }
      });
    }
    for (std::int64_t i = 0; i < m; ++i) {
      if (weights[r0 + i] == 0.0) continue;
      st[i].res = finish_sides(sides[i][0], sides[i][1], rp0, st[i].s, st[i].t);
    }
    // Step 2: the functor's sums (and the student entropy), tile by tile (the last tile's logits are still buffered).
    for (std::int64_t t = n_tiles - 1; t >= 0; --t) {
      const std::int64_t v0 = t * W, w = std::min(W, V - v0);
      if (t != n_tiles - 1) logits(r0, m, v0, w);
      for_rows(m, w, [&](std::int64_t i, scratch_t& sc) {
        if (weights[r0 + i] == 0.0 || st[i].res.error != row_error::none) return;
        const auto hs = hot[i][0] >> 32 == t ? hot[i][0] & 0xffffffff : -1;
        const auto ht = hot[i][1] >> 32 == t ? hot[i][1] & 0xffffffff : -1;
        K::template shard_sums_of<E>(f0, io_of(i, w, nullptr), rp0, st[i], hs, ht, acc[i], sc);
        if (out.student_entropy) {
          const T* z = zs.data() + i * w;
          double e = 0.0;
          for (std::int64_t j = 0; j < w; ++j) {
            const double lq = (static_cast<double>(z[j]) * rp0.inv_t - st[i].s.max) - st[i].s.log_sum;
            if (lq > -std::numeric_limits<double>::infinity()) e += std::exp(lq) * lq;
          }
          ent[i] += e;
        }
      });
    }
    for (std::int64_t i = 0; i < m; ++i) {
      const std::int64_t r = r0 + i;
      if (out.student_entropy) out.student_entropy[r] = weights[r] == 0.0 ? 0.0f : static_cast<float>(-ent[i]);
      if (weights[r] == 0.0) continue;
      row_stats<F>& s = st[i];
      if (s.res.error == row_error::none) {
        s.f = f0;
        s.f.finish(acc[i].sums, acc[i].mismatch);
        s.res.loss = s.f.loss;
        if (!std::isfinite(s.res.loss)) s.res = {s.res.loss, mismatch_error(acc[i], !E::x_is_student), s.res.loss};
      }
      res[r] = s.res;
      const double l = s.res.error == row_error::none && s.res.loss < 0.0 ? 0.0 : s.res.loss;
      loss[r] = l * weights[r] * plan.loss_scale;
    }
    if (!want_grad) continue;
    // Step 3: gradients tile by tile (the first tile's logits are buffered), through the transform and the products.
    for (std::int64_t t = 0; t < n_tiles; ++t) {
      const std::int64_t v0 = t * W, w = std::min(W, V - v0);
      if (t != 0) logits(r0, m, v0, w);
      dz.resize(m, w);
      for_rows(m, w, [&](std::int64_t i, scratch_t& sc) {
        T* g = dz.data() + i * w;
        const std::int64_t r = r0 + i;
        if (weights[r] == 0.0 || plan.empty_mean) {
          std::fill(g, g + w, T(0));
          return;
        }
        if (st[i].res.error != row_error::none) {  // a masked row (every logit -inf) counts for nothing, as in one tile
          std::fill(g, g + w, st[i].res.error == row_error::masked ? T(0) : std::numeric_limits<T>::quiet_NaN());
          return;
        }
        row_params rp = rp0;
        rp.c = weights[r] * plan.scale * rp0.inv_t;
        K::template grad<E>(st[i], io_of(i, w, g), rp, sc);
      });
      backward_tile(r0, m, v0, w, t == 0);
    }
  }

  return reduce_rows(
      loss.data(), N,
      [&](std::int64_t r) {
        return weights[r] == 0.0 ? std::make_pair(row_error::none, 0.0) : std::make_pair(res[r].error, res[r].value);
      },
      plan, out.per_row, result);
}

template <class K, class X, class T>
status run(const X& exec, const divergence& d0, const linear_head<T>& sh, const linear_head<T>* th,
           const teacher_input<T>& tl, const distill_options& opt, const fused_linear_options& fo,
           loss_result& result, const fused_linear_outputs<T>& out) {
  const divergence d = canonical_divergence(d0);
  return visit_divergence<status>(
      d.kind, [&](auto e) { return run_entry<decltype(e), K>(exec, d, sh, th, tl, opt, fo, result, out); },
      make_error(errc::invalid_argument, "divergence", "unknown divergence kind"));
}

}  // namespace detail::fused
KD_END_NAMESPACE
