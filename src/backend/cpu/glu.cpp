// The gated activation out = act(gate) · up over contiguous bf16 or f32 arrays, on SIMD
// vectors: the scalar form (elementwise.cpp) spent most of Gemma 3's prompt time outside the
// matrix products in tanhf and expm1f. Both activations go through one exponential:
//   silu(x)      = x / (1 + e^-x)
//   gelu_tanh(x) = 0.5·x·(1 + tanh(z)) = x / (1 + e^-2z),  z = √(2/π)·(x + 0.044715·x³),
// the second form free of the cancellation in 1 + tanh(z) for negative z. For bf16 the
// activation is rounded to bf16 before the product, as two separate ops would, and bf16
// pairs are split into even and odd lanes (no shuffles); the last elements go through the
// same vectors in a padded copy, so each element's bits do not depend on where it lies.
// Highway compiles it for each x86 target; the best one is chosen at run time.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backend/cpu/glu.cpp"
#include <hwy/foreach_target.h>  // must come before highway.h
#include <hwy/highway.h>
// Per-target code: after foreach_target.h.
#include <hwy/contrib/math/math-inl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "backend/cpu/cpu_fast.h"
#include "core/dtype.h"

HWY_BEFORE_NAMESPACE();
namespace lmx::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;
using DU = hn::RebindToUnsigned<DF>;
using VU = hn::Vec<DU>;

HWY_INLINE VF activation(DF df, VF x, bool gelu) {
  const VF one = hn::Set(df, 1.0f);
  VF t = hn::Neg(x);  // silu: e^-x
  if (gelu) {         // gelu_tanh: e^-2z
    const VF cube = hn::Mul(hn::Set(df, 0.044715f), hn::Mul(hn::Mul(x, x), x));
    const VF z = hn::Mul(hn::Set(df, 0.7978845608028654f), hn::Add(x, cube));
    t = hn::Mul(hn::Set(df, -2.0f), z);
  }
  return hn::Div(x, hn::Add(one, hn::Exp(df, t)));
}

// f32 bits rounded to bf16 (to nearest, ties to even; a NaN quiet, its sign kept), left in
// the upper 16 bits with the lower ones zero: f32_to_bf16 in every lane.
HWY_INLINE VU round_bf16(VF v) {
  const DU du;
  const VU bits = hn::BitCast(du, v);
  const VU bias = hn::Add(hn::Set(du, 0x7FFFu), hn::And(hn::ShiftRight<16>(bits), hn::Set(du, 1u)));
  const VU rounded = hn::And(hn::Add(bits, bias), hn::Set(du, 0xFFFF0000u));
  const VU quiet = hn::And(hn::Or(bits, hn::Set(du, 0x00400000u)), hn::Set(du, 0xFFFF0000u));
  return hn::IfThenElse(hn::RebindMask(du, hn::IsNaN(v)), quiet, rounded);
}

// n elements from the start of each array (n a multiple of 2·Lanes for bf16, of Lanes for f32).
template <class T>
HWY_INLINE void glu_vectors(const T* gate, const T* up, T* out, int64_t n, bool gelu) {
  const DF df;
  const DU du;
  const int64_t lanes = int64_t(hn::Lanes(df));
  if constexpr (std::is_same_v<T, float>) {
    for (int64_t i = 0; i < n; i += lanes)
      hn::StoreU(hn::Mul(activation(df, hn::LoadU(df, gate + i), gelu), hn::LoadU(df, up + i)), df, out + i);
  } else {  // bf16: a u32 holds an even element in its low half and the odd one after it
    const auto* g = reinterpret_cast<const uint32_t*>(gate);
    const auto* u = reinterpret_cast<const uint32_t*>(up);
    auto* o = reinterpret_cast<uint32_t*>(out);
    const VU high = hn::Set(du, 0xFFFF0000u);
    for (int64_t i = 0; i < n / 2; i += lanes) {
      const VU gp = hn::LoadU(du, g + i), up_pairs = hn::LoadU(du, u + i);
      VU halves[2];
      for (int h = 0; h < 2; ++h) {  // 0: even elements, 1: odd
        const VF x = hn::BitCast(df, h == 0 ? hn::ShiftLeft<16>(gp) : hn::And(gp, high));
        const VF y = hn::BitCast(df, h == 0 ? hn::ShiftLeft<16>(up_pairs) : hn::And(up_pairs, high));
        const VF act = hn::BitCast(df, round_bf16(activation(df, x, gelu)));
        halves[h] = round_bf16(hn::Mul(act, y));
      }
      hn::StoreU(hn::Or(hn::ShiftRight<16>(halves[0]), halves[1]), du, o + i);
    }
  }
}

template <class T>
void glu_span(const T* gate, const T* up, T* out, int64_t n, bool gelu) {
  const int64_t step = int64_t(hn::Lanes(DF())) * (std::is_same_v<T, float> ? 1 : 2);
  const int64_t body = n / step * step;
  glu_vectors(gate, up, out, body, gelu);
  if (body == n) return;
  // The last elements, padded with zeros to one step.
  HWY_ALIGN T g[hn::MaxLanes(DF()) * 2] = {}, u[hn::MaxLanes(DF()) * 2] = {}, o[hn::MaxLanes(DF()) * 2];
  std::memcpy(g, gate + body, size_t(n - body) * sizeof(T));
  std::memcpy(u, up + body, size_t(n - body) * sizeof(T));
  glu_vectors(g, u, o, step, gelu);
  std::memcpy(out + body, o, size_t(n - body) * sizeof(T));
}

void glu_range(Dtype dt, const void* gate, const void* up, void* out, int64_t begin, int64_t end, bool gelu) {
  if (dt == Dtype::f32)
    glu_span(static_cast<const float*>(gate) + begin, static_cast<const float*>(up) + begin,
             static_cast<float*>(out) + begin, end - begin, gelu);
  else
    glu_span(static_cast<const bf16_t*>(gate) + begin, static_cast<const bf16_t*>(up) + begin,
             static_cast<bf16_t*>(out) + begin, end - begin, gelu);
}

}  // namespace HWY_NAMESPACE
}  // namespace lmx::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "core/thread_pool.h"

namespace lmx::cpu {

HWY_EXPORT(glu_range);

bool glu_contiguous(fast::GluActivation act, const Array& gate, const Array& up, const Array& out) {
  const Dtype dt = gate.dtype();
  if (!(dt == Dtype::bf16 || dt == Dtype::f32) || up.dtype() != dt || out.dtype() != dt) return false;
  if (gate.shape() != out.shape() || up.shape() != out.shape()) return false;
  if (!gate.is_contiguous() || !up.is_contiguous() || !out.is_contiguous()) return false;
  const int64_t n = out.size();
  const bool gelu = act == fast::GluActivation::gelu_tanh;
  // Chunks of 16 Ki elements, each starting at a multiple of 64 (a whole number of vectors
  // on every target): the same lanes, and so the same bits, however the work is split.
  parallel_for((n + 63) / 64, 256, [&](int64_t b, int64_t e) {
    HWY_DYNAMIC_DISPATCH(glu_range)(dt, gate.raw(), up.raw(), out.raw(), b * 64, std::min(n, e * 64), gelu);
  });
  return true;
}

}  // namespace lmx::cpu
#endif  // HWY_ONCE
