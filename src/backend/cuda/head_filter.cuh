// The greedy LM head's filter, device side (the copy is made by head_filter.cu; the
// persistent step reads it in its argmax phase, Epilogue::argmax).
//
// Why: at batch 1 the LM head reads every weight of W [V, k] once a token, and for the
// tied heads of small models that is 13-30% of a token's bytes (Gemma 3's 262,144 rows).
// Greedy decoding needs only the argmax of W·v. A copy of W in one byte a weight gives
// every product within a bound that the copy's own rounding sets; the rows whose bound
// reaches the largest lower bound of the block's rows are recomputed from W itself, and
// the argmax is taken over those exact values. The row that holds W·v's maximum is always
// among them, so the result is W's argmax bit for bit, ties to the lower index included.
//
// The copy: each row w as int8 codes q with a scale s (w ≈ s·q, s = max|w| / 127). The
// vector v (bf16) is split in two int8 levels, v ≈ s1·v1 + s2·v2 with s1 and s2 powers of
// two, so that a row's product is two integer dot products (dp4a: exact in int32) and a
// few roundings: ŝ = s·(s1·D1 + s2·D2), D1 = q·v1, D2 = q·v2. Its arithmetic is a quarter
// of the bf16 products' per byte, so the pass runs at the rate its bytes stream.
//
// The bound. Let t̂ be the value the exact path computes (warp_dots: f32 products, exact
// for bf16 × bf16, summed in some order), u = 2^-24 and γ = k·u / (1 − k·u) (any order of
// summing k terms is off by at most γ times the sum of their magnitudes), e = w − s·q and
// e_v = v − s1·v1 − s2·v2 (exact in f32: each level's remainder is a multiple of the
// finer of two ulps and smaller than the coarser):
//   |t̂ − v·w|                  ≤ γ·‖v‖·‖w‖
//   v·w − s·(s1·D1 + s2·D2)     = v·e + (s·q)·e_v,  so ≤ ‖v‖·‖e‖ + ‖s·q‖·‖e_v‖
//   forming ŝ from D1 and D2    three roundings: ≤ 3u·s·(s1·|D1| + s2·|D2|) + u·|ŝ|
// With B1 = ‖e‖ + γ·‖w‖ and B2 = ‖w‖ + ‖e‖ ≥ ‖s·q‖ fixed per row (computed in double when
// the copy is made, rounded up), |t̂ − ŝ| ≤ ‖v‖·B1 + ‖e_v‖·B2 + the roundings. The margin
// takes the norms from f32 sums (off by at most about γ/2, k ≤ 4,096) times 1 + 2^-9,
// 2^-20 for the 3u, and |ŝ|·2^-16 for the last rounding and for the f32 additions that
// form ŝ ± margin: wider than the bound, never narrower. Every row then has ŝ − margin ≤
// t̂ ≤ ŝ + margin. Let L be the largest ŝ − margin of the block's rows; the row with the
// block's largest t̂ has ŝ + margin ≥ t̂ ≥ L and is a candidate. A NaN anywhere makes its
// row a candidate (the test is !(upper < L)); a vector whose largest value lies outside
// [2^-100, 2^100] (and is not 0) makes every row one.
#pragma once

#include "backend/cuda/fused_common.cuh"

namespace lmx::cuda::fused::head_filter {

// The 16 bytes before each row's codes.
struct RowConstants {
  float scale;      // s: w ≈ s·q
  float bound_v;    // B1 = ‖e‖ + γ·‖w‖; +inf for a row with a weight that is not finite
  float bound_rem;  // B2 = ‖w‖ + ‖e‖
  float unused;
};
static_assert(sizeof(RowConstants) == 16);

// The vector's two levels: v ≈ s1·v1 + s2·v2 (v1, v2 int8 in [-64, 64]), with the norms
// of v and of what the levels leave (e_v); `valid` false: every row is a candidate.
struct VectorCodes {
  float s1, s2, norm_v, norm_rem;
  bool valid;
};

// The margin of a row's filtered product s_hat = c.scale·(s1·d1 + s2·d2).
__device__ __forceinline__ float margin(const RowConstants& c, const VectorCodes& v, int d1, int d2, float s_hat) {
  const float sums = v.s1 * fabsf(float(d1)) + v.s2 * fabsf(float(d2));
  return (v.norm_v * c.bound_v + v.norm_rem * c.bound_rem) * (1.0f + 0x1p-9f) + c.scale * sums * 0x1p-20f +
         fabsf(s_hat) * 0x1p-16f;
}

// The integer products of rows `a` and `b` (their codes, past the constants) with the
// vector's levels v1 and v2 (k codes each, k a multiple of 16), by one warp, returned to
// every lane: {a·v1, a·v2, b·v1, b·v2}. Lane l takes codes [16l, 16l + 16) of every 512:
// the warp's 16-byte reads cover 512 contiguous bytes. Exact, in any order.
__device__ __forceinline__ int4 warp_dots_codes(const int8_t* a, const int8_t* b, const int8_t* v1,
                                                const int8_t* v2, int k) {
  auto at = [](const int8_t* p, int c) { return *reinterpret_cast<const int4*>(p + c); };
  auto dot = [](int4 q, int4 x, int acc) {
    return __dp4a(q.w, x.w, __dp4a(q.z, x.z, __dp4a(q.y, x.y, __dp4a(q.x, x.x, acc))));
  };
  int4 d = make_int4(0, 0, 0, 0);
  for (int c = (threadIdx.x % 32) * 16; c < k; c += 512) {
    const int4 x1 = at(v1, c), x2 = at(v2, c), qa = at(a, c), qb = at(b, c);
    d.x = dot(qa, x1, d.x), d.y = dot(qa, x2, d.y), d.z = dot(qb, x1, d.z), d.w = dot(qb, x2, d.w);
  }
  return make_int4(warp_reduce(d.x, Sum{}), warp_reduce(d.y, Sum{}), warp_reduce(d.z, Sum{}),
                   warp_reduce(d.w, Sum{}));
}

}  // namespace lmx::cuda::fused::head_filter
