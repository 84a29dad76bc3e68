#!/usr/bin/env bash
# Installs the dependencies, builds lmx, and runs it on the model shipped in the
# repository (a tiny random Llama-architecture test model).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target lmx_cli
build/tools/lmx/lmx --version
build/tools/lmx/lmx selfcheck
