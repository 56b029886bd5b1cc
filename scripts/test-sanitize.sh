#!/usr/bin/env bash
# The sanitizer stage of CI: builds kd's whole test suite, the kd tool and the libFuzzer targets with clang 14 under
# AddressSanitizer + UndefinedBehaviorSanitizer (-fno-sanitize-recover=all: the first report fails the test), then runs
# CTest, which includes the fixed-seed fuzz smoke runs (fuzz/, KD_FUZZ_RUNS executions per target).
# Excluded here: the libtorch example and its tests (KD_BUILD_EXAMPLES=OFF: libtorch itself is not instrumented), the
# benchmarks (not tests), and the header_check / consumer_check / nvcc_check / odr_check tests (they compile with their
# own flags or inspect object code, and test no sanitized code; the main stage, scripts/test.sh, runs them), and the
# mpirun tests (Open MPI is not instrumented and leaks by design; tests/test_vocab_parallel.cpp runs the same driver
# on threads here).
# Usage: scripts/test-sanitize.sh             (build dir: build-asan/)
#        KD_SAN_BUILD_DIR=dir KD_JOBS=n KD_FUZZ_RUNS=n scripts/test-sanitize.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD="${KD_SAN_BUILD_DIR:-build-asan}"
JOBS="${KD_JOBS:-$(nproc)}"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_COMPILER=clang++-14 \
  -DCMAKE_CXX_FLAGS="-O1 $SAN" -DCMAKE_EXE_LINKER_FLAGS="$SAN" -DCMAKE_SHARED_LINKER_FLAGS="$SAN" \
  -DKD_BUILD_FUZZ=ON -DKD_FUZZ_RUNS="${KD_FUZZ_RUNS:-3000}" \
  -DKD_BUILD_EXAMPLES=OFF -DKD_BUILD_BENCH=OFF -DKD_INSTALL=OFF -DKD_NVCC_CHECK=OFF -DKD_WERROR=ON >/dev/null
cmake --build "$BUILD" -j "$JOBS"
export ASAN_OPTIONS="detect_leaks=1:check_initialization_order=1:strict_init_order=1:detect_stack_use_after_return=1:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
ctest --test-dir "$BUILD" --output-on-failure -j "$JOBS" -E '^(header_check|consumer_check|nvcc_check|odr_check|mpi_vocab_parallel_np[0-9]+)$'
