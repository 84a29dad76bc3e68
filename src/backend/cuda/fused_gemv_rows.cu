// The GEMVs of a batched fused decode step: Y [B, N] = V [B, K] · Wᵀ for 2 to 8 sequences
// (B) and bf16 W [N, K], on tensor cores, so that the weights are read once for all of
// them. Per sequence this is what fused_gemv.cu does for one: the prologue forms each
// input vector (residual add, RMSNorms) in every block, and the epilogue turns the dot
// products into plain outputs, gated activations, or logits and each sequence's argmax.
//
// The product is mma m16n8k16 with the weights as A and the vectors as B. A warp's tile is
// 16 weight rows (8 gate and the 8 matching up rows for the gated activation); lane (g, t)
// loads 16 bytes of rows g and g+8, columns 8t..8t+7 of a 32-column chunk, straight from
// memory into registers. A dot product may take its columns in any order as long as both
// operands agree, so those 8 columns fill the lane's A slots of two mma steps (2t, 2t+1
// and 2t+8, 2t+9 of each), and one 16-byte load of vector g at the same columns fills its
// B slots. The vectors sit in shared memory in bf16, rounded after the prologue as the
// plain path rounds activations. Column n of the product belongs to vector n, so lanes
// past the last vector load any vector and their outputs are dropped.
//
// When a matrix has too few tiles to keep every warp streaming, the warps of a block split
// a tile's columns and add their sums through shared memory (`ksplit`).
//
// Wider batches (launch_gemm_rows, at the end) run each product as a cuBLAS GEMM, and so
// do the batches of 2-8 that measured faster that way (fused_decoder.cpp, wide_step).
#include <algorithm>
#include <cstdlib>

#include "backend/cuda/fused_gemv.cuh"
#include "backend/cuda/mma.cuh"

namespace lmx::cuda::fused {
namespace {

constexpr int kWarps = 8, kThreads = 32 * kWarps;
constexpr int kChunk = 32;   // columns of one mma pair: 4 lanes × 8 columns of each row
constexpr int kUnroll = 8;   // chunks per loop trip: 16 loads of 16 bytes in flight per lane
constexpr int kPad = 8;      // bf16 elements after each vector, so that the 8 vectors' loads fall in distinct banks
constexpr int kMaxSmem = 200 * 1024;

template <Epilogue E>
constexpr bool kGated = E == Epilogue::glu_silu || E == Epilogue::glu_gelu;

// Two blocks an SM where each takes at most this much (an SM has 228 KiB, 1 KiB a block reserved).
constexpr size_t kTwoBlocks = 112 * 1024;
int blocks_per_sm(size_t smem) { return smem <= kTwoBlocks ? 2 : 1; }

// Shared memory of a block, in bytes from the start: the vectors [B, K + kPad] bf16, then
// (with an add or a norm) the f32 vectors before the norm [B, K], then kWarps × 32 × 4
// floats for the split tiles' sums and the block's reductions, then the weights that the
// lanes copy before the wait for the previous kernel: `held` chunks of the first trip,
// [held, 2 rows, kThreads lanes] 16-byte pieces, as many as fit without costing the block
// count an SM takes (blocks_per_sm), and at most max_held (0 by default: the footprint
// that the block count and the support check go by; the held chunks never change them).
struct RowsSmem {
  int ld, held;
  size_t stage, red, early, bytes;
  __host__ __device__ explicit RowsSmem(const GemvInput& in, int max_held = 0) {
    ld = in.k + kPad;
    stage = (size_t(in.rows) * ld * 2 + 15) / 16 * 16;
    red = stage + (in.add || in.norm ? size_t(in.rows) * in.k * 4 : 0);
    early = red + size_t(kWarps) * 32 * 4 * 4;
    const size_t chunk = size_t(kThreads) * 2 * 16;
    const size_t room = early <= kTwoBlocks ? kTwoBlocks - early : early <= kMaxSmem ? kMaxSmem - early : 0;
    held = room / chunk < size_t(max_held) ? int(room / chunk) : max_held;
    bytes = early + size_t(held) * chunk;
  }
};

// Sums v[b] over the block for each vector b; every thread gets the totals.
__device__ inline void block_sums(float (&v)[kMaxStepRows], float* red) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int b = 0; b < kMaxStepRows; ++b) {
    v[b] = warp_reduce(v[b], Sum{});
    if (lane == 0) red[warp * kMaxStepRows + b] = v[b];
  }
  __syncthreads();
#pragma unroll
  for (int b = 0; b < kMaxStepRows; ++b) {
    float total = 0;
    for (int w = 0; w < kWarps; ++w) total += red[w * kMaxStepRows + b];
    v[b] = total;
  }
  __syncthreads();  // red is reused
}

__device__ __forceinline__ float4 add4(float4 a, float4 b) {
  return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}
__device__ __forceinline__ float4 mul4(float4 a, float4 b) {
  return make_float4(a.x * b.x, a.y * b.y, a.z * b.z, a.w * b.w);
}
__device__ __forceinline__ float4 scale4(float4 a, float s) { return make_float4(a.x * s, a.y * s, a.z * s, a.w * s); }
__device__ __forceinline__ float sumsq4(float4 a, float acc) {
  return __fmaf_rn(a.w, a.w, __fmaf_rn(a.z, a.z, __fmaf_rn(a.y, a.y, __fmaf_rn(a.x, a.x, acc))));
}
__device__ __forceinline__ float4 norm_weights4(const bf16* w, int c, bool gemma) {
  const uint2 u = *reinterpret_cast<const uint2*>(w + c);
  const float o = gemma ? 1.0f : 0.0f;
  return make_float4(o + bf16_lo(u.x), o + bf16_hi(u.x), o + bf16_lo(u.y), o + bf16_hi(u.y));
}
__device__ __forceinline__ void store_bf16x4(bf16* p, float4 v) {
  const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
  *reinterpret_cast<uint2*>(p) =
      make_uint2(*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi));
}

// Forms the B input vectors (GemvInput) and stores them in bf16 at xs [B, ld]. A thread
// keeps 4 columns and steps over them for all vectors at once, so that every vector's
// loads are in flight together and one block reduction serves all of them. The second
// pass reads back only what the same thread staged, so it needs no barrier before it.
// Block 0 alone stores the summed x_out, which every block forms alike.
__device__ inline void form_vectors(const GemvInput& in, bf16* xs, int ld, float* stage, float* red) {
  const int rows = in.rows, k = in.k;
  if (!in.add && !in.norm) {
    for (int c = threadIdx.x * 4; c < k; c += kThreads * 4) {
      float4 v[kMaxStepRows];
#pragma unroll
      for (int b = 0; b < kMaxStepRows; ++b)
        if (b < rows) v[b] = *reinterpret_cast<const float4*>(in.x + size_t(b) * k + c);
#pragma unroll
      for (int b = 0; b < kMaxStepRows; ++b)
        if (b < rows) store_bf16x4(xs + b * ld + c, v[b]);
    }
    __syncthreads();
    return;
  }
  const bool add_norm = in.add && in.add_norm;
  float add_scale[kMaxStepRows], ss[kMaxStepRows];
#pragma unroll
  for (int b = 0; b < kMaxStepRows; ++b) add_scale[b] = 1.0f, ss[b] = 0;
  if (add_norm) {  // Gemma 3's sandwich: the block output is normed before it is added
    for (int c = threadIdx.x * 4; c < k; c += kThreads * 4)
#pragma unroll
      for (int b = 0; b < kMaxStepRows; ++b)
        if (b < rows) ss[b] = sumsq4(*reinterpret_cast<const float4*>(in.add + size_t(b) * k + c), ss[b]);
    block_sums(ss, red);
#pragma unroll
    for (int b = 0; b < kMaxStepRows; ++b) add_scale[b] = rsqrtf(ss[b] / float(k) + in.eps), ss[b] = 0;
  }
  for (int c = threadIdx.x * 4; c < k; c += kThreads * 4) {
    const float4 anw = add_norm ? norm_weights4(in.add_norm, c, in.gemma) : float4{};
    float4 x[kMaxStepRows], a[kMaxStepRows];
#pragma unroll
    for (int b = 0; b < kMaxStepRows; ++b) {
      if (b >= rows) continue;
      x[b] = *reinterpret_cast<const float4*>(in.x + size_t(b) * k + c);
      if (in.add) a[b] = *reinterpret_cast<const float4*>(in.add + size_t(b) * k + c);
    }
#pragma unroll
    for (int b = 0; b < kMaxStepRows; ++b) {
      if (b >= rows) continue;
      float4 v = x[b];
      if (in.add) v = add4(v, add_norm ? mul4(scale4(a[b], add_scale[b]), anw) : a[b]);
      *reinterpret_cast<float4*>(stage + size_t(b) * k + c) = v;
      if (in.x_out && blockIdx.x == 0) *reinterpret_cast<float4*>(in.x_out + size_t(b) * k + c) = v;
      ss[b] = sumsq4(v, ss[b]);
    }
  }
  if (in.norm) {
    block_sums(ss, red);
#pragma unroll
    for (int b = 0; b < kMaxStepRows; ++b) ss[b] = rsqrtf(ss[b] / float(k) + in.eps);
  }
  for (int c = threadIdx.x * 4; c < k; c += kThreads * 4) {
    const float4 nw = in.norm ? norm_weights4(in.norm, c, in.gemma) : float4{};
#pragma unroll
    for (int b = 0; b < kMaxStepRows; ++b) {
      if (b >= rows) continue;
      const float4 v = *reinterpret_cast<const float4*>(stage + size_t(b) * k + c);
      store_bf16x4(xs + b * ld + c, in.norm ? mul4(scale4(v, ss[b]), nw) : v);
    }
  }
  __syncthreads();
}

// Each sequence's argmax over the logits: lanes hold the best of vectors 2t and 2t+1 over
// their rows; the block's best goes to partial[block, b]; the last block to finish makes
// each sequence's best its next token (state, history) and resets the counter.
__device__ inline void publish_row_argmax(const GemvOutput& out, int rows, float (&best)[2], int (&idx)[2]) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __shared__ float2 wbest[kWarps][kMaxStepRows];
  __shared__ bool last;
#pragma unroll
  for (int e = 0; e < 2; ++e)
    for (int o = 4; o < 32; o *= 2) {  // lanes of one t: the same two vectors
      const float v = __shfl_xor_sync(0xffffffffu, best[e], o);
      const int i = __shfl_xor_sync(0xffffffffu, idx[e], o);
      if (better(v, i, best[e], idx[e])) best[e] = v, idx[e] = i;
    }
  if (lane < 4)
#pragma unroll
    for (int e = 0; e < 2; ++e) wbest[warp][2 * lane + e] = make_float2(best[e], __int_as_float(idx[e]));
  __syncthreads();
  if (int(threadIdx.x) < rows) {
    float2 p = wbest[0][threadIdx.x];
    for (int w = 1; w < kWarps; ++w) {
      const float2 q = wbest[w][threadIdx.x];
      if (better(q.x, __float_as_int(q.y), p.x, __float_as_int(p.y))) p = q;
    }
    out.partial[size_t(blockIdx.x) * rows + threadIdx.x] = p;
  }
  __syncthreads();
  // The partials are visible before the count says so.
  if (threadIdx.x == 0) last = count_arrival(out.counter) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  if (warp < rows) {  // warp b finishes sequence b
    float bv = -INFINITY;
    int bi = INT_MAX;
    for (int blk = lane; blk < int(gridDim.x); blk += 32) {
      const float2 p = __ldcg(out.partial + size_t(blk) * rows + warp);
      if (better(p.x, __float_as_int(p.y), bv, bi)) bv = p.x, bi = __float_as_int(p.y);
    }
    bv = warp_reduce_argmax(bv, bi);
    if (lane == 0)
      advance_sequence(out.state + 3 * warp, out.history + size_t(warp) * out.history_len, out.history_len, bi);
  }
  if (threadIdx.x == 0) *out.counter = 0;
}

template <Epilogue E>
__global__ void __launch_bounds__(kThreads, 2)
    gemv_rows_kernel(GemvInput in, GemvOutput out, int ksplit, int max_held) {
  extern __shared__ __align__(16) unsigned char smem[];
  const RowsSmem plan(in, max_held);
  bf16* xs = reinterpret_cast<bf16*>(smem);
  float* red = reinterpret_cast<float*>(smem + plan.red);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int rows = in.rows, k = in.k;
  constexpr int kTileRows = kGated<E> ? 8 : 16;  // outputs per tile
  // The warp's walk over the tiles: its first tile, and its chunks of a tile's columns.
  // Formed where used: values held across form_vectors made the LM head's form spill.
  struct Walk {
    int n_out, tiles, per_round, slot, part, c_begin, c_end;
  };
  auto walk = [&] {
    Walk w;
    w.n_out = kGated<E> ? out.rows[0] : out.rows[0] + out.rows[1] + out.rows[2];
    w.tiles = (w.n_out + kTileRows - 1) / kTileRows, w.per_round = kWarps / ksplit;
    w.slot = warp / ksplit, w.part = warp % ksplit;
    const int chunks = k / kChunk;
    w.c_begin = w.part * chunks / ksplit, w.c_end = (w.part + 1) * chunks / ksplit;
    return w;
  };
  // This lane's 16 bytes of tile `tile`'s rows g and g+8 (gated: gate and up row g), at
  // column 8t of each chunk.
  auto lane_rows = [&](int tile, int n_out, const bf16*& ra, const bf16*& rb) {
    if constexpr (kGated<E>) {
      const size_t o = size_t(::min(tile * 8 + g, n_out - 1)) * k;
      ra = out.w[0] + o, rb = out.w[1] + o;
    } else {
      ra = stacked_row(out, ::min(tile * 16 + g, n_out - 1), k);
      rb = stacked_row(out, ::min(tile * 16 + g + 8, n_out - 1), k);
    }
    ra += 8 * t, rb += 8 * t;
  };
  // The weights depend on no kernel: each lane copies its first chunks of its first tile
  // into shared memory before the wait, so that they stream while the kernel before ends
  // and the vectors are formed (registers held across the prologue spilled: bench/NOTES.md).
  // Piece (u, row) of this lane: a warp's 32 lanes side by side, so that its reads fall in
  // distinct banks. (Not in the LM head: a trip is nothing of its stream, and its argmax's
  // registers leave none for the copies' addresses.)
  uint4* early = reinterpret_cast<uint4*>(smem + plan.early);
  auto early_at = [&](int u, int row) { return (u * 2 + row) * kThreads + int(threadIdx.x); };
  int held = 0;
  if constexpr (E != Epilogue::logits) {
    const Walk w = walk();
    const int first = int(blockIdx.x) * w.per_round + w.slot;
    if (first < w.tiles) held = ::min(plan.held, w.c_end - w.c_begin);
    if (held > 0) {
      const bf16 *ra, *rb;
      lane_rows(first, w.n_out, ra, rb);
      for (int u = 0; u < held; ++u) {
        copy16_async(early + early_at(u, 0), ra + (w.c_begin + u) * kChunk);
        copy16_async(early + early_at(u, 1), rb + (w.c_begin + u) * kChunk);
      }
    }
    allow_next_kernel();  // the LM head ends the step: it signals late
  }
  wait_for_previous_kernel();
  form_vectors(in, xs, plan.ld, reinterpret_cast<float*>(smem + plan.stage), red);
  if (held > 0) copy_async_wait_all();  // this lane's own copies: it alone reads them
  const auto [n_out, tiles, per_round, slot, part, c_begin, c_end] = walk();
  const bf16* xv_row = xs + ::min(g, rows - 1) * plan.ld + 8 * t;  // this lane's B operand: vector g
  float best[2] = {-INFINITY, -INFINITY};  // logits: the best of vectors 2t and 2t+1 so far
  int best_idx[2] = {INT_MAX, INT_MAX};

  // Rounds of per_round tiles per block; every warp runs every round (the split tiles'
  // barriers), with no tile past the end.
  for (int base = int(blockIdx.x) * per_round; base < tiles; base += int(gridDim.x) * per_round) {
    const int tile = base + slot;
    float c[4] = {0, 0, 0, 0};  // rows g, g+8 (gated: gate and up of output g) × vectors 2t, 2t+1
    if (tile < tiles) {
      const bf16 *ra, *rb;
      lane_rows(tile, n_out, ra, rb);
      // One chunk's products: lane (g, t)'s columns 8t..8t+3 of rows g and g+8, then 8t+4..8t+7.
      auto product = [&](uint4 wa, uint4 wb, int ch) {
        const uint4 xv = *reinterpret_cast<const uint4*>(xv_row + ch * kChunk);
        const uint32_t a0[4] = {wa.x, wb.x, wa.y, wb.y};
        mma_16816<bfloat_t>(c, a0, xv.x, xv.y);
        const uint32_t a1[4] = {wa.z, wb.z, wa.w, wb.w};
        mma_16816<bfloat_t>(c, a1, xv.z, xv.w);
      };
      for (int ch = c_begin + held; ch < c_end || held > 0; ch += kUnroll) {
        uint4 wa[kUnroll], wb[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
          if (ch + u < c_end) wa[u] = load_stream(ra + (ch + u) * kChunk), wb[u] = load_stream(rb + (ch + u) * kChunk);
        // The chunks copied before the wait come first (the order of the sums is the
        // same either way), while the loads above are under way.
        for (int h = 0; h < held; ++h) product(early[early_at(h, 0)], early[early_at(h, 1)], c_begin + h);
        held = 0;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
          if (ch + u < c_end) product(wa[u], wb[u], ch + u);
      }
    }
    if (ksplit > 1) {  // the tile's warps add their column ranges' sums
      float* mine = red + (warp * 32 + lane) * 4;
      *reinterpret_cast<float4*>(mine) = make_float4(c[0], c[1], c[2], c[3]);
      __syncthreads();
      if (part == 0)
        for (int p = 1; p < ksplit; ++p) {
          const float4 o = *reinterpret_cast<const float4*>(mine + p * 32 * 4);
          c[0] += o.x, c[1] += o.y, c[2] += o.z, c[3] += o.w;
        }
      __syncthreads();
    }
    if (part != 0 || tile >= tiles) continue;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int b = 2 * t + e;
      if (b >= rows) continue;
      if constexpr (kGated<E>) {
        const int o = tile * 8 + g;
        const float gate = c[e], up = c[2 + e];
        if (o < n_out) out.y[size_t(b) * n_out + o] = (E == Epilogue::glu_silu ? silu(gate) : gelu_tanh(gate)) * up;
      } else {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int o = tile * 16 + g + 8 * h;
          float v = c[2 * h + e];
          if (o >= n_out) continue;
          if constexpr (E == Epilogue::logits) {
            if (out.softcap > 0) v = out.softcap * tanhf(v / out.softcap);
            if (better(v, o, best[e], best_idx[e])) best[e] = v, best_idx[e] = o;
          }
          out.y[size_t(b) * n_out + o] = v;
        }
      }
    }
  }
  if constexpr (E == Epilogue::logits) {
    allow_next_kernel();
    publish_row_argmax(out, rows, best, best_idx);
  }
}

template <Epilogue E>
void launch_rows(cudaStream_t stream, bool pdl, const GemvInput& in, const GemvOutput& out, int sm_count) {
  // Two chunks a lane (16 KiB a block) copied before the wait: 1.02-1.32x at 2-8
  // sequences against none, where a whole trip (8) lost up to 14% at 4 (bench/NOTES.md,
  // p40). LMX_FUSED_ROWS_HELD sets it (0 to 8).
  static const int cap = [] {
    const char* v = std::getenv("LMX_FUSED_ROWS_HELD");
    return v ? std::clamp(std::atoi(v), 0, kUnroll) : 2;
  }();
  allow_shared_memory(gemv_rows_kernel<E>, kMaxSmem);
  const size_t smem = RowsSmem(in, cap).bytes;
  const int n_out = kGated<E> ? out.rows[0] : out.rows[0] + out.rows[1] + out.rows[2];
  const int tiles = (n_out + (kGated<E> ? 7 : 15)) / (kGated<E> ? 8 : 16);
  const int resident = blocks_per_sm(smem) * sm_count;
  // Split tiles over warps only while there are too few tiles for every warp of a full
  // grid; each split costs a block barrier per round.
  int ksplit = 1;
  while (ksplit < kWarps && int64_t(tiles) * ksplit < int64_t(resident) * kWarps) ksplit *= 2;
  const int per_round = kWarps / ksplit;
  const int blocks = std::min((tiles + per_round - 1) / per_round, resident);
  launch("fused gemv (rows)", gemv_rows_kernel<E>, stream, pdl, dim3(blocks), dim3(kThreads), smem, in, out, ksplit,
         cap);
}

// ---- Wide batches: more sequences than the tiles above take (kMaxStepRows) ----
//
// Past 8 sequences the vectors no longer fit a block's shared memory beside its work, and
// a product over 16 to hundreds of vectors is a GEMM: cuBLAS runs it. A phase is then a
// kernel that forms the vectors into bf16 [B, K] in memory (form_wide_kernel), the GEMMs
// into f32 [B, N] (two matrices of one shape in one strided launch), and, for the gated
// activation and the LM head, a kernel that finishes the outputs. The gated activation
// writes the down projection's vectors itself.
constexpr int kArgmaxThreads = 1024;
// The forming kernel: a block per sequence, each thread up to kFormPer 4-column groups.
constexpr int kFormMaxThreads = 1024, kFormPer = 4;
constexpr int kFormMaxK = kFormMaxThreads * kFormPer * 4;

// Threads of a forming block for K columns: one 4-column group each where K allows.
int form_threads(int k) { return std::clamp((k / 4 + 31) / 32 * 32, 64, kFormMaxThreads); }

// Sequence b's vector (GemvInput: residual add, Gemma 3's norm of the addend, RMSNorm) into
// xs [b, K] in bf16. Every load of the sequence (x, the addend, both norms' weights) is
// issued at once and the values stay in registers: one trip to memory and one or two block
// sums, where forming several sequences a block (form_vectors) made three passes over
// memory with a block sum between them.
__global__ void __launch_bounds__(kFormMaxThreads) form_wide_kernel(GemvInput in, bf16* xs) {
  wait_for_previous_kernel();
  const int k = in.k;
  const size_t at = size_t(blockIdx.x) * k;  // the sequence's start in every [B, K] array
  const bool add_norm = in.add && in.add_norm;
  float4 v[kFormPer], a[kFormPer], anw[kFormPer], nw[kFormPer];
  float ss = 0;
#pragma unroll
  for (int i = 0; i < kFormPer; ++i) {
    const int c = (int(threadIdx.x) + i * int(blockDim.x)) * 4;
    if (c >= k) continue;
    v[i] = *reinterpret_cast<const float4*>(in.x + at + c);
    if (in.add) a[i] = *reinterpret_cast<const float4*>(in.add + at + c);
    if (add_norm) anw[i] = norm_weights4(in.add_norm, c, in.gemma);
    if (in.norm) nw[i] = norm_weights4(in.norm, c, in.gemma);
    if (add_norm) ss = sumsq4(a[i], ss);
  }
  if (in.add) {
    // Gemma 3's sandwich: the block output is normed before it is added.
    const float scale = add_norm ? rsqrtf(block_reduce(ss, Sum{}) / float(k) + in.eps) : 1.0f;
    ss = 0;
#pragma unroll
    for (int i = 0; i < kFormPer; ++i) {
      const int c = (int(threadIdx.x) + i * int(blockDim.x)) * 4;
      if (c >= k) continue;
      v[i] = add4(v[i], add_norm ? mul4(scale4(a[i], scale), anw[i]) : a[i]);
      if (in.x_out) *reinterpret_cast<float4*>(in.x_out + at + c) = v[i];
    }
  }
  float scale = 1.0f;
  if (in.norm) {
#pragma unroll
    for (int i = 0; i < kFormPer; ++i)
      if ((int(threadIdx.x) + i * int(blockDim.x)) * 4 < k) ss = sumsq4(v[i], ss);
    scale = rsqrtf(block_reduce(ss, Sum{}) / float(k) + in.eps);
  }
#pragma unroll
  for (int i = 0; i < kFormPer; ++i) {
    const int c = (int(threadIdx.x) + i * int(blockDim.x)) * 4;
    if (c < k) store_bf16x4(xs + at + c, in.norm ? mul4(scale4(v[i], scale), nw[i]) : v[i]);
  }
}

// xs [n] = bf16(act(gate) * up), over every sequence's outputs at once.
template <Epilogue E>
__global__ void __launch_bounds__(kThreads)
    glu_wide_kernel(const float* gate, const float* up, bf16* xs, int64_t n) {
  wait_for_previous_kernel();
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kThreads) {
    const float g = gate[i];
    xs[i] = __float2bfloat16((E == Epilogue::glu_silu ? silu(g) : gelu_tanh(g)) * up[i]);
  }
}

// Block b: sequence b's logits y [b, n] (softcapped in place where asked), their argmax
// and the sequence's next token (state, history).
__global__ void __launch_bounds__(kArgmaxThreads) argmax_wide_kernel(GemvOutput out, int n) {
  wait_for_previous_kernel();
  float* y = out.y + size_t(blockIdx.x) * n;
  float best = -INFINITY;
  int idx = INT_MAX;
  auto see = [&](float v, int i) {
    if (out.softcap > 0) y[i] = v = out.softcap * tanhf(v / out.softcap);
    if (better(v, i, best, idx)) best = v, idx = i;
  };
  const int vec = n % 4 == 0 ? n : 0;  // rows of a multiple of 4 floats are 16-byte aligned
  for (int i = int(threadIdx.x) * 4; i < vec; i += kArgmaxThreads * 4) {
    const float4 v = *reinterpret_cast<const float4*>(y + i);
    see(v.x, i), see(v.y, i + 1), see(v.z, i + 2), see(v.w, i + 3);
  }
  for (int i = vec + int(threadIdx.x); i < n; i += kArgmaxThreads) see(y[i], i);
  best = warp_reduce_argmax(best, idx);
  constexpr int kArgmaxWarps = kArgmaxThreads / 32;
  __shared__ float wv[kArgmaxWarps];
  __shared__ int wi[kArgmaxWarps];
  if (threadIdx.x % 32 == 0) wv[threadIdx.x / 32] = best, wi[threadIdx.x / 32] = idx;
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int w = 1; w < kArgmaxWarps; ++w)
    if (better(wv[w], wi[w], wv[0], wi[0])) wv[0] = wv[w], wi[0] = wi[w];
  advance_sequence(out.state + 3 * blockIdx.x, out.history + size_t(blockIdx.x) * out.history_len,
                   out.history_len, wi[0]);
}

// y [rows, ldy] (its first n columns) = x [rows, k] · w [n, k]ᵀ, f32 sums of bf16. With
// `other` (a matrix of w's shape) and `y_other`, the same for it, in one launch where the
// two addresses step by strides that cuBLAS takes (positive), else in two.
void gemm_wide(const Context& c, const bf16* x, const bf16* w, int rows, int n, int k, float* y,
               int ldy, const bf16* other = nullptr, float* y_other = nullptr) {
  const float one = 1.0f, zero = 0.0f;  // column-major: yᵀ [n, rows] = w · xᵀ
  if (other) {
    const bool ordered = other > w;
    const bf16* lo = ordered ? w : other;
    float* ylo = ordered ? y : y_other;
    const long long ws = ordered ? other - w : w - other, ys = ordered ? y_other - y : y - y_other;
    if (ys > 0) {
      check_blas(cublasGemmStridedBatchedEx(c.blas, CUBLAS_OP_T, CUBLAS_OP_N, n, rows, k, &one, lo,
                                            CUDA_R_16BF, k, ws, x, CUDA_R_16BF, k, 0, &zero, ylo,
                                            CUDA_R_32F, ldy, ys, 2, CUBLAS_COMPUTE_32F,
                                            CUBLAS_GEMM_DEFAULT),
                 "cublasGemmStridedBatchedEx (fused wide step)");
      return;
    }
    gemm_wide(c, x, other, rows, n, k, y_other, ldy);
  }
  check_blas(cublasGemmEx(c.blas, CUBLAS_OP_T, CUBLAS_OP_N, n, rows, k, &one, w, CUDA_R_16BF, k, x,
                          CUDA_R_16BF, k, &zero, y, CUDA_R_32F, ldy, CUBLAS_COMPUTE_32F,
                          CUBLAS_GEMM_DEFAULT),
             "cublasGemmEx (fused wide step)");
}

int grid_for(int64_t n) { return int(std::min<int64_t>((n + kThreads - 1) / kThreads, 4096)); }

}  // namespace

std::string gemm_rows_unsupported(const GemvInput& in) {
  if (in.rows < 1) return "at least one sequence";
  if (in.k % 4 != 0) return "products over a multiple of 4 columns";
  if (in.k > kFormMaxK) return "inputs of at most " + std::to_string(kFormMaxK) + " columns";
  return "";
}

void launch_gemm_rows(const Context& c, bool pdl, const GemvInput& in, const GemvOutput& out,
                      const WideScratch& s, bool formed) {
  const std::string why = gemm_rows_unsupported(in);
  LMX_CHECK(why.empty(), "fused decode", "the wide batched step takes only ", why);
  const int rows = in.rows, k = in.k;
  if (!formed) {
    launch("fused wide inputs", form_wide_kernel, c.stream, pdl, dim3(rows), dim3(form_threads(k)), 0, in,
           s.vectors);
  }
  switch (out.epilogue) {
    case Epilogue::plain: {  // the stacked matrices side by side in y [rows, n]
      const int n = out.rows[0] + out.rows[1] + out.rows[2];
      // Matrices that lie one after the other in memory (CausalLM::pack_attention_inputs'
      // q, k and v) are one matrix of n rows: one GEMM, where each costs a fixed few µs.
      if (out.rows[1] > 0 && out.w[1] == out.w[0] + size_t(out.rows[0]) * k &&
          (out.rows[2] == 0 || out.w[2] == out.w[1] + size_t(out.rows[1]) * k))
        return gemm_wide(c, s.vectors, out.w[0], rows, n, k, out.y, n);
      gemm_wide(c, s.vectors, out.w[0], rows, out.rows[0], k, out.y, n);
      if (out.rows[1] > 0 && out.rows[1] == out.rows[2])  // k and v
        gemm_wide(c, s.vectors, out.w[1], rows, out.rows[1], k, out.y + out.rows[0], n, out.w[2],
                  out.y + out.rows[0] + out.rows[1]);
      else
        for (int m = 1, at = out.rows[0]; m < 3; at += out.rows[m++])
          if (out.rows[m] > 0)
            gemm_wide(c, s.vectors, out.w[m], rows, out.rows[m], k, out.y + at, n);
      return;
    }
    case Epilogue::glu_silu:
    case Epilogue::glu_gelu: {  // gate and up [2, rows, n] in s.gated, then the down's vectors
      const int n = out.rows[0];
      const int64_t all = int64_t(rows) * n;
      // The lower address's product first, so that one strided launch takes both.
      float* gate = out.w[0] < out.w[1] ? s.gated : s.gated + all;
      float* up = gate == s.gated ? s.gated + all : s.gated;
      gemm_wide(c, s.vectors, out.w[0], rows, n, k, gate, n, out.w[1], up);
      auto glu = out.epilogue == Epilogue::glu_silu ? glu_wide_kernel<Epilogue::glu_silu>
                                                    : glu_wide_kernel<Epilogue::glu_gelu>;
      launch("fused wide glu", glu, c.stream, pdl, dim3(grid_for(all)), dim3(kThreads), 0, gate, up,
             s.vectors, all);
      return;
    }
    case Epilogue::logits:
      gemm_wide(c, s.vectors, out.w[0], rows, out.rows[0], k, out.y, out.rows[0]);
      launch("fused wide argmax", argmax_wide_kernel, c.stream, pdl, dim3(rows),
             dim3(kArgmaxThreads), 0, out, out.rows[0]);
      return;
    case Epilogue::argmax: break;  // the persistent step's only
  }
  fail("fused decode", "the filtered argmax head runs only in the persistent step");
}

std::string gemv_rows_unsupported(const GemvInput& in, const GemvOutput& out) {
  if (in.rows < 2 || in.rows > kMaxStepRows) return "2 to 8 sequences";
  if (in.k % kChunk != 0) return "products over a multiple of 32 columns";
  if (RowsSmem(in).bytes > kMaxSmem) return "inputs that fit in shared memory";
  (void)out;
  return "";
}

int gemv_rows_blocks(const GemvInput& in, int sm_count) { return blocks_per_sm(RowsSmem(in).bytes) * sm_count; }

void launch_gemv_rows(cudaStream_t stream, bool pdl, const GemvInput& in, const GemvOutput& out, int sm_count) {
  const std::string why = gemv_rows_unsupported(in, out);
  LMX_CHECK(why.empty(), "fused decode", "the batched GEMV takes only ", why);
  switch (out.epilogue) {
    case Epilogue::plain: return launch_rows<Epilogue::plain>(stream, pdl, in, out, sm_count);
    case Epilogue::glu_silu: return launch_rows<Epilogue::glu_silu>(stream, pdl, in, out, sm_count);
    case Epilogue::glu_gelu: return launch_rows<Epilogue::glu_gelu>(stream, pdl, in, out, sm_count);
    case Epilogue::logits: return launch_rows<Epilogue::logits>(stream, pdl, in, out, sm_count);
    case Epilogue::argmax: break;  // the persistent step's only
  }
  fail("fused decode", "the filtered argmax head runs only in the persistent step");
}

}  // namespace lmx::cuda::fused
