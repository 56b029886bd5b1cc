#!/usr/bin/env bash
# Installs what is missing, builds kd (Release, warnings as errors: -DKD_WERROR=ON) and runs the whole test suite with CTest,
# then the PyTorch package's tests (scripts/test-python.sh: builds python/ into .venv/ and runs pytest;
# KD_SKIP_PYTHON=1 skips them, saying so).
# Usage: scripts/test.sh            (build dir: build/)
#        KD_BUILD_DIR=dir scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD="${KD_BUILD_DIR:-build}"
JOBS="${KD_JOBS:-$(nproc)}"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKD_WERROR=ON >/dev/null
cmake --build "$BUILD" -j "$JOBS"
ctest --test-dir "$BUILD" --output-on-failure -j "$JOBS"
if [ "${KD_SKIP_PYTHON:-0}" != "1" ]; then
  bash scripts/test-python.sh
else
  echo "kd test: KD_SKIP_PYTHON=1: the PyTorch package's tests were NOT run" >&2
fi
