#!/usr/bin/env bash
# Installs the dependencies, builds lmx, and runs it on the model shipped in the
# repository (a tiny random-weight Qwen3-architecture test model).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target lmx_cli
build/tools/lmx/lmx --version
build/tools/lmx/lmx selfcheck
# The embedded default model: a tiny Qwen3-architecture model with random weights and
# a small tokenizer, shipped in tests/fixtures. Its text is gibberish; the pipeline is real.
build/tools/lmx/lmx generate tests/fixtures/models/qwen3-f32 --prompt "The quick brown fox" --max-tokens 24 \
  --temperature 0.8 --seed 1
