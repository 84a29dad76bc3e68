#!/usr/bin/env bash
# Packs a CUDA build for a GPU machine that has the NVIDIA driver and CUDA runtime but not
# the Debian libraries lmx links (OpenBLAS, Highway, simdjson, PCRE2, utf8proc): the CLI,
# the test binaries with their ctest files, and those libraries in lib/.
#
#   tools/bundle-build.sh build-gpu /tmp/lmx-gpu.tgz
#   # there, in a checkout of the same commit:
#   tar xzf lmx-gpu.tgz && export LD_LIBRARY_PATH=$PWD/build-gpu/lib:$LD_LIBRARY_PATH
#   SKIP_BUILD=1 BUILD=build-gpu tools/gpu-test.sh
set -euo pipefail

build=${1:?usage: bundle-build.sh BUILD_DIR OUT.tgz}
out=${2:?usage: bundle-build.sh BUILD_DIR OUT.tgz}
[[ -x $build/tools/lmx/lmx ]] || { echo "bundle-build: $build/tools/lmx/lmx is missing; build it first" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
dest=$stage/$(basename "$build")
mkdir -p "$dest/lib"
# The binaries and what ctest needs to find the tests, at their paths in the build.
(cd "$build" && find . \( -name 'lmx' -o -name 'lmx_*_tests' -o -name 'stream_chat' -o -name 'CTestTestfile.cmake' \
   -o -name '*_include.cmake' -o -name '*_tests.cmake' \) -type f -print0 | tar cf - --null -T -) | tar xf - -C "$dest"
# Shared libraries from outside the CUDA toolkit and the C/C++ runtime.
ldd "$build/tools/lmx/lmx" "$build"/tests/lmx_*_tests | awk '/=> \//{print $3}' | sort -u |
  grep -v -E '/(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so|/cuda' |
  while read -r lib; do cp -L "$lib" "$dest/lib/"; done
tar czf "$out" -C "$stage" "$(basename "$build")"
echo "bundle-build: $(du -h "$out" | cut -f1) in $out"
