// libtorch's own composed implementation against kd on identical data, in the same process (built when Torch is found).
//
//   BM_torch<div>/V/N   forward KL: F.kl_div(log_softmax(z_s), log_softmax(z_t), log_target) / N;
//                       reverse KL: (exp(lq) * (lq - lp)).sum() / N with lq, lp = log_softmax; forward + backward
//                       through autograd to the student logits (teacher detached);
//                       torch::set_num_threads(KD_BENCH_THREADS, def. 2)
//   BM_kd<div>/V/N      kd::divergence_loss (simd backend, same threads) on the same buffers, token-mean reduction,
//   gradient
// Both report bytes_per_second at 12 bytes per element (read student + teacher, write gradient) and elems_per_second;
// the speed-up is the ratio of elems_per_second. libtorch needs several N x V temporaries, so the shapes stop at N =
// 256 (per-element throughput of both is flat in N beyond a few rows; see docs/performance.md).
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cstdio>
#include <kd/backend/simd.hpp>
#include <kd/divergence.hpp>
#include <string>

#include "bench_common.hpp"

namespace {

struct data {
  std::int64_t n = 0, v = 0;
  torch::Tensor zs, zt;  // float32 [N, V]
};

data& get_data(std::int64_t n, std::int64_t v) {
  static data d;
  if (d.n != n || d.v != v) {
    auto& b = kdb::get_buffers<float>(n, v);  // the same pseudo-random logits as bench_divergence
    d.zs = torch::from_blob(b.s.get(), {n, v}, torch::kFloat32);
    d.zt = torch::from_blob(b.t.get(), {n, v}, torch::kFloat32);
    d.n = n;
    d.v = v;
  }
  return d;
}

void counters(benchmark::State& state, std::int64_t n, std::int64_t v, const std::string& label) {
  const double e = static_cast<double>(n) * static_cast<double>(v) * static_cast<double>(state.iterations());
  state.counters["bytes_per_second"] = benchmark::Counter(12.0 * e, benchmark::Counter::kIsRate);
  state.counters["elems_per_second"] = benchmark::Counter(e, benchmark::Counter::kIsRate);
  state.SetLabel(label + " threads=" + std::to_string(kdb::bench_threads()));
}

template <int Div>
void BM_torch(benchmark::State& state) {
  const std::int64_t v = state.range(0), n = state.range(1);
  auto& d = get_data(n, v);
  double loss_value = 0.0;
  for (auto _ : state) {
    auto zs = d.zs.detach().requires_grad_(true);
    auto lq = torch::log_softmax(zs, -1);
    auto lp = torch::log_softmax(d.zt, -1);
    torch::Tensor loss;
    if (Div == 0)
      loss = torch::kl_div(lq, lp, at::Reduction::Sum, /*log_target=*/true) / static_cast<double>(n);
    else
      loss = (lq.exp() * (lq - lp)).sum() / static_cast<double>(n);
    loss.backward();
    loss_value = loss.item<double>();
    benchmark::DoNotOptimize(zs.grad().data_ptr<float>());
  }
  counters(state, n, v,
           std::string(Div == 0 ? "forward_kl" : "reverse_kl") + " libtorch " + TORCH_VERSION +
               " composed fwd+bwd loss=" + std::to_string(loss_value));
}

template <int Div>
void BM_kd(benchmark::State& state) {
  const std::int64_t v = state.range(0), n = state.range(1);
  get_data(n, v);
  auto& b = kdb::get_buffers<float>(n, v);
  kd::simd_backend<xsimd::default_arch, kd::thread_executor> be{kd::thread_executor{kdb::bench_threads()}};
  kd::distill_outputs<float> out;
  out.grad_student = kd::mut_rows<float>(b.g.get(), n, v);
  const kd::divergence d = Div == 0 ? kd::divergence::forward_kl() : kd::divergence::reverse_kl();
  double loss_value = 0.0;
  for (auto _ : state) {
    kd::loss_result r;
    auto st = kd::divergence_loss(d, kd::student_logits(b.s.get(), n, v), kd::teacher_logits(b.t.get(), n, v), {}, r,
                                  out, be);
    if (!st) {
      state.SkipWithError(st.to_string().c_str());
      break;
    }
    loss_value = r.loss;
    benchmark::ClobberMemory();
  }
  counters(state, n, v,
           std::string(kd::divergence_name(d.kind)) + " kd simd " + xsimd::default_arch::name() +
               " fwd+bwd loss=" + std::to_string(loss_value));
}

void shapes(benchmark::internal::Benchmark* b) {
  for (std::int64_t v : {32000, 128256})
    for (std::int64_t n : {1, 64, 256, 1024}) b->Args({v, n});
  b->ArgNames({"V", "N"})->Unit(benchmark::kMillisecond)->UseRealTime();
}

}  // namespace

BENCHMARK_TEMPLATE(BM_torch, 0)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_kd, 0)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_torch, 1)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_kd, 1)->Apply(shapes);

int main(int argc, char** argv) {
  torch::set_num_threads(kdb::bench_threads());
  benchmark::Initialize(&argc, argv);
  benchmark::AddCustomContext("torch_version", TORCH_VERSION);
  benchmark::AddCustomContext("torch_threads", std::to_string(torch::get_num_threads()));
  benchmark::AddCustomContext("threads", std::to_string(kdb::bench_threads()));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
