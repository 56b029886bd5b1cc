#!/usr/bin/env bash
# Builds and runs kd's divergence benchmarks and writes docs/performance.md (tables + machine description + roofline).
# Usage: scripts/bench.sh [--quick | --full] [--threads N] [--out FILE]
#   --quick   (default) the acceptance shapes: V = 128256, N in {64, 4096}, fp32 / bf16, fwd and fwd+bwd, FKL / RKL / JSD,
#             the composed baseline, triad, and libtorch at N in {64, 256}; a few minutes on 2 cores
#   --full    every shape of bench/bench_divergence.cpp (V in {32000, 128256, 256000}, N in {1, 64, 4096}; shapes above
#             KD_BENCH_MAX_GIB, default 8 GiB, are skipped) and of bench/bench_torch.cpp
# Environment: KD_BUILD_DIR (default build-bench), KD_BENCH_THREADS (default 2), KD_BENCH_MAX_GIB, KD_BENCH_REPS (2).
# Benchmark numbers are only as good as the machine is quiet: the report records the load average before and after.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=quick
OUT=docs/performance.md
THREADS="${KD_BENCH_THREADS:-2}"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) MODE=quick ;;
    --full) MODE=full ;;
    --threads) THREADS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    *) echo "usage: $0 [--quick|--full] [--threads N] [--out FILE]" >&2; exit 2 ;;
  esac
  shift
done
export KD_BENCH_THREADS="$THREADS"

BUILD="${KD_BUILD_DIR:-build-bench}"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" -j "${KD_JOBS:-2}" --target bench_divergence $( [ -n "$(grep -l bench_torch "$BUILD/build.ninja" 2>/dev/null)" ] && echo bench_torch )

RES="$BUILD/bench-results"
mkdir -p "$RES"
if [ "$MODE" = quick ]; then
  DIV_FILTER='BM_triad|BM_kd<(0|1|2|3|4|5), float, mode::fwd_bwd>/V:32000/N:1/|BM_kd<(0|1|2), float, mode::fwd_bwd>/V:128256/N:(64|4096)/|BM_kd<(3|4|5), float, mode::fwd_bwd>/V:128256/N:4096/|BM_kd<(0|1), float, mode::fwd>/V:128256/N:4096/|BM_kd<(0|1), kd::bfloat16, mode::fwd_bwd>/V:128256/N:4096/|BM_composed<(0|1), mode::fwd_bwd>/V:128256/N:(64|4096)/|BM_small_call'
  TORCH_FILTER='/V:128256/N:(64|256|1024)/'
else
  DIV_FILTER='.'
  TORCH_FILTER='.'
fi

lscpu >"$RES/lscpu.txt"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
REPS="${KD_BENCH_REPS:-2}"  # fastest of REPS repetitions is reported (shared machines)
"$BUILD/bench/bench_divergence" --benchmark_filter="$DIV_FILTER" --benchmark_out="$RES/divergence.json" \
  --benchmark_out_format=json --benchmark_repetitions="$REPS"
TORCH_JSON=""
if [ -x "$BUILD/bench/bench_torch" ]; then
  "$BUILD/bench/bench_torch" --benchmark_filter="$TORCH_FILTER" --benchmark_out="$RES/torch.json" --benchmark_out_format=json \
    --benchmark_repetitions="$REPS"
  TORCH_JSON="$RES/torch.json"
fi
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

/usr/bin/python3 bench/report.py --divergence "$RES/divergence.json" ${TORCH_JSON:+--torch "$TORCH_JSON"} \
  --lscpu "$RES/lscpu.txt" --command "scripts/bench.sh --$MODE --threads $THREADS" \
  --load-before "$LOAD_BEFORE" --load-after "$LOAD_AFTER" --out "$OUT"
echo "wrote $OUT"
