// The fused MiniLLM policy gradient (kd::policy_gradient, SIMD backend) against a fused reverse-KL forward + backward
// (kd::divergence_loss(reverse_kl), the same SIMD backend) over the same [B*L, V] float32 logits.
//
//   BM_rkl/V/N            reverse KL loss + student gradient, N = B * L rows
//   BM_pg<variant>/V/N    one full PG step: rewards, returns, weights, PPO, whitening, single-step + long-term gradient
//                         (variant 0: reference_code() preset, 1: paper() preset, 2: long-term only, no single-step term)
//   BM_ratio<variant>/V/N both calls alternated inside one timing loop; counter "ratio" = wall time(PG) / wall time(RKL),
//                         "cpu_ratio" = process CPU time(PG) / CPU time(RKL) (all threads; robust on a shared machine),
//                         measured in the same run (drift and frequency changes hit both alike). Target: ratio <= 1.3.
// Counters: bytes_per_second = 12 bytes per element (read student + teacher, write gradient) / time, pct_triad = that as a
// percentage of the STREAM triad bandwidth measured at start-up with the same thread count (KD_BENCH_THREADS, default 2).
// Quick run (about a minute on 2 cores):
//   build/bench/bench_pg --benchmark_filter='BM_ratio.*/128256/256/' --benchmark_min_time=2
#include <benchmark/benchmark.h>

#include <kd/backend/simd.hpp>
#include <kd/policy_gradient.hpp>
#include <kd/reverse_kl.hpp>

#include <chrono>
#include <cmath>
#include <ctime>
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

// CPU time of the whole process (all threads), seconds: insensitive to time slices lost to other processes, which makes the
// PG / RKL work ratio measurable on a shared machine (wall-clock ratios there swing by 2x).
double process_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
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
  double t_pg = 0.0, t_rkl = 0.0, c_pg = 0.0, c_rkl = 0.0;
  using clock = std::chrono::steady_clock;
  for (auto _ : state) {
    const double c0 = process_cpu_seconds();
    const auto t0 = clock::now();
    kd::status s1 = run_pg(b, in, o, n, v, be);
    benchmark::ClobberMemory();
    const auto t1 = clock::now();
    const double c1 = process_cpu_seconds();
    kd::status s2 = run_rkl(b, n, v, be);
    benchmark::ClobberMemory();
    const auto t2 = clock::now();
    const double c2 = process_cpu_seconds();
    if (!s1 || !s2) {
      state.SkipWithError((!s1 ? s1 : s2).to_string().c_str());
      break;
    }
    t_pg += std::chrono::duration<double>(t1 - t0).count();
    t_rkl += std::chrono::duration<double>(t2 - t1).count();
    c_pg += c1 - c0;
    c_rkl += c2 - c1;
  }
  if (t_rkl > 0) {
    state.counters["ratio"] = t_pg / t_rkl;
    state.counters["pg_ms"] = 1e3 * t_pg / static_cast<double>(state.iterations());
    state.counters["rkl_ms"] = 1e3 * t_rkl / static_cast<double>(state.iterations());
  }
  if (c_rkl > 0) state.counters["cpu_ratio"] = c_pg / c_rkl;
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

// The tests are built for the baseline instruction set; this binary is built with -march=native, so check the native
// kernels against the double-precision oracle once before timing them (small [8*64, 1000] problem, masked entries).
bool self_check() {
  const std::int64_t n = 8 * 64, v = 1000;
  std::vector<float> s(n * v), t(n * v), g(n * v);
  std::vector<double> sd(n * v), td(n * v), gd(n * v);
  pg_inputs in(n, v);
  for (std::int64_t i = 0; i < n * v; ++i) {
    s[i] = kdb::pseudo_logit(11, i);
    t[i] = s[i] + 0.5f * kdb::pseudo_logit(12, i);
    if (i % 97 == 5 && i % v != in.tokens[i / v]) s[i] = -INFINITY;  // masked entries, never at the sampled token
    sd[i] = s[i];
    td[i] = t[i];
  }
  double worst = 0.0, gmax = 0.0;
  for (int variant = 0; variant < 3; ++variant) {
    const kd::pg_options o = pg_variant(variant);
    kd::pg_outputs<float> of;
    of.grad_student = kd::mut_rows<float>(g.data(), n, v);
    kd::pg_outputs<double> od;
    od.grad_student = kd::mut_rows<double>(gd.data(), n, v);
    kd::pg_diagnostics d1, d2;
    kd::pg_sequences seq = in.seq();
    seq.old_log_probs = nullptr;
    const kd::status s1 = kd::policy_gradient(kd::student_logits(s.data(), n, v), kd::teacher_logits(t.data(), n, v), seq,
                                              o, of, d1, make_backend());
    const kd::status s2 = kd::policy_gradient(kd::student_logits(sd.data(), n, v), kd::teacher_logits(td.data(), n, v),
                                              seq, o, od, d2, kd::reference_backend{});
    if (!s1 || !s2) {
      std::fprintf(stderr, "self-check: %s\n", (!s1 ? s1 : s2).to_string().c_str());
      return false;
    }
    for (std::int64_t i = 0; i < n * v; ++i) {
      worst = std::max(worst, std::abs(static_cast<double>(g[i]) - gd[i]));
      gmax = std::max(gmax, std::abs(gd[i]));
    }
  }
  std::printf("self-check %s vs reference: worst |grad diff| %.2e of max |grad| %.3g\n", xsimd::default_arch::name(), worst,
              gmax);
  return worst <= 2e-5 * gmax;
}

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (!self_check()) {
    std::fprintf(stderr, "bench_pg: the native kernels disagree with the reference backend\n");
    return 1;
  }
  g_triad = kdb::triad_bandwidth(kdb::bench_threads(), std::size_t{1} << 24, 4);
  std::printf("triad bandwidth (%d threads): %.1f GB/s\n", kdb::bench_threads(), g_triad / 1e9);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
