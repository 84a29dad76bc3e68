// Element types and the f32 <-> bf16/f16 conversions (round to nearest even).
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace lmx {

enum class Dtype : uint8_t { f32, f16, bf16, i32, u32, u8, i8, boolean };

inline constexpr Dtype kAllDtypes[] = {Dtype::f32, Dtype::f16, Dtype::bf16, Dtype::i32,
                                       Dtype::u32, Dtype::u8,  Dtype::i8,   Dtype::boolean};
inline constexpr Dtype kFloatDtypes[] = {Dtype::f32, Dtype::f16, Dtype::bf16};

constexpr size_t itemsize(Dtype t) {
  switch (t) {
    case Dtype::f32: case Dtype::i32: case Dtype::u32: return 4;
    case Dtype::f16: case Dtype::bf16: return 2;
    default: return 1;
  }
}
constexpr bool is_float(Dtype t) { return t == Dtype::f32 || t == Dtype::f16 || t == Dtype::bf16; }
constexpr bool is_signed_int(Dtype t) { return t == Dtype::i32 || t == Dtype::i8; }
constexpr bool is_integer(Dtype t) { return !is_float(t) && t != Dtype::boolean; }

// "float32", "bfloat16", ... (numpy/PyTorch spelling).
std::string_view dtype_name(Dtype t);
// Accepts "f32"/"float32", "bf16"/"bfloat16", "f16"/"float16", "i32"/"int32", ...
std::optional<Dtype> parse_dtype(std::string_view s);

// Storage types for the 16-bit floats. They are plain bit containers: arithmetic
// always happens in f32 after conversion.
struct bf16_t { uint16_t bits; };
struct f16_t { uint16_t bits; };

inline float bf16_to_f32(bf16_t h) {
  uint32_t u = uint32_t(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline bf16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {uint16_t((u >> 16) | 0x40)};  // quiet NaN, keep sign
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even; Inf stays Inf
  return {uint16_t(u >> 16)};
}

float f16_to_f32(f16_t h);
f16_t f32_to_f16(float f);

// Values of any dtype as f32 / from f32 (integers round toward zero like a C cast,
// bool is x != 0).
template <class T> inline float to_f32(T v) { return float(v); }
template <> inline float to_f32(bf16_t v) { return bf16_to_f32(v); }
template <> inline float to_f32(f16_t v) { return f16_to_f32(v); }
template <class T> inline T from_f32(float v) { return T(v); }
template <> inline bf16_t from_f32(float v) { return f32_to_bf16(v); }
template <> inline f16_t from_f32(float v) { return f32_to_f16(v); }
template <> inline bool from_f32(float v) { return v != 0.0f; }

// Calls f(T{}) with the C++ type that stores dtype t.
template <class F>
decltype(auto) visit_dtype(Dtype t, F&& f) {
  switch (t) {
    case Dtype::f32: return f(float{});
    case Dtype::f16: return f(f16_t{});
    case Dtype::bf16: return f(bf16_t{});
    case Dtype::i32: return f(int32_t{});
    case Dtype::u32: return f(uint32_t{});
    case Dtype::u8: return f(uint8_t{});
    case Dtype::i8: return f(int8_t{});
    case Dtype::boolean: return f(bool{});
  }
  return f(float{});
}

template <class T> constexpr Dtype dtype_of();
template <> constexpr Dtype dtype_of<float>() { return Dtype::f32; }
template <> constexpr Dtype dtype_of<f16_t>() { return Dtype::f16; }
template <> constexpr Dtype dtype_of<bf16_t>() { return Dtype::bf16; }
template <> constexpr Dtype dtype_of<int32_t>() { return Dtype::i32; }
template <> constexpr Dtype dtype_of<uint32_t>() { return Dtype::u32; }
template <> constexpr Dtype dtype_of<uint8_t>() { return Dtype::u8; }
template <> constexpr Dtype dtype_of<int8_t>() { return Dtype::i8; }
template <> constexpr Dtype dtype_of<bool>() { return Dtype::boolean; }

}  // namespace lmx
