// Rotate-half RoPE with HF's roundings: cos/sin of an f32 product position * inv_freq,
// as correctly rounded f32 values (computed in double and rounded once, as the CUDA
// backend; glibc's cosf/sinf are not always correctly rounded), cast to x's dtype; then
// x*cos and rotate_half(x)*sin are each rounded to the dtype before their (rounded) sum.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_fast.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace lmx::cpu {
namespace {

// The rotation of one head row, in the roundings of T. cs/sn hold cos/sin already
// rounded to T (as f32 values) for the first half; the second half repeats them.
template <class T>
void rotate_row(const T* x, const float* cs, const float* sn, int64_t half, T* out) {
  auto round = [](float v) { return to_f32(from_f32<T>(v)); };
  for (int64_t j = 0; j < half; ++j) {
    const float x1 = to_f32(x[j]), x2 = to_f32(x[j + half]);
    // out[j] = x1*cos - x2*sin; out[j+half] = x2*cos + x1*sin (negation is exact)
    out[j] = from_f32<T>(round(x1 * cs[j]) + round(-x2 * sn[j]));
    out[j + half] = from_f32<T>(round(x2 * cs[j]) + round(x1 * sn[j]));
  }
}

// out [B, H, L, D]; x has out's layout, or [B, L, H, D] when `tokens_first` (rope_heads).
template <class T>
void rope_typed(const Array& x, const Array& inv_freq, const Array& offsets, const Array& out, bool tokens_first) {
  const int64_t nb = out.shape(0), nh = out.shape(1), nl = out.shape(2), d = out.shape(3), half = d / 2;
  const T* xp = x.data<T>();                     // x [B, H, L, D] or [B, L, H, D]
  const float* freq = inv_freq.data<float>();    // inv_freq [D/2]
  const int32_t* off = offsets.data<int32_t>();  // offsets [B]
  T* op = out.data<T>();                         // out [B, H, L, D]
  // One work item per (b, l): its cos/sin table is shared by all H heads.
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, nh * d));
  parallel_for(nb * nl, grain, [&](int64_t p0, int64_t p1) {
    std::vector<float> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));  // [D/2] each
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p / nl, l = p % nl;
      const float pos = float(int64_t(off[b]) + l);
      for (int64_t i = 0; i < half; ++i) {
        const float f =
            pos * freq[i];  // one f32 product, as HF's f32 matmul of inv_freq and positions
        cs[size_t(i)] = to_f32(from_f32<T>(float(std::cos(double(f)))));
        sn[size_t(i)] = to_f32(from_f32<T>(float(std::sin(double(f)))));
      }
      for (int64_t h = 0; h < nh; ++h) {
        const int64_t row = ((b * nh + h) * nl + l) * d;
        const int64_t in_row = tokens_first ? ((b * nl + l) * nh + h) * d : row;
        rotate_row(xp + in_row, cs.data(), sn.data(), half, op + row);
      }
    }
  });
}

void rope_any(const Array& x, const Array& inv_freq, const Array& offsets, const Array& out, bool tokens_first) {
  if (x.size() == 0) return;
  switch (x.dtype()) {
    case Dtype::f32: return rope_typed<float>(x, inv_freq, offsets, out, tokens_first);
    case Dtype::bf16: return rope_typed<bf16_t>(x, inv_freq, offsets, out, tokens_first);
    case Dtype::f16: return rope_typed<f16_t>(x, inv_freq, offsets, out, tokens_first);
    default: fail("rope", "unsupported dtype ", dtype_name(x.dtype()));
  }
}

}  // namespace

void rope(const Array& x, const Array& inv_freq, const Array& offsets, const Array& out) {
  rope_any(x, inv_freq, offsets, out, false);
}

bool rope_heads(const Array& x, const Array& inv_freq, const Array& offsets, const Array* norm_w, float eps,
                fast::RmsNormStyle style, const Array& out) {
  // The per-head norm is one pass in token order; the rotation reads it there and writes
  // the head-major layout, so no transposed copy is made.
  Array src = x;
  if (norm_w) {
    src = Array(x.shape(), x.dtype(), x.device());  // [B, L, H, D]
    rms_norm(x, *norm_w, eps, style, src);
  }
  rope_any(src, inv_freq, offsets, out, true);
  return true;
}

}  // namespace lmx::cpu
