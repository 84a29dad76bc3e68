#!/usr/bin/env bash
# The GPU machine's test run: a CUDA build in build-gpu, every ctest suite, then the op
# tests under compute-sanitizer (memcheck, racecheck). Prints a summary and exits
# non-zero when any step fails. Meant to finish within about 9 minutes on 16 cores.
# initcheck is left out: it does not see cuBLAS's stores, so it reports every read of a
# GEMM's output (tools/initcheck_cublas.cu shows it).
#
#   tools/gpu-test.sh                 # everything
#   MEMCHECK_FILTER='Cuda.*' tools/gpu-test.sh
set -uo pipefail

cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-gpu}
JOBS=${JOBS:-$(nproc)}
SANITIZER=${SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
# memcheck runs every op test on the GPU; racecheck (slower, shared memory only) runs the
# tests whose kernels share memory between threads.
MEMCHECK_FILTER=${MEMCHECK_FILTER:-'*'}
# memcheck counts every failed CUDA API call as an error (exit 97); this test fails
# cudaMalloc on purpose, so memcheck always leaves it out.
MEMCHECK_EXCLUDE='Cuda.OutOfMemoryIsRecoverable'
if [[ $MEMCHECK_FILTER == *-* ]]; then
  memcheck_gtest_filter="$MEMCHECK_FILTER:$MEMCHECK_EXCLUDE"
else
  memcheck_gtest_filter="$MEMCHECK_FILTER-$MEMCHECK_EXCLUDE"
fi
RACECHECK_FILTER=${RACECHECK_FILTER:-'Cuda.*:*Reduce*:*Sort*:*Sampling*:*Attention*:*Norm*'}
MEMCHECK_TIMEOUT=${MEMCHECK_TIMEOUT:-240}
RACECHECK_TIMEOUT=${RACECHECK_TIMEOUT:-180}

declare -a names results
status=0
section() { printf '\n==================== %s ====================\n' "$1"; }
record() {  # record NAME EXIT_CODE
  names+=("$1")
  if [[ $2 -eq 0 ]]; then results+=("ok"); else results+=("FAILED (exit $2)"); status=1; fi
}

section "GPU"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
else
  echo "nvidia-smi not found"
fi

if [[ -n "${SKIP_BUILD:-}" && -x "$BUILD/tests/lmx_ops_tests" ]]; then
  # A build made elsewhere (same CUDA version), e.g. where the GPU machine lacks the
  # Debian -dev packages: only run it.
  section "using the prebuilt $BUILD"
  record "build (prebuilt)" 0
else
  section "configure ($BUILD)"
  cmake -S . -B "$BUILD" -G Ninja -DLMX_CUDA=ON -DCMAKE_BUILD_TYPE=Release
  record "configure" $?

  section "build (-j$JOBS)"
  if [[ ${results[-1]} == ok ]]; then
    cmake --build "$BUILD" -j "$JOBS"
    record "build" $?
  else
    record "build" 1
  fi
fi

if [[ ${results[-1]} == ok ]]; then
  section "ctest (all suites)"
  # Test cases are separate processes; a few at a time share the GPU well.
  ctest --test-dir "$BUILD" --output-on-failure -j "$(( JOBS < 8 ? JOBS : 8 ))" --timeout 300
  record "ctest" $?

  ops_tests="$BUILD/tests/lmx_ops_tests"
  section "CUDA tests run (not skipped)"
  # Every CUDA case skips where no GPU is visible; on this machine a skip is a failure.
  out=$("$ops_tests" --gtest_filter='Cuda.*' --gtest_brief=1 2>&1)
  rc=$?
  echo "$out" | tail -5
  if [[ $rc -eq 0 ]] && grep -q "SKIPPED" <<<"$out"; then rc=1; echo "CUDA tests were skipped: no usable GPU"; fi
  record "cuda-visible" $rc

  if [[ -x $SANITIZER ]]; then
    # Leak checking stays off: the caching allocator keeps freed blocks until exit by design.
    section "compute-sanitizer memcheck ($memcheck_gtest_filter)"
    timeout "$MEMCHECK_TIMEOUT" "$SANITIZER" --tool memcheck --error-exitcode 97 --leak-check no \
      "$ops_tests" --gtest_filter="$memcheck_gtest_filter" --gtest_brief=1
    record "memcheck" $?

    section "compute-sanitizer racecheck ($RACECHECK_FILTER)"
    timeout "$RACECHECK_TIMEOUT" "$SANITIZER" --tool racecheck --error-exitcode 97 \
      "$ops_tests" --gtest_filter="$RACECHECK_FILTER" --gtest_brief=1
    record "racecheck" $?
  else
    echo "compute-sanitizer not found at $SANITIZER"
    record "compute-sanitizer" 1
  fi
fi

section "summary"
for i in "${!names[@]}"; do printf '  %-12s %s\n' "${names[$i]}" "${results[$i]}"; done
[[ $status -eq 0 ]] && echo "all passed" || echo "FAILURES above (exit 124 = timed out)"
exit $status
