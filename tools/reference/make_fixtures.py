#!/usr/bin/env python3
"""Writes the tiny reference models under tests/fixtures/models/ with HF transformers.

For each family (llama, qwen3, gemma3_text) it builds a random model of a few hundred
thousand parameters, shaped so that every feature the C++ loader must get right is
exercised, saves it in f32 and bf16, and records what transformers computes:

  <family>-<dtype>/config.json            transformers 5.x form (rope_parameters, layer_types)
  <family>-<dtype>/config_v4.json         the same model in the transformers 4.x form
  <family>-<dtype>/generation_config.json
  <family>-<dtype>/model.safetensors
  <family>-<dtype>/golden.safetensors     input_ids [2, L] i32, logits [2, L, V] f32,
                                          greedy_prompt [P] i32, greedy_ids [20] i32

Logits come from the eager attention path (softmax in f32, as lmx computes it). Greedy
ids are a plain argmax loop with full recomputation at every step, so they do not
depend on any cache.

Run on a machine with torch and transformers 5.x:
  python3 tools/reference/make_fixtures.py --out tests/fixtures/models
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file
import transformers
from transformers import AutoModelForCausalLM

SEQ_LEN = 24
GREEDY_PROMPT_LEN = 8
GREEDY_TOKENS = 20

FAMILIES = {
    # Tied like Llama 3.2; llama3 RoPE scaling with a small original context so that
    # all three frequency bands (scaled, smoothed, kept) occur at head_dim 16.
    "llama": dict(
        model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                             low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=64),
        bos_token_id=1, eos_token_id=[2, 3],
    ),
    # Untied; head_dim (32) differs from hidden/heads (16); q/k norms.
    "qwen3": dict(
        model_type="qwen3", vocab_size=512, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
        bos_token_id=None, eos_token_id=2,
    ),
    # 7 layers: layer 5 is global, the others slide over 8 positions (< SEQ_LEN);
    # query_pre_attn_scalar differs from head_dim; linear scaling on global layers.
    "gemma3_text": dict(
        model_type="gemma3_text", vocab_size=512, hidden_size=64, intermediate_size=128,
        num_hidden_layers=7, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
        max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=True,
        query_pre_attn_scalar=24, sliding_window=8,
        layer_types=["sliding_attention"] * 5 + ["full_attention"] + ["sliding_attention"],
        rope_parameters={
            "full_attention": dict(rope_type="linear", rope_theta=1000000.0, factor=8.0),
            "sliding_attention": dict(rope_type="default", rope_theta=10000.0),
        },
        hidden_activation="gelu_pytorch_tanh", bos_token_id=2, eos_token_id=[1, 106 % 512],
        pad_token_id=0,
    ),
}


def to_v4(cfg: dict, family: str) -> dict:
    """The same model as transformers 4.x wrote config.json: rope_theta/rope_scaling."""
    old = {k: v for k, v in cfg.items() if k not in ("rope_parameters", "layer_types", "dtype")}
    rp = cfg["rope_parameters"]
    old["torch_dtype"] = cfg.get("dtype", "float32")
    if family == "gemma3_text":
        full, local = rp["full_attention"], rp["sliding_attention"]
        old["rope_theta"] = full["rope_theta"]
        old["rope_local_base_freq"] = local["rope_theta"]
        scaling = {k: v for k, v in full.items() if k not in ("rope_theta",)}
        old["rope_scaling"] = None if scaling.get("rope_type") == "default" else scaling
        # Layer i is global iff (i + 1) % pattern == 0: pattern 6 gives layer 5 only.
        old["sliding_window_pattern"] = 6
    else:
        old["rope_theta"] = rp["rope_theta"]
        scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
        old["rope_scaling"] = None if scaling.get("rope_type") == "default" else scaling
    return old


def randomize(model, family: str, gen: torch.Generator):
    """Every weight random; norm weights far from their identity value."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                base = 0.0 if family == "gemma3_text" else 1.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=gen))


def make(family: str, out_root: str):
    spec = dict(FAMILIES[family])
    gen = torch.Generator().manual_seed(1234)
    config = transformers.AutoConfig.for_model(**spec)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    randomize(model, family, gen)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, spec["vocab_size"], (2, SEQ_LEN), generator=gen)
    prompt = ids[0, :GREEDY_PROMPT_LEN].clone()

    for dtype_name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        out = os.path.join(out_root, f"{family}-{dtype_name}")
        os.makedirs(out, exist_ok=True)
        m = model.to(dtype)
        m.config.dtype = "float32" if dtype == torch.float32 else "bfloat16"
        m.save_pretrained(out, safe_serialization=True)
        with torch.no_grad():
            logits = m(ids, use_cache=False).logits.float()
            seq = prompt[None, :]
            for _ in range(GREEDY_TOKENS):
                nxt = m(seq, use_cache=False).logits[:, -1].float().argmax(-1)
                seq = torch.cat([seq, nxt[:, None]], dim=1)
        save_file({
            "input_ids": ids.to(torch.int32).contiguous(),
            "logits": logits.contiguous(),
            "greedy_prompt": prompt.to(torch.int32).contiguous(),
            "greedy_ids": seq[0, GREEDY_PROMPT_LEN:].to(torch.int32).contiguous(),
        }, os.path.join(out, "golden.safetensors"))
        with open(os.path.join(out, "config.json")) as f:
            saved = json.load(f)
        with open(os.path.join(out, "config_v4.json"), "w") as f:
            json.dump(to_v4(saved, family), f, indent=2)
        print(f"{family}-{dtype_name}: {n_params} parameters, logits {tuple(logits.shape)}, "
              f"greedy {seq[0, GREEDY_PROMPT_LEN:].tolist()}", flush=True)
        model = m.float()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/models")
    args = ap.parse_args()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}", flush=True)
    torch.manual_seed(0)
    for family in FAMILIES:
        make(family, args.out)


if __name__ == "__main__":
    main()
