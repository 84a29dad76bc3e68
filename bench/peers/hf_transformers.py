#!/usr/bin/env python3
"""The peer: the same workloads as `lmx bench`, through HF transformers on the same GPU.

decode:   batch B, a prompt of --prompt-len random ids, --gen-len greedy tokens with a
          static KV cache (generate(cache_implementation="static")), timed with CUDA events.
classify: --prompts prompts of --prompt-len tokens, last-position logits only
          (logits_to_keep=1), batches of --classify-batch.
Prints one JSON object with a result per workload.

  python3 bench/peers/hf_transformers.py /tmp/lmx-bench-models/llama-3.2-1b --decode --classify
"""
import argparse
import json
import statistics

import torch
import transformers


def timed(fn, warmup, repeat):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--decode", action="store_true")
    ap.add_argument("--classify", action="store_true")
    ap.add_argument("--batch", type=int, nargs="*", default=[1])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=256)
    ap.add_argument("--prompts", type=int, default=1024)
    ap.add_argument("--classify-len", type=int, default=32)
    ap.add_argument("--classify-batch", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16, device_map="cuda")
    model.eval()
    vocab = model.config.vocab_size
    results = []
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.inference_mode():
        if args.decode:
            for b in args.batch:
                ids = torch.randint(0, vocab, (b, args.prompt_len), device="cuda", generator=g)
                gen = lambda: model.generate(ids, max_new_tokens=args.gen_len, min_new_tokens=args.gen_len,
                                             do_sample=False, cache_implementation="static", pad_token_id=0)
                total = timed(gen, args.warmup, args.repeat)
                prefill = timed(lambda: model(ids, logits_to_keep=1), args.warmup, args.repeat)
                results.append({"workload": "decode", "batch": b, "prompt_len": args.prompt_len,
                                "gen_len": args.gen_len, "peer": f"transformers {transformers.__version__}",
                                "peer_tok_per_s": b * (args.gen_len - 1) / max(total - prefill, 1e-9)})
        if args.classify:
            ids = torch.randint(0, vocab, (args.classify_batch, args.classify_len), device="cuda", generator=g)

            def run():
                for _ in range(0, args.prompts, args.classify_batch):
                    model(ids, logits_to_keep=1).logits.argmax(-1).cpu()
            s = timed(run, args.warmup, args.repeat)
            results.append({"workload": "classify", "batch": args.prompts, "prompt_len": args.classify_len,
                            "peer": f"transformers {transformers.__version__}", "peer_prompts_per_s": args.prompts / s})
    print(json.dumps({"model": args.model, "gpu": torch.cuda.get_device_name(), "results": results}))


if __name__ == "__main__":
    main()
