#!/usr/bin/env bash
# The main job: distill a teacher GPT into a student GPT on real text with kd's losses (examples/minillm, libtorch).
# Installs what is missing (scripts/setup.sh), builds the `minillm` target, runs it; extra arguments go to minillm
# (e.g. --smoke, --steps 200, --corpus my.txt, --threads 4; see --help). Outputs: out/minillm/ (summary.md, curves.svg,
# train_log.csv, eval.csv, samples.txt); cache (tokenizer, teacher checkpoint): .cache/minillm/. docs/minillm.md explains it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD="${KD_BUILD_DIR:-build}"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
if ! cmake --build "$BUILD" -j "$(nproc)" --target minillm; then
  echo "minillm.sh: build failed (is libtorch-dev installed? scripts/setup.sh installs it)" >&2
  exit 1
fi
if [ ! -x "$BUILD/examples/minillm/minillm" ]; then
  echo "minillm.sh: the minillm target was not configured (Torch or sentencepiece not found by CMake)" >&2
  exit 1
fi
exec "$BUILD/examples/minillm/minillm" "$@"
