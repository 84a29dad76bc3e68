// Attention for long prompts (prefill), FlashAttention-2 style: S = Q·Kᵀ is never stored.
// A block takes 64 query rows of one query head; each of its 4 warps owns 16 of them and
// walks the visible keys in tiles of 64, double-buffered in shared memory by cp.async.
// Scores are tensor-core products held in registers (mma m16n8k16, the layouts of
// mma.cuh); the softmax runs online on them (a running max and sum per row, the output
// sums rescaled when the max grows), and the exponentials feed the value product straight
// from the score registers. Tiles past a block's causal limit or before its window are
// never loaded.
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
//
// The softmax, not the products, paces the kernel: conversions and exponentials run at a
// quarter of the arithmetic rate, and per score they took as long as its two products or
// longer. Hence the packed roundings, the exponent folded into one
// fused multiply-add, no rescaling while a warp's maxima stand still, and the longest
// blocks first (bench/NOTES.md, prefill).
//
// Why: the composition (attention_gemm.cu) wrote, normalised and read back S, 1 GiB per
// layer for Llama's 4,096-token prefill, and its softmax took 63 of that prefill's 85 ms.
#include <cmath>

#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/mma.cuh"

namespace lmx::cuda {
namespace {

constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kRows = 16 * kWarps;  // query rows per block
constexpr int kKeys = 64;           // keys per tile
constexpr int kPad = 8;             // elements after each shared row: ldmatrix rows in distinct banks
constexpr float kLog2e = 1.4426950408889634f;

// The hardware's 2^x (relative error about 2^-22; subnormal results flush to zero).
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

struct FlashParams : AttentionOperands {
  int hq, hkv, lq, lk;
  float scale;
  bool causal;
  bool exact_scale;  // a rounded score times the scale needs no second rounding (bf16, a power of two)
  int window;  // 0: none
};

template <int D>
constexpr size_t smem_bytes() {
  return size_t(kRows + 4 * kKeys) * (D + kPad) * 2 + 2 * kKeys;
}

// Blocks an SM must hold, which caps a thread's registers. Left alone, the compiler took
// 166 for 64-wide heads: three blocks an SM, where four (128 registers, 20 bytes spilled
// outside the loop) prefilled Llama 1% faster. For 128-wide heads it takes 240 (two
// blocks); three (168 registers, 48 bytes spilled) made Qwen3's prefill 4% slower.
template <int D>
constexpr int kBlocksPerSm = D == 64 ? 4 : 1;

template <class T, int D>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm<D>) flash_attention_kernel(FlashParams p) {
  constexpr int ld = D + kPad, kE = kVecElems<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  T* qs = reinterpret_cast<T*>(smem);  // [kRows, ld]; the output's staging at the end
  T* kv = qs + kRows * ld;             // [2 buffers][k, v][kKeys, ld]
  bool* valid = reinterpret_cast<bool*>(kv + 4 * kKeys * ld);  // [2][kKeys]
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, quad = lane % 4, mat = lane / 8,
            mrow = lane % 8;
  // The heads vary fastest and the row blocks run from the last: under a causal mask the
  // last rows see the most keys, so the longest blocks start first and the shortest fill
  // the tail (in row order the tail was the last head's longest blocks). Neighbouring
  // blocks are the query heads of one kv head, which read the same keys.
  const int row0 = int(gridDim.y - 1 - blockIdx.y) * kRows, h = int(blockIdx.x), b = int(blockIdx.z),
            g = h / (p.hq / p.hkv);
  const int64_t qoff = p.q_offsets[b];
  const T* q = static_cast<const T*>(p.q) + ((int64_t(b) * p.hq + h) * p.lq + row0) * D;
  const T* kb = static_cast<const T*>(p.k) + b * p.k_sb + g * p.k_sh;
  const T* vb = static_cast<const T*>(p.v) + b * p.v_sb + g * p.v_sh;

  // The keys any row of this block sees: [lo, hi), in whole tiles.
  const int last_row = ::min(row0 + kRows, p.lq) - 1;
  int64_t hi = p.lk, lo = 0;
  if (p.causal) hi = ::min(hi, ::max(qoff + last_row + 1, int64_t(0)));
  if (p.window > 0) lo = ::max(int64_t(0), qoff + row0 - p.window + 1);
  const int first_tile = int(lo / kKeys), end_tile = int((hi + kKeys - 1) / kKeys);

  // Query rows, then each tile's keys and values, 16 bytes per cp.async; rows past the
  // end are zeros.
  constexpr int vecs = D / kE;
  for (int i = int(threadIdx.x); i < kRows * vecs; i += kThreads) {
    const int r = i / vecs, c = i % vecs * kE;
    if (row0 + r < p.lq)
      copy16_async(qs + r * ld + c, q + int64_t(r) * D + c);
    else
      *reinterpret_cast<uint4*>(qs + r * ld + c) = make_uint4(0, 0, 0, 0);
  }
  asm volatile("cp.async.commit_group;\n" ::);
  auto load_tile = [&](int tile, int buf) {
    T* ks = kv + buf * 2 * kKeys * ld;
    T* vs = ks + kKeys * ld;
    const int key0 = tile * kKeys;
    for (int i = int(threadIdx.x); i < kKeys * vecs; i += kThreads) {
      const int r = i / vecs, c = i % vecs * kE, key = key0 + r;
      if (key < p.lk) {
        copy16_async(ks + r * ld + c, kb + key * p.k_sl + c);
        copy16_async(vs + r * ld + c, vb + key * p.v_sl + c);
      } else {
        *reinterpret_cast<uint4*>(ks + r * ld + c) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(vs + r * ld + c) = make_uint4(0, 0, 0, 0);
      }
    }
    for (int r = int(threadIdx.x); r < kKeys; r += kThreads) {
      const int key = key0 + r;
      valid[buf * kKeys + r] = key < p.lk && (!p.key_valid || p.key_valid[int64_t(b) * p.lk + key]);
    }
    asm volatile("cp.async.commit_group;\n" ::);
  };
  if (first_tile < end_tile) load_tile(first_tile, 0);
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");  // the queries (and the first tile)
  __syncthreads();

  // The warp's query rows as A operands, all of D: D/16 steps of 4 registers.
  uint32_t qa[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
    ldmatrix_x4(qa[kk], qs + (warp * 16 + mat % 2 * 8 + mrow) * ld + kk * 16 + mat / 2 * 8);
  // This lane's rows: r0 and r0 + 8 of the block; their positions.
  const int r0 = warp * 16 + lane / 4;
  const int64_t pos[2] = {qoff + row0 + r0, qoff + row0 + r0 + 8};
  const bool live[2] = {row0 + r0 < p.lq, row0 + r0 + 8 < p.lq};

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0, 0};
  float o[D / 8][4];
#pragma unroll
  for (int c = 0; c < D / 8; ++c) o[c][0] = o[c][1] = o[c][2] = o[c][3] = 0;

  for (int tile = first_tile; tile < end_tile; ++tile) {
    const int buf = (tile - first_tile) % 2;
    if (tile + 1 < end_tile) {
      load_tile(tile + 1, buf ^ 1);
      asm volatile("cp.async.wait_group 1;\n" ::: "memory");
    } else {
      asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    }
    __syncthreads();
    const T* ks = kv + buf * 2 * kKeys * ld;
    const T* vs = ks + kKeys * ld;
    const bool* ok = valid + buf * kKeys;

    // Scores of the warp's 16 rows against the tile's 64 keys: 8 tiles of 8 keys.
    float s[kKeys / 8][4];
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
      for (int n = 0; n < kKeys / 8; n += 2) {
        uint32_t kf[4];  // keys as B: matrices (keys 0-7, 8-15 of the pair) × (columns 0-7, 8-15)
        ldmatrix_x4(kf, ks + (n * 8 + mat / 2 * 8 + mrow) * ld + kk * 16 + mat % 2 * 8);
        mma_16816<T>(s[n], qa[kk], kf[0], kf[1]);
        mma_16816<T>(s[n + 1], qa[kk], kf[2], kf[3]);
      }

    // Rounded and scaled, masked; the rows' new maxima over the quad that shares them. A
    // row's two neighbouring scores go through one packed conversion, twice (once when the
    // scale is a power of two: in bf16 the product is then exact). Most tiles are seen whole
    // by every row of the block (before the causal diagonal, inside the window, no
    // padding): those skip the per-score mask. Rows past the end are not stored, so what
    // they compute does not matter.
    const int key0 = tile * kKeys;
    const bool whole = key0 + kKeys <= p.lk && !p.key_valid && (!p.causal || key0 + kKeys - 1 <= qoff + row0) &&
                       (p.window == 0 || key0 > qoff + last_row - p.window);
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; e += 2) {
        round2_to<T>(s[n][e], s[n][e + 1]);
        s[n][e] *= p.scale, s[n][e + 1] *= p.scale;
        if (!p.exact_scale) round2_to<T>(s[n][e], s[n][e + 1]);
      }
    if (!whole) {
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int hrow = e / 2, j = n * 8 + quad * 2 + e % 2;
          const int64_t key = key0 + j, qp = pos[hrow];
          const bool seen = live[hrow] && ok[j] && (!p.causal || key <= qp) && (p.window == 0 || key > qp - p.window);
          if (!seen) s[n][e] = -INFINITY;
        }
    }
    float mt[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) mt[e / 2] = fmaxf(mt[e / 2], s[n][e]);
    float corr[2], mb[2];
#pragma unroll
    for (int hrow = 0; hrow < 2; ++hrow) {
      mt[hrow] = fmaxf(mt[hrow], __shfl_xor_sync(0xffffffffu, mt[hrow], 1));
      mt[hrow] = fmaxf(mt[hrow], __shfl_xor_sync(0xffffffffu, mt[hrow], 2));
      const float m_new = fmaxf(m[hrow], mt[hrow]);
      // Nothing seen yet: nothing to rescale. Still nothing: the row stays at zero.
      corr[hrow] = m[hrow] == -INFINITY ? 0.0f : __expf(m[hrow] - m_new);
      m[hrow] = m_new;
      l[hrow] *= corr[hrow];
      // The maximum in base 2; 0 while the row has seen nothing, so that its -inf scores
      // give exp2(-inf) = 0 rather than NaN.
      mb[hrow] = m_new == -INFINITY ? 0.0f : m_new * kLog2e;
    }
    // Once a row's maximum settles, most tiles leave it alone: the warp then skips the
    // rescaling (a product by exactly 1).
    if (!__all_sync(0xffffffffu, corr[0] == 1.0f && corr[1] == 1.0f)) {
#pragma unroll
      for (int c = 0; c < D / 8; ++c)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[c][e] *= corr[e / 2];
    }
    // Exponentials as exp2(s·log2 e − m·log2 e), one fused multiply-add before the
    // hardware's exp2 (masked scores are -inf and give 0), summed per lane (the quad's sums
    // are added at the end), and rounded into the value product's A operand: tile n's two
    // registers hold keys 8n..8n+7.
    uint32_t pr[kKeys / 8][2];
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n)
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
    // Output sums: 16 keys a step, 16 columns per ldmatrix.
#pragma unroll
    for (int n = 0; n < kKeys / 8; n += 2) {
      const uint32_t a[4] = {pr[n][0], pr[n][1], pr[n + 1][0], pr[n + 1][1]};
#pragma unroll
      for (int c = 0; c < D / 8; c += 2) {
        uint32_t vf[4];  // values as B, transposed: matrices (columns 0-7, 8-15) × (keys 0-7, 8-15)
        ldmatrix_x4_trans(vf, vs + (n * 8 + mat % 2 * 8 + mrow) * ld + c * 8 + mat / 2 * 8);
        mma_16816<T>(o[c], a, vf[0], vf[1]);
        mma_16816<T>(o[c + 1], a, vf[2], vf[3]);
      }
    }
    __syncthreads();  // the buffer is refilled two tiles on
  }

  // Normalised, rounded, staged in the warp's query rows and stored 16 bytes a lane.
#pragma unroll
  for (int hrow = 0; hrow < 2; ++hrow) {
    l[hrow] += __shfl_xor_sync(0xffffffffu, l[hrow], 1);
    l[hrow] += __shfl_xor_sync(0xffffffffu, l[hrow], 2);
  }
  T* stage = qs + warp * 16 * ld;
#pragma unroll
  for (int c = 0; c < D / 8; ++c)
#pragma unroll
    for (int hrow = 0; hrow < 2; ++hrow) {
      const float inv = l[hrow] > 0 ? 1.0f / l[hrow] : 0.0f;
      *reinterpret_cast<uint32_t*>(stage + (lane / 4 + hrow * 8) * ld + c * 8 + quad * 2) =
          pack2<T>(o[c][2 * hrow] * inv, o[c][2 * hrow + 1] * inv);
    }
  __syncwarp();
  T* out = static_cast<T*>(p.out) + ((int64_t(b) * p.hq + h) * p.lq + row0 + warp * 16) * D;
  for (int i = lane; i < 16 * vecs; i += 32) {
    const int r = i / vecs, c = i % vecs * kE;
    if (row0 + warp * 16 + r < p.lq)
      *reinterpret_cast<uint4*>(out + int64_t(r) * D + c) = *reinterpret_cast<const uint4*>(stage + r * ld + c);
  }
}

template <class T, int D>
void launch(const Context& ctx, const FlashParams& p, int nb) {
  constexpr size_t smem = smem_bytes<D>();
  allow_shared_memory(flash_attention_kernel<T, D>, smem);
  const dim3 grid(unsigned(p.hq), unsigned((p.lq + kRows - 1) / kRows), unsigned(nb));
  flash_attention_kernel<T, D><<<grid, kThreads, smem, ctx.stream>>>(p);
  check_launch("flash_attention_kernel");
}

}  // namespace

bool flash_attention(const Context& ctx, const Array& q, const Array& k, const Array& v, float scale, bool causal,
                     int64_t window, const Array& q_offsets, const Array* key_valid, const Array& out) {
  const int64_t nb = q.shape(0), hq = q.shape(1), lq = q.shape(2), d = q.shape(3);
  const int64_t hkv = k.shape(1), lk = k.shape(2);
  const bool sixteen_bit = q.dtype() == Dtype::bf16 || q.dtype() == Dtype::f16;
  // Long prompts only: shorter ones keep the composition, whose roundings are HF's eager
  // path exactly, and whose S is small.
  if (!sixteen_bit || (d != 64 && d != 128) || lq < kRows || lk < 512) return false;
  if (!q.is_contiguous() || !out.is_contiguous() || !rows_in_vectors(k, 8) || !rows_in_vectors(v, 8)) return false;
  if (!aligned16(q) || !aligned16(k) || !aligned16(v) || !aligned16(out)) return false;
  if (lk > INT32_MAX || (lq + kRows - 1) / kRows > 65535 || nb > 65535 || hq > 65535 || window > INT32_MAX)
    return false;
  FlashParams p{};
  static_cast<AttentionOperands&>(p) = attention_operands(q, k, v, out, q_offsets, key_valid);
  p.hq = int(hq), p.hkv = int(hkv), p.lq = int(lq), p.lk = int(lk);
  p.scale = scale, p.causal = causal, p.window = int(window);
  int exponent = 0;
  p.exact_scale = q.dtype() == Dtype::bf16 && std::frexp(scale, &exponent) == 0.5f;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    if (d == 64)
      launch<T, 64>(ctx, p, int(nb));
    else
      launch<T, 128>(ctx, p, int(nb));
  };
  if (q.dtype() == Dtype::bf16)
    run(bfloat_t{});
  else
    run(half_t{});
  return true;
}

}  // namespace lmx::cuda
