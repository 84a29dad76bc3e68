// Decode attention for the batched fused step, streamed: a block takes one sequence and
// one kv head, and its warps read the keys and values straight from the cache into
// registers, a few keys' loads in flight at once, with an online softmax. attention_task
// (fused_attention.cuh) copies a whole chunk of keys and values into shared memory before
// it computes anything; with many sequences its blocks (up to 96 KiB of scratch, two an
// SM) took about half of a Qwen3-0.6B step at batch 64 (bench/NOTES.md). Here a block
// needs a few KiB, and the loads of the next keys overlap the arithmetic of the last ones.
//
// Where the head is 64 or 128 wide, the tensor cores take the products instead
// (stream_attention_mma_kernel): the keys and values come into shared memory by
// asynchronous copies, into rows padded by 16 bytes, through a ring of stages; q · Kᵀ
// and P · V are mma products of the kv head's query heads (rows of 16, the rest zero) by 8
// keys a warp. The lanes' own loads and dot products took about 88 warp instructions a key
// (bench/NOTES.md p43, p44).
//
// A block covers every visible position of its sequence and kv head, so the output needs
// no merge: the sequences' kv heads are the parallelism, and the decoder streams only where
// they give enough blocks (fused_decoder.cpp, stream_min_blocks). Shares of the positions
// merged by the last block (count_and_merge) gave some rows wrong or NaN outputs on the
// H200 (bench/NOTES.md), and were dropped.
#include <algorithm>
#include <cstdlib>
#include <utility>

#include "backend/cuda/fused_attention.cuh"

namespace lmx::cuda::fused {
namespace {

using namespace attention_detail;

constexpr int kUnroll = 4;  // a warp's key steps whose loads are issued together

// acc + the bf16 w[0..8) · x[0..8) with x in registers.
__device__ __forceinline__ float dot8_regs(uint4 w, const float (&x)[8], float acc) {
  acc = __fmaf_rn(bf16_lo(w.x), x[0], acc);
  acc = __fmaf_rn(bf16_hi(w.x), x[1], acc);
  acc = __fmaf_rn(bf16_lo(w.y), x[2], acc);
  acc = __fmaf_rn(bf16_hi(w.y), x[3], acc);
  acc = __fmaf_rn(bf16_lo(w.z), x[4], acc);
  acc = __fmaf_rn(bf16_hi(w.z), x[5], acc);
  acc = __fmaf_rn(bf16_lo(w.w), x[6], acc);
  acc = __fmaf_rn(bf16_hi(w.w), x[7], acc);
  return acc;
}
__device__ __forceinline__ void unpack8(uint4 v, float (&out)[8]) {
  out[0] = bf16_lo(v.x), out[1] = bf16_hi(v.x), out[2] = bf16_lo(v.y), out[3] = bf16_hi(v.y);
  out[4] = bf16_lo(v.z), out[5] = bf16_hi(v.z), out[6] = bf16_lo(v.w), out[7] = bf16_hi(v.w);
}

// A softmax partial of kG query heads over some keys, for the 8 columns a lane holds: the
// running max m, the sum of weights l and the weighted sum of values acc, per head.
template <int kG>
struct Partial {
  float m[kG], l[kG], acc[kG][8];

  __device__ void clear() {
#pragma unroll
    for (int j = 0; j < kG; ++j) {
      m[j] = -INFINITY, l[j] = 0;
#pragma unroll
      for (int c = 0; c < 8; ++c) acc[j][c] = 0;
    }
  }
  // What head j's sums take on when its max becomes `mx` (finite): 0 while it has no key.
  __device__ __forceinline__ float rescale(int j, float mx) const {
    return m[j] == -INFINITY ? 0.0f : __expf(m[j] - mx);
  }
  // Adds the partial held by the lane `offset` lanes away (xor), which covers the same columns.
  __device__ void merge_lane(int offset) {
#pragma unroll
    for (int j = 0; j < kG; ++j) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[j], offset), lo = __shfl_xor_sync(0xffffffffu, l[j], offset);
      const float mx = fmaxf(m[j], mo);
      const float ra = rescale(j, mx), rb = mo == -INFINITY ? 0.0f : __expf(mo - mx);
      l[j] = l[j] * ra + lo * rb;
#pragma unroll
      for (int c = 0; c < 8; ++c) acc[j][c] = acc[j][c] * ra + __shfl_xor_sync(0xffffffffu, acc[j][c], offset) * rb;
      m[j] = mx;
    }
  }
};

// Adds kUnroll keys to the partial: scores s [kUnroll][kG] (scaled; -inf for a key not
// taken) and values v [kUnroll] (this lane's 8 columns). One rescale a head for them all.
template <int kG>
__device__ __forceinline__ void add_keys(Partial<kG>& p, const float (&s)[kUnroll][kG], const uint4 (&v)[kUnroll]) {
#pragma unroll
  for (int j = 0; j < kG; ++j) {
    float mx = p.m[j];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) mx = fmaxf(mx, s[u][j]);
    if (mx == -INFINITY) continue;  // no key yet: nothing to add (uniform across the key's lanes)
    const float r = p.rescale(j, mx);
    p.l[j] *= r;
#pragma unroll
    for (int c = 0; c < 8; ++c) p.acc[j][c] *= r;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const float e = __expf(s[u][j] - mx);  // 0 for a key not taken
      float vf[8];
      unpack8(v[u], vf);
      p.l[j] += e;
#pragma unroll
      for (int c = 0; c < 8; ++c) p.acc[j][c] = __fmaf_rn(e, vf[c], p.acc[j][c]);
    }
    p.m[j] = mx;
  }
}

// Scratch of a block, in floats: stage_inputs' q [G, D], k and v [D] and the layer's
// constants; then the new key and value in bf16 [2, D]; then each warp's partial, m and l
// [G] each and acc [G, D].
__host__ __device__ inline size_t stream_new_kv(int group, int d) { return scratch_layout(group, d, 0).scores; }
__host__ __device__ inline size_t stream_partials(int group, int d) { return stream_new_kv(group, d) + d; }
__host__ __device__ inline size_t stream_smem_floats(int group, int d, int warps) {
  return stream_partials(group, d) + size_t(warps) * group * (d + 2);
}

// The warps' partials in a block's scratch, from sm + stream_partials: m [warps, G], then
// l [warps, G], then acc [warps, G, D].
struct WarpPartials {
  float *m, *l, *acc;
  __device__ WarpPartials(float* sm, int group, int d, int warps)
      : m(sm + stream_partials(group, d)), l(m + warps * group), acc(l + warps * group) {}
};

// The new token's query heads in f32 at sm [G, D], its key and value in bf16 at kv_new
// [2, D] (one block of a kv head also writes them to the cache), with the block synced.
template <int kD, int kG, int kBlock, int kSplit>
__device__ __forceinline__ void form_step_inputs(const AttentionStep& a, int g, int q_first, int pos, int pad,
                                                 float* sm) {
  float* q = sm;  // [G, D], then k_new and v_new [D] each
  stage_inputs<false, kD, kBlock>(a, g, kG, q, q_first);
  const float* freq = attention_constants(sm, kG, kD);             // [D/2]
  const bf16* q_norm = reinterpret_cast<const bf16*>(freq + kD / 2);  // [D], then k_norm [D]
  form_new_token<kBlock>(a, q, q + kG * kD, q + (kG + 1) * kD, freq, q_norm, q_norm + kD, kG, kD, pos - pad);
  __syncthreads();
  bf16* kv_new = reinterpret_cast<bf16*>(sm + stream_new_kv(kG, kD));  // [2, D]
  const float* k_new = q + kG * kD;
  const size_t at = (size_t(g) * a.slots + size_t(pos % a.slots)) * kD;
  const bool stores = int(blockIdx.x) % kSplit == 0;  // one block of a kv head writes its cache
  for (int i = threadIdx.x; i < kD; i += kBlock) {
    const bf16 kb = __float2bfloat16_rn(k_new[i]), vb = __float2bfloat16_rn(k_new[kD + i]);
    if (stores) a.k_cache[at + i] = kb, a.v_cache[at + i] = vb;
    kv_new[i] = kb, kv_new[kD + i] = vb;
  }
  __syncthreads();
}

// The output of the block's query heads from its warps' partials (WarpPartials). Warp 0
// holds the first visible key, so every head's largest m is finite.
template <int kD, int kG, int kBlock>
__device__ __forceinline__ void merge_warps(const AttentionStep& a, float* sm, int q_first) {
  constexpr int kWarps = kBlock / 32;
  const WarpPartials parts(sm, kG, kD, kWarps);
  const float *wm = parts.m, *wl = parts.l, *wacc = parts.acc;
  for (int idx = threadIdx.x; idx < kG * kD; idx += kBlock) {
    const int j = idx / kD, i = idx % kD;
    float m = -INFINITY;
    for (int w = 0; w < kWarps; ++w) m = fmaxf(m, wm[w * kG + j]);
    float l = 0, acc = 0;
    for (int w = 0; w < kWarps; ++w) {
      const float e = wm[w * kG + j] == -INFINITY ? 0.0f : __expf(wm[w * kG + j] - m);
      l = __fmaf_rn(wl[w * kG + j], e, l);
      acc = __fmaf_rn(wacc[(w * kG + j) * kD + i], e, acc);
    }
    const size_t at = size_t(q_first + j) * kD + i;
    if (a.out_bf16)  // the O product's vectors (a step on GEMMs)
      a.out_bf16[at] = __float2bfloat16_rn(acc / l);
    else
      a.out[at] = acc / l;
  }
}

// Grid (kv heads × kSplit, 1, sequences); kBlock threads (kThreads, or half as many with
// twice the blocks an SM: the same warps on an SM, in blocks that each wait out their
// fixed costs once). kD: the head's width (8 to 256 columns, a key's 16-byte pieces spread
// over kD / 8 lanes); kG: query heads a block takes, kSplit blocks a kv head (where
// sequences × kv heads leave SMs idle, as Gemma 3's one kv head does: each block streams
// the same keys for fewer query heads, bench/NOTES.md p41).
template <int kD, int kG, int kBlock, int kSplit = 1>
__global__ void __launch_bounds__(kBlock, 2 * kThreads / kBlock) stream_attention_kernel(AttentionStep a0) {
  extern __shared__ float sm[];
  constexpr int kWarps = kBlock / 32;
  constexpr int kLanes = kD / 8;        // lanes a key
  constexpr int kKeys = 32 / kLanes;    // keys a warp step
  constexpr int kStride = kWarps * kKeys;  // keys a step of the whole block
  const AttentionStep a = blockIdx.z == 0 ? a0 : row_of(a0, int(blockIdx.z));
  const int g = blockIdx.x / kSplit, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int q_first = (g * kSplit + int(blockIdx.x) % kSplit) * kG;  // this block's first query head
  const int sub = lane % kLanes, kk = lane / kLanes;  // the lane's 8 columns, and its key of a warp step

  // The cached positions and the step's position were written by earlier steps: a block
  // knows its keys before the kernel before it ends.
  const int pos = a.state[1], pad = a.pad ? *a.pad : 0;
  const int begin = first_visible(a, pos, pad), end = pos + 1;  // [begin, end); pos is the new key
  if (a.early) allow_next_kernel();

  // Warp w's key-step covers keys begin + (w + kWarps * step) * kKeys + kk. The first trip's
  // cached keys and values are asked for before anything else: they overlap the wait for
  // the kernel before and the forming of the new token, which a short range would
  // otherwise wait out. The new key (pos) comes from kv_new once formed.
  const size_t head = size_t(g) * a.slots * kD;
  auto issue = [&](int t0, uint4(&kr)[kUnroll], uint4(&vr)[kUnroll]) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int t = t0 + u * kStride + kk;
      kr[u] = vr[u] = make_uint4(0, 0, 0, 0);
      if (t >= end || t == pos) continue;
      const size_t at = head + size_t(t % a.slots) * kD + sub * 8;
      kr[u] = load_stream(a.k_cache + at);
      vr[u] = load_stream(a.v_cache + at);
    }
  };
  uint4 kr[kUnroll], vr[kUnroll];
  int t0 = begin + warp * kKeys;
  if (t0 < end) issue(t0, kr, vr);
  wait_for_previous_kernel();

  // The new token's query heads, key and value, formed as attention_task forms them.
  form_step_inputs<kD, kG, kBlock, kSplit>(a, g, q_first, pos, pad, sm);
  const bf16* kv_new = reinterpret_cast<const bf16*>(sm + stream_new_kv(kG, kD));
  float qr[kG][8];
#pragma unroll
  for (int j = 0; j < kG; ++j)
#pragma unroll
    for (int c = 0; c < 8; ++c) qr[j][c] = sm[j * kD + sub * 8 + c];

  Partial<kG> p;
  p.clear();
  for (; t0 < end; t0 += kStride * kUnroll) {
    bool take[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int t = t0 + u * kStride + kk;
      take[u] = t < end;
      if (t == pos) {
        kr[u] = *reinterpret_cast<const uint4*>(kv_new + sub * 8);
        vr[u] = *reinterpret_cast<const uint4*>(kv_new + kD + sub * 8);
      }
    }
    float s[kUnroll][kG];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int j = 0; j < kG; ++j) {
        float v = dot8_regs(kr[u], qr[j], 0.0f);
#pragma unroll
        for (int o = kLanes / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        s[u][j] = take[u] ? v * a.scale : -INFINITY;
      }
    add_keys(p, s, vr);
    if (t0 + kStride * kUnroll < end) issue(t0 + kStride * kUnroll, kr, vr);
  }

  // The warp's key lanes into one partial, then the warps' through shared memory.
#pragma unroll
  for (int o = kLanes; o < 32; o <<= 1) p.merge_lane(o);
  const WarpPartials parts(sm, kG, kD, kWarps);
  float *wm = parts.m, *wl = parts.l, *wacc = parts.acc;
  if (kk == 0) {
#pragma unroll
    for (int j = 0; j < kG; ++j) {
#pragma unroll
      for (int c = 0; c < 8; ++c) wacc[(warp * kG + j) * kD + sub * 8 + c] = p.acc[j][c];
      if (sub == 0) wm[warp * kG + j] = p.m[j], wl[warp * kG + j] = p.l[j];
    }
  }
  __syncthreads();
  merge_warps<kD, kG, kBlock>(a, sm, q_first);
  if (!a.early) allow_next_kernel();
}

// The tensor cores' form (64- and 128-wide heads): blocks of 4 warps, 4 an SM; a stage of
// the ring holds kMmaKeys keys and their values, 8 a warp, each a row of kD + 8 bf16 so
// that ldmatrix's 8 rows fall on distinct banks (dense rows of 128 or 256 bytes would
// all fall on the same ones).
constexpr int kMmaWarps = 4, kMmaKeys = 8 * kMmaWarps, kMaxStages = 6;
__host__ __device__ constexpr int mma_row(int d) { return d + 8; }
__host__ __device__ constexpr size_t mma_stage_bytes(int d) { return size_t(2) * kMmaKeys * mma_row(d) * 2; }
// The scratch before the ring, in floats, 128-byte aligned. The warps' partials, written
// once the ring is done with, lie at its start.
__host__ __device__ inline size_t mma_ring(int group, int d) { return (stream_partials(group, d) + 31) / 32 * 32; }

// Grid (kv heads × kSplit, 1, sequences), kMmaWarps warps. Lane l of a warp holds query
// head l/4 (rows past kG are zero) and, of each 8 keys, keys 2(l%4) and 2(l%4) + 1.
template <int kD, int kG, int kSplit>
__global__ void __launch_bounds__(kMmaWarps * 32, 4) stream_attention_mma_kernel(AttentionStep a0, int stages) {
  extern __shared__ float sm[];
  constexpr int kRow = mma_row(kD);
  const AttentionStep a = blockIdx.z == 0 ? a0 : row_of(a0, int(blockIdx.z));
  const int g = blockIdx.x / kSplit, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int q_first = (g * kSplit + int(blockIdx.x) % kSplit) * kG;
  const int pos = a.state[1], pad = a.pad ? *a.pad : 0;
  const int begin = first_visible(a, pos, pad), end = pos + 1;
  const int tiles = (end - begin + kMmaKeys - 1) / kMmaKeys;
  if (a.early) allow_next_kernel();

  // Stage i % stages holds keys begin + i·kMmaKeys on: [kMmaKeys, kRow] keys, then values,
  // copied 16 bytes a thread (cp.async, one group a stage). Bulk copies of a row each were
  // slower (bench/NOTES.md p44); one bulk copy a stage cannot pad the rows. The slot of
  // `pos` comes along unwritten yet; its row is replaced by kv_new before use.
  bf16* ring = reinterpret_cast<bf16*>(sm + mma_ring(kG, kD));
  const size_t head = size_t(g) * a.slots * kD;
  const uint64_t policy = evict_first_policy();
  const uint32_t ring_at = smem_addr(ring);
  auto issue = [&](int i) {  // every thread; an empty group past the last stage
    constexpr int kPieces = kD / 8, kRowsAPass = kMmaWarps * 32 / kPieces;  // 16-byte pieces a row
    const int t0 = begin + i * kMmaKeys, n = ::min(kMmaKeys, end - t0), piece = threadIdx.x % kPieces;
    const int first = n > 0 ? t0 % a.slots : 0;  // one division a stage: n ≤ the slots
    const uint32_t stage = ring_at + uint32_t(i % stages) * 2 * kMmaKeys * kRow * 2;
#pragma unroll 1  // unrolled, its addresses held registers the tile loop needs
    for (int row = threadIdx.x / kPieces; row < kMmaKeys; row += kRowsAPass) {
      if (row >= n) break;
      const int slot = first + row < a.slots ? first + row : first + row - a.slots;
      const size_t at = head + size_t(slot) * kD + piece * 8;
      const uint32_t dst = stage + uint32_t(row * kRow + piece * 8) * 2;
      copy16_async(dst, a.k_cache + at, policy);
      copy16_async(dst + kMmaKeys * kRow * 2, a.v_cache + at, policy);
    }
    copy_async_close_group();
  };
  // The first stages but one are asked for before anything else: they overlap the wait for
  // the kernel before and the forming of the new token.
  for (int i = 0; i < stages - 1; ++i) issue(i);
  wait_for_previous_kernel();
  form_step_inputs<kD, kG, kMmaWarps * 32, kSplit>(a, g, q_first, pos, pad, sm);
  const bf16* kv_new = reinterpret_cast<const bf16*>(sm + stream_new_kv(kG, kD));

  // q as the A operand of q · Kᵀ, rounded to bf16 as the plain path keeps it: a0 and a2 of
  // each 16 columns (a1 and a3, rows 8-15, are zero).
  const int r = lane / 4, c = lane % 4;
  uint32_t qa[kD / 16][2];
#pragma unroll
  for (int ks = 0; ks < kD / 16; ++ks) {
    const float* qr = sm + r * kD + ks * 16 + 2 * c;
    qa[ks][0] = r < kG ? pack2<bfloat_t>(qr[0], qr[1]) : 0u;
    qa[ks][1] = r < kG ? pack2<bfloat_t>(qr[8], qr[9]) : 0u;
  }
  float o[kD / 8][2] = {};  // O's rows 0-7 [8, D]: n-tiles of 8 columns
  float m = -INFINITY, l = 0;  // head r's running max, and this lane's share of its sum
  for (int i = 0; i < tiles; ++i) {
    // Stage i is in once its group is (stages - 2 later ones may be under way); the
    // barrier makes every thread's pieces visible, and frees the stage tile i - 1 used.
    copy_async_wait_groups_but(stages - 2);
    __syncthreads();
    issue(i + stages - 1);
    bf16* kt = ring + size_t(i % stages) * 2 * kMmaKeys * kRow + warp * 8 * kRow;  // the warp's 8 keys
    bf16* vt = kt + kMmaKeys * kRow;
    const int t0 = begin + i * kMmaKeys + warp * 8;
    if (t0 < end) {
      // The new key's row from kv_new; rows past the end zeroed (weighed 0, a stale value
      // could be NaN).
      if (t0 <= pos && pos < t0 + 8 && lane < kD / 4) {
        const int half = lane / (kD / 8), piece = lane % (kD / 8);
        *reinterpret_cast<uint4*>((half ? vt : kt) + (pos - t0) * kRow + piece * 8) =
            *reinterpret_cast<const uint4*>(kv_new + half * kD + piece * 8);
      }
      if (t0 + 8 > end)
        for (int e = lane; e < 8 * (kD / 8); e += 32)
          if (t0 + e / (kD / 8) >= end) *reinterpret_cast<uint4*>(vt + (e / (kD / 8)) * kRow + e % (kD / 8) * 8) = {};
      __syncwarp();
      // S [16, 8] = q · Kᵀ over the 8 keys.
      // Lane l addresses row l % 8 of matrix l / 8: 8 columns at 32j + 8(l / 8).
      const uint32_t k_at = smem_addr(kt + (lane % 8) * kRow + (lane / 8) * 8), v_at = k_at + kMmaKeys * kRow * 2;
      float s[4] = {};
#pragma unroll
      for (int j = 0; j < kD / 32; ++j) {
        uint32_t kb[4];
        ldmatrix_x4(kb, k_at + j * 64);
        mma_16816<bfloat_t>(s, {qa[2 * j][0], 0u, qa[2 * j][1], 0u}, kb[0], kb[1]);
        mma_16816<bfloat_t>(s, {qa[2 * j + 1][0], 0u, qa[2 * j + 1][1], 0u}, kb[2], kb[3]);
      }
      const int k0 = t0 + 2 * c;
      const float x0 = k0 < end ? s[0] * a.scale : -INFINITY, x1 = k0 + 1 < end ? s[1] * a.scale : -INFINITY;
      float mt = fmaxf(x0, x1);
      mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
      mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 2));
      const float mn = fmaxf(m, mt);  // finite: key t0 is visible
      const float rs = m == -INFINITY ? 0.0f : __expf(m - mn);
      const float p0 = __expf(x0 - mn), p1 = __expf(x1 - mn);
      l = l * rs + p0 + p1;
      m = mn;
#pragma unroll
      for (int nt = 0; nt < kD / 8; ++nt) o[nt][0] *= rs, o[nt][1] *= rs;
      // O += P [16, 8] · V [8, D], P in bf16 as the plain path rounds its weights.
      const uint32_t pa = pack2<bfloat_t>(p0, p1);
#pragma unroll
      for (int j = 0; j < kD / 32; ++j) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, v_at + j * 64);
#pragma unroll
        for (int q = 0; q < 4; ++q) mma_1688_top(o[4 * j + q], pa, vb[q]);
      }
    }
  }

  // The warps' partials through shared memory, as stream_attention_kernel leaves them, over
  // the ring's first stage once every warp is done with it.
  __syncthreads();
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  const WarpPartials parts(sm, kG, kD, kMmaWarps);
  float *wm = parts.m, *wl = parts.l, *wacc = parts.acc;
  if (r < kG) {
    if (c == 0) wm[warp * kG + r] = m, wl[warp * kG + r] = l;
#pragma unroll
    for (int nt = 0; nt < kD / 8; ++nt) {
      wacc[(warp * kG + r) * kD + nt * 8 + 2 * c] = o[nt][0];
      wacc[(warp * kG + r) * kD + nt * 8 + 2 * c + 1] = o[nt][1];
    }
  }
  __syncthreads();
  merge_warps<kD, kG, kMmaWarps * 32>(a, sm, q_first);
  if (!a.early) allow_next_kernel();
}

// The kernel for this head width and a's query heads per kv head, one of kGroups, in
// kSplit blocks a kv head.
template <int kD, int kBlock, int kSplit, int... kGroups>
void launch_for_group(cudaStream_t stream, bool pdl, const AttentionStep& a, std::integer_sequence<int, kGroups...>) {
  const dim3 grid(a.n_kv_heads * kSplit, 1, a.rows);
  const int group = a.n_heads / a.n_kv_heads;
  const size_t smem = sizeof(float) * stream_smem_floats(group / kSplit, kD, kBlock / 32);
  ((group == kGroups * kSplit
        ? launch("fused streamed attention", stream_attention_kernel<kD, kGroups, kBlock, kSplit>, stream, pdl, grid,
                 dim3(kBlock), smem, a)
        : void()),
   ...);
}
template <int kD, int kSplit, int... kGroups>
void launch_mma(cudaStream_t stream, bool pdl, const AttentionStep& a, int sms,
                std::integer_sequence<int, kGroups...>) {
  const dim3 grid(a.n_kv_heads * kSplit, 1, a.rows);
  const int group = a.n_heads / a.n_kv_heads;
  // As many stages as leave an SM room for its share of the grid (up to 4 blocks; 228 KiB,
  // 1 KiB of it each block's own), 2 to kMaxStages: fewer blocks an SM, more in flight each.
  const int64_t blocks = int64_t(grid.x) * grid.z;
  const int per_sm = int(std::clamp<int64_t>((blocks + sms - 1) / sms, 1, 4));
  const size_t scratch = sizeof(float) * mma_ring(group / kSplit, kD);
  const size_t budget = (228u << 10) / per_sm - (1u << 10);
  const int stages = int(std::clamp<size_t>((budget - scratch) / mma_stage_bytes(kD), 2, kMaxStages));
  const size_t smem = scratch + stages * mma_stage_bytes(kD);
  auto run = [&](auto kernel) {
    allow_shared_memory(kernel, smem, true);  // its loads go around L1 (cp.async.cg)
    launch("fused streamed attention (mma)", kernel, stream, pdl, grid, dim3(kMmaWarps * 32), smem, a, stages);
  };
  ((group == kGroups * kSplit ? run(stream_attention_mma_kernel<kD, kGroups, kSplit>) : void()), ...);
}
// mma: the tensor cores' form (64- and 128-wide heads only).
template <int kD>
void launch_for_width(cudaStream_t stream, bool pdl, const AttentionStep& a, bool small, bool mma, int split,
                      int sms) {
  constexpr std::integer_sequence<int, 1, 2, 3, 4> groups;  // stream_attention_supported's
  if constexpr (kD == 64 || kD == 128)
    if (mma) {
      if (split == 4) return launch_mma<kD, 4>(stream, pdl, a, sms, std::integer_sequence<int, 1>{});
      if (split == 2) return launch_mma<kD, 2>(stream, pdl, a, sms, std::integer_sequence<int, 1, 2>{});
      return launch_mma<kD, 1>(stream, pdl, a, sms, groups);
    }
  if (split == 4) return launch_for_group<kD, kThreads, 4>(stream, pdl, a, std::integer_sequence<int, 1>{});
  if (split == 2) return launch_for_group<kD, kThreads, 2>(stream, pdl, a, std::integer_sequence<int, 1, 2>{});
  if (small) return launch_for_group<kD, kThreads / 2, 1>(stream, pdl, a, groups);
  launch_for_group<kD, kThreads, 1>(stream, pdl, a, groups);
}

}  // namespace

bool stream_attention_supported(int n_heads, int n_kv_heads, int head_dim) {
  const int d = head_dim, group = n_kv_heads > 0 ? n_heads / n_kv_heads : 0;
  return (d == 32 || d == 64 || d == 128 || d == 256) && group >= 1 && group <= 4 && group * n_kv_heads == n_heads;
}

void launch_stream_attention(cudaStream_t stream, bool pdl, const AttentionStep& a, int resident) {
  LMX_CHECK(stream_attention_supported(a.n_heads, a.n_kv_heads, a.head_dim), "fused decode",
            "the streamed attention takes head_dim 32, 64, 128 or 256 and up to 4 query heads per kv head, not ",
            a.head_dim, " and ", a.n_heads, "/", a.n_kv_heads);
  // Past one wave of full blocks, half blocks, twice as many at once (LMX_FUSED_STREAM_THREADS
  // = 128 or 256 sets the block).
  static const int forced = [] {  // read once: a step without the graph launches this every layer
    const char* v = std::getenv("LMX_FUSED_STREAM_THREADS");
    return v ? std::atoi(v) : 0;
  }();
  const bool small = forced ? forced == kThreads / 2 : int64_t(a.n_kv_heads) * a.rows > resident;
  // Where one block a kv head would leave resident room idle (Gemma 3's one kv head), 4 or
  // 2 blocks a kv head, each with a share of its query heads: the most that still fit in
  // one wave. Gemma3-1B at 64 sequences: 4 blocks 1.118x, 2 blocks 1.110x; at 128: 2 blocks
  // 1.060x, 4 (two waves) 0.968x (bench/NOTES.md p41). LMX_FUSED_STREAM_SPLIT caps it (1: never).
  static const int most = [] {
    const char* v = std::getenv("LMX_FUSED_STREAM_SPLIT");
    return v ? std::atoi(v) : 4;
  }();
  // The tensor cores' form for 64- and 128-wide heads where the grid passes a wave of full
  // blocks: there the lanes' own products held the SMs' issue. Below that, the SMs have
  // issue to spare, and full blocks keep more keys in flight (Qwen3-0.6B at 16 sequences:
  // 0.94x in the mma form; bench/NOTES.md p44). LMX_FUSED_STREAM_MMA=0: never, 1: always.
  static const int mma_forced = [] {
    const char* v = std::getenv("LMX_FUSED_STREAM_MMA");
    return v ? std::atoi(v) : -1;
  }();
  const bool mma = (a.head_dim == 64 || a.head_dim == 128) && mma_forced != 0 && (small || mma_forced == 1);
  const int group = a.n_heads / a.n_kv_heads;
  int split = 1;
  for (const int s : {4, 2})
    if (split == 1 && (mma || !small) && s <= most && group % s == 0 &&
        int64_t(a.n_kv_heads) * a.rows * s <= (mma ? 2 * resident : resident))
      split = s;
  switch (a.head_dim) {
    case 32: return launch_for_width<32>(stream, pdl, a, small, mma, split, resident / 2);
    case 64: return launch_for_width<64>(stream, pdl, a, small, mma, split, resident / 2);
    case 128: return launch_for_width<128>(stream, pdl, a, small, mma, split, resident / 2);
    default: return launch_for_width<256>(stream, pdl, a, small, mma, split, resident / 2);
  }
}

}  // namespace lmx::cuda::fused
