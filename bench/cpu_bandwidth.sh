#!/usr/bin/env bash
# Decode GEMV bandwidth against memcpy bandwidth on this CPU: one W read again and again
# (BM_gemv), and the shapes of a decode step over weights larger than the caches
# (BM_gemv_streamed).
#
# The decode step's matrix-vector products read each weight once, so the bytes of W read
# per second, divided by the bytes (read + write) a large memcpy moves per second, says
# how close the kernel gets to the memory system's limit. Each benchmark runs several
# times and the best run counts: other processes only ever slow a run down.
#
# Usage: bench/cpu_bandwidth.sh [path/to/lmx_micro_bench] [repetitions]
set -euo pipefail
bench=${1:-build/bench/lmx_micro_bench}
reps=${2:-7}
[[ -x $bench ]] || { echo "cpu_bandwidth: no benchmark binary at $bench (build target lmx_micro_bench)" >&2; exit 1; }
json=$(mktemp)
trap 'rm -f "$json"' EXIT
"$bench" --benchmark_filter='BM_gemv|BM_memcpy' --benchmark_min_time=0.3 --benchmark_repetitions="$reps" \
  --benchmark_format=json >"$json"
python3 - "$json" <<'PY'
import json, sys
runs = [b for b in json.load(open(sys.argv[1]))["benchmarks"] if b.get("run_type") == "iteration"]
best = {}
for b in runs:
    key = (b["run_name"], b.get("label", ""))
    best[key] = max(best.get(key, 0.0), b["bytes"])
memcpy = {label: v for (name, label), v in best.items() if name.startswith("BM_memcpy")}
copy1 = memcpy.get("one thread", 0.0)
copyn = memcpy.get("threads", 0.0)
print(f"memcpy 256 MiB, read+write:  one thread {copy1 / 1e9:6.1f} GB/s   all threads {copyn / 1e9:6.1f} GB/s")
for (name, label), v in sorted(best.items()):
    if name.startswith("BM_gemv_streamed"):  # BM_gemv_streamed/N/K/real_time: W from memory
        n, k = name.split("/")[1:3]
        shape, label = f"[1,{k}]x[{n},{k}]^T", "bfloat16, streamed"
    elif name.startswith("BM_gemv"):  # one 32 MiB W again and again
        shape = "[1,2048]x[8192,2048]^T"
    else:
        continue
    print(f"gemv {shape:24s} {label:18s} W read {v / 1e9:6.1f} GB/s   "
          f"ratio to memcpy: one thread {v / copy1:5.2f}   all threads {v / copyn:5.2f}")
PY
