#!/usr/bin/env bash
# Builds every libFuzzer target with clang and runs each for N seconds (default 600)
# on a working copy of its seed corpus. Crashes land in <build>/fuzz-artifacts/.
# Usage: scripts/fuzz.sh [seconds]     env: LMX_FUZZ_BUILD (build dir), JOBS
set -euo pipefail

seconds=${1:-600}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${LMX_FUZZ_BUILD:-$root/build-fuzz}

CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DLMX_FUZZ=ON -DLMX_TESTS=OFF -DLMX_BENCH=OFF -DLMX_CUDA=OFF >/dev/null

targets=()
for src in "$root"/tests/fuzz/fuzz_*.cpp; do
  [[ -e $src ]] && targets+=("$(basename "$src" .cpp)")
done
if [[ ${#targets[@]} -eq 0 ]]; then
  echo "no fuzz targets in tests/fuzz" >&2
  exit 1
fi
cmake --build "$build" --target "${targets[@]}" -j"${JOBS:-2}"

failed=()
mkdir -p "$build/fuzz-artifacts"
for target in "${targets[@]}"; do
  name=${target#fuzz_}
  work="$build/fuzz-corpus/$name"
  mkdir -p "$work"
  # The working copy grows with new inputs; the seed corpus in the tree stays small.
  if [[ -d $root/tests/fuzz/corpus/$name ]]; then
    cp -n "$root/tests/fuzz/corpus/$name"/* "$work"/ 2>/dev/null || true
  fi
  echo "== $target for ${seconds}s (corpus $work)"
  if ! "$build/tests/fuzz/$target" "$work" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 \
      -artifact_prefix="$build/fuzz-artifacts/$name-" -print_final_stats=1; then
    failed+=("$target")
  fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzzers that found a crash: ${failed[*]} (inputs in $build/fuzz-artifacts/)" >&2
  exit 1
fi
echo "all fuzzers ran ${seconds}s without a crash"
