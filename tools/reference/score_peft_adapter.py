#!/usr/bin/env python3
"""Scores JSON Lines text under a model and an adapter folder through transformers + PEFT.

An independent check that an adapter folder written by `lmx lora` (or `lmx fuse`'s input) is
what PEFT reads: PEFT loads it with PeftModel.from_pretrained, so its adapter_config.json
(r, lora_alpha, target_modules, layers_to_transform, lora_dropout, ...) and the tensor names
must be PEFT's own. Prints one JSON object: the mean cross-entropy a target token over the
data (the figure `lmx eval --json` prints as "loss"), the number of targets, and which
decoder layers and projections carry adapters in PEFT's model.

Only {"text": ...} lines are read: each is tokenized with the special tokens the tokenizer
adds (as lmx does), and every token after the first is a target. Run in f32 on both sides to
compare to about 1e-5:

  lmx eval MODEL --data d.jsonl --adapter ADAPTER --dtype f32 --json
  python3 tools/reference/score_peft_adapter.py MODEL ADAPTER d.jsonl
"""
import argparse
import json
import re

import peft
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("adapter", help="adapter folder, or 'none' to score the bare model")
    ap.add_argument("data")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager")
    layers, targets = set(), set()
    if args.adapter != "none":
        model = peft.PeftModel.from_pretrained(model, args.adapter)
        for name, _ in model.named_parameters():
            m = re.search(r"layers\.(\d+)\..*\.(\w+_proj)\.lora_A", name)
            if m:
                layers.add(int(m.group(1)))
                targets.add(m.group(2))
    model = model.to(args.device).eval()  # eval(): no dropout, as lmx eval

    total, counted = 0.0, 0
    with open(args.data) as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok(text)["input_ids"]], device=args.device)
            logits = model(input_ids=ids).logits[0, :-1].double()
            total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            counted += ids.shape[1] - 1
    print(json.dumps({"loss": total / counted, "counted": counted, "layers": sorted(layers),
                      "targets": sorted(targets)}))


if __name__ == "__main__":
    main()
