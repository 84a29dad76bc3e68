#!/usr/bin/env bash
# Sampled decoding speed of one or more lmx builds: `lmx generate` of one sequence under
# several sampling settings (greedy first, for reference), each binary in turn within a
# repetition, as bench/ab_decode.sh alternates them. Prints the decode tok/s of every
# run (`--json`'s decode_tok_per_s: the new tokens after the first over their
# time, streamed to the caller), then each binary's mean per model and setting, and its
# ratio to the first binary's.
#
#   bench/ab_sampling.sh MODEL_DIR... -- LMX...
#   bench/ab_sampling.sh /tmp/qwen3-0.6b /tmp/gemma3-1b -- /tmp/lmx-before build-gpu/tools/lmx/lmx
#   bench/ab_sampling.sh /tmp/qwen3-0.6b -- build-gpu/tools/lmx/lmx "LMX_SAMPLE_BLOCKS=32 build-gpu/tools/lmx/lmx"
#
# An LMX may start with NAME=VALUE words, set for its runs only (as in ab_decode.sh).
# The model folders need a tokenizer.json (random-weight models: copy one in). The text is
# random with random weights, so --ignore-eos keeps every run at GEN_LEN tokens.
# Environment: GEN_LEN (256), REPS (2), SETTINGS (a ';'-separated list of `lmx generate`
# sampling flags; the default below).
set -euo pipefail

source "$(dirname "$0")/ab_lib.sh"
ab_split_args "$@"
ab_check_bins ab_sampling
for m in "${models[@]}"; do
  [[ -f $m/config.json && -f $m/tokenizer.json ]] || { echo "ab_sampling: $m lacks config.json or tokenizer.json" >&2; exit 1; }
done
IFS=';' read -r -a settings <<<"${SETTINGS:---temperature 0;--temperature 0.7;--temperature 0.7 --top-p 0.9;--temperature 0.7 --top-k 50;--temperature 0.6 --top-k 20 --top-p 0.95;--temperature 1.0 --min-p 0.05}"

runs=$(mktemp)
errors=$(mktemp)  # the runs' stderr (their timings, and the errors of failed runs)
failures=0
trap 'rm -f "$runs"' EXIT
speed() {  # speed LMX MODEL FLAGS -> decode tok/s, or "failed"; LMX: [NAME=VALUE...] BINARY
  local json flags cmd
  read -r -a cmd <<<"$1"
  read -r -a flags <<<"$3"
  if json=$(env "${cmd[@]}" generate "$2" --device cuda --prompt "Once upon a time there was a" --max-tokens "${GEN_LEN:-256}" \
       --ignore-eos --seed 1 "${flags[@]}" --json 2>>"$errors"); then
    python3 -c 'import json, sys; print(round(json.loads(sys.stdin.read().strip().splitlines()[-1])["decode_tok_per_s"], 1))' <<<"$json"
  else
    echo failed
  fi
}

for r in $(seq "${REPS:-2}"); do
  for m in "${models[@]}"; do
    for s in "${settings[@]}"; do
      printf '%-16s %-44s %2s' "$(basename "$m")" "$s" "$r"
      for i in "${!bins[@]}"; do
        v=$(speed "${bins[$i]}" "$m" "$s")
        [[ $v == failed ]] && failures=1
        printf ' %10s' "$v"
        printf '%s\t%s\t%s\t%s\n' "$(basename "$m")" "$s" "$i" "$v" >>"$runs"
      done
      echo
    done
  done
done

ab_means "$runs" "${#bins[@]}" 62
for i in "${!bins[@]}"; do echo "[$i] ${bins[$i]}"; done
if [[ $failures == 1 ]]; then echo "some runs failed; their errors are in $errors"; else rm -f "$errors"; fi
