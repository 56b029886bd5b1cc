// kd::vocab_parallel_divergence over Open MPI (kd::mpi_communicator): run as `mpirun -np K mpi_vocab_parallel` (CTest:
// K = 2 and 3). Every rank builds the same rows, takes its contiguous vocabulary shard (unequal widths; one boundary
// right at a confident row's top token) and runs every registered divergence on the reference and the default (SIMD)
// backend; each result must equal the unsharded reference call (double) computed on the rank itself: status, row,
// loss and per-row values within the tolerances of tests/test_vocab_parallel.cpp (same derivation), gradients of the
// local shard against the matching columns of the unsharded gradient, and the loss bitwise equal on every rank.
#include <kd/comm/mpi.hpp>
#include <kd/vocab_parallel.hpp>

#include <cstdio>
#include <cstring>

#include "test_util.hpp"

namespace {

int failures = 0;

void expect(bool ok, const char* what, const kd::divergence& d, const char* backend) {
  if (ok) return;
  ++failures;
  std::fprintf(stderr, "mpi_vocab_parallel: FAILED %s (%s, %s)\n", what, kdt::describe(d).c_str(), backend);
}

template <class Backend>
void check(const kd::divergence& d, const std::vector<float>& zs, const std::vector<float>& zt, std::int64_t rows,
           std::int64_t cols, std::int64_t c0, std::int64_t w, const kd::mpi_communicator& comm, const Backend& be,
           double eps, const char* name) {
  std::vector<double> zsd(zs.begin(), zs.end()), ztd(zt.begin(), zt.end());
  kd::distill_options o;
  const auto ref = kdt::run_call<double>(d, zsd, ztd, rows, cols, o, kd::reference_backend{}, true);
  std::vector<float> gs(static_cast<std::size_t>(rows * w), 777.0f), gt(gs.size(), 777.0f),
      pr(static_cast<std::size_t>(rows), 777.0f);
  kd::distill_outputs<float> out;
  out.grad_student = kd::mut_rows<float>(gs.data(), rows, w);
  out.grad_teacher = kd::mut_rows<float>(gt.data(), rows, w);
  out.per_row = pr.data();
  kd::loss_result r;
  const kd::status st = kd::vocab_parallel_divergence(d, kd::student_logits(zs.data() + c0, rows, w, cols),
                                                      kd::teacher_logits(zt.data() + c0, rows, w, cols), o, r, out,
                                                      comm, be);
  expect(st.code == ref.st.code && st.row == ref.st.row, "status", d, name);
  expect(std::abs(r.loss - ref.r.loss) <= eps * (double(rows) / ref.r.denominator + std::abs(ref.r.loss)), "loss", d,
         name);
  double l0 = r.loss;
  MPI_Bcast(&l0, 1, MPI_DOUBLE, 0, comm.comm);
  expect(std::memcmp(&l0, &r.loss, sizeof(double)) == 0, "loss bitwise equal on every rank", d, name);
  double lmax = 0.0;
  for (float v : ref.per_row) lmax = std::max(lmax, std::abs(double(v)));
  for (std::int64_t i = 0; i < rows; ++i)
    expect(std::abs(pr[i] - ref.per_row[i]) <= eps * (1.0 + std::abs(ref.per_row[i])), "per_row", d, name);
  const double gscale = 1.0 / ref.r.denominator;
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < w; ++j) {
      const double a = gs[i * w + j], b = ref.gs[i * cols + c0 + j];
      const double a2 = gt[i * w + j], b2 = ref.gt[i * cols + c0 + j];
      expect(std::abs(a - b) <= eps * (gscale * (1.0 + lmax) + std::abs(b)), "grad_student", d, name);
      expect(std::abs(a2 - b2) <= eps * (gscale * (1.0 + lmax) + std::abs(b2)), "grad_teacher", d, name);
    }
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const std::int64_t rows = 5, cols = 61;
  auto zs = kdt::random_logits<float>(rows, cols, 31, 3.0);
  auto zt = kdt::random_logits<float>(rows, cols, 32, 3.0);
  for (std::int64_t j = 0; j < cols; ++j) zt[cols + j] = j == 20 ? 30.0f : static_cast<float>(0.1 * (j % 7));
  // Shard boundaries: 20 (the top token of row 1 starts shard 1), then the rest split unequally.
  std::vector<std::int64_t> b{0, 20};
  for (int k = 2; k < size; ++k) b.push_back(20 + (cols - 20) * (k - 1) / (size - 1) + k);
  b.push_back(cols);
  if (size == 1) b = {0, cols};
  const std::int64_t c0 = b[rank], w = b[rank + 1] - b[rank];
  double m = 0.0;
  for (auto v : zs) m = std::max(m, std::abs(double(v)));
  for (auto v : zt) m = std::max(m, std::abs(double(v)));
  const double eps_simd = 8.0 * std::ldexp(1.0, -24) * (m + 1.0), eps_ref = 64.0 * 64.0 * std::ldexp(1.0, -53);
  const kd::mpi_communicator comm{MPI_COMM_WORLD};
  for (const auto& d : kdt::kAllDivergences) {
    check(d, zs, zt, rows, cols, c0, w, comm, kd::reference_backend{}, eps_ref, "reference");
    check(d, zs, zt, rows, cols, c0, w, comm, kd::default_backend{}, eps_simd, "default");
  }
  int total = 0;
  MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0)
    std::printf("mpi_vocab_parallel: %d ranks, %zu divergences x 2 backends: %s\n", size, kdt::kAllDivergences.size(),
                total == 0 ? "ok" : "FAILED");
  MPI_Finalize();
  return total == 0 ? 0 : 1;
}
