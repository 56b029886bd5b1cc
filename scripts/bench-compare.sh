#!/usr/bin/env bash
# Same-run comparison of kd's divergence kernels against another commit: builds bench/bench_divergence of REV (in a
# temporary git worktree) and of the working tree, runs the two alternately (ABAB..., so drifting machine load hits
# both) on the --quick shapes of scripts/bench.sh, and prints the fastest time of each side and their ratio.
# Usage: scripts/bench-compare.sh REV [ROUNDS]        (ROUNDS alternations, default 3; each runs every shape once)
# Environment: KD_BENCH_THREADS (default 2), KD_BENCH_FILTER (a Google Benchmark regex; default the --quick kd rows),
#              KD_BENCH_MIN_TIME (seconds per benchmark, default 0.3).
# A ratio within ~5% of 1 is noise on a shared 2-core machine; the load average is printed before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
REV="${1:?usage: scripts/bench-compare.sh REV [ROUNDS]}"
ROUNDS="${2:-3}"
export KD_BENCH_THREADS="${KD_BENCH_THREADS:-2}"
DEFAULT_FILTER='BM_kd<(0|1), float, mode::fwd_bwd>/V:32000/N:1/|BM_kd<(0|1|2), float, mode::fwd_bwd>/V:128256/N:(64|4096)/|BM_kd<(0|1), float, mode::fwd>/V:128256/N:4096/|BM_kd<(0|1), kd::bfloat16, mode::fwd_bwd>/V:128256/N:4096/'
FILTER="${KD_BENCH_FILTER:-$DEFAULT_FILTER}"
MIN_TIME="${KD_BENCH_MIN_TIME:-0.3}"
WORK="$(mktemp -d /tmp/kd-bench-compare.XXXXXX)"
trap 'git worktree remove --force "$WORK/base" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

echo "kd bench-compare: building $REV (base) and the working tree (head)" >&2
git worktree add --detach "$WORK/base" "$REV" >/dev/null 2>&1
for side in base head; do
  src=$([ "$side" = base ] && echo "$WORK/base" || echo .)
  cmake -S "$src" -B "$WORK/build-$side" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKD_BENCH_TORCH=OFF >/dev/null
  cmake --build "$WORK/build-$side" -j "${KD_JOBS:-2}" --target bench_divergence >/dev/null
done

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for ((r = 1; r <= ROUNDS; ++r)); do
  for side in base head; do
    echo "round $r/$ROUNDS: $side" >&2
    "$WORK/build-$side/bench/bench_divergence" --benchmark_filter="$FILTER" --benchmark_min_time="$MIN_TIME" \
      --benchmark_out="$WORK/$side-$r.json" --benchmark_out_format=json >"$WORK/$side-$r.txt"
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

/usr/bin/python3 - "$WORK" "$ROUNDS" "$REV" <<'EOF'
import json, sys
work, rounds, rev = sys.argv[1], int(sys.argv[2]), sys.argv[3]
best = {"base": {}, "head": {}}
for side in best:
    for r in range(1, rounds + 1):
        for b in json.load(open(f"{work}/{side}-{r}.json"))["benchmarks"]:
            t = (b["real_time"], b["time_unit"])
            best[side][b["name"]] = min(best[side].get(b["name"], t), t)
print(f"| benchmark | {rev} | working tree | ratio (head / base) |")
print("|---|---|---|---|")
for name, tb in best["base"].items():
    th = best["head"].get(name)
    if th is None:
        continue
    print(f"| {name} | {tb[0]:.3f} {tb[1]} | {th[0]:.3f} {th[1]} | {th[0] / tb[0]:.3f} |")
EOF
