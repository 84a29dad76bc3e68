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

// One head vector spread over a group of `lanes` lanes (a power of two): lo and hi hold
// columns [j0, j0 + kE) of its first and second halves as 16-byte vectors of T, zeros
// where `live` is false. Applies the optional per-head RMSNorm (weights norm_w
// [2 * half]), then the rotation with the rounded angles cs[j], sn[j] of the vector's
// position (16-byte aligned arrays); the results replace lo and hi. The angles are f32
// holding T values, or (A = T) the T values themselves, which the 16-bit arithmetic takes
// as they are.
// The norm's shuffles span the group, so every lane of the warp must call this together.
//
// For 16-bit T the arithmetic runs on pairs of neighbouring columns. The product of two
// T values is exact in f32, so its rounding to T is the paired multiply's result, and
// the sum of two rounded products rounded to T is the paired add's (RN, no contraction:
// the _rn forms): the same values as HF's f32 arithmetic with roundings, in a fraction of
// the instructions.
template <class T, class W, bool kGemmaNorm, class A = float>
__device__ __forceinline__ void norm_rotate(uint4& lo_raw, uint4& hi_raw, bool live, int64_t j0,
                                            int64_t half, int lanes, const W* norm_w, float eps,
                                            const A* cs, const A* sn) {
  static_assert(std::is_same_v<A, float> || (std::is_same_v<A, T> && sizeof(T) == 2),
                "angles: f32, or 16-bit T");
  constexpr int kE = kVecElems<T>;
  float ca[kE], sa[kE];  // cos and sin of the lane's columns (cs and sn are 16-byte aligned, j0 a multiple of 4)
  auto load_angles = [&] {
    for (int i = 0; i < kE; i += 4) {
      const float4 c4 = *reinterpret_cast<const float4*>(cs + j0 + i), s4 = *reinterpret_cast<const float4*>(sn + j0 + i);
      ca[i] = c4.x, ca[i + 1] = c4.y, ca[i + 2] = c4.z, ca[i + 3] = c4.w;
      sa[i] = s4.x, sa[i + 1] = s4.y, sa[i + 2] = s4.z, sa[i + 3] = s4.w;
    }
  };
  // The norm's scale 1/rms over the whole head, from the lane's squares.
  auto inverse_rms = [&](float ss) {
#pragma unroll
    for (int o = 16; o > 0; o /= 2)  // unrolled over every group width: no lane-dependent loop exit
      if (o < lanes) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    return 1.0f / ::sqrtf(ss / float(2 * half) + eps);
  };
  // The lane's norm weights as floats (1 + w for Gemma is formed by the caller's arithmetic).
  auto load_weights = [&](float (&w1)[kE], float (&w2)[kE]) {
    if constexpr (sizeof(W) == sizeof(T)) {
      load_vec(norm_w + j0, w1), load_vec(norm_w + half + j0, w2);
    } else {
      for (int i = 0; i < kE; ++i) w1[i] = to_float(norm_w[j0 + i]), w2[i] = to_float(norm_w[half + j0 + i]);
    }
  };

  if constexpr (std::is_same_v<T, float>) {  // f32: no roundings
    float* lo = reinterpret_cast<float*>(&lo_raw);
    float* hi = reinterpret_cast<float*>(&hi_raw);
    if (norm_w) {
      float ss = 0;
      for (int i = 0; i < kE; ++i) ss += lo[i] * lo[i] + hi[i] * hi[i];
      const float r = inverse_rms(ss);
      if (!live) return;
      float w1[kE], w2[kE];
      load_weights(w1, w2);
      for (int i = 0; i < kE; ++i) {
        lo[i] = kGemmaNorm ? lo[i] * r * (1.0f + w1[i]) : lo[i] * r * w1[i];
        hi[i] = kGemmaNorm ? hi[i] * r * (1.0f + w2[i]) : hi[i] * r * w2[i];
      }
    }
    if (!live) return;
    load_angles();
    for (int i = 0; i < kE; ++i) {
      const float x1 = lo[i], x2 = hi[i];
      lo[i] = x1 * ca[i] + -x2 * sa[i];
      hi[i] = x2 * ca[i] + x1 * sa[i];
    }
  } else {
    using P = Pair<T>;
    constexpr int kP = kE / 2;  // pairs per vector
    P* lo = reinterpret_cast<P*>(&lo_raw);
    P* hi = reinterpret_cast<P*>(&hi_raw);
    if (norm_w) {
      float2 lf[kP], hf[kP];
      float ss = 0;
      for (int k = 0; k < kP; ++k) {
        lf[k] = from_pair<T>(lo[k]), hf[k] = from_pair<T>(hi[k]);
        ss += lf[k].x * lf[k].x + hf[k].x * hf[k].x;
        ss += lf[k].y * lf[k].y + hf[k].y * hf[k].y;
      }
      const float r = inverse_rms(ss);
      if (!live) return;
      if constexpr (std::is_same_v<W, T> && !kGemmaNorm) {  // round(round(x r) w): a paired multiply
        const uint4 w1r = *reinterpret_cast<const uint4*>(norm_w + j0), w2r = *reinterpret_cast<const uint4*>(norm_w + half + j0);
        const P* w1 = reinterpret_cast<const P*>(&w1r);
        const P* w2 = reinterpret_cast<const P*>(&w2r);
        for (int k = 0; k < kP; ++k) {
          lo[k] = __hmul2_rn(to_pair<T>(lf[k].x * r, lf[k].y * r), w1[k]);
          hi[k] = __hmul2_rn(to_pair<T>(hf[k].x * r, hf[k].y * r), w2[k]);
        }
      } else {
        float w1[kE], w2[kE];
        load_weights(w1, w2);
        for (int k = 0; k < kP; ++k) {
          const float a1 = w1[2 * k], b1 = w1[2 * k + 1], a2 = w2[2 * k], b2 = w2[2 * k + 1];
          if constexpr (kGemmaNorm) {  // round(x r (1 + w))
            lo[k] = to_pair<T>(lf[k].x * r * (1.0f + a1), lf[k].y * r * (1.0f + b1));
            hi[k] = to_pair<T>(hf[k].x * r * (1.0f + a2), hf[k].y * r * (1.0f + b2));
          } else {  // round(round(x r) w), rounded before the weight multiply as the Llama-style norm
            const float2 yl = from_pair<T>(to_pair<T>(lf[k].x * r, lf[k].y * r));
            const float2 yh = from_pair<T>(to_pair<T>(hf[k].x * r, hf[k].y * r));
            lo[k] = to_pair<T>(yl.x * a1, yl.y * b1);
            hi[k] = to_pair<T>(yh.x * a2, yh.y * b2);
          }
        }
      }
    }
    if (!live) return;
    P c[kP], s[kP];  // exact: T values
    if constexpr (std::is_same_v<A, T>) {
      const uint4 cr = *reinterpret_cast<const uint4*>(cs + j0),
                  sr = *reinterpret_cast<const uint4*>(sn + j0);
      for (int k = 0; k < kP; ++k)
        c[k] = reinterpret_cast<const P*>(&cr)[k], s[k] = reinterpret_cast<const P*>(&sr)[k];
    } else {
      load_angles();
      for (int k = 0; k < kP; ++k)
        c[k] = to_pair<T>(ca[2 * k], ca[2 * k + 1]), s[k] = to_pair<T>(sa[2 * k], sa[2 * k + 1]);
    }
    for (int k = 0; k < kP; ++k) {
      const P x1 = lo[k], x2 = hi[k];
      lo[k] = __hsub2_rn(__hmul2_rn(x1, c[k]), __hmul2_rn(x2, s[k]));  // x1*cos - x2*sin
      hi[k] = __hadd2_rn(__hmul2_rn(x2, c[k]), __hmul2_rn(x1, s[k]));  // x2*cos + x1*sin
    }
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
