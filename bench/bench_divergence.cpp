// Fused divergence kernels (kd::simd_backend) against the machine's memory bandwidth and against a composed baseline.
//
//   BM_triad/threads                        STREAM triad a = b + 3 c, 12 bytes per element: the bandwidth reference
//   BM_kd<div, dtype, mode>/V/N             kd::divergence_loss, simd backend, KD_BENCH_THREADS threads (default 2);
//                                           div 0 forward_kl, 1 reverse_kl, 2 jsd(0.5), 3 skew_kl(0.1),
//                                           4 skew_reverse_kl(0.1), 5 tvd
//   BM_small_call<exec>/N                   reverse KL at V = 32000, N in {1, 8, 64}: exec 0 serial, 1 threads started per
//                                           call (the executor before the pool), 2 kd::thread_executor (the pool)
//   BM_composed<div, mode>/V/N              the same loss written as frameworks compose it: log_softmax of each side,
//                                           then elementwise ops and reductions, then a separate backward, one pass and one
//                                           N x V temporary per op (vectorized with the same exp), blocks of 256 rows
// Counters: bytes_per_second = compulsory DRAM traffic / time (fused fp32 forward+backward: read student + teacher,
// write gradient = 12 bytes per element; forward only 8; bf16 with bf16 gradient 6 and 4), pct_triad = that as % of the
// triad bandwidth measured at start-up with the same thread count, and elems_per_second. Shapes: V in {32000, 128256,
// 256000}, N in {1, 64, 4096}; shapes whose buffers exceed KD_BENCH_MAX_GIB (default 8) are skipped. Quick preset (a
// few minutes on 2 cores): scripts/bench.sh --quick, i.e.
//   --benchmark_filter='BM_triad|BM_(kd|composed)<[^>]*>/128256/(64|4096)$'
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <kd/backend/serial_executor.hpp>
#include <kd/backend/simd.hpp>
#include <kd/divergence.hpp>
#include <string>
#include <thread>
#include <vector>

#include "bench_common.hpp"

namespace {

double g_triad = 0.0;  // bytes/s, measured in main()

enum class mode { fwd, fwd_bwd };

kd::divergence make_div(int which) {
  switch (which) {
    case 0:
      return kd::divergence::forward_kl();
    case 1:
      return kd::divergence::reverse_kl();
    case 2:
      return kd::divergence::jsd(0.5);
    case 3:
      return kd::divergence::skew_kl(0.1);
    case 4:
      return kd::divergence::skew_reverse_kl(0.1);
    default:
      return kd::divergence::tvd();
  }
}

void set_counters(benchmark::State& state, double bytes_per_iter, double elems) {
  const double it = static_cast<double>(state.iterations());
  state.counters["bytes_per_second"] = benchmark::Counter(bytes_per_iter * it, benchmark::Counter::kIsRate);
  state.counters["elems_per_second"] = benchmark::Counter(elems * it, benchmark::Counter::kIsRate);
  if (g_triad > 0)
    state.counters["pct_triad"] =
        benchmark::Counter(100.0 * bytes_per_iter * it / g_triad, benchmark::Counter::kIsRate);
}

bool too_big(benchmark::State& state, std::int64_t n, std::int64_t v, std::size_t elem) {
  const double gib = 3.0 * static_cast<double>(n) * static_cast<double>(v) * static_cast<double>(elem) / (1u << 30);
  if (gib > kdb::max_gib()) {
    state.SkipWithError(("working set above KD_BENCH_MAX_GIB: " + std::to_string(gib) + " GiB").c_str());
    return true;
  }
  return false;
}

template <int Div, class T, mode M>
void BM_kd(benchmark::State& state) {
  const std::int64_t v = state.range(0), n = state.range(1);
  if (too_big(state, n, v, sizeof(T))) return;
  auto& b = kdb::get_buffers<T>(n, v);
  const kd::divergence d = make_div(Div);
  kd::simd_backend<xsimd::default_arch, kd::thread_executor> be{kd::thread_executor{kdb::bench_threads()}};
  kd::distill_options opt;
  kd::distill_outputs<T> out;
  if (M == mode::fwd_bwd) out.grad_student = kd::mut_rows<T>(b.g.get(), n, v);
  for (auto _ : state) {
    kd::loss_result r;
    auto st = kd::divergence_loss(d, kd::student_logits(b.s.get(), n, v), kd::teacher_logits(b.t.get(), n, v), opt, r,
                                  out, be);
    if (!st) {
      state.SkipWithError(st.to_string().c_str());
      break;
    }
    benchmark::DoNotOptimize(r.loss);
    benchmark::ClobberMemory();
  }
  const double elems = static_cast<double>(n) * static_cast<double>(v);
  set_counters(state, elems * sizeof(T) * (M == mode::fwd_bwd ? 3.0 : 2.0), elems);
  state.SetLabel(std::string(kd::divergence_name(d.kind)) + " " + kd::dtype_name<T>() +
                 (M == mode::fwd_bwd ? " fwd+bwd " : " fwd ") + xsimd::default_arch::name() +
                 " threads=" + std::to_string(kdb::bench_threads()));
}

// ---- Small calls: the cost of the executor itself (reverse KL fp32 forward+backward, V = 32000, N = 1, 8, 64). ----
// The executor kd::thread_executor was before its persistent pool: std::threads started and joined on every call, the
// same ranges. Kept here only to measure what the pool saves, in the same run.
struct spawn_executor {
  int threads = 2;
  template <class F>
  void parallel_for(std::int64_t n, F f) const {
    const std::int64_t t = std::min<std::int64_t>(threads, n);
    if (t <= 1) {
      if (n > 0) f(std::int64_t{0}, n);
      return;
    }
    std::vector<std::thread> pool;
    for (std::int64_t i = 1; i < t; ++i) pool.emplace_back([&f, i, n, t] { f(n * i / t, n * (i + 1) / t); });
    f(std::int64_t{0}, n / t);
    for (auto& th : pool) th.join();
  }
};

// Exec: 0 serial (the calling thread), 1 spawn_executor{2}, 2 kd::thread_executor{2} (the pool).
template <int Exec>
void BM_small_call(benchmark::State& state) {
  const std::int64_t v = 32000, n = state.range(0);
  auto& b = kdb::get_buffers<float>(n, v);
  kd::distill_outputs<float> out;
  out.grad_student = kd::mut_rows<float>(b.g.get(), n, v);
  auto run = [&](const auto& be) {
    for (auto _ : state) {
      kd::loss_result r;
      auto st = kd::divergence_loss(kd::divergence::reverse_kl(), kd::student_logits(b.s.get(), n, v),
                                    kd::teacher_logits(b.t.get(), n, v), {}, r, out, be);
      if (!st) {
        state.SkipWithError(st.to_string().c_str());
        break;
      }
      benchmark::DoNotOptimize(r.loss);
      benchmark::ClobberMemory();
    }
  };
  if constexpr (Exec == 0) run(kd::simd_backend<xsimd::default_arch, kd::serial_executor>{});
  if constexpr (Exec == 1) run(kd::simd_backend<xsimd::default_arch, spawn_executor>{spawn_executor{2}});
  if constexpr (Exec == 2) run(kd::simd_backend<xsimd::default_arch, kd::thread_executor>{kd::thread_executor{2}});
  const double elems = static_cast<double>(n) * static_cast<double>(v);
  set_counters(state, elems * sizeof(float) * 3.0, elems);
  state.SetLabel(std::string("reverse_kl fp32 fwd+bwd ") +
                 (Exec == 0 ? "serial" : Exec == 1 ? "spawned threads=2" : "pool threads=2"));
}

// ---- Composed baseline: one pass (and one temporary) per framework op, all vectorized with the same exp. ----
using fb = xsimd::batch<float>;
constexpr std::size_t W = fb::size;

template <class F>
void par_rows(std::int64_t rows, F f) {
  kd::thread_executor{kdb::bench_threads()}.parallel_for(rows, f);
}

// out = log_softmax(x) row by row: max pass, sum-exp pass, subtract pass (what a framework kernel does per op).
void log_softmax(const float* x, float* out, std::int64_t rows, std::int64_t v) {
  par_rows(rows, [=](std::int64_t b, std::int64_t e) {
    for (std::int64_t r = b; r < e; ++r) {
      const float* xr = x + r * v;
      float* o = out + r * v;
      float m = -INFINITY;
      for (std::int64_t j = 0; j < v; ++j) m = std::max(m, xr[j]);
      fb s(0.0f);
      std::int64_t j = 0;
      for (; j + static_cast<std::int64_t>(W) <= v; j += W)
        s += kd::detail::simd::exp<xsimd::default_arch>(fb::load_unaligned(xr + j) - fb(m));
      float ss = xsimd::hadd(s);
      for (; j < v; ++j) ss += std::exp(xr[j] - m);
      const float l = m + std::log(ss);
      for (j = 0; j < v; ++j) o[j] = xr[j] - l;
    }
  });
}
void exp_op(const float* x, float* out, std::size_t n) {
  par_rows(static_cast<std::int64_t>(n / 4096 + 1), [=](std::int64_t b, std::int64_t e) {
    const std::size_t lo = static_cast<std::size_t>(b) * 4096, hi = std::min(n, static_cast<std::size_t>(e) * 4096);
    std::size_t j = lo;
    for (; j + W <= hi; j += W)
      kd::detail::simd::exp<xsimd::default_arch>(fb::load_unaligned(x + j)).store_unaligned(out + j);
    for (; j < hi; ++j) out[j] = std::exp(x[j]);
  });
}
template <class F>
void binary_op(const float* a, const float* b, float* out, std::size_t n, F f) {
  par_rows(static_cast<std::int64_t>(n / 4096 + 1), [=](std::int64_t lo_b, std::int64_t hi_b) {
    const std::size_t lo = static_cast<std::size_t>(lo_b) * 4096,
                      hi = std::min(n, static_cast<std::size_t>(hi_b) * 4096);
    for (std::size_t j = lo; j < hi; ++j) out[j] = f(a[j], b[j]);
  });
}
double sum_op(const float* a, std::size_t n) {
  double s = 0.0;
  for (std::size_t j = 0; j < n; ++j) s += a[j];
  return s;
}

// Composed KL: forward_kl (Div 0) = kl_div(log_q, p): sum p (log p - log q); reverse_kl (Div 1): sum q (log q - log p).
template <int Div, mode M>
void BM_composed(benchmark::State& state) {
  const std::int64_t v = state.range(0), n = state.range(1);
  if (too_big(state, n, v, sizeof(float))) return;
  auto& b = kdb::get_buffers<float>(n, v);
  const std::int64_t block = std::min<std::int64_t>(n, 256);
  const std::size_t bn = static_cast<std::size_t>(block * v);
  std::vector<float> lq(bn), lp(bn), p(bn), q(bn), diff(bn), prod(bn), g1(bn);
  for (auto _ : state) {
    double loss = 0.0;
    for (std::int64_t r0 = 0; r0 < n; r0 += block) {
      const std::int64_t rows = std::min(block, n - r0);
      const std::size_t m = static_cast<std::size_t>(rows * v);
      const float* zs = b.s.get() + r0 * v;
      const float* zt = b.t.get() + r0 * v;
      log_softmax(zs, lq.data(), rows, v);  // forward: log_softmax(student), log_softmax(teacher)
      log_softmax(zt, lp.data(), rows, v);
      // forward: x = exp(log x) of the distribution the KL is weighted by, diff = log x - log y, prod, sum
      const float* lx = Div == 0 ? lp.data() : lq.data();
      const float* ly = Div == 0 ? lq.data() : lp.data();
      float* x = Div == 0 ? p.data() : q.data();
      exp_op(lx, x, m);
      binary_op(lx, ly, diff.data(), m, [](float a, float c) { return a - c; });
      binary_op(x, diff.data(), prod.data(), m, [](float a, float c) { return a * c; });
      loss += sum_op(prod.data(), m);
      if (M == mode::fwd_bwd) {
        // autograd: g1 = dL/dlog q (forward KL: -p; reverse KL: q (diff + 1)), then log_softmax backward
        // g = g1 - softmax(z) * rowsum(g1), with softmax recomputed as exp(log q) (one pass each).
        if (Div == 0)
          binary_op(p.data(), p.data(), g1.data(), m, [](float a, float) { return -a; });
        else
          binary_op(q.data(), diff.data(), g1.data(), m, [](float a, float c) { return a * (c + 1.0f); });
        if (Div == 0) exp_op(lq.data(), q.data(), m);
        float* g = b.g.get() + r0 * v;
        const float* pg1 = g1.data();
        const float* pq = q.data();
        par_rows(rows, [=](std::int64_t rb, std::int64_t re) {
          for (std::int64_t r = rb; r < re; ++r) {
            double s = 0.0;
            for (std::int64_t j = 0; j < v; ++j) s += pg1[r * v + j];
            for (std::int64_t j = 0; j < v; ++j) g[r * v + j] = pg1[r * v + j] - pq[r * v + j] * static_cast<float>(s);
          }
        });
      }
    }
    benchmark::DoNotOptimize(loss);
    benchmark::ClobberMemory();
  }
  const double elems = static_cast<double>(n) * static_cast<double>(v);
  set_counters(state, elems * 4.0 * (M == mode::fwd_bwd ? 3.0 : 2.0), elems);
  state.SetLabel(std::string(Div == 0 ? "forward_kl" : "reverse_kl") + " float32 composed" +
                 (M == mode::fwd_bwd ? " fwd+bwd" : " fwd") + " threads=" + std::to_string(kdb::bench_threads()));
}

void BM_triad(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  double bw = 0.0;
  for (auto _ : state) bw = kdb::triad_bandwidth(threads, std::size_t{1} << 26, 3);
  state.counters["bytes_per_second"] = bw;
  state.SetLabel("STREAM triad, 3 x 256 MiB, best of 3, threads=" + std::to_string(threads));
}

void shapes(benchmark::internal::Benchmark* b) {
  for (std::int64_t v : {32000, 128256, 256000})
    for (std::int64_t n : {1, 64, 4096}) b->Args({v, n});
  b->ArgNames({"V", "N"})->Unit(benchmark::kMillisecond)->UseRealTime();
}

void small_shapes(benchmark::internal::Benchmark* b) {
  b->Arg(1)->Arg(8)->Arg(64)->ArgName("N")->Unit(benchmark::kMicrosecond)->UseRealTime();
}

}  // namespace

BENCHMARK(BM_triad)->Arg(1)->Arg(2)->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();

#define KD_BENCH_DIV(DIV)                                                     \
  BENCHMARK_TEMPLATE(BM_kd, DIV, float, mode::fwd_bwd)->Apply(shapes);        \
  BENCHMARK_TEMPLATE(BM_kd, DIV, float, mode::fwd)->Apply(shapes);            \
  BENCHMARK_TEMPLATE(BM_kd, DIV, kd::bfloat16, mode::fwd_bwd)->Apply(shapes); \
  BENCHMARK_TEMPLATE(BM_kd, DIV, kd::bfloat16, mode::fwd)->Apply(shapes);
KD_BENCH_DIV(0)
KD_BENCH_DIV(1)
KD_BENCH_DIV(2)
// skew_kl(0.1), skew_reverse_kl(0.1), tvd: the other careful-path divergences, float32 forward + backward.
BENCHMARK_TEMPLATE(BM_kd, 3, float, mode::fwd_bwd)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_kd, 4, float, mode::fwd_bwd)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_kd, 5, float, mode::fwd_bwd)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_small_call, 0)->Apply(small_shapes);
BENCHMARK_TEMPLATE(BM_small_call, 1)->Apply(small_shapes);
BENCHMARK_TEMPLATE(BM_small_call, 2)->Apply(small_shapes);
BENCHMARK_TEMPLATE(BM_composed, 0, mode::fwd_bwd)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_composed, 1, mode::fwd_bwd)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_composed, 0, mode::fwd)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_composed, 1, mode::fwd)->Apply(shapes);

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  g_triad = kdb::triad_bandwidth(kdb::bench_threads());
  std::printf("triad bandwidth (%d threads, best of 8): %.2f GB/s; kernels' pct_triad is relative to it\n",
              kdb::bench_threads(), g_triad / 1e9);
  benchmark::AddCustomContext("triad_bytes_per_second", std::to_string(g_triad));
  benchmark::AddCustomContext("threads", std::to_string(kdb::bench_threads()));
  benchmark::AddCustomContext("arch", xsimd::default_arch::name());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
