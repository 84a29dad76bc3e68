#!/usr/bin/env python3
"""Writes a tiny byte-level BPE tokenizer (512 ids) for the fixture models.

The fixture models of tests/fixtures/models have a 512-token vocabulary; this gives them
a real tokenizer.json of the Qwen/Llama 3 kind (Split regex + ByteLevel, BPE merges, added
special tokens) and a ChatML chat template, so that text-in/text-out paths (generate
--prompt, chat, classify) can be tested end to end on them. Pure Python, no packages.

  python3 tools/reference/make_tiny_tokenizer.py tests/fixtures/models/*-f32 tests/fixtures/models/*-bf16
"""
import json
import os
import sys


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def build():
    byte_map = bytes_to_unicode()
    vocab = {byte_map[b]: b for b in range(256)}
    # Merges learned greedily from a small English sample: the most frequent adjacent
    # pair of current tokens becomes a new token, until 254 merges exist.
    sample = ("the quick brown fox jumps over the lazy dog. hello world! "
              "this is a tiny tokenizer for testing the lmx runtime; it is not a language model. "
              "in the beginning there were tokens, and the tokens were merged into words. ") * 4
    words = []
    for w in sample.replace(".", " .").replace("!", " !").replace(";", " ;").split(" "):
        if w:
            words.append([byte_map[b] for b in (" " + w).encode()])
    merges = []
    while len(vocab) < 510:
        counts = {}
        for w in words:
            for a, b in zip(w, w[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + 1
        if not counts:
            break
        (a, b), _ = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append([a, b])
        vocab[a + b] = len(vocab)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if w[i] == a and w[i + 1] == b:
                    w[i:i + 2] = [a + b]
                i += 1
    # Fill the rest of the 510 ordinary ids with letter pairs, so that every id the
    # model can produce decodes to text.
    letters = "abcdefghijklmnopqrstuvwxyz"
    for a in ["Ġ"] + list(letters):
        for b in letters:
            if len(vocab) >= 510:
                break
            if a + b not in vocab:
                merges.append([a, b])
                vocab[a + b] = len(vocab)
    specials = ["<|im_start|>", "<|im_end|>"]
    added = []
    for s in specials:
        added.append({"id": len(vocab), "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False, "special": True})
        vocab[s] = len(vocab)
    regex = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
             r"\s*[\r\n]+|\s+(?!\S)|\s+")
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
    template = ("{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] "
                "+ '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
                "{%- endif %}")
    config = {"add_bos_token": False, "add_eos_token": False, "bos_token": None, "eos_token": "<|im_end|>",
              "pad_token": "<|im_end|>", "clean_up_tokenization_spaces": False, "model_max_length": 256,
              "chat_template": template, "tokenizer_class": "PreTrainedTokenizerFast"}
    return tok, config


def main():
    tok, config = build()
    for d in sys.argv[1:]:
        with open(os.path.join(d, "tokenizer.json"), "w") as f:
            json.dump(tok, f, ensure_ascii=False)
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(config, f, ensure_ascii=False, indent=2)
        print("wrote", d)


if __name__ == "__main__":
    main()
