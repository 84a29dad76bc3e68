#!/usr/bin/env bash
# The CPU benchmark in one command: lmx and the transformers peer on the same CPU, with the
# same threads, on the three benchmark models (random bf16 weights), plus lmx alone on their
# MLX 4-bit twins (transformers does not read MLX checkpoints). Writes
# bench/results/YYYY-MM-DD-cpu.json with both in the same run.
#
# Workloads, smaller than the GPU's (a CPU decodes tens of tokens a second): decode at batch
# 1 and 8 after a 128-token prompt, 64 new tokens, greedy; one 512-token prompt's prefill.
# The peer decodes with transformers' default cache, in bf16 (hf_transformers.py --device cpu).
#
#   bench/run_cpu.sh
#   SKIP_BUILD=1 BUILD=build bench/run_cpu.sh
#
# Environment: BUILD (build), SKIP_BUILD, MODELS (/tmp/lmx-bench-models), OUT_DIR (where the
# raw JSON goes; $OUT or /tmp/lmx-bench-cpu-out), ONLY (default: the three models), THREADS
# (both sides' threads; default: every core: nproc), NO_PEER=1 (lmx alone), PYTHON (python3).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
MODELS=${MODELS:-/tmp/lmx-bench-models}
OUT_DIR=${OUT_DIR:-${OUT:-/tmp/lmx-bench-cpu-out}}
ONLY=${ONLY:-llama-3.2-1b qwen3-0.6b gemma3-1b}
THREADS=${THREADS:-$(nproc)}
PYTHON=${PYTHON:-python3}
export LMX_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
t0=$(date +%s)
log() { echo "[run_cpu $(( $(date +%s) - t0 ))s] $*" >&2; }
mkdir -p "$OUT_DIR" "$MODELS"

if [[ -n ${SKIP_BUILD:-} && -x $BUILD/tools/lmx/lmx ]]; then
  log "using the build in $BUILD"
else
  log "building $BUILD"
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLMX_BENCH=OFF >/dev/null
  cmake --build "$BUILD" --target lmx_cli
fi
LMX=$BUILD/tools/lmx/lmx

models=()
for m in $ONLY; do
  [[ -f $MODELS/$m/config.json ]] || { log "making $m"; "$LMX" random-model "$m" "$MODELS/$m" >/dev/null; }
  [[ -f $MODELS/$m-4bit/config.json ]] || "$LMX" random-model "$m" "$MODELS/$m-4bit" --bits 4 >/dev/null
  models+=("$m" "$m-4bit")
done

for m in "${models[@]}"; do
  dir=$MODELS/$m
  log "$m: lmx ($THREADS threads)"
  "$LMX" bench "$dir" --device cpu --decode --batch 1 --batch 8 --prompt-len 128 --gen-len 64 --warmup 1 --repeat 2 \
    --json > "$OUT_DIR/$m.lmx-decode.json"
  "$LMX" bench "$dir" --device cpu --prefill --prompt-len 512 --warmup 1 --repeat 2 --json > "$OUT_DIR/$m.lmx-prefill.json"
  [[ $m == *-4bit || -n ${NO_PEER:-} ]] && continue
  log "$m: transformers ($THREADS threads)"
  $PYTHON bench/peers/hf_transformers.py "$dir" --device cpu --decode --batch 1 8 --prompt-len 128 --gen-len 64 \
    --prefill --prefill-len 512 --warmup 1 --repeat 2 > "$OUT_DIR/$m.peer.json" 2> "$OUT_DIR/$m.peer.log" ||
    { log "$m: transformers failed; the end of its log:"; tail -n 5 "$OUT_DIR/$m.peer.log" >&2; }
done

cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
commit=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
day=$(date -u +%F)
out=bench/results/$day-cpu.json
i=2  # the day's next free name: never overwrite an earlier run's file
while [[ -e $out ]]; do out=bench/results/$day-cpu-$i.json; i=$((i + 1)); done
$PYTHON bench/merge_results.py --out "$out" --date "$day" --commit "$commit" --cpu "$cpu" --threads "$THREADS" \
  --models "$MODELS" "$OUT_DIR"
cp "$out" "$OUT_DIR/"
log "wrote $out"
