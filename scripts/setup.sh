#!/usr/bin/env bash
# Installs everything kd needs on Debian 12 with apt-get, then the Python environment of the PyTorch package (.venv/,
# scripts/setup-python.sh: torch and TRL from PyPI). Idempotent: installs only what is missing, quiet otherwise.
# Run as root, or as a user with sudo. KD_SKIP_PYTHON=1 skips the Python environment.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libeigen3-dev        # Eigen 3.4: bfloat16 / half types
  libxsimd-dev         # xsimd 8.1: SIMD kernels
  catch2               # Catch2 2.13: tests
  libbenchmark-dev     # Google Benchmark 1.7: bench/
  clang-14 libclang-rt-14-dev  # clang build, sanitizers and libFuzzer (tests/fuzz)
  libtorch-dev libopenblas0-pthread   # examples/minillm trainer (libtorch 1.13) and fast matrix products
  libsentencepiece-dev sentencepiece  # tokenizer for the trainer
  fortunes fortunes-min               # default corpus for the trainer (/usr/share/games/fortunes)
  python3 python3-venv python3-dev    # the PyTorch package (python/): its virtual environment and extension build
  openmpi-bin libopenmpi-dev          # vocabulary-parallel over MPI (kd/comm/mpi.hpp, tests/mpi/)
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "kd setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "${KD_SKIP_PYTHON:-0}" != "1" ]; then
  bash "$(dirname "$0")/setup-python.sh"
fi
