// kd::vocab_parallel_divergence: every registered divergence over rows split into vocabulary shards (in-process ranks
// on threads joined by a test communicator; tests/mpi/ runs the same over Open MPI) equals the unsharded call on the
// concatenated shards: same status on every rank, the same loss and per-row values on every rank, and gradients that
// concatenate to the unsharded ones.
//
// Tolerances. The reference backend computes in double on both paths; the sharded sums split each row's sums at the
// shard boundaries, so they differ by the rounding of a sum of V terms: |dL| <= V 2^-53 sum |terms| (taken as 64 2^-53
// (1 + |l|) with V = 61 here) per row. The SIMD backend's sharded path is its careful form (float32 lanes, the row's
// constants from double); it is compared with the double reference by the SIMD tests' bound (tests/test_simd_util.hpp:
// 8 2^-24 (max |z| / T + 1) times the scale of the terms), the bound every SIMD path of kd meets.
#include <catch2/catch.hpp>

#include <kd/vocab_parallel.hpp>
#if defined(KD_TEST_DISPATCH)
#include <kd/backend/dispatch.hpp>
#endif

#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "test_util.hpp"

namespace {

// Ranks on threads: all_reduce writes each rank's array to its slot, waits for all, reduces the slots in rank order
// (deterministic), waits again.
class thread_group {
 public:
  explicit thread_group(int n) : n_(n), slots_(static_cast<std::size_t>(n)) {}
  struct comm {
    thread_group* g;
    int rank;
    void all_reduce_max(double* x, std::int64_t n) const { g->reduce(rank, x, n, true); }
    void all_reduce_sum(double* x, std::int64_t n) const { g->reduce(rank, x, n, false); }
  };
  void reduce(int rank, double* x, std::int64_t n, bool max) {
    slots_[rank].assign(x, x + n);
    barrier();
    for (std::int64_t i = 0; i < n; ++i) {
      double v = slots_[0][i];
      for (int k = 1; k < n_; ++k) v = max ? (slots_[k][i] > v ? slots_[k][i] : v) : v + slots_[k][i];
      x[i] = v;
    }
    barrier();
  }

 private:
  void barrier() {
    std::unique_lock<std::mutex> lk(m_);
    const long gen = gen_;
    if (++waiting_ == n_) {
      waiting_ = 0;
      ++gen_;
      cv_.notify_all();
    } else {
      cv_.wait(lk, [&] { return gen_ != gen; });
    }
  }
  int n_;
  std::vector<std::vector<double>> slots_;
  std::mutex m_;
  std::condition_variable cv_;
  int waiting_ = 0;
  long gen_ = 0;
};

struct shard_out {
  kd::status st;
  kd::loss_result r;
  std::vector<float> per_row;
};

// Runs the sharded call on len(cuts) + 1 ranks (column ranges [cuts[k-1], cuts[k])) and assembles the gradients.
template <class Backend>
std::vector<shard_out> run_sharded(const kd::divergence& d, const std::vector<float>& zs, const std::vector<float>& zt,
                                   std::int64_t rows, std::int64_t cols, const std::vector<std::int64_t>& cuts,
                                   const kd::distill_options& o, const Backend& be, std::vector<float>& gs,
                                   std::vector<float>& gt) {
  std::vector<std::int64_t> b{0};
  for (auto c : cuts) b.push_back(c);
  b.push_back(cols);
  const int n = static_cast<int>(b.size()) - 1;
  thread_group g(n);
  std::vector<shard_out> res(static_cast<std::size_t>(n));
  gs.assign(zs.size(), 777.0f);
  gt.assign(zt.size(), 777.0f);
  std::vector<std::thread> th;
  for (int k = 0; k < n; ++k)
    th.emplace_back([&, k] {
      const std::int64_t c0 = b[k], w = b[k + 1] - b[k];
      kd::distill_outputs<float> out;
      out.grad_student = kd::mut_rows<float>(gs.data() + c0, rows, w, cols);
      out.grad_teacher = kd::mut_rows<float>(gt.data() + c0, rows, w, cols);
      res[k].per_row.assign(static_cast<std::size_t>(rows), 777.0f);
      out.per_row = res[k].per_row.data();
      res[k].st = kd::vocab_parallel_divergence(d, kd::student_logits(zs.data() + c0, rows, w, cols),
                                                kd::teacher_logits(zt.data() + c0, rows, w, cols), o, res[k].r, out,
                                                thread_group::comm{&g, k}, be);
    });
  for (auto& t : th) t.join();
  return res;
}

template <class Backend>
void check_against_unsharded(const kd::divergence& d, const std::vector<float>& zs, const std::vector<float>& zt,
                             std::int64_t rows, std::int64_t cols, const std::vector<std::int64_t>& cuts,
                             const kd::distill_options& o, const Backend& be, double eps) {
  INFO(kdt::describe(d) << " shards cut at " << (cuts.empty() ? -1 : cuts[0]) << " (" << cuts.size() + 1
                        << " ranks), T " << o.temperature);
  std::vector<double> zsd(zs.begin(), zs.end()), ztd(zt.begin(), zt.end());
  const auto ref = kdt::run_call<double>(d, zsd, ztd, rows, cols, o, kd::reference_backend{}, true);
  std::vector<float> gs, gt;
  const auto got = run_sharded(d, zs, zt, rows, cols, cuts, o, be, gs, gt);
  double lmax = 0.0;
  for (float v : ref.per_row)
    if (std::isfinite(v)) lmax = std::max(lmax, std::abs(double(v)));
  const double gscale = 1.0 / o.temperature / ref.r.denominator;
  for (const auto& g : got) {
    REQUIRE(g.st.code == ref.st.code);
    CHECK(g.st.row == ref.st.row);
    CHECK(std::string(g.st.argument) == ref.st.argument);
    CHECK(g.r.valid_rows == ref.r.valid_rows);
    CHECK(g.r.denominator == ref.r.denominator);
    // bitwise the same on every rank (NaN included)
    CHECK(std::memcmp(&g.r.loss, &got[0].r.loss, sizeof(double)) == 0);
    CHECK(std::memcmp(g.per_row.data(), got[0].per_row.data(), g.per_row.size() * sizeof(float)) == 0);
    if (std::isfinite(ref.r.loss))
      CHECK(std::abs(g.r.loss - ref.r.loss) <= eps * (double(rows) / ref.r.denominator + std::abs(ref.r.loss)));
    else
      CHECK((std::isnan(ref.r.loss) ? std::isnan(g.r.loss) : g.r.loss == ref.r.loss));
    for (std::size_t r = 0; r < ref.per_row.size(); ++r) {
      const double a = g.per_row[r], b = ref.per_row[r];
      if (!std::isfinite(b)) {
        CHECK((std::isnan(b) ? std::isnan(a) : a == b));
        continue;
      }
      CHECK(std::abs(a - b) <= eps * (1.0 + std::abs(b)));
    }
  }
  auto cmp = [&](const std::vector<float>& g, const std::vector<float>& gr, const char* what) {
    double worst = 0.0;
    std::size_t bad = 0;
    for (std::size_t i = 0; i < gr.size(); ++i) {
      const double a = g[i], b = gr[i];
      if (std::isnan(b) || std::isnan(a)) {
        bad += std::isnan(a) != std::isnan(b);
        continue;
      }
      worst = std::max(worst, std::abs(a - b) / (eps * (gscale * (1.0 + lmax) + std::abs(b)) + 1e-300));
    }
    INFO(what << ": worst error / tolerance " << worst << ", NaN mismatches " << bad);
    CHECK(bad == 0);
    CHECK(worst <= 1.0);
  };
  cmp(gs, ref.gs, "grad_student");
  cmp(gt, ref.gt, "grad_teacher");
}

double simd_eps(const std::vector<float>& zs, const std::vector<float>& zt, double t) {
  double m = 0.0;
  for (auto v : zs) m = std::isfinite(v) ? std::max(m, std::abs(double(v))) : m;
  for (auto v : zt) m = std::isfinite(v) ? std::max(m, std::abs(double(v))) : m;
  return 8.0 * std::ldexp(1.0, -24) * (m / t + 1.0);
}

}  // namespace

TEST_CASE("vocab_parallel: every divergence, shards of unequal widths, equals the unsharded call") {
  const std::int64_t rows = 6, cols = 61;
  auto zs = kdt::random_logits<float>(rows, cols, 11, 3.0);
  auto zt = kdt::random_logits<float>(rows, cols, 12, 3.0);
  // Row 1: a confident teacher whose top token sits at a shard boundary (column 20 starts a shard below).
  for (std::int64_t j = 0; j < cols; ++j) zt[cols + j] = j == 20 ? 30.0f : static_cast<float>(0.1 * (j % 7));
  const std::vector<std::vector<std::int64_t>> cut_sets = {{}, {1}, {20}, {21}, {7, 20, 21}, {30, 31}};
  for (double temperature : {1.0, 2.0}) {
    kd::distill_options o;
    o.temperature = temperature;
    for (const auto& d : kdt::kAllDivergences)
      for (const auto& cuts : cut_sets) {
        check_against_unsharded(d, zs, zt, rows, cols, cuts, o, kd::reference_backend{},
                                64.0 * std::ldexp(1.0, -53) * 64.0);
        check_against_unsharded(d, zs, zt, rows, cols, cuts, o, kd::default_backend{}, simd_eps(zs, zt, temperature));
#if defined(KD_TEST_DISPATCH)  // kd::dispatch: every instruction set of this CPU, through a communicator_ref
        for (kd::simd_isa isa : {kd::simd_isa::sse2, kd::simd_isa::sse4_2, kd::simd_isa::avx2, kd::simd_isa::avx512})
          if (kd::simd_isa_available(isa)) {
            INFO("dispatch " << kd::simd_isa_name(isa));
            check_against_unsharded(d, zs, zt, rows, cols, cuts, o, kd::dispatch_backend{isa, 1},
                                    simd_eps(zs, zt, temperature));
          }
#endif
      }
  }
}

TEST_CASE("vocab_parallel: masks, ignored rows, reductions and value errors agree on every rank") {
  const std::int64_t rows = 7, cols = 40;
  auto zs = kdt::random_logits<float>(rows, cols, 21, 2.0, 0.1);
  auto zt = kdt::random_logits<float>(rows, cols, 22, 2.0, 0.0);
  const float ninf = -std::numeric_limits<float>::infinity();
  for (std::int64_t j = 0; j < cols; ++j) zt[2 * cols + j] = ninf;           // row 2: teacher fully masked (all shards)
  for (std::int64_t j = 0; j < 13; ++j) zs[3 * cols + j] = ninf;             // row 3: student's first shard all -inf
  std::vector<std::int64_t> labels = {1, -100, 3, 4, 5, 6, 7};                 // row 1 ignored
  kd::distill_options o;
  o.labels = kd::label_view(labels.data(), rows);
  for (auto red : {kd::reduction::mean, kd::reduction::sum, kd::reduction::none}) {
    o.reduction = red;
    for (const auto& d : {kd::divergence::reverse_kl(), kd::divergence::jsd(0.5), kd::divergence::tvd()}) {
      check_against_unsharded(d, zs, zt, rows, cols, {13}, o, kd::reference_backend{},
                              64.0 * std::ldexp(1.0, -53) * 64.0);
      check_against_unsharded(d, zs, zt, rows, cols, {13, 27}, o, kd::default_backend{}, simd_eps(zs, zt, 1.0));
    }
  }
  // Value errors: a NaN in one shard of row 4; forward KL with the student's zeros where the teacher has mass (row 3).
  auto zn = zs;
  zn[4 * cols + 30] = std::numeric_limits<float>::quiet_NaN();
  o.reduction = kd::reduction::mean;
  check_against_unsharded(kd::divergence::reverse_kl(), zn, zt, rows, cols, {13, 27}, o, kd::default_backend{},
                          simd_eps(zs, zt, 1.0));
  check_against_unsharded(kd::divergence::forward_kl(), zs, zt, rows, cols, {13, 27}, o, kd::default_backend{},
                          simd_eps(zs, zt, 1.0));
  check_against_unsharded(kd::divergence::forward_kl(), zs, zt, rows, cols, {5}, o, kd::reference_backend{},
                          64.0 * std::ldexp(1.0, -53) * 64.0);
}

TEST_CASE("vocab_parallel: argument errors name the argument and leave outputs untouched") {
  std::vector<float> zs(12, 0.0f), zt(15, 0.0f), g(12, 5.0f);
  kd::distill_options o;
  kd::loss_result r;
  kd::distill_outputs<float> out;
  out.grad_student = kd::mut_rows<float>(g.data(), 3, 4);
  const auto st = kd::vocab_parallel_divergence(kd::divergence::reverse_kl(), kd::student_logits(zs.data(), 3, 4),
                                                kd::teacher_logits(zt.data(), 3, 5), o, r, out);
  CHECK(st.code == kd::errc::invalid_argument);
  CHECK(std::string(st.argument) == "teacher");
  for (float v : g) CHECK(v == 5.0f);
}
