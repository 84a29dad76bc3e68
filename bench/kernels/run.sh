#!/usr/bin/env bash
# Builds and runs the kernel lab (needs nvcc and a Hopper GPU). Exits non-zero if a
# variant's check fails.
#   bench/kernels/run.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")"
out=${1:-/tmp/lmx-kernel-lab}
mkdir -p "$out"
for src in *.cu; do
  # -I../../src: the labs share the library's TMA, mbarrier and wgmma helpers (and the head lab its dot
  # products and argmax, whose headers need ../../include).
  nvcc -O3 -std=c++20 -gencode arch=compute_90a,code=sm_90a -lineinfo -I../../src -I../../include -o "$out/${src%.cu}" "$src" -lcublasLt -lcublas
done
for src in *.cu; do "$out/${src%.cu}"; done
