#!/usr/bin/env bash
# The main job. Installs what is missing, builds, then runs `kd gradcheck` (every loss's gradient against finite differences
# and the fused kernels against the double reference). Extra arguments go to `kd gradcheck`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD="${KD_BUILD_DIR:-build}"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" -j "$(nproc)" --target kd_cli
"$BUILD/kd" gradcheck "$@"
