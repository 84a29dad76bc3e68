#!/usr/bin/env bash
# The whole test suite, from a fresh clone: dependencies, test data, a release build
# with every test, the unit tests again under AddressSanitizer + UBSan, and a replay of
# the fuzzers' corpora. CUDA tests skip with a message where no GPU is visible.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

scripts/install-deps.sh
scripts/fetch-test-data.sh

echo "== release build and tests"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure -j"$jobs"

echo "== AddressSanitizer + UndefinedBehaviorSanitizer build and unit tests"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLMX_SANITIZE=ON -DLMX_BENCH=OFF \
  -DLMX_CUDA=OFF >/dev/null
cmake --build build-asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -j"$jobs"

if [ -f tests/fuzz/CMakeLists.txt ]; then
  echo "== fuzzer corpus replay (clang, libFuzzer)"
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLMX_FUZZ=ON \
    -DLMX_TESTS=OFF -DLMX_BENCH=OFF -DLMX_CUDA=OFF >/dev/null
  targets=$(for f in tests/fuzz/fuzz_*.cpp; do basename "$f" .cpp; done)
  cmake --build build-fuzz -j"$jobs" --target $targets
  ctest --test-dir build-fuzz -L fuzz --output-on-failure -j"$jobs"
fi
echo "== all tests passed"
