// Device pieces of rotate-half RoPE with HF's roundings, shared by rope_heads (rope.cu)
// and the fused self-attention (self_attention.cu).
#pragma once

#include "backend/cuda/common.cuh"

namespace lmx::cuda {

// Whether every float within 4 ulps of x rounds to the same T as x does. (A NaN
// neighbour, at the ends of the range or around zero, compares unequal: not sure.)
template <class T>
__device__ __forceinline__ bool rounds_alike(float x) {
  const int bits = __float_as_int(x);
  return round_to<T>(__int_as_float(bits - 4)) == round_to<T>(__int_as_float(bits + 4));
}

// cos and sin of the f32 angle pos * inv_freq, rounded to T as HF casts them: the T
// rounding of the correctly rounded f32 values, as the CPU backend computes them.
// f32 sincosf is within 2 ulps of the true values (CUDA's documented bound), so where
// every float within 4 ulps of its result rounds to one T, that T is the answer; only
// the rare values near a rounding boundary of T (and f32 itself) take the double
// computation, which costs several times more and bounded the RoPE kernels.
template <class T>
__device__ __forceinline__ void rope_angle(int64_t pos, float inv_freq, float& c, float& s) {
  const float f = float(pos) * inv_freq;
  if constexpr (!std::is_same_v<T, float>) {
    float sf, cf;
    sincosf(f, &sf, &cf);
    if (rounds_alike<T>(cf) && rounds_alike<T>(sf)) {
      c = round_to<T>(cf);
      s = round_to<T>(sf);
      return;
    }
  }
  double sd, cd;
  ::sincos(double(f), &sd, &cd);
  c = round_to<T>(float(cd));
  s = round_to<T>(float(sd));
}

// a and b each rounded to T (identity for f32), two at a time: one paired conversion
// where two single ones cost twice the instructions.
template <class T>
__device__ __forceinline__ void round_pair(float& a, float& b) {
  if constexpr (std::is_same_v<T, bfloat_t>) {
    const float2 f = __bfloat1622float2(__floats2bfloat162_rn(a, b));
    a = f.x, b = f.y;
  } else if constexpr (std::is_same_v<T, half_t>) {
    const float2 f = __half22float2(__floats2half2_rn(a, b));
    a = f.x, b = f.y;
  }
}

// One head vector spread over a group of `lanes` lanes (a power of two): lo and hi are
// columns [j0, j0 + kE) of its first and second halves, zeros where `live` is false.
// Applies the optional per-head RMSNorm (weights norm_w [2 * half]), then the rotation
// with the rounded angles cs[j], sn[j] of the vector's position (16-byte aligned
// arrays); the results go to lo/hi.
// The norm's shuffles span the group, so every lane of the warp must call this together.
template <class T, class W, bool kGemmaNorm>
__device__ __forceinline__ void norm_rotate(float (&lo)[kVecElems<T>], float (&hi)[kVecElems<T>], bool live,
                                            int64_t j0, int64_t half, int lanes, const W* norm_w, float eps,
                                            const float* cs, const float* sn) {
  constexpr int kE = kVecElems<T>;
  if (norm_w) {
    float ss = 0;
    for (int i = 0; i < kE; ++i) ss += lo[i] * lo[i] + hi[i] * hi[i];
    // Unrolled over every possible group width: no loop with a lane-dependent exit.
#pragma unroll
    for (int o = 16; o > 0; o /= 2)
      if (o < lanes) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    const float r = 1.0f / ::sqrtf(ss / float(2 * half) + eps);
    // The lane's weights, in 16-byte vectors where they have T's width (j0 and half are
    // whole vectors of T).
    float w1s[kE], w2s[kE];
    if constexpr (sizeof(W) == sizeof(T)) {
      if (live) load_vec(norm_w + j0, w1s), load_vec(norm_w + half + j0, w2s);
    } else {
      for (int i = 0; live && i < kE; ++i) w1s[i] = to_float(norm_w[j0 + i]), w2s[i] = to_float(norm_w[half + j0 + i]);
    }
    for (int i = 0; live && i < kE; ++i) {
      if constexpr (kGemmaNorm) {
        lo[i] = lo[i] * r * (1.0f + w1s[i]), hi[i] = hi[i] * r * (1.0f + w2s[i]);
      } else {  // rounded before the weight multiply, as the Llama-style norm
        lo[i] *= r, hi[i] *= r;
        round_pair<T>(lo[i], hi[i]);
        lo[i] *= w1s[i], hi[i] *= w2s[i];
      }
      round_pair<T>(lo[i], hi[i]);
    }
  }
  if (!live) return;
  float ca[kE], sa[kE];  // cs and sn are 16-byte aligned and j0 a multiple of 4
  for (int i = 0; i < kE; i += 4) {
    const float4 c4 = *reinterpret_cast<const float4*>(cs + j0 + i), s4 = *reinterpret_cast<const float4*>(sn + j0 + i);
    ca[i] = c4.x, ca[i + 1] = c4.y, ca[i + 2] = c4.z, ca[i + 3] = c4.w;
    sa[i] = s4.x, sa[i + 1] = s4.y, sa[i + 2] = s4.z, sa[i + 3] = s4.w;
  }
  for (int i = 0; i < kE; ++i) {
    const float c = ca[i], s = sa[i], x1 = lo[i], x2 = hi[i];
    float a = x1 * c, b = -x2 * s, e = x2 * c, f = x1 * s;  // (negation is exact)
    round_pair<T>(a, b);
    round_pair<T>(e, f);
    lo[i] = a + b;  // x1*cos - x2*sin
    hi[i] = e + f;  // x2*cos + x1*sin
  }
}

// Lanes per head vector for norm_rotate: enough 16-byte vectors to cover a half, at least
// `at_least`, a power of two.
inline int rope_lanes(int64_t half, int64_t vec, int at_least = 1) {
  int lanes = at_least;
  while (lanes < half / vec) lanes *= 2;
  return lanes;
}

}  // namespace lmx::cuda
