#!/usr/bin/env bash
# Decode speed (or classification's, or one long prompt's prefill) of two or more lmx
# builds on the same models, for deciding whether a change pays. Within each repetition
# every binary runs once per model, one after another, so that a machine's drift (clocks,
# other tenants, the host's speed, which sets batch 64's pace) reaches all of them alike;
# one run per binary would confuse the change with it. Prints the throughput (`lmx bench`, its median of --repeat timed
# runs) for every run, then each binary's mean per model and its ratio to the first's.
#
#   bench/ab_decode.sh MODEL_DIR... -- LMX...
#   bench/ab_decode.sh /tmp/qwen3-0.6b /tmp/gemma3-1b -- /tmp/lmx-before build-gpu/tools/lmx/lmx
#   BATCH=64 REPS=3 bench/ab_decode.sh /tmp/llama-3.2-1b -- /tmp/lmx-before build-gpu/tools/lmx/lmx
#   bench/ab_decode.sh /tmp/qwen3-0.6b -- "LMX_FUSED_DOWN=0 build-gpu/tools/lmx/lmx" build-gpu/tools/lmx/lmx
#   WORKLOAD=classify REPS=3 bench/ab_decode.sh /tmp/gemma3-1b -- /tmp/lmx-before build-gpu/tools/lmx/lmx
#   WORKLOAD=prefill bench/ab_decode.sh /tmp/llama-3.2-1b -- /tmp/lmx-before build-gpu/tools/lmx/lmx
#
# An LMX may start with NAME=VALUE words, set for its runs only: one binary against
# itself with a switch turned off.
#
# Environment: WORKLOAD (decode: tok/s; classify: prompts/s; prefill: tok/s of one prompt),
# DEVICE (cuda), BATCH (1), PROMPT_LEN (128; 32 for classify, 4,096 for prefill), GEN_LEN
# (256), PROMPTS (1,024, classify), REPS (2), WARMUP (1), REPEAT (3), EXTRA (more `lmx
# bench` flags, e.g. --plain). A run that fails prints "failed" and counts in no mean; its
# error is in the file named at the end.
set -euo pipefail

source "$(dirname "$0")/ab_lib.sh"
ab_split_args "$@"
ab_check_bins ab_decode
for m in "${models[@]}"; do [[ -f $m/config.json ]] || { echo "ab_decode: $m has no config.json" >&2; exit 1; }; done

errors=$(mktemp)
runs=$(mktemp)
trap 'rm -f "$runs"' EXIT
# EXTRA as words: none, or several flags
read -r -a extra <<<"${EXTRA:-}"
case ${WORKLOAD:-decode} in
  decode) work=(--decode --batch "${BATCH:-1}" --prompt-len "${PROMPT_LEN:-128}" --gen-len "${GEN_LEN:-256}")
    key=lmx_tok_per_s ;;
  classify) work=(--classify --prompts "${PROMPTS:-1024}" --prompt-len "${PROMPT_LEN:-32}")
    key=lmx_prompts_per_s ;;
  prefill) work=(--prefill --prompt-len "${PROMPT_LEN:-4096}")
    key=lmx_tok_per_s ;;
  *) echo "ab_decode: WORKLOAD must be decode, classify or prefill, not \"$WORKLOAD\"" >&2; exit 2 ;;
esac
speed() {  # speed LMX MODEL -> throughput, or "failed"; LMX: [NAME=VALUE...] BINARY
  local json cmd
  read -r -a cmd <<<"$1"
  if json=$(env "${cmd[@]}" bench "$2" --device "${DEVICE:-cuda}" "${work[@]}" --warmup "${WARMUP:-1}" \
       --repeat "${REPEAT:-3}" "${extra[@]}" --json 2>>"$errors"); then
    KEY=$key python3 -c 'import json, os, sys; print(round(json.load(sys.stdin)["results"][0][os.environ["KEY"]], 1))' <<<"$json"
  else
    echo failed
  fi
}

printf '%-24s %4s' model run
for i in "${!bins[@]}"; do printf ' %14s' "[$i]"; done
echo
for r in $(seq "${REPS:-2}"); do
  for m in "${models[@]}"; do
    printf '%-24s %4s' "$(basename "$m")" "$r"
    for i in "${!bins[@]}"; do
      s=$(speed "${bins[$i]}" "$m")
      printf ' %14s' "$s"
      printf '%s\t%s\t%s\n' "$(basename "$m")" "$i" "$s" >>"$runs"
    done
    echo
  done
done

ab_means "$runs" "${#bins[@]}" 24
for i in "${!bins[@]}"; do echo "[$i] ${bins[$i]}"; done
if [[ -s $errors ]]; then echo "errors of failed runs: $errors"; else rm -f "$errors"; fi
