#!/usr/bin/env python3
"""Writes LoRA reference data with transformers + PEFT for the f32 fixture models.

For each family it loads tests/fixtures/models/<family>-f32, wraps it in a PEFT LoRA
(r 4, alpha 8, every projection of the decoder), gives A and B random values (PEFT's own
B starts at zero, which would hide half the gradient rules), and records:

  <out>/<family>/adapter_config.json        PEFT's save_pretrained
  <out>/<family>/adapter_model.safetensors
  <out>/<family>/golden.safetensors         input_ids [2, L] i32, labels [2, L] i32 (-100 where
                                            ignored), loss [] f32 (HF's shifted mean cross-entropy),
                                            logits [2, L, V] f32, and for every adapter tensor
                                            "grad.<PEFT name>" f32: d loss / d tensor

The loss is the model's own (labels shifted inside, mean over the labels that are not
-100), computed on the eager attention path in f32.

Run on a machine with torch, transformers 5.x and peft:
  python3 tools/reference/make_lora_fixtures.py --models tests/fixtures/models --out tests/fixtures/lora
"""
import argparse
import os

import torch
from safetensors.torch import save_file
import transformers
from transformers import AutoModelForCausalLM
import peft

FAMILIES = ("llama", "qwen3", "gemma3_text")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SEQ_LEN = 16


def make(family: str, models: str, out_root: str):
    gen = torch.Generator().manual_seed(4321)
    model = AutoModelForCausalLM.from_pretrained(os.path.join(models, f"{family}-f32"),
                                                 attn_implementation="eager", dtype=torch.float32)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0, bias="none",
                             task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    model.train()  # dropout is 0: train() changes nothing but lets gradients flow as in training
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (2, SEQ_LEN), generator=gen)
    labels = ids.clone()
    labels[0, :5] = -100  # a masked prompt
    labels[1, -3:] = -100  # and masked padding
    out = model(input_ids=ids, labels=labels, use_cache=False)
    out.loss.backward()

    folder = os.path.join(out_root, family)
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    readme = os.path.join(folder, "README.md")  # PEFT's model card template: nothing a test reads
    if os.path.exists(readme):
        os.remove(readme)
    golden = {
        "input_ids": ids.to(torch.int32).contiguous(),
        "labels": labels.to(torch.int32).contiguous(),
        "loss": out.loss.detach().float().reshape(()).contiguous(),
        "logits": out.logits.detach().float().contiguous(),
    }
    for name, p in model.named_parameters():
        if "lora_" in name:
            golden["grad." + name.replace(".default", "")] = p.grad.detach().float().contiguous()
    save_file(golden, os.path.join(folder, "golden.safetensors"))
    print(f"{family}: loss {out.loss.item():.6f}, {sum('lora_' in n for n, _ in model.named_parameters())} "
          f"adapter tensors", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tests/fixtures/models")
    ap.add_argument("--out", default="tests/fixtures/lora")
    args = ap.parse_args()
    print(f"transformers {transformers.__version__}, peft {peft.__version__}, torch {torch.__version__}", flush=True)
    for family in FAMILIES:
        make(family, args.models, args.out)


if __name__ == "__main__":
    main()
