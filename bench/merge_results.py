#!/usr/bin/env python3
"""Merges `lmx bench --json` outputs and the peer's JSON (bench/peers/hf_transformers.py)
into one result file, bench/results/YYYY-MM-DD-h200.json:

  {"date", "commit", "gpu", "results": [{"model", "workload", "batch", "prompt_len",
   "gen_len", "lmx_tok_per_s" | "lmx_prompts_per_s", "peer", "peer_tok_per_s" |
   "peer_prompts_per_s", "peak_mem_bytes", ...}]}

Each result also gets its ratio to the peer and to the hardware limit (weight bytes at
4.3 TB/s for batch-1 decode, FLOPs at 790 TFLOP/s for classification), and the issue's
target where there is one. Prints a summary table. With --cpu in place of --gpu (a CPU run,
bench/run_cpu.sh) the file names the CPU and the threads, and the H200's limits, the
targets and the GPU memory bound are left out.

  bench/merge_results.py --out FILE --commit abc1234 --gpu "NVIDIA H200" \\
      --models /tmp/lmx-bench-models DIR_WITH_JSON
  bench/merge_results.py --out FILE --commit abc1234 --cpu "AMD EPYC 9654" --threads 16 ...
"""
import argparse
import glob
import json
import os
import struct
import sys

COPY_BANDWIDTH = 4.3e12   # bytes/s, measured on this H200
BF16_GEMM = 790e12        # FLOP/s, measured on this H200
TARGETS = {  # issue F: batch-1 decode tok/s and classify prompts/s
    ("llama-3.2-1b", "decode"): 1300, ("qwen3-0.6b", "decode"): 2400, ("gemma3-1b", "decode"): 1600,
    ("llama-3.2-1b", "classify"): 10000, ("qwen3-0.6b", "classify"): 16000, ("gemma3-1b", "classify"): 13000,
}


def tensors(model_dir):
    """(name, shape, bytes) of every tensor in the folder's safetensors files, from the headers."""
    out = []
    for path in sorted(glob.glob(os.path.join(model_dir, "*.safetensors"))):
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for name, t in header.items():
            if name != "__metadata__":
                out.append((name, t["shape"], t["data_offsets"][1] - t["data_offsets"][0]))
    return out


def limits(model_dir, prompt_len):
    """Hardware-limit throughputs: batch-1 decode tok/s and classify prompts/s."""
    ts = tensors(model_dir)
    weight_bytes = sum(b for _, _, b in ts)
    embed = next((s for n, s, _ in ts if n.endswith("embed_tokens.weight")), [0, 0])
    vocab, hidden = embed
    body = sum(a * b for n, s, _ in ts if len(s) == 2 and "embed_tokens" not in n and "lm_head" not in n
               for a, b in [s])
    flops_per_prompt = 2 * body * prompt_len + 2 * hidden * vocab  # the head at the last position only
    return COPY_BANDWIDTH / weight_bytes, BF16_GEMM / flops_per_prompt


def decode_memory_budget(model_dir, positions, batch=1):
    """Issue F's bound on peak decode memory: weights + KV cache (`batch` sequences of
    `positions`) + 512 MiB. Sliding-window layers hold a ring of `sliding_window` slots;
    counting it for every layer when it is larger than `positions` keeps the bound on the
    generous side."""
    c = json.load(open(os.path.join(model_dir, "config.json")))
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    slots = max(positions, c.get("sliding_window") or 0)
    kv = batch * c["num_hidden_layers"] * 2 * c["num_key_value_heads"] * head_dim * 2 * slots
    return sum(b for _, _, b in tensors(model_dir)) + kv + (512 << 20)


def rounded(row):
    """The row with its throughputs to one decimal."""
    return {k: round(v, 1) if k.endswith("_per_s") and isinstance(v, float) else v for k, v in row.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--date", required=True)
    ap.add_argument("--commit", required=True)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--gpu")
    where.add_argument("--cpu")
    ap.add_argument("--threads", type=int, help="with --cpu: the threads both sides ran with")
    ap.add_argument("--models", required=True, help="folder of the bench model folders")
    ap.add_argument("inputs", help="folder with MODEL.lmx-*.json and MODEL.peer.json")
    args = ap.parse_args()

    results = []
    for model in sorted(os.listdir(args.models)):
        lmx_files = sorted(glob.glob(os.path.join(args.inputs, f"{model}.lmx-*.json")))
        if not lmx_files:
            continue
        # MODEL.peer.json, and any MODEL.peer-*.json (a peer run of its own with other options).
        # A peer file that a failed run left empty or cut short costs the peer's figures, not
        # lmx's: its rows say why the peer is missing.
        peer = {"results": []}
        peer_error = None
        for path in sorted(glob.glob(os.path.join(args.inputs, f"{model}.peer*.json"))):
            try:
                peer["results"] += json.load(open(path))["results"]
            except (ValueError, KeyError, TypeError) as e:
                peer_error = f"{os.path.basename(path)} unreadable ({type(e).__name__}: {e})"[:300]
                print(f"merge_results.py: {peer_error}; {model}'s rows go without the peer", file=sys.stderr)
        for path in lmx_files:
            for r in json.load(open(path))["results"]:
                row = {"model": model, **{k: v for k, v in r.items()}}
                match = [p for p in peer["results"] if p["workload"] == r["workload"] and p["batch"] == r["batch"]]
                if match:
                    row.update({k: v for k, v in match[0].items() if k.startswith("peer") or k == "error"})
                elif peer_error:
                    row["peer_error"] = peer_error
                key = "tok_per_s" if "lmx_tok_per_s" in row else "prompts_per_s"
                if "peer_" + key in row:
                    row["ratio_to_peer"] = round(row["lmx_" + key] / row["peer_" + key], 2)
                if args.cpu:  # no H200 limits, targets or GPU memory bound on a CPU
                    results.append(rounded(row))
                    continue
                decode_limit, classify_limit = limits(os.path.join(args.models, model), row["prompt_len"])
                if row["workload"] in ("decode", "decode_sampled"):
                    budget = decode_memory_budget(os.path.join(args.models, model), row["prompt_len"] + row["gen_len"],
                                                  row["batch"])
                    row["peak_mem_budget_bytes"] = budget
                    row["peak_mem_ok"] = row["peak_mem_bytes"] <= budget
                if row["workload"] in ("decode", "decode_sampled") and row["batch"] == 1:
                    row["limit_tok_per_s"] = round(decode_limit)
                    row["ratio_to_limit"] = round(row["lmx_tok_per_s"] / decode_limit, 2)
                if row["workload"] == "classify":
                    row["limit_prompts_per_s"] = round(classify_limit)
                    row["ratio_to_limit"] = round(row["lmx_prompts_per_s"] / classify_limit, 2)
                target = TARGETS.get((model, row["workload"])) if row["batch"] in (1, 1024) else None
                if target:
                    row["target"] = target
                    row["target_met"] = row["lmx_" + key] >= target
                results.append(rounded(row))
    where = {"gpu": args.gpu} if args.gpu else {"cpu": args.cpu, "threads": args.threads}
    doc = {"date": args.date, "commit": args.commit, **where, "results": results}
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"{'model':14} {'workload':14} {'batch':>5} {'lmx':>10} {'peer':>10} {'x peer':>7} {'x limit':>7} "
          f"{'memory':>6} target")
    for r in results:
        key = "tok_per_s" if "lmx_tok_per_s" in r else "prompts_per_s"
        memory = ("ok" if r["peak_mem_ok"] else "OVER") if "peak_mem_ok" in r else ""  # against the decode bound
        print(f"{r['model']:14} {r['workload']:14} {r['batch']:>5} {r['lmx_' + key]:>10.1f} "
              f"{r.get('peer_' + key, float('nan')):>10.1f} {r.get('ratio_to_peer', float('nan')):>7} "
              f"{r.get('ratio_to_limit', ''):>7} {memory:>6} "
              f"{('met' if r['target_met'] else 'NOT met') if 'target' in r else ''}")


if __name__ == "__main__":
    main()
