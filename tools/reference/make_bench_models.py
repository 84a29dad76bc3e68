#!/usr/bin/env python3
"""Creates the benchmark models: the real configurations of Llama-3.2-1B, Qwen3-0.6B and
Gemma3-1B with random bf16 weights, through transformers' from_config + save_pretrained.
They are for speed measurements only and are never committed.

  python3 tools/reference/make_bench_models.py --out /tmp/lmx-bench-models
"""
import argparse
import os

import torch
import transformers

CONFIGS = {
    "llama-3.2-1b": dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                         num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                         max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=32.0,
                                              low_freq_factor=1.0, high_freq_factor=4.0,
                                              original_max_position_embeddings=8192),
                         bos_token_id=128000, eos_token_id=[128001, 128008, 128009]),
    "qwen3-0.6b": dict(model_type="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                       num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       max_position_embeddings=40960, rms_norm_eps=1e-6, tie_word_embeddings=True,
                       rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
                       bos_token_id=151643, eos_token_id=151645),
    "gemma3-1b": dict(model_type="gemma3_text", vocab_size=262144, hidden_size=1152, intermediate_size=6912,
                      num_hidden_layers=26, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                      max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True,
                      query_pre_attn_scalar=256, sliding_window=512,
                      layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(26)],
                      rope_parameters={"full_attention": dict(rope_type="default", rope_theta=1000000.0),
                                       "sliding_attention": dict(rope_type="default", rope_theta=10000.0)},
                      hidden_activation="gelu_pytorch_tanh", bos_token_id=2, eos_token_id=[1, 106]),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", nargs="*", default=list(CONFIGS))
    args = ap.parse_args()
    torch.manual_seed(0)
    for name in args.only:
        out = os.path.join(args.out, name)
        if os.path.exists(os.path.join(out, "config.json")):
            print(f"{name}: exists", flush=True)
            continue
        config = transformers.AutoConfig.for_model(**CONFIGS[name])
        with torch.device("cuda"):
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(out, safe_serialization=True)
        print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters -> {out}", flush=True)


if __name__ == "__main__":
    main()
