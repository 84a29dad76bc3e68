#include "core/dtype.h"

namespace lmx {

std::string_view dtype_name(Dtype t) {
  switch (t) {
    case Dtype::f32: return "float32";
    case Dtype::f16: return "float16";
    case Dtype::bf16: return "bfloat16";
    case Dtype::i32: return "int32";
    case Dtype::u32: return "uint32";
    case Dtype::u8: return "uint8";
    case Dtype::i8: return "int8";
    case Dtype::boolean: return "bool";
  }
  return "?";
}

std::optional<Dtype> parse_dtype(std::string_view s) {
  struct Name { std::string_view a, b; Dtype t; };
  static constexpr Name kNames[] = {
      {"f32", "float32", Dtype::f32}, {"f16", "float16", Dtype::f16},
      {"bf16", "bfloat16", Dtype::bf16}, {"i32", "int32", Dtype::i32},
      {"u32", "uint32", Dtype::u32},  {"u8", "uint8", Dtype::u8},
      {"i8", "int8", Dtype::i8},      {"bool", "boolean", Dtype::boolean}};
  for (const Name& n : kNames)
    if (s == n.a || s == n.b) return n.t;
  return std::nullopt;
}

float f16_to_f32(f16_t h) {
  const uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1fu;
  uint32_t man = h.bits & 0x3ffu;
  uint32_t u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);  // Inf or NaN (payload kept)
  } else if (exp != 0) {
    u = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    u = sign;
  } else {  // subnormal: normalise the mantissa
    int e = -1;
    do { ++e; man <<= 1; } while ((man & 0x400u) == 0);
    u = sign | (uint32_t(112 - e) << 23) | ((man & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

f16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return {uint16_t(sign | 0x7e00u | ((abs >> 13) & 0x3ffu))};  // NaN stays NaN
  if (abs >= 0x477ff000u) return {uint16_t(sign | 0x7c00u)};  // rounds to >= 65520: Inf
  if (abs < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    if (abs < 0x33000000u) return {sign};  // below half of the smallest subnormal: +-0
    const uint32_t exp = abs >> 23;
    const uint32_t man = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - exp;  // 14 + (113 - exp) ... bits to drop so that 2^-24 is one ulp
    uint32_t half = man >> shift;
    const uint32_t rem = man & ((1u << shift) - 1);
    const uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return {uint16_t(sign | half)};
  }
  uint32_t r = abs - 0x38000000u;            // rebias exponent from 127 to 15
  r += 0xfffu + ((r >> 13) & 1u);            // round to nearest even on the 13 dropped bits
  return {uint16_t(sign | (r >> 13))};
}

}  // namespace lmx
