#!/usr/bin/env bash
# The GPU benchmark in one command: builds lmx with CUDA (or takes a build made
# elsewhere), makes the three benchmark models (real configurations, random bf16 weights),
# runs `lmx bench` and the transformers peer on every workload of issue F, and writes
# bench/results/YYYY-MM-DD-h200.json with both in the same run. Most of the time is the
# peer's compilation of each decode shape: run one model after another, it took 432 s on a
# fast machine and 559 s on a slow one (the peer 119, 183 and 207 s there). The three peer
# processes now compile side by side and time one at a time.
#
#   bench/run_gpu.sh
#   SKIP_BUILD=1 BUILD=build-gpu bench/run_gpu.sh   # a CUDA build made on another machine
#
# Environment: BUILD (build-gpu), SKIP_BUILD, MODELS (/tmp/lmx-bench-models), OUT_DIR
# (where the raw JSON goes; $OUT or /tmp/lmx-bench-out), ONLY (models to run, default all
# three), MAKE_MODELS=hf to create the models through transformers instead of
# `lmx random-model`, PYTHON (python3).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-gpu}
MODELS=${MODELS:-/tmp/lmx-bench-models}
OUT_DIR=${OUT_DIR:-${OUT:-/tmp/lmx-bench-out}}
ONLY=${ONLY:-llama-3.2-1b qwen3-0.6b gemma3-1b}
PYTHON=${PYTHON:-python3}
SAMPLING="--temperature 0.6 --top-k 20 --top-p 0.95"
t0=$(date +%s)
log() { echo "[run_gpu $(( $(date +%s) - t0 ))s] $*" >&2; }
mkdir -p "$OUT_DIR" "$MODELS"

if [[ -n ${SKIP_BUILD:-} && -x $BUILD/tools/lmx/lmx ]]; then
  log "using the build in $BUILD"
else
  log "building $BUILD"
  cmake -S . -B "$BUILD" -G Ninja -DLMX_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DLMX_BENCH=OFF >/dev/null
  cmake --build "$BUILD" --target lmx_cli
fi
LMX=$BUILD/tools/lmx/lmx

for m in $ONLY; do
  [[ -f $MODELS/$m/config.json ]] && continue
  log "making $m"
  if [[ ${MAKE_MODELS:-lmx} == hf ]]; then
    $PYTHON tools/reference/make_bench_models.py --out "$MODELS" --only "$m"
  else
    "$LMX" random-model "$m" "$MODELS/$m" >/dev/null
  fi
done

for m in $ONLY; do
  dir=$MODELS/$m
  log "$m: lmx decode (batch 1, 8, 64; sampled at batch 1)"
  "$LMX" bench "$dir" --device cuda --decode --batch 1 --prompt-len 128 --gen-len 256 --warmup 1 --repeat 3 --json \
    > "$OUT_DIR/$m.lmx-decode1.json"
  "$LMX" bench "$dir" --device cuda --decode --batch 8 --batch 64 --prompt-len 128 --gen-len 256 --warmup 1 --repeat 2 \
    --json > "$OUT_DIR/$m.lmx-decode-batch.json"
  # Sampled decode (no target): Qwen3's recommended options, the same for every model.
  "$LMX" bench "$dir" --device cuda --decode --batch 1 --prompt-len 128 --gen-len 256 --warmup 1 --repeat 3 \
    $SAMPLING --json > "$OUT_DIR/$m.lmx-decode-sampled.json"
  log "$m: lmx classify and prefill"
  "$LMX" bench "$dir" --device cuda --classify --prompts 1024 --prompt-len 32 --json > "$OUT_DIR/$m.lmx-classify.json"
  "$LMX" bench "$dir" --device cuda --prefill --prompt-len 4096 --json > "$OUT_DIR/$m.lmx-prefill.json"
done

# The peer: one process per model, all at once. They compile every shape side by side (most
# of their time), then meet and time one at a time under a lock (hf_transformers.py
# --rendezvous), so no timed pass shares the GPU. A process that ends early is marked ready
# here, so that the others do not wait for it.
meet=$OUT_DIR/peer-rendezvous
rm -rf "$meet" && mkdir -p "$meet"
declare -A pid
for m in $ONLY; do
  log "$m: transformers (compiling beside the others, timed alone)"
  ( rc=0
    $PYTHON bench/peers/hf_transformers.py "$MODELS/$m" --decode --batch 1 8 64 --sampled-batch 1 $SAMPLING \
      --classify --prefill --repeat 3 --rendezvous "$meet" --processes $(wc -w <<< "$ONLY") \
      > "$OUT_DIR/$m.peer.json" 2> "$OUT_DIR/$m.peer.log" || rc=$?
    touch "$meet/ready.$m"
    exit $rc ) &
  pid[$m]=$!
done
failed=0  # a failed peer still leaves lmx's figures in the result file (its rows say why), and the run fails
for m in $ONLY; do
  if wait "${pid[$m]}"; then
    log "$m: transformers done"
  else
    log "$m: transformers failed; the end of its log:"; tail -n 5 "$OUT_DIR/$m.peer.log" >&2; failed=1
  fi
done

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
# COMMIT names the measured code where the checkout's git metadata may be stale or absent.
commit=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
day=$(date -u +%F)
out=bench/results/$day-h200.json
i=2  # the day's next free name: never overwrite an earlier run's file
while [[ -e $out ]]; do out=bench/results/$day-h200-$i.json; i=$((i + 1)); done
$PYTHON bench/merge_results.py --out "$out" --date "$day" --commit "$commit" --gpu "$gpu" --models "$MODELS" "$OUT_DIR"
cp "$out" "$OUT_DIR/"
log "wrote $out"
if [[ $failed != 0 ]]; then
  log "the peer failed for some models: their rows have no peer figures"
  exit 1
fi
