// Fused linear + divergence (kd/fused_linear.hpp) against the unfused path in the same run: logits [N, V] of both models
// by Eigen matrix products, kd::divergence_loss (gradient in place), then the two backward products. Reverse KL, the
// student and the teacher both heads with H = 512, float32, the default backend, Eigen's OpenMP threads.
// Counters: peak_extra_MB (the buffers each path allocates beyond inputs and outputs: the unfused path's two [N, V]
// logits, the fused path's 3 chunk_rows x tile_vocab tile buffers), GFLOP/s over the 4 products' 8 N V H flops, and
// gemm_GFLOPs, the rate of one [N, H] x [H, V] product measured in the same run (BM_gemm).
//   build/bench/bench_fused_linear --benchmark_filter='/2048/32000'   (args: N, V[, tile_vocab (0: V), chunk_rows])
#include <benchmark/benchmark.h>

#include <kd/fused_linear.hpp>
#include <kd/reverse_kl.hpp>

#include <random>
#include <vector>

namespace {

using mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct data {
  std::int64_t N, H, V;
  mat hs, ws, ht, wt;
  data(std::int64_t n, std::int64_t h, std::int64_t v) : N(n), H(h), V(v) {
    std::mt19937 g(1);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    auto fill = [&](mat& m, std::int64_t r, std::int64_t c, float s) {
      m.resize(r, c);
      for (std::int64_t i = 0; i < m.size(); ++i) m.data()[i] = s * nd(g);
    };
    fill(hs, N, H, 1.0f);
    fill(ws, V, H, 0.1f);
    fill(ht, N, H, 1.0f);
    fill(wt, V, H, 0.15f);
  }
};

void counters(benchmark::State& st, const data& d, double extra_bytes) {
  st.counters["peak_extra_MB"] = extra_bytes / 1e6;
  st.counters["GFLOPs"] = benchmark::Counter(8.0 * d.N * d.V * d.H * 1e-9 * st.iterations(),
                                             benchmark::Counter::kIsRate);
}

void BM_gemm(benchmark::State& st) {
  data d(st.range(0), 512, st.range(1));
  mat z(d.N, d.V);
  for (auto _ : st) {
    z.noalias() = d.hs * d.ws.transpose();
    benchmark::DoNotOptimize(z.data());
  }
  st.counters["gemm_GFLOPs"] = benchmark::Counter(2.0 * d.N * d.V * d.H * 1e-9 * st.iterations(),
                                                  benchmark::Counter::kIsRate);
}

void BM_unfused(benchmark::State& st) {
  data d(st.range(0), 512, st.range(1));
  mat zs(d.N, d.V), zt(d.N, d.V), gh(d.N, d.H), gw(d.V, d.H);
  kd::distill_options o;
  for (auto _ : st) {
    zs.noalias() = d.hs * d.ws.transpose();
    zt.noalias() = d.ht * d.wt.transpose();
    kd::loss_result r;
    kd::distill_outputs<float> out;
    out.grad_student = kd::mut_rows<float>(zs.data(), d.N, d.V);
    const kd::status s =
        kd::reverse_kl(kd::student_logits(zs.data(), d.N, d.V), kd::teacher_logits(zt.data(), d.N, d.V), o, r, out);
    if (!s) st.SkipWithError(s.message);
    gh.noalias() = zs * d.ws;
    gw.noalias() = zs.transpose() * d.hs;
    benchmark::DoNotOptimize(r.loss);
  }
  counters(st, d, 2.0 * d.N * d.V * sizeof(float));
}

void BM_fused(benchmark::State& st) {
  data d(st.range(0), 512, st.range(1));
  const std::int64_t tile = st.range(2);
  mat gh(d.N, d.H), gw(d.V, d.H);
  kd::distill_options o;
  kd::fused_linear_options fo;
  fo.tile_vocab = tile;
  fo.chunk_rows = st.range(3);
  kd::linear_head<float> sh{kd::const_rows<float>(d.hs.data(), d.N, d.H), kd::const_rows<float>(d.ws.data(), d.V, d.H)};
  kd::linear_head<float> th{kd::const_rows<float>(d.ht.data(), d.N, d.H), kd::const_rows<float>(d.wt.data(), d.V, d.H)};
  kd::fused_linear_outputs<float> out;
  out.grad_hidden = kd::mut_rows<float>(gh.data(), d.N, d.H);
  out.grad_weight = kd::mut_rows<float>(gw.data(), d.V, d.H);
  for (auto _ : st) {
    kd::loss_result r;
    const kd::status s = kd::fused_linear_divergence(kd::divergence::reverse_kl(), sh, th, o, fo, r, out);
    if (!s) st.SkipWithError(s.message);
    benchmark::DoNotOptimize(r.loss);
  }
  const double w = tile == 0 ? double(d.V) : double(tile);
  counters(st, d, 3.0 * double(fo.chunk_rows) * w * sizeof(float));
}

void shapes(benchmark::internal::Benchmark* b) {
  for (std::int64_t n : {2048, 4096})
    for (std::int64_t v : {32000, 128256}) b->Args({n, v});
}
void fused_shapes(benchmark::internal::Benchmark* b) {
  for (std::int64_t n : {2048, 4096})
    for (std::int64_t v : {32000, 128256})
      for (std::int64_t tile : {0, 8192})
        for (std::int64_t rows : {128, 256, 512}) b->Args({n, v, tile, rows});
}

}  // namespace

BENCHMARK(BM_gemm)->Apply(shapes)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
BENCHMARK(BM_unfused)->Apply(shapes)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
BENCHMARK(BM_fused)->Apply(fused_shapes)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);

BENCHMARK_MAIN();
