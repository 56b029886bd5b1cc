// The fused MiniLLM policy gradient (kd::policy_gradient, SIMD backend) against a fused reverse-KL forward + backward
// (kd::divergence_loss(reverse_kl), the same SIMD backend) over the same [B*L, V] float32 logits.
//
//   BM_rkl/V/N            reverse KL loss + student gradient, N = B * L rows
//   BM_pg<variant>/V/N    one full PG step: rewards, returns, weights, PPO, whitening, single-step + long-term gradient
//                         (variant 0: reference_code() preset, 1: paper() preset, 2: long-term only, no single-step term)
//   BM_ratio<variant>/V/N both calls alternated inside one timing loop; counter "ratio" = time(PG) / time(RKL), measured in
//                         the same run (drift and frequency changes hit both alike). Target: ratio <= 1.3.
// Counters: bytes_per_second = 12 bytes per element (read student + teacher, write gradient) / time, pct_triad = that as a
// percentage of the STREAM triad bandwidth measured at start-up with the same thread count (KD_BENCH_THREADS, default 2).
// Quick run (about a minute on 2 cores):
//   build/bench/bench_pg --benchmark_filter='BM_ratio.*/128256/256/' --benchmark_min_time=2
#include <benchmark/benchmark.h>

#include <kd/backend/simd.hpp>
#include <kd/policy_gradient.hpp>
#include <kd/reverse_kl.hpp>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "bench_common.hpp"

namespace {

double g_triad = 0.0;

using backend_t = kd::simd_backend<xsimd::default_arch, kd::thread_executor>;

backend_t make_backend() { return backend_t{kd::thread_executor{kdb::bench_threads()}}; }

kd::pg_options pg_variant(int v) {
  kd::pg_options o = v == 0 ? kd::pg_options::reference_code() : kd::pg_options::paper();
  if (v == 2) o.single_step = false;
  return o;
}

// Tokens (the argmax of a hash), a right-padded mask (every 8th sequence is 3/4 long) and old log-probs for N = B * L rows.
struct pg_inputs {
  std::int64_t batch = 0, time = 0;
  std::vector<std::int64_t> tokens;
  std::vector<std::uint8_t> mask;
  std::vector<float> old;
  pg_inputs(std::int64_t n, std::int64_t v) {
    time = n >= 64 ? 64 : n;
    batch = n / time;
    tokens.resize(n);
    mask.resize(n);
    old.resize(n);
    for (std::int64_t r = 0; r < n; ++r) {
      tokens[r] = static_cast<std::int64_t>((static_cast<std::uint64_t>(r) * 2654435761u) % static_cast<std::uint64_t>(v));
      const std::int64_t b = r / time, t = r % time;
      mask[r] = (b % 8 == 7 && t >= time * 3 / 4) ? 0 : 1;
      old[r] = -10.0f - 0.01f * static_cast<float>(r % 7);  // near the true log q of a random token of the 8-wide logits
    }
  }
  kd::pg_sequences seq() const {
    kd::pg_sequences s;
    s.batch = batch;
    s.time = time;
    s.tokens = kd::label_view(tokens.data(), batch * time);
    s.mask = kd::mask_view(mask.data(), batch * time);
    s.old_log_probs = old.data();
    return s;
  }
};

void set_counters(benchmark::State& state, double elems) {
  const double it = static_cast<double>(state.iterations());
  state.counters["bytes_per_second"] = benchmark::Counter(12.0 * elems * it, benchmark::Counter::kIsRate);
  if (g_triad > 0)
    state.counters["pct_triad"] = benchmark::Counter(100.0 * 12.0 * elems * it / g_triad, benchmark::Counter::kIsRate);
}

bool too_big(benchmark::State& state, std::int64_t n, std::int64_t v) {
  const double gib = 3.0 * static_cast<double>(n) * static_cast<double>(v) * 4.0 / (1u << 30);
  if (gib > kdb::max_gib()) {
    state.SkipWithError("working set above KD_BENCH_MAX_GIB");
    return true;
  }
  return false;
}

kd::status run_rkl(const kdb::buffers<float>& b, std::int64_t n, std::int64_t v, const backend_t& be) {
  kd::distill_options opt;
  kd::distill_outputs<float> out;
  out.grad_student = kd::mut_rows<float>(b.g.get(), n, v);
  kd::loss_result r;
  kd::status st = kd::reverse_kl(kd::student_logits(b.s.get(), n, v), kd::teacher_logits(b.t.get(), n, v), opt, r, out, be);
  benchmark::DoNotOptimize(r.loss);
  return st;
}

kd::status run_pg(const kdb::buffers<float>& b, const pg_inputs& in, const kd::pg_options& o, std::int64_t n,
                  std::int64_t v, const backend_t& be) {
  kd::pg_outputs<float> out;
  out.grad_student = kd::mut_rows<float>(b.g.get(), n, v);
  kd::pg_diagnostics d;
  kd::status st = kd::policy_gradient(kd::student_logits(b.s.get(), n, v), kd::teacher_logits(b.t.get(), n, v), in.seq(),
                                      o, out, d, be);
  benchmark::DoNotOptimize(d.loss);
  return st;
}

void BM_rkl(benchmark::State& state) {
  const std::int64_t v = state.range(0), n = state.range(1);
  if (too_big(state, n, v)) return;
  auto& b = kdb::get_buffers<float>(n, v);
  const backend_t be = make_backend();
  for (auto _ : state) {
    if (kd::status st = run_rkl(b, n, v, be); !st) {
      state.SkipWithError(st.to_string().c_str());
      break;
    }
    benchmark::ClobberMemory();
  }
  set_counters(state, static_cast<double>(n) * static_cast<double>(v));
  state.SetLabel(std::string("reverse_kl fwd+bwd ") + xsimd::default_arch::name() + " threads=" +
                 std::to_string(kdb::bench_threads()));
}

template <int Variant>
void BM_pg(benchmark::State& state) {
  const std::int64_t v = state.range(0), n = state.range(1);
  if (too_big(state, n, v)) return;
  auto& b = kdb::get_buffers<float>(n, v);
  const pg_inputs in(n, v);
  const kd::pg_options o = pg_variant(Variant);
  const backend_t be = make_backend();
  for (auto _ : state) {
    if (kd::status st = run_pg(b, in, o, n, v, be); !st) {
      state.SkipWithError(st.to_string().c_str());
      break;
    }
    benchmark::ClobberMemory();
  }
  set_counters(state, static_cast<double>(n) * static_cast<double>(v));
  state.SetLabel(std::string("pg ") + (Variant == 0 ? "reference_code" : Variant == 1 ? "paper" : "long-term only") + " " +
                 xsimd::default_arch::name() + " threads=" + std::to_string(kdb::bench_threads()));
}

template <int Variant>
void BM_ratio(benchmark::State& state) {
  const std::int64_t v = state.range(0), n = state.range(1);
  if (too_big(state, n, v)) return;
  auto& b = kdb::get_buffers<float>(n, v);
  const pg_inputs in(n, v);
  const kd::pg_options o = pg_variant(Variant);
  const backend_t be = make_backend();
  double t_pg = 0.0, t_rkl = 0.0;
  using clock = std::chrono::steady_clock;
  for (auto _ : state) {
    const auto t0 = clock::now();
    kd::status s1 = run_pg(b, in, o, n, v, be);
    benchmark::ClobberMemory();
    const auto t1 = clock::now();
    kd::status s2 = run_rkl(b, n, v, be);
    benchmark::ClobberMemory();
    const auto t2 = clock::now();
    if (!s1 || !s2) {
      state.SkipWithError((!s1 ? s1 : s2).to_string().c_str());
      break;
    }
    t_pg += std::chrono::duration<double>(t1 - t0).count();
    t_rkl += std::chrono::duration<double>(t2 - t1).count();
  }
  if (t_rkl > 0) {
    state.counters["ratio"] = t_pg / t_rkl;
    state.counters["pg_ms"] = 1e3 * t_pg / static_cast<double>(state.iterations());
    state.counters["rkl_ms"] = 1e3 * t_rkl / static_cast<double>(state.iterations());
  }
  state.SetLabel(std::string("time(pg ") + (Variant == 0 ? "reference_code" : Variant == 1 ? "paper" : "long-term only") +
                 ") / time(reverse_kl fwd+bwd) " + xsimd::default_arch::name() + " threads=" +
                 std::to_string(kdb::bench_threads()));
}

void shapes(benchmark::internal::Benchmark* b) {
  for (std::int64_t v : {32000, 128256})
    for (std::int64_t n : {64, 256, 2048}) b->Args({v, n});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(BM_rkl)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_pg, 0)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_pg, 1)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_pg, 2)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_ratio, 0)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_ratio, 1)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_ratio, 2)->Apply(shapes);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  g_triad = kdb::triad_bandwidth(kdb::bench_threads(), std::size_t{1} << 24, 4);
  std::printf("triad bandwidth (%d threads): %.1f GB/s\n", kdb::bench_threads(), g_triad / 1e9);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
