// The pieces of an MLX affine-quantized product (spec §2) that the CPU's kernels share:
// raw pointers and sizes, and the scalar reading of codes, scales and offsets.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace lmx::cpu::quant {

// A quantized matrix's arrays, as raw pointers and sizes.
struct Rows {
  const uint32_t* packed;  // [N, words]
  const void* scales;      // [N, groups]
  const void* biases;
  Dtype scale_dtype;
  int bits, group_size;
  int64_t words, groups;  // per row
};

inline float scale_at(const void* p, Dtype t, int64_t i) {
  switch (t) {
    case Dtype::bf16: return bf16_to_f32(static_cast<const bf16_t*>(p)[i]);
    case Dtype::f16: return f16_to_f32(static_cast<const f16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

// Code c of a row's bitstream; 3, 5 and 6 bits may straddle two words.
inline uint32_t code_at(const uint32_t* row, int64_t c, int bits) {
  const int64_t bit = c * bits;
  const uint32_t* p = row + (bit >> 5);
  const int shift = int(bit & 31);
  uint64_t v = uint64_t(p[0]) >> shift;
  if (shift + bits > 32) v |= uint64_t(p[1]) << (32 - shift);
  return uint32_t(v) & ((1u << bits) - 1);
}

// Row n dequantized into out[0, K) in f32: scale · q + bias, where scale · q is exact
// (a 16-bit scale times a code of at most 8 bits), so the add is the one rounding.
inline void dequantize_row(const Rows& w, int64_t n, float* out) {
  const uint32_t* row = w.packed + n * w.words;
  for (int64_t g = 0; g < w.groups; ++g) {
    const float s = scale_at(w.scales, w.scale_dtype, n * w.groups + g);
    const float b = scale_at(w.biases, w.scale_dtype, n * w.groups + g);
    const int64_t c0 = g * w.group_size;
    for (int64_t c = c0; c < c0 + w.group_size; ++c) out[c] = s * float(code_at(row, c, w.bits)) + b;
  }
}

}  // namespace lmx::cpu::quant
