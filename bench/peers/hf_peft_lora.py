#!/usr/bin/env python3
"""The peer for `lmx bench --lora`: LoRA training steps through transformers + PEFT.

The same work as lmx's: --batch rows of --prompt-len random token ids, adapters of rank r
(alpha 2r, no dropout) on every projection of the decoder, the model's own shifted
cross-entropy, backward, one torch.optim.AdamW step. The model is loaded in bf16 with
transformers' default attention (SDPA); PEFT keeps the adapters in f32 beside a bf16 model
(its autocast_adapter_dtype), lmx keeps them in the model's dtype with f32 masters in the
optimizer. Each batch size is warmed up, then timed --repeat times; the median is reported.

  python3 bench/peers/hf_peft_lora.py MODEL_DIR --batch 4 --prompt-len 512 --rank 8 > peer.json
"""
import argparse
import json
import statistics
import sys
import time

import peft
import torch
import transformers
from transformers import AutoModelForCausalLM

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, nargs="*", default=[4])
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--dropout", type=float, default=0.0, help="lora_dropout (lmx bench --lora-dropout)")
    ap.add_argument("--grad-checkpoint", action="store_true")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true",
                    help="after timing, run one more step under torch.profiler and print its device time by kernel "
                         "to stderr (where the peer's GPU time goes, beside its host-bound step time)")
    args = ap.parse_args()

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).cuda()
    if args.grad_checkpoint:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    config = peft.LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=TARGETS, lora_dropout=args.dropout,
                             bias="none", task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, config)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.0)
    vocab = model.config.vocab_size
    gen = torch.Generator(device="cuda").manual_seed(4)
    rows = []
    for b in args.batch:
        ids = torch.randint(0, vocab, (b, args.prompt_len), generator=gen, device="cuda")

        def step():
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        for _ in range(args.warmup):
            step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times, loss = [], None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            loss = step().item()  # .item() waits for the step
            times.append(time.perf_counter() - t0)
        s = statistics.median(times)
        rows.append({"workload": "lora_train", "batch": b, "prompt_len": args.prompt_len, "rank": args.rank,
                     "dropout": args.dropout, "grad_checkpoint": args.grad_checkpoint, "loss": loss,
                     "peer_tok_per_s": b * args.prompt_len / s, "peak_mem_bytes": torch.cuda.max_memory_allocated()})
        print(f"batch {b}: {b * args.prompt_len / s:.0f} tok/s, step {s * 1e3:.1f} ms, "
              f"peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB", flush=True, file=sys.stderr)
        if args.profile:
            print_device_time(step)
    peer = f"transformers {transformers.__version__} + peft {peft.__version__}, torch {torch.__version__}"
    print(json.dumps({"peer": peer, "gpu": torch.cuda.get_device_name(), "results": rows}, indent=2))


def print_device_time(step, top=25):
    """One step under torch.profiler: its kernels' device time in total and the largest by name."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    by_name = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            n, us = by_name.get(e.name, (0, 0.0))
            by_name[e.name] = (n + 1, us + e.time_range.elapsed_us())
    total = sum(us for _, us in by_name.values())
    print(f"  device time {total / 1e3:.1f} ms over {sum(n for n, _ in by_name.values())} kernels", file=sys.stderr)
    for name, (n, us) in sorted(by_name.items(), key=lambda x: -x[1][1])[:top]:
        print(f"  {us / 1e3:8.2f} ms {n:6d}  {name[:100]}", file=sys.stderr)


if __name__ == "__main__":
    main()
