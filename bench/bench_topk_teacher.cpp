// A sparse top-k teacher (kd/topk_teacher.hpp) against the dense forward KL over the same student rows, in the same
// run: float32 student logits [N, V], gradient written to a separate buffer, the default backend on all hardware
// threads. The dense call reads the student and the teacher rows and writes the gradient (12 bytes per entry); the top-k
// call reads the student twice (statistics, then the gradient pass) and writes the gradient, plus k ids and values per
// row. Counters: Melem/s (student entries per second) and GB/s of the dense call's 12 bytes per entry (so the two are
// comparable: same rows, same work asked for).
//   build/bench/bench_topk_teacher                         (args: N, V, k; dense: N, V)
//   build/bench/bench_topk_teacher --benchmark_filter='/1024/128256'
#include <benchmark/benchmark.h>

#include <kd/forward_kl.hpp>
#include <kd/topk_teacher.hpp>

#include <algorithm>
#include <map>
#include <memory>
#include <numeric>
#include <tuple>
#include <random>
#include <vector>

namespace {

struct data {
  std::int64_t N, V, k;
  std::vector<float> zs, zt, tlp;
  std::vector<std::int64_t> ids;
  data(std::int64_t n, std::int64_t v, std::int64_t kk) : N(n), V(v), k(kk) {
    std::mt19937 gen(1);
    std::normal_distribution<float> nd(0.0f, 2.0f);
    zs.resize(static_cast<std::size_t>(N * V));
    zt.resize(zs.size());
    for (auto& x : zs) x = nd(gen);
    for (auto& x : zt) x = nd(gen);
    if (k > 0) {  // the teacher's top-k of each row, as a cache would hold them
      std::vector<std::int64_t> perm(static_cast<std::size_t>(V));
      for (std::int64_t r = 0; r < N; ++r) {
        const float* t = zt.data() + r * V;
        std::iota(perm.begin(), perm.end(), 0);
        std::partial_sort(perm.begin(), perm.begin() + k, perm.end(), [&](auto a, auto b) { return t[a] > t[b]; });
        double m = t[perm[0]], s = 0.0;
        for (std::int64_t j = 0; j < V; ++j) s += std::exp(double(t[j]) - m);
        const double lse = m + std::log(s);
        for (std::int64_t i = 0; i < k; ++i) {
          ids.push_back(perm[i]);
          tlp.push_back(static_cast<float>(t[perm[i]] - lse));
        }
      }
      std::vector<float>().swap(zt);  // the top-k calls read only the student and the k values per row
    }
  }
};

// The data of one (N, V, k), built once per process (Google Benchmark calls each benchmark several times while it
// calibrates the iteration count; the rows take seconds to build at V = 128256).
const data& data_for(std::int64_t n, std::int64_t v, std::int64_t k) {
  static std::map<std::tuple<std::int64_t, std::int64_t, std::int64_t>, std::unique_ptr<data>> cache;
  auto& p = cache[{n, v, k}];
  if (!p) p = std::make_unique<data>(n, v, k);
  return *p;
}

void counters(benchmark::State& st, const data& d) {
  st.counters["Melem/s"] = benchmark::Counter(1e-6 * d.N * d.V * st.iterations(), benchmark::Counter::kIsRate);
  st.counters["GB/s"] = benchmark::Counter(12e-9 * d.N * d.V * st.iterations(), benchmark::Counter::kIsRate);
}

// Times call(outputs, result) -> kd::status on the rows of (N, V, k), the gradient into a separate buffer.
template <class Call>
void time_calls(benchmark::State& st, std::int64_t k, Call call) {
  const data& d = data_for(st.range(0), st.range(1), k);
  std::vector<float> g(d.zs.size());
  kd::distill_outputs<float> out;
  out.grad_student = kd::mut_rows<float>(g.data(), d.N, d.V);
  for (auto _ : st) {
    kd::loss_result r;
    if (!call(d, out, r)) st.SkipWithError("the kd call failed");
    benchmark::DoNotOptimize(r.loss);
  }
  counters(st, d);
}

void BM_dense_forward_kl(benchmark::State& st) {
  time_calls(st, 0, [](const data& d, const kd::distill_outputs<float>& out, kd::loss_result& r) {
    return kd::forward_kl(kd::student_logits(d.zs.data(), d.N, d.V), kd::teacher_logits(d.zt.data(), d.N, d.V),
                          kd::distill_options{}, r, out);
  });
}

template <kd::topk_mode M>
void BM_topk(benchmark::State& st, const kd::divergence& div) {
  time_calls(st, st.range(2), [&](const data& d, const kd::distill_outputs<float>& out, kd::loss_result& r) {
    return kd::topk_divergence_loss(div, kd::student_logits(d.zs.data(), d.N, d.V),
                                    kd::teacher_topk(d.ids.data(), d.tlp.data(), d.N, d.k, M), kd::distill_options{},
                                    r, out);
  });
}

void BM_topk_tail_fkl(benchmark::State& st) { BM_topk<kd::topk_mode::tail_bucket>(st, kd::divergence::forward_kl()); }
void BM_topk_tail_rkl(benchmark::State& st) { BM_topk<kd::topk_mode::tail_bucket>(st, kd::divergence::reverse_kl()); }
void BM_topk_tail_jsd(benchmark::State& st) { BM_topk<kd::topk_mode::tail_bucket>(st, kd::divergence::jsd(0.5)); }
void BM_topk_renormalize_fkl(benchmark::State& st) {
  BM_topk<kd::topk_mode::renormalize>(st, kd::divergence::forward_kl());
}
void BM_topk_unnormalized_fkl(benchmark::State& st) {
  BM_topk<kd::topk_mode::unnormalized_forward_kl>(st, kd::divergence::forward_kl());
}

void dense_args(benchmark::internal::Benchmark* b) {
  b->Args({1024, 32000})->Args({1024, 128256})->Unit(benchmark::kMillisecond)->UseRealTime();
}
void topk_args(benchmark::internal::Benchmark* b) {
  for (std::int64_t v : {32000, 128256})
    for (std::int64_t k : {20, 100, 1000}) b->Args({1024, v, k});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

}  // namespace

BENCHMARK(BM_dense_forward_kl)->Apply(dense_args);
BENCHMARK(BM_topk_tail_fkl)->Apply(topk_args);
BENCHMARK(BM_topk_tail_rkl)->Apply(topk_args);
BENCHMARK(BM_topk_tail_jsd)->Apply(topk_args);
BENCHMARK(BM_topk_renormalize_fkl)->Apply(topk_args);
BENCHMARK(BM_topk_unnormalized_fkl)->Apply(topk_args);
BENCHMARK_MAIN();
