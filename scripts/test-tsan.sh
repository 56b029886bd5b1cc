#!/usr/bin/env bash
# The ThreadSanitizer stage of CI: builds only the tests that run more than one thread (the thread pool and
# thread_executor, determinism,
# the dispatch and SIMD suites, the policy-gradient units, which run with 2 threads, and the vocabulary-parallel test,
# whose ranks are threads) with clang 14 -fsanitize=thread
# in build-tsan/, and runs them with CTest. A TSan report fails the test (halt_on_error=1).
# Usage: scripts/test-tsan.sh            (build dir: build-tsan/)
#        KD_TSAN_BUILD_DIR=dir KD_JOBS=n scripts/test-tsan.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD="${KD_TSAN_BUILD_DIR:-build-tsan}"
JOBS="${KD_JOBS:-$(nproc)}"
# The tests that start threads (grep tests/ for thread_executor{2}, dispatch_backend{..., 2}, std::thread when adding one).
TESTS=(test_thread_pool test_simd_threads test_determinism test_simd_dispatch test_simd_divergence test_pg_units test_vocab_parallel)
SAN="-fsanitize=thread -fno-omit-frame-pointer"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++-14 \
  -DCMAKE_CXX_FLAGS="$SAN" -DCMAKE_EXE_LINKER_FLAGS="$SAN" -DCMAKE_SHARED_LINKER_FLAGS="$SAN" \
  -DKD_BUILD_EXAMPLES=OFF -DKD_BUILD_BENCH=OFF -DKD_BUILD_TOOLS=OFF -DKD_INSTALL=OFF -DKD_NVCC_CHECK=OFF \
  -DKD_WERROR=ON >/dev/null
cmake --build "$BUILD" -j "$JOBS" --target "${TESTS[@]}"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1"
ctest --test-dir "$BUILD" --output-on-failure -j "$JOBS" -R "^($(IFS='|'; echo "${TESTS[*]}"))\$"
