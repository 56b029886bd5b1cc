// kd gradcheck: for every loss, random inputs (including large-magnitude logits, -inf masked logits, a fully masked row, an
// ignored row and row weights), compares
//   1. the analytic gradients of the double reference (student and teacher side) with central finite differences of the
//      reduced loss in double precision, and
//   2. the fused kernels of kd::default_backend on float32 / bfloat16 / float16 inputs with the double reference evaluated on
//      the same (rounded) inputs.
// Prints a table (loss, T, dtype, check, worst relative error, tolerance, pass/fail); exits 1 if any check fails.
#include <kd/kd.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cli.hpp"
#include "commands.hpp"
#include "gradcheck.hpp"

namespace kdtool {
namespace {

using namespace gradcheck;

int gradcheck_main(int argc, char** argv) {
  args a(argc, argv, {"seed", "rows", "vocab"}, {"verbose"});
  if (a.help()) {
    std::puts(
        "usage: kd gradcheck [--seed S] [--rows N] [--vocab V]\n"
        "  --seed in [0, 2^32 - 1] (default 1), --rows in [1, 256] (default 6), --vocab in [2, 4096] (default 37).\n"
        "Checks every loss's analytic gradient (student and teacher side) against central finite differences in double\n"
        "precision, and the fused kernels (kd::default_backend) on float32/bfloat16/float16 inputs against the double\n"
        "reference. Inputs include large-magnitude logits, -inf masked logits, a fully masked row, an ignored row and row\n"
        "weights. Exit code 1 when any check fails.");
    return 0;
  }
  // Upper limits: the finite-difference check costs O((rows * vocab)^2) loss evaluations, so larger problems would run for
  // hours (and sizes near 2^63 ended in std::bad_alloc).
  const auto seed = static_cast<std::uint32_t>(a.integer_in("seed", 1, 0, 4294967295LL));
  const std::int64_t rows = a.integer_in("rows", 6, 1, 256), cols = a.integer_in("vocab", 37, 2, 4096);
  // Tolerances: finite differences in double with h = 1e-5 are accurate to ~1e-9 of the largest entry; float32 kernels to
  // ~1e-6; 16-bit inputs are compared with the reference on the same rounded inputs, so the same bound applies.
  const double tol_fd = 1e-6, tol_loss = 2e-5, tol_grad = 2e-5;
  std::printf("kd gradcheck: seed %u, %lld rows x %lld vocab, backend '%s' vs reference (double)\n", seed,
              static_cast<long long>(rows), static_cast<long long>(cols), kd::default_backend::name());
  std::printf("%-10s %-4s %-9s %-22s %12s %9s  %s\n", "loss", "T", "dtype", "check", "worst rel", "tol", "result");
  int failures = 0, checks = 0;
  auto report = [&](const char* loss, double t, const char* dtype, const char* check, double err, double tol) {
    const bool ok = err <= tol;
    failures += !ok;
    ++checks;
    std::printf("%-10s %-4.3g %-9s %-22s %12.3e %9.1e  %s\n", loss, t, dtype, check, err, tol, ok ? "pass" : "FAIL");
  };
  for (double t : {1.0, 2.5}) {
    problem p = make_problem(seed + static_cast<std::uint32_t>(t * 10), rows, cols, t);
    for (const auto& c : kCases) {
      report(c.name.c_str(), t, "float64", "grad student vs FD", fd_check(c.d, p, false), tol_fd);
      report(c.name.c_str(), t, "float64", "grad teacher vs FD", fd_check(c.d, p, true), tol_fd);
      auto f32 = fused_check<float>(c.d, p);
      report(c.name.c_str(), t, "float32", "fused loss vs ref", f32.first, tol_loss);
      report(c.name.c_str(), t, "float32", "fused grad vs ref", f32.second, tol_grad);
      auto b16 = fused_check<kd::bfloat16>(c.d, p);
      report(c.name.c_str(), t, "bfloat16", "fused loss vs ref", b16.first, tol_loss);
      report(c.name.c_str(), t, "bfloat16", "fused grad vs ref", b16.second, tol_grad);
      auto f16 = fused_check<kd::half>(c.d, p);
      report(c.name.c_str(), t, "float16", "fused loss vs ref", f16.first, tol_loss);
      report(c.name.c_str(), t, "float16", "fused grad vs ref", f16.second, tol_grad);
    }
  }
  std::printf("%d passed, %d failed\n", checks - failures, failures);
  return failures ? 1 : 0;
}

}  // namespace

int cmd_gradcheck(int argc, char** argv) {
  try {
    return gradcheck_main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kd gradcheck: %s\n", e.what());
    return 2;
  }
}

}  // namespace kdtool
