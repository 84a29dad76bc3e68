#!/usr/bin/env bash
# Where a decode step's device time goes, kernel by kernel (bench/NOTES.md, p40's batch-64
# table). ncu times every kernel of two `lmx bench --decode` runs that differ only in the
# tokens they generate; step_kernels.py takes the difference per kernel and divides it by
# the extra steps, so that the load, the prefill and the setup cancel. ncu runs each kernel
# alone (at base clocks unless told otherwise), so the sums exceed what a step takes: they
# say where the time goes, not how long a step is (lmx bench says that).
#
#   bench/step_kernels.sh MODEL_DIR [BATCH]
#   bench/step_kernels.sh /tmp/gemma3-1b 64
#
# Environment: LMX (build-gpu/tools/lmx/lmx), PROMPT_LEN (128), SHORT (4) and LONG (12)
# tokens generated, EXTRA (more `lmx bench` flags, e.g. "--temperature 0.6 --top-k 20"),
# NCU_FLAGS (more ncu flags). By default ncu flushes the caches before each kernel, so a
# small kernel's inputs come from DRAM where in a step they are in L2: NCU_FLAGS="--cache-control
# none --clock-control none" times each kernel with warm caches at the board's own clocks.
set -euo pipefail
[[ $# -ge 1 && -f $1/config.json ]] || { sed -n '2,16p' "$0" >&2; exit 1; }
command -v ncu >/dev/null || { echo "step_kernels: ncu (Nsight Compute) is not on PATH" >&2; exit 1; }
model=$1 batch=${2:-1}
lmx=${LMX:-build-gpu/tools/lmx/lmx}
short=${SHORT:-4} long=${LONG:-12}
(( long > short )) || { echo "step_kernels: LONG must exceed SHORT" >&2; exit 1; }
dir=$(mktemp -d)
read -r -a extra <<<"${EXTRA:-}"
read -r -a ncu_flags <<<"${NCU_FLAGS:-}"
for n in "$short" "$long"; do
  ncu "${ncu_flags[@]}" --metrics gpu__time_duration.sum --csv "$lmx" bench "$model" --device cuda --decode --batch "$batch" \
    --prompt-len "${PROMPT_LEN:-128}" --gen-len "$n" --warmup 0 --repeat 1 "${extra[@]}" >"$dir/$n.csv" \
    2>"$dir/$n.log" || { echo "step_kernels: ncu failed; see $dir/$n.log" >&2; exit 1; }
done
python3 "$(dirname "$0")/step_kernels.py" "$dir/$short.csv" "$dir/$long.csv" $((long - short))
rm -rf "$dir"
