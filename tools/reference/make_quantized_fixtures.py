#!/usr/bin/env python3
"""Writes MLX affine-quantized versions of the tiny float32 test models, and a float32
reference copy of each, under tests/fixtures/models/:

  <name>/config.json                the f32 config with dtype bfloat16 and MLX's
                                    "quantization" / "quantization_config" objects
  <name>/model.safetensors          MLX layout: <m>.weight U32 packed codes, <m>.scales and
                                    <m>.biases BF16, every other tensor BF16; unpadded header
  <name>/generation_config.json, tokenizer.json, tokenizer_config.json   copied unchanged
  <name>/dequantized/config.json    the f32 fixture's config.json, unchanged
  <name>/dequantized/model.safetensors   every tensor F32 in the HF layout, holding exactly
                                    what the quantized checkpoint stores: scale * q + bias
                                    from the stored codes and bf16 scales/biases, and the
                                    stored BF16 values of the unquantized tensors

The quantized checkpoints test lmx's MLX loader and quantized kernels. Their reference is
the dequantized copy run through lmx's float path, which the float fixtures already check
against transformers: the MLX format spec allows "HF running on weights dequantized with
the formula" as the reference, so no MLX installation is needed to make or check these.

Pure Python 3 (standard library only) so that anyone can regenerate the fixtures; the
output is deterministic (run twice and compare with cmp):
  python3 tools/reference/make_quantized_fixtures.py --fixtures tests/fixtures/models
"""
import argparse
import json
import math
import os
import shutil
import struct

# name: (float source, base quantization, per-module overrides). The mixed fixture gives
# every supported affine width (2, 3, 4, 5, 6, 8 bits), two group sizes, a straddling
# code layout (3, 5, 6 bits) and a module kept in float; it also stands for Qwen3 at 4 bits.
FIXTURES = {
    "llama-mlx-q4": ("llama-f32", {"group_size": 32, "bits": 4}, {}),
    "gemma3_text-mlx-q4": ("gemma3_text-f32", {"group_size": 32, "bits": 4}, {}),
    "qwen3-mlx-q8": ("qwen3-f32", {"group_size": 64, "bits": 8}, {}),
    "qwen3-mlx-mixed": ("qwen3-f32", {"group_size": 64, "bits": 4}, {
        "model.layers.0.mlp.down_proj": {"group_size": 32, "bits": 6},
        "model.layers.1.self_attn.v_proj": {"group_size": 32, "bits": 3},
        "model.layers.0.self_attn.q_proj": {"group_size": 64, "bits": 2},
        "model.layers.1.mlp.up_proj": {"group_size": 64, "bits": 5},
        "model.layers.1.self_attn.o_proj": False,
        "lm_head": {"group_size": 32, "bits": 8},
    }),
}
COPIED = ("generation_config.json", "tokenizer.json", "tokenizer_config.json")
DTYPE_SIZE = {"F32": 4, "BF16": 2, "U32": 4}
DTYPE_CHAR = {"F32": "f", "BF16": "H", "U32": "I"}


# ---- safetensors -----------------------------------------------------------------------

def read_safetensors(path):
    """{name: (dtype, shape, values)}; checks that the header and the sizes add up."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    header.pop("__metadata__", None)
    data = blob[8 + n:]
    out, end = {}, 0
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        dtype, shape, (lo, hi) = info["dtype"], info["shape"], info["data_offsets"]
        count = math.prod(shape)
        assert lo == end, f"{path}: {name} is not back to back with the previous tensor"
        assert hi - lo == count * DTYPE_SIZE[dtype], f"{path}: {name} size disagrees with its shape"
        out[name] = (dtype, shape, list(struct.unpack_from(f"<{count}{DTYPE_CHAR[dtype]}", data, lo)))
        end = hi
    assert end == len(data), f"{path}: {len(data) - end} bytes after the last tensor"
    return out


def write_safetensors(path, tensors, fmt):
    """tensors: {name: (dtype, shape, values)}, laid out back to back in name order.

    MLX ("mlx") writes the header unpadded, so tensor data can start at any byte; we make
    its length odd so that every tensor of the file is misaligned and the reader's
    unaligned path is always taken. HF ("pt") pads with spaces to a multiple of 8.
    """
    header, chunks, offset = {"__metadata__": {"format": fmt}}, [], 0
    for name in sorted(tensors):
        dtype, shape, values = tensors[name]
        assert len(values) == math.prod(shape), name
        chunks.append(struct.pack(f"<{len(values)}{DTYPE_CHAR[dtype]}", *values))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(chunks[-1])]}
        offset += len(chunks[-1])
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if fmt == "mlx":
        text += b" " * (1 - len(text) % 2)
    else:
        text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


# ---- number formats --------------------------------------------------------------------

def f32_bits(x):
    """Bit pattern of x rounded to float32 (nearest even, the C cast)."""
    return struct.unpack("<I", struct.pack("<f", x))[0]


def bf16_from_f32_bits(u):
    """float32 bit pattern -> bf16 bit pattern, round to nearest even (as torch/MLX do)."""
    if (u & 0x7FFFFFFF) > 0x7F800000:  # NaN: keep it a quiet NaN
        return (u >> 16) | 0x40
    return (u + 0x7FFF + ((u >> 16) & 1)) >> 16


def bf16_value(h):
    return struct.unpack("<f", struct.pack("<I", h << 16))[0]


def round_half_up(x):
    # MLX rounds on the device; any fixed rule will do, since the reference is computed
    # from the codes we store. Python's round() is banker's, so be explicit.
    return math.floor(x + 0.5)


# ---- affine quantization ---------------------------------------------------------------

def quantize_group(group, bits):
    """MLX's affine rule for one group: (bf16 scale, bf16 bias, codes).

    The scale and bias are rounded to bf16 first and the codes are computed from the
    rounded values, as MLX stores them, so the codes are the best fit for what a reader
    actually dequantizes with.
    """
    n = (1 << bits) - 1
    wmax, wmin = max(group), min(group)
    mask = abs(wmin) > abs(wmax)
    scale = max((wmax - wmin) / n, 1e-7)
    scale = scale if mask else -scale
    edge = wmin if mask else wmax
    q0 = round_half_up(edge / scale)
    if q0 != 0:
        scale = edge / q0
    bias = 0.0 if q0 == 0 else edge
    scale_h, bias_h = bf16_from_f32_bits(f32_bits(scale)), bf16_from_f32_bits(f32_bits(bias))
    s, b = bf16_value(scale_h), bf16_value(bias_h)
    codes = [0 if s == 0 else min(max(round_half_up((w - b) / s), 0), n) for w in group]
    return scale_h, bias_h, codes


def pack_row(codes, bits):
    """Codes as one LSB-first bitstream in u32 words: code c holds bits [c*bits, c*bits+bits)."""
    total = len(codes) * bits
    assert total % 32 == 0, "each row must fill whole words"
    acc = 0
    for c, q in enumerate(codes):
        acc |= q << (c * bits)
    return [(acc >> (32 * i)) & 0xFFFFFFFF for i in range(total // 32)]


def unpack_row_bitwise(words, bits, count):
    """Independent check of pack_row: assemble each code one bit at a time."""
    codes = []
    for c in range(count):
        q = 0
        for j in range(bits):
            k = c * bits + j
            q |= ((words[k // 32] >> (k % 32)) & 1) << j
        codes.append(q)
    return codes


def quantize_matrix(values, rows, cols, group_size, bits):
    """Row-major f32 values -> (U32 words, BF16 scales, BF16 biases, f32 dequantized)."""
    words, scales, biases, deq = [], [], [], []
    n = (1 << bits) - 1
    for r in range(rows):
        row = values[r * cols:(r + 1) * cols]
        row_codes = []
        for g in range(0, cols, group_size):
            scale_h, bias_h, codes = quantize_group(row[g:g + group_size], bits)
            scales.append(scale_h)
            biases.append(bias_h)
            row_codes += codes
        assert all(0 <= q <= n for q in row_codes), "code out of range"
        row_words = pack_row(row_codes, bits)
        # Dequantize from what was packed, read back bit by bit, so the reference can only
        # agree with the checkpoint if the packing is right.
        stored = unpack_row_bitwise(row_words, bits, cols)
        assert stored == row_codes, f"row {r}: codes do not round-trip through the bitstream"
        words += row_words
        for c, q in enumerate(stored):
            i = r * (cols // group_size) + c // group_size
            w = bf16_value(scales[i]) * q + bf16_value(biases[i])  # float64, exact
            deq.append(struct.unpack("<f", struct.pack("<f", w))[0])
    return words, scales, biases, deq


# ---- fixtures ---------------------------------------------------------------------------

def module_quant(module, shape, base, overrides):
    """The (group_size, bits) a module is quantized with, or None to keep it float."""
    quantizable = module.endswith("_proj") or module in ("model.embed_tokens", "lm_head")
    if not quantizable or len(shape) != 2:
        return None
    spec = overrides.get(module, base)
    if spec is False:
        return None
    # MLX's default predicate keeps such modules float; an explicit override must fit.
    assert module not in overrides or shape[1] % spec["group_size"] == 0, f"{module}: bad override"
    if shape[1] % spec["group_size"] != 0:
        return None
    return spec["group_size"], spec["bits"]


def make_fixture(root, name):
    src_name, base, overrides = FIXTURES[name]
    src, dst = os.path.join(root, src_name), os.path.join(root, name)
    os.makedirs(os.path.join(dst, "dequantized"), exist_ok=True)
    tensors = read_safetensors(os.path.join(src, "model.safetensors"))
    quant, deq = {}, {}
    max_err = max_abs = max_rel_range = 0.0
    for tname in sorted(tensors):
        dtype, shape, values = tensors[tname]
        assert dtype == "F32", f"{tname}: the source fixture must be float32"
        module = tname[:-len(".weight")] if tname.endswith(".weight") else None
        spec = module_quant(module, shape, base, overrides) if module else None
        if spec is None:
            # Stored BF16; the reference holds that BF16 value exactly, as F32.
            h = [bf16_from_f32_bits(f32_bits(v)) for v in values]
            quant[tname] = ("BF16", shape, h)
            deq[tname] = ("F32", shape, [bf16_value(x) for x in h])
            continue
        group_size, bits = spec
        rows, cols = shape
        words, scales, biases, w_deq = quantize_matrix(values, rows, cols, group_size, bits)
        quant[module + ".weight"] = ("U32", [rows, cols * bits // 32], words)
        quant[module + ".scales"] = ("BF16", [rows, cols // group_size], scales)
        quant[module + ".biases"] = ("BF16", [rows, cols // group_size], biases)
        deq[tname] = ("F32", shape, w_deq)
        # Error statistics, for the report: overall, and per group relative to its range.
        for g0 in range(0, len(values), group_size):
            grp, dq = values[g0:g0 + group_size], w_deq[g0:g0 + group_size]
            err = max(abs(a - b) for a, b in zip(grp, dq))
            max_err, max_abs = max(max_err, err), max(max_abs, max(abs(v) for v in grp))
            span = max(grp) - min(grp)
            if span > 0:
                max_rel_range = max(max_rel_range, err / span)

    quantization = {"group_size": base["group_size"], "bits": base["bits"], "mode": "affine"}
    for module, spec in overrides.items():
        quantization[module] = False if spec is False else {**spec, "mode": "affine"}

    with open(os.path.join(src, "config.json"), "rb") as f:
        config_bytes = f.read()
    config = json.loads(config_bytes)  # dicts keep the file's key order
    config["dtype"] = "bfloat16"
    if "torch_dtype" in config:
        config["torch_dtype"] = "bfloat16"
    config["quantization"] = quantization
    config["quantization_config"] = dict(quantization)
    with open(os.path.join(dst, "config.json"), "w") as f:
        f.write(json.dumps(config, indent=2) + "\n")
    with open(os.path.join(dst, "dequantized", "config.json"), "wb") as f:
        f.write(config_bytes)
    for fname in COPIED:
        shutil.copyfile(os.path.join(src, fname), os.path.join(dst, fname))

    q_path = os.path.join(dst, "model.safetensors")
    d_path = os.path.join(dst, "dequantized", "model.safetensors")
    write_safetensors(q_path, quant, "mlx")
    write_safetensors(d_path, deq, "pt")
    check_written(q_path, d_path, quant, deq, config)
    return max_err, max_abs, max_rel_range


def check_written(q_path, d_path, quant, deq, config):
    """Re-read both files: headers parse, sizes add up, contents are what we meant, and
    the reference is the dequantization of exactly what the checkpoint holds."""
    q_read, d_read = read_safetensors(q_path), read_safetensors(d_path)
    assert q_read == quant and d_read == deq, f"{q_path} or {d_path} reads back differently"
    for k in d_read:
        m = k[:-len(".weight")]
        if m + ".scales" not in q_read:
            assert [bf16_value(h) for h in q_read[k][2]] == d_read[k][2], k
            continue
        rows, cols = d_read[k][1]
        spec = config["quantization"].get(m, config["quantization"])
        gs, bits = spec["group_size"], spec["bits"]
        assert q_read[k][1] == [rows, cols * bits // 32] and q_read[m + ".scales"][1] == [rows, cols // gs], k
        words_per_row = cols * bits // 32
        for r in range(rows):
            codes = unpack_row_bitwise(q_read[k][2][r * words_per_row:(r + 1) * words_per_row], bits, cols)
            for c, q in enumerate(codes):
                i = r * (cols // gs) + c // gs
                w = bf16_value(q_read[m + ".scales"][2][i]) * q + bf16_value(q_read[m + ".biases"][2][i])
                assert struct.unpack("<f", struct.pack("<f", w))[0] == d_read[k][2][r * cols + c], k


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", default="tests/fixtures/models")
    args = ap.parse_args()
    for name in FIXTURES:
        max_err, max_abs, max_rel_range = make_fixture(args.fixtures, name)
        print(f"{name}: max |w - dequant(w)| = {max_err:.3g} = {max_err / max_abs:.3g} of max |w| "
              f"(at most {max_rel_range:.3g} of its group's range)", flush=True)


if __name__ == "__main__":
    main()
