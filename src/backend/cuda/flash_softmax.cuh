// What the two flash-attention kernels share (flash_attention.cu, mma.sync on any GPU since
// sm_80; flash_wgmma.cu, Hopper's wgmma): their parameters and the online softmax of a tile
// of scores, on registers in the m16n8 accumulator layout, which both products give.
//
// A lane holds two rows of the tile, r = lane / 4 (s[n][0], s[n][1]) and r + 8 (s[n][2],
// s[n][3]), at keys 8n + 2 (lane % 4) and the next; the four lanes of a quad share a row.
//
// Roundings: each score is rounded to the dtype, multiplied by the f32 scale and rounded
// again, as the composition does; the exponentials are rounded to the dtype before they
// multiply the values, and the sum divides once at the end. The composition rounds the
// normalised probabilities instead: the two differ by a rounding of the dtype's unit,
// within the tolerance the tests hold every attention path to. The exponentials use the
// hardware's exp2: for softmax arguments (at most 0, rarely below -30) its relative error
// is around 1e-6, far under the 16-bit unit (4e-3 for bf16) the results are rounded to,
// and it made the 4,096-token prefill 14% (Llama) and 19% (Qwen3) faster than the
// correctly rounded expf.
#pragma once

#include "backend/cuda/mma.cuh"

namespace lmx::cuda {

struct FlashParams : AttentionOperands {
  int hq, hkv, lq, lk;
  float scale;
  bool causal;
  bool exact_scale;  // a rounded score times the scale needs no second rounding (bf16, a power of two)
  int window;  // 0: none
};

// flash_wgmma.cu: the kernel for Hopper (head dims 64 and 128, bf16 or f16); false where it
// does not apply (another GPU, another head dim, LMX_FLASH_WGMMA=0), nothing done.
bool flash_wgmma(const Context& ctx, const FlashParams& p, Dtype dtype, int64_t d, int64_t nb);

namespace flash {

constexpr float kLog2e = 1.4426950408889634f;

// The hardware's 2^x (relative error about 2^-22; subnormal results flush to zero).
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// The tiles of `tile_keys` keys that some row of a block (rows row0..last_row, positions
// from qoff on) sees: [first, end), empty where end <= first. Causal rows see no key past
// their own position, and a window's rows none `window` or more before it.
struct KeyTiles {
  int first, end;
};
__device__ __forceinline__ KeyTiles visible_tiles(const FlashParams& p, int64_t qoff, int row0, int last_row,
                                                  int tile_keys) {
  int64_t hi = p.lk, lo = 0;
  if (p.causal) hi = ::min(hi, ::max(qoff + last_row + 1, int64_t(0)));
  if (p.window > 0) lo = ::max(int64_t(0), qoff + row0 - p.window + 1);
  return {int(lo / tile_keys), int((hi + tile_keys - 1) / tile_keys)};
}

// Whether every row of a block (positions first_pos..last_pos) sees all of the tile's keys
// [key0, key0 + keys): before the causal diagonal, inside the window, no padding. Most tiles
// are, and they skip the per-score mask.
__device__ __forceinline__ bool tile_whole(const FlashParams& p, int64_t key0, int keys, int64_t first_pos,
                                           int64_t last_pos) {
  return key0 + keys <= p.lk && !p.key_valid && (!p.causal || key0 + keys - 1 <= first_pos) &&
         (p.window == 0 || key0 > last_pos - p.window);
}

// A lane's scores rounded, scaled and rounded again (once when the scale is a power of two:
// in bf16 the product is then exact), each pair through one packed conversion; then, unless
// the tile is whole, -inf where the row does not see the key. pos and live: the lane's two
// rows' positions and whether they exist; key_ok(k, key): whether the tile's k-th key (key,
// counted from 0) exists and is not padding. Rows past the end are not stored, so what they
// compute does not matter.
template <class T, int kN, class KeyOk>
__device__ __forceinline__ void prepare_scores(float (&s)[kN][4], const FlashParams& p, bool whole, int64_t key0,
                                               const int64_t (&pos)[2], const bool (&live)[2], KeyOk key_ok) {
  const int quad = int(threadIdx.x) % 4;
#pragma unroll
  for (int n = 0; n < kN; ++n)
#pragma unroll
    for (int e = 0; e < 4; e += 2) {
      round2_to<T>(s[n][e], s[n][e + 1]);
      s[n][e] *= p.scale, s[n][e + 1] *= p.scale;
      if (!p.exact_scale) round2_to<T>(s[n][e], s[n][e + 1]);
    }
  if (whole) return;
#pragma unroll
  for (int n = 0; n < kN; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int hrow = e / 2, k = n * 8 + quad * 2 + e % 2;
      const int64_t key = key0 + k, qp = pos[hrow];
      const bool seen =
          live[hrow] && key_ok(k, key) && (!p.causal || key <= qp) && (p.window == 0 || key > qp - p.window);
      if (!seen) s[n][e] = -INFINITY;
    }
}

// The rows' running maxima m taken over the tile (and the quad that shares each row); corr,
// the factor that rescales what was summed before, is applied to l here and left for the
// caller's output sums; mb is the new maximum in base 2. True where neither row's maximum
// moved (corr is exactly 1).
template <int kN>
__device__ __forceinline__ bool update_maxima(const float (&s)[kN][4], float (&m)[2], float (&l)[2], float (&corr)[2],
                                              float (&mb)[2]) {
  float mt[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int n = 0; n < kN; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) mt[e / 2] = fmaxf(mt[e / 2], s[n][e]);
  bool settled = true;
#pragma unroll
  for (int hrow = 0; hrow < 2; ++hrow) {
    mt[hrow] = fmaxf(mt[hrow], __shfl_xor_sync(0xffffffffu, mt[hrow], 1));
    mt[hrow] = fmaxf(mt[hrow], __shfl_xor_sync(0xffffffffu, mt[hrow], 2));
    const float m_new = fmaxf(m[hrow], mt[hrow]);
    // Nothing seen yet: nothing to rescale. Still nothing: the row stays at zero.
    corr[hrow] = m[hrow] == -INFINITY ? 0.0f : __expf(m[hrow] - m_new);
    m[hrow] = m_new;
    l[hrow] *= corr[hrow];
    // 0 while the row has seen nothing, so that its -inf scores give exp2(-inf) = 0, not NaN.
    mb[hrow] = m_new == -INFINITY ? 0.0f : m_new * kLog2e;
    settled = settled && corr[hrow] == 1.0f;
  }
  return settled;
}

// Exponentials as exp2(s·log2 e − m·log2 e), one fused multiply-add before the hardware's
// exp2 (masked scores are -inf and give 0), summed per lane into l (the quad's sums are added
// at the end), and rounded into the value product's A operand: tile n's two registers hold
// keys 8n..8n+7 of the two rows.
template <class T, int kN>
__device__ __forceinline__ void exponentials(const float (&s)[kN][4], const float (&mb)[2], float (&l)[2],
                                             uint32_t (&pr)[kN][2]) {
#pragma unroll
  for (int n = 0; n < kN; ++n)
#pragma unroll
    for (int hrow = 0; hrow < 2; ++hrow) {
      float e2[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        e2[e] = exp2_approx(fmaf(s[n][2 * hrow + e], kLog2e, -mb[hrow]));
        l[hrow] += e2[e];
      }
      pr[n][hrow] = pack2<T>(e2[0], e2[1]);
    }
}

// 1 / the sum of each of the lane's two rows over its quad; 0 for a row that saw nothing.
__device__ __forceinline__ void row_inverses(const float (&l)[2], float (&inv)[2]) {
#pragma unroll
  for (int hrow = 0; hrow < 2; ++hrow) {
    float sum = l[hrow];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    inv[hrow] = sum > 0 ? 1.0f / sum : 0.0f;
  }
}

}  // namespace flash
}  // namespace lmx::cuda
