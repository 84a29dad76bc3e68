// Kernel lab for the persistent decode step (src/backend/cuda/fused_persistent.cu): how
// fast one block per SM can stream weights through shared memory, and what a grid-wide
// barrier costs. From the repository root:
//   nvcc -O3 -std=c++20 -arch=sm_90a -Isrc -Iinclude bench/kernels/stream_lab.cu -lcublas
//
//   01  grid barrier (64-bit counter that only grows, relaxed polls): µs per barrier
//   02  ring of bulk async copies (cp.async.bulk + mbarrier), thread 0 refills a slot once
//       every thread is done with it; no arithmetic: the streaming rate alone
//   03  02 with the GEMV arithmetic (rows · an f32 vector in shared memory)
//   04  03 with a producer warp: consumers free slots on an "empty" mbarrier and never
//       wait for the refill
//   05  cp.async (16 bytes per thread) ring, all threads copy, with the arithmetic
//   06  04 for B = 1, 2, 4 or 8 vectors on the tensor cores, as a batched persistent step
//       would take them: mma m16n8k16 with the vectors (bf16, shared memory) as A's rows
//       and a stage's 8 weight rows as B's columns; the 8 consumer warps split each stage's
//       columns and add their 8 x B sums through shared memory once a stage (a named
//       barrier), as a step's outputs need. Does the ring still stream at the copy limit
//       with B times the arithmetic and a reduction a stage?
//   07  06 as a chain of phases, the skeleton of a batched persistent step's GEMV phases:
//       each phase's B input vectors are the phase before's outputs (f32, written by every
//       block), RMS-normed and rounded to bf16 by every block, and a grid barrier follows
//       each phase. Phases of 2,048 rows x 2,048 columns (8 MiB, about a quarter of a
//       Qwen3-0.6B layer), 112 of them (28 such layers). Against 06's chain with neither
//       inputs nor barriers: what does a phase boundary cost with B vectors, next to one?
//   08  07 with each phase's outputs stored in bf16, and their sums of squares added up
//       across the grid as they are made (an atomic a vector and stage): the next inputs
//       need half the bytes and no block-wide sum. (Each value is rounded twice, before
//       and after its norm: the reference rounds so too.)
//
// Each streaming variant reads the same 1 GiB of bf16 rows of 2048 columns (1 GiB is far
// beyond L2, as a decode step's weights are) and, where it computes, checks its sum of
// all dot products against a plain kernel's.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "lab.cuh"
#include "backend/cuda/async_copy.cuh"
#include "backend/cuda/mma.cuh"

using namespace lmx::cuda;  // the library's mbarrier and bulk-copy helpers

constexpr int kK = 2048;  // columns of a row
constexpr int kConsumers = 256;

__device__ void grid_barrier(unsigned long long* c, unsigned long long target) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(c, 1ull);
    unsigned long long v;
    do asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(c) : "memory");
    while (v < target);
    __threadfence();
  }
  __syncthreads();
}

// ---------------------------------------------------------------- 01 barrier
__global__ void barrier_kernel(unsigned long long* c, int n) {
  unsigned long long t = 0;
  for (int i = 0; i < n; ++i) grid_barrier(c, t += gridDim.x);
}

// The dot products of `rows` rows (shared memory) with xs, by 8 warps, two accumulators.
__device__ float rows_dot(const __nv_bfloat16* w, int rows, const float* xs) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float total = 0;
  for (int r = warp; r < rows; r += kConsumers / 32) {
    const __nv_bfloat16* row = w + size_t(r) * kK;
    float s0 = 0, s1 = 0;
#pragma unroll 4
    for (int c = lane * 8; c < kK; c += 256) {
      const uint4 v = *reinterpret_cast<const uint4*>(row + c);
      const float4 a = *reinterpret_cast<const float4*>(xs + c), b = *reinterpret_cast<const float4*>(xs + c + 4);
      s0 = fmaf(__uint_as_float(v.x << 16), a.x, s0);
      s1 = fmaf(__uint_as_float(v.x & 0xffff0000u), a.y, s1);
      s0 = fmaf(__uint_as_float(v.y << 16), a.z, s0);
      s1 = fmaf(__uint_as_float(v.y & 0xffff0000u), a.w, s1);
      s0 = fmaf(__uint_as_float(v.z << 16), b.x, s0);
      s1 = fmaf(__uint_as_float(v.z & 0xffff0000u), b.y, s1);
      s0 = fmaf(__uint_as_float(v.w << 16), b.z, s0);
      s1 = fmaf(__uint_as_float(v.w & 0xffff0000u), b.w, s1);
    }
    float s = s0 + s1;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    total += s;  // lane values all equal after the butterfly
  }
  return total;
}

__device__ void load_xs(float* xs, const float* x) {
  for (int i = threadIdx.x; i < kK; i += blockDim.x) xs[i] = x[i];
  __syncthreads();
}

// ---------------------------------------------------------------- 02 / 03 ring, thread 0 refills
template <bool kCompute>
__global__ void ring_kernel(const __nv_bfloat16* w, long long rows_total, const float* x, int slots, int slot_bytes,
                            double* sum) {
  extern __shared__ __align__(128) unsigned char sm[];
  float* xs = reinterpret_cast<float*>(sm + size_t(slots) * slot_bytes);
  __shared__ uint64_t full[16];
  const long long r0 = blockIdx.x * rows_total / gridDim.x, r1 = (blockIdx.x + 1) * rows_total / gridDim.x;
  const int per = slot_bytes / (kK * 2);
  const long long stages = (r1 - r0 + per - 1) / per;
  auto issue = [&](long long st) {
    if (st >= stages) return;
    const int slot = int(st % slots);
    const long long r = r0 + st * per;
    const unsigned n = unsigned(::min((long long)per, r1 - r));
    mbarrier_expect(&full[slot], n * kK * 2);
    bulk_copy(sm + size_t(slot) * slot_bytes, w + r * kK, n * kK * 2, &full[slot]);
  };
  if (threadIdx.x == 0) {
    for (int i = 0; i < slots; ++i) mbarrier_init(&full[i], 1);
    mbarrier_init_fence();
    for (int i = 0; i < slots; ++i) issue(i);
  }
  load_xs(xs, x);
  float total = 0;
  for (long long st = 0; st < stages; ++st) {
    const int slot = int(st % slots);
    mbarrier_wait(&full[slot], unsigned(st / slots) & 1u);
    const int n = int(::min((long long)per, r1 - (r0 + st * per)));
    if (kCompute) total += rows_dot(reinterpret_cast<const __nv_bfloat16*>(sm + size_t(slot) * slot_bytes), n, xs);
    __syncthreads();
    if (threadIdx.x == 0) issue(st + slots);
  }
  if (threadIdx.x % 32 == 0) atomicAdd(sum, double(total));
}

// ---------------------------------------------------------------- 04 producer warp
// The producer warp's loop (04, 06): rows [r0, r1) in stages of a slot each, a stage
// issued once its slot's consumers have freed it.
__device__ void produce(const __nv_bfloat16* w, unsigned char* sm, int slots, int slot_bytes, long long r0,
                        long long r1, uint64_t* full, uint64_t* empty) {
  const int per = slot_bytes / (kK * 2);
  const long long stages = (r1 - r0 + per - 1) / per;
  for (long long st = 0; st < stages; ++st) {
    const int slot = int(st % slots);
    if (st >= slots) mbarrier_wait(&empty[slot], unsigned(st / slots - 1) & 1u);
    const long long r = r0 + st * per;
    const unsigned n = unsigned(::min((long long)per, r1 - r));
    mbarrier_expect(&full[slot], n * kK * 2);
    bulk_copy(sm + size_t(slot) * slot_bytes, w + r * kK, n * kK * 2, &full[slot]);
  }
}

__global__ void producer_kernel(const __nv_bfloat16* w, long long rows_total, const float* x, int slots, int slot_bytes,
                                double* sum) {
  extern __shared__ __align__(128) unsigned char sm[];
  float* xs = reinterpret_cast<float*>(sm + size_t(slots) * slot_bytes);
  __shared__ uint64_t full[16], empty[16];
  const long long r0 = blockIdx.x * rows_total / gridDim.x, r1 = (blockIdx.x + 1) * rows_total / gridDim.x;
  const int per = slot_bytes / (kK * 2);
  const long long stages = (r1 - r0 + per - 1) / per;
  if (threadIdx.x == 0) {
    for (int i = 0; i < slots; ++i) mbarrier_init(&full[i], 1), mbarrier_init(&empty[i], kConsumers / 32);
    mbarrier_init_fence();
  }
  for (int i = threadIdx.x; i < kK; i += blockDim.x) xs[i] = x[i];
  __syncthreads();
  if (threadIdx.x >= kConsumers) {  // the producer warp
    if (threadIdx.x != kConsumers) return;
    produce(w, sm, slots, slot_bytes, r0, r1, full, empty);
    return;
  }
  float total = 0;
  for (long long st = 0; st < stages; ++st) {
    const int slot = int(st % slots);
    mbarrier_wait(&full[slot], unsigned(st / slots) & 1u);
    const int n = int(::min((long long)per, r1 - (r0 + st * per)));
    total += rows_dot(reinterpret_cast<const __nv_bfloat16*>(sm + size_t(slot) * slot_bytes), n, xs);
    __syncwarp();
    if (threadIdx.x % 32 == 0) mbarrier_arrive(&empty[slot]);
  }
  if (threadIdx.x % 32 == 0) atomicAdd(sum, double(total));
}

// ---------------------------------------------------------------- 05 cp.async ring
template <int kSlotsT>
__global__ void cp_async_kernel(const __nv_bfloat16* w, long long rows_total, const float* x, int slots, int slot_bytes,
                                double* sum) {
  static_assert(kSlotsT >= 2);
  extern __shared__ __align__(128) unsigned char sm[];
  float* xs = reinterpret_cast<float*>(sm + size_t(slots) * slot_bytes);
  const long long r0 = blockIdx.x * rows_total / gridDim.x, r1 = (blockIdx.x + 1) * rows_total / gridDim.x;
  const int per = slot_bytes / (kK * 2);
  const long long stages = (r1 - r0 + per - 1) / per;
  auto issue = [&](long long st) {  // every thread its 16-byte pieces; one commit group per stage
    if (st < stages) {
      const int slot = int(st % slots);
      const long long r = r0 + st * per;
      const int bytes = int(::min((long long)per, r1 - r)) * kK * 2;
      const char* src = reinterpret_cast<const char*>(w + r * kK);
      for (int o = threadIdx.x * 16; o < bytes; o += blockDim.x * 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(sm + size_t(slot) * slot_bytes + o)),
                     "l"(src + o));
    }
    asm volatile("cp.async.commit_group;");
  };
  for (int i = 0; i < slots - 1; ++i) issue(i);
  load_xs(xs, x);
  float total = 0;
  for (long long st = 0; st < stages; ++st) {
    issue(st + slots - 1);
    asm volatile("cp.async.wait_group %0;" ::"n"(kSlotsT - 1) : "memory");  // stage st has landed
    __syncthreads();
    const int slot = int(st % slots);
    const int n = int(::min((long long)per, r1 - (r0 + st * per)));
    total += rows_dot(reinterpret_cast<const __nv_bfloat16*>(sm + size_t(slot) * slot_bytes), n, xs);
    __syncthreads();
  }
  if (threadIdx.x % 32 == 0) atomicAdd(sum, double(total));
}

// ---------------------------------------------------------------- 06 producer warp, mma over B vectors
// A stage of n ≤ 8 weight rows (06, 07) against the vectors xs [kB, kK] (lane (g, t) of each
// warp reads vector g of them, xrow: A's row g, rows g + 8 zero) on the tensor cores: weight
// row g is B's column g (row 0 past the stage's n), columns 8t..8t+7 of each 32 of the warp's
// share. The warp then frees the slot (`empty`), the warps' sums meet in red's half for stage
// st behind one named barrier, and threads 0-63 return output (vector threadIdx.x / 8, row
// threadIdx.x % 8) summed over the warps (the others 0).
__device__ float stage_products(const __nv_bfloat16* stage, int n, const __nv_bfloat16* xrow, float* red,
                                long long st, uint64_t* empty) {
  constexpr int kWarps = kConsumers / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const __nv_bfloat16* wrow = stage + size_t(g < n ? g : 0) * kK;
  float c[4] = {0, 0, 0, 0};
  constexpr int kCols = kK / kWarps;  // a warp's columns of the stage
#pragma unroll 4
  for (int c0 = warp * kCols; c0 < (warp + 1) * kCols; c0 += 32) {
    const uint4 wv = *reinterpret_cast<const uint4*>(wrow + c0 + 8 * t);
    const uint4 xv = *reinterpret_cast<const uint4*>(xrow + c0 + 8 * t);
    const uint32_t a0[4] = {xv.x, 0u, xv.y, 0u}, a1[4] = {xv.z, 0u, xv.w, 0u};
    mma_16816<bfloat_t>(c, a0, wv.x, wv.y);
    mma_16816<bfloat_t>(c, a1, wv.z, wv.w);
  }
  __syncwarp();
  if (lane == 0) mbarrier_arrive(empty);
  // c0, c1: vector g against weight rows 2t and 2t + 1 over this warp's columns.
  float* mine = red + (size_t(st & 1) * kWarps + warp) * 64;
  mine[g * 8 + 2 * t] = c[0], mine[g * 8 + 2 * t + 1] = c[1];
  asm volatile("bar.sync 1, %0;" ::"n"(kConsumers));
  float o = 0;
  if (threadIdx.x < 64)
    for (int k = 0; k < kWarps; ++k) o += red[(size_t(st & 1) * kWarps + k) * 64 + threadIdx.x];
  return o;
}

// Shared memory: the ring, then the vectors [kB, kK] bf16, then two sets of the warps' sums
// [2][kConsumers / 32][64] (a stage's set alternates, so one barrier a stage suffices).
template <int kB>
__global__ void mma_rows_kernel(const __nv_bfloat16* w, long long rows_total, const __nv_bfloat16* x, int slots,
                                int slot_bytes, double* sum) {
  constexpr int kWarps = kConsumers / 32;
  extern __shared__ __align__(128) unsigned char sm[];
  __nv_bfloat16* xs = reinterpret_cast<__nv_bfloat16*>(sm + size_t(slots) * slot_bytes);
  float* red = reinterpret_cast<float*>(xs + size_t(kB) * kK);
  __shared__ uint64_t full[16], empty[16];
  const long long r0 = blockIdx.x * rows_total / gridDim.x, r1 = (blockIdx.x + 1) * rows_total / gridDim.x;
  const int per = slot_bytes / (kK * 2);  // rows a stage: 8 for 32 KiB
  const long long stages = (r1 - r0 + per - 1) / per;
  if (threadIdx.x == 0) {
    for (int i = 0; i < slots; ++i) mbarrier_init(&full[i], 1), mbarrier_init(&empty[i], kWarps);
    mbarrier_init_fence();
  }
  for (int i = threadIdx.x * 8; i < kB * kK; i += blockDim.x * 8)
    *reinterpret_cast<uint4*>(xs + i) = *reinterpret_cast<const uint4*>(x + i);
  __syncthreads();
  if (threadIdx.x >= kConsumers) {  // the producer warp
    if (threadIdx.x != kConsumers) return;
    produce(w, sm, slots, slot_bytes, r0, r1, full, empty);
    return;
  }
  // Lane (g, t) reads vector g (stage_products: two k-steps' operands from one 16-byte load
  // of each; a dot product takes its columns in any order if both operands agree).
  const int g = threadIdx.x % 32 / 4;
  const __nv_bfloat16* xrow = xs + size_t(g % kB) * kK;
  float total = 0;
  for (long long st = 0; st < stages; ++st) {
    const int slot = int(st % slots);
    mbarrier_wait(&full[slot], unsigned(st / slots) & 1u);
    const int n = int(::min((long long)per, r1 - (r0 + st * per)));
    const __nv_bfloat16* stage = reinterpret_cast<const __nv_bfloat16*>(sm + size_t(slot) * slot_bytes);
    const float o = stage_products(stage, n, xrow, red, st, &empty[slot]);
    if (threadIdx.x < 64 && threadIdx.x / 8 < kB && threadIdx.x % 8 < n) total += o;
  }
  if (threadIdx.x < 64) atomicAdd(sum, double(total));
}

// ---------------------------------------------------------------- 07 a chain of phases, B vectors
constexpr int kPhaseRows = 2048;  // rows a phase: its outputs are the next phase's kK inputs

// The consumers' own barrier (the producer warp never joins it).
__device__ __forceinline__ void sync_consumers() { asm volatile("bar.sync 1, %0;" ::"n"(kConsumers)); }

// x [kB, kK] f32 from L2 (every block's outputs of the phase before), each vector RMS-normed
// (weights nw) and rounded into xs [kB, kK] bf16. sq: [kConsumers / 32][8] floats.
template <int kB>
__device__ void form_inputs(const float* x, const __nv_bfloat16* nw, __nv_bfloat16* xs, float* sq) {
  constexpr int V = kK / (4 * kConsumers);  // float4s a vector and thread
  float4 v[kB][V];
  float ss[kB];
#pragma unroll
  for (int b = 0; b < kB; ++b) {
    ss[b] = 0;
#pragma unroll
    for (int u = 0; u < V; ++u) {
      v[b][u] = __ldcg(reinterpret_cast<const float4*>(x + size_t(b) * kK + (threadIdx.x + u * kConsumers) * 4));
    }
  }
#pragma unroll
  for (int b = 0; b < kB; ++b) {
#pragma unroll
    for (int u = 0; u < V; ++u)
      ss[b] += v[b][u].x * v[b][u].x + v[b][u].y * v[b][u].y + v[b][u].z * v[b][u].z + v[b][u].w * v[b][u].w;
    for (int o = 16; o > 0; o >>= 1) ss[b] += __shfl_xor_sync(0xffffffffu, ss[b], o);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0)
#pragma unroll
    for (int b = 0; b < kB; ++b) sq[warp * 8 + b] = ss[b];
  sync_consumers();
#pragma unroll
  for (int b = 0; b < kB; ++b) {
    float t = 0;
    for (int w = 0; w < kConsumers / 32; ++w) t += sq[w * 8 + b];
    const float r = rsqrtf(t / kK + 1e-6f);
#pragma unroll
    for (int u = 0; u < V; ++u) {
      const int c = (threadIdx.x + u * kConsumers) * 4;
      const float4 a = v[b][u];
      __nv_bfloat16* out = xs + size_t(b) * kK + c;
      out[0] = __float2bfloat16(a.x * r * __bfloat162float(nw[c]));
      out[1] = __float2bfloat16(a.y * r * __bfloat162float(nw[c + 1]));
      out[2] = __float2bfloat16(a.z * r * __bfloat162float(nw[c + 2]));
      out[3] = __float2bfloat16(a.w * r * __bfloat162float(nw[c + 3]));
    }
  }
  sync_consumers();  // xs is formed; sq may be reused
}

// 08's inputs: x [kB, kK] in bf16 and each vector's sum of squares ss [kB], already summed.
template <int kB>
__device__ void form_inputs_half(const __nv_bfloat16* x, const float* ss, const __nv_bfloat16* nw,
                                 __nv_bfloat16* xs) {
  constexpr int V = kK / (4 * kConsumers);
  uint2 v[kB][V];
  float r[kB];
#pragma unroll
  for (int b = 0; b < kB; ++b) {
    r[b] = __ldcg(ss + b);
#pragma unroll
    for (int u = 0; u < V; ++u)
      v[b][u] = __ldcg(reinterpret_cast<const uint2*>(x + size_t(b) * kK + (threadIdx.x + u * kConsumers) * 4));
  }
#pragma unroll
  for (int b = 0; b < kB; ++b) {
    const float scale = rsqrtf(r[b] / kK + 1e-6f);
#pragma unroll
    for (int u = 0; u < V; ++u) {
      const int c = (threadIdx.x + u * kConsumers) * 4;
      const float a[4] = {__uint_as_float(v[b][u].x << 16), __uint_as_float(v[b][u].x & 0xffff0000u),
                          __uint_as_float(v[b][u].y << 16), __uint_as_float(v[b][u].y & 0xffff0000u)};
      __nv_bfloat16* out = xs + size_t(b) * kK + c;
#pragma unroll
      for (int i = 0; i < 4; ++i) out[i] = __float2bfloat16(a[i] * scale * __bfloat162float(nw[c + i]));
    }
  }
  sync_consumers();
}

// The producer warp's loop for 07: every phase's share of rows of this block, in order.
__device__ void produce_phases(const __nv_bfloat16* w, unsigned char* sm, int slots, int slot_bytes, int phases,
                               uint64_t* full, uint64_t* empty) {
  const int per = slot_bytes / (kK * 2);
  const int r0 = blockIdx.x * kPhaseRows / gridDim.x, r1 = (blockIdx.x + 1) * kPhaseRows / gridDim.x;
  long long st = 0;
  for (int p = 0; p < phases; ++p)
    for (int r = r0; r < r1; r += per, ++st) {
      const int slot = int(st % slots);
      if (st >= slots) mbarrier_wait(&empty[slot], unsigned(st / slots - 1) & 1u);
      const unsigned n = unsigned(::min(per, r1 - r));
      mbarrier_expect(&full[slot], n * kK * 2);
      bulk_copy(sm + size_t(slot) * slot_bytes, w + (size_t(p) * kPhaseRows + r) * kK, n * kK * 2, &full[slot]);
    }
}

// act [2][kB][kK]: phase p reads act[p % 2] and writes act[(p + 1) % 2] (where kExchange).
// kExchange false: the inputs are formed once, and only with kBarrier does a grid barrier
// separate the phases (06's stream, in phases). kHalf (08): the same in bf16 through half
// [2][kB][kK], with the sums of squares in ss [3][8] (phase p adds into ss[(p + 1) % 3] and
// block 0 zeroes ss[(p + 2) % 3], which phase p - 1 read).
template <int kB, bool kExchange, bool kBarrier = kExchange, bool kHalf = false>
__global__ void phase_chain_kernel(const __nv_bfloat16* w, int phases, float* act, const __nv_bfloat16* nw,
                                   unsigned long long* counter, int slots, int slot_bytes, __nv_bfloat16* half,
                                   float* ss) {
  constexpr int kWarps = kConsumers / 32;
  extern __shared__ __align__(128) unsigned char sm[];
  __nv_bfloat16* xs = reinterpret_cast<__nv_bfloat16*>(sm + size_t(slots) * slot_bytes);
  float* red = reinterpret_cast<float*>(xs + size_t(kB) * kK);  // [2][kWarps][64]
  float* sq = red + 2 * kWarps * 64;                              // [kWarps][8]
  __shared__ uint64_t full[16], empty[16];
  const int per = slot_bytes / (kK * 2);
  const int r0 = blockIdx.x * kPhaseRows / gridDim.x, r1 = (blockIdx.x + 1) * kPhaseRows / gridDim.x;
  if (threadIdx.x == 0) {
    for (int i = 0; i < slots; ++i) mbarrier_init(&full[i], 1), mbarrier_init(&empty[i], kWarps);
    mbarrier_init_fence();
  }
  __syncthreads();
  if (threadIdx.x >= kConsumers) {
    if (threadIdx.x == kConsumers) produce_phases(w, sm, slots, slot_bytes, phases, full, empty);
    return;
  }
  const int g = threadIdx.x % 32 / 4;  // the vector that stage_products has each lane read
  const __nv_bfloat16* xrow = xs + size_t(g % kB) * kK;
  if (!kExchange && !kHalf) form_inputs<kB>(act, nw, xs, sq);
  unsigned long long target = 0;
  long long st = 0;
  for (int p = 0; p < phases; ++p) {
    if (kHalf) {
      if (blockIdx.x == 0 && threadIdx.x < 8) ss[(p + 2) % 3 * 8 + threadIdx.x] = 0;
      form_inputs_half<kB>(half + size_t(p % 2) * kB * kK, ss + p % 3 * 8, nw, xs);
    } else if (kExchange) {
      form_inputs<kB>(act + size_t(p % 2) * kB * kK, nw, xs, sq);
    }
    float* out = act + size_t((p + 1) % 2) * kB * kK;
    for (int r = r0; r < r1; r += per, ++st) {
      const int slot = int(st % slots), n = ::min(per, r1 - r);
      mbarrier_wait(&full[slot], unsigned(st / slots) & 1u);
      const float o = stage_products(reinterpret_cast<const __nv_bfloat16*>(sm + size_t(slot) * slot_bytes), n, xrow,
                                     red, st, &empty[slot]);
      if (threadIdx.x < 64) {  // output (vector v, row r + j)
        const int v = threadIdx.x / 8, j = threadIdx.x % 8;
        if (v < kB && j < n && (kExchange || p == phases - 1)) out[size_t(v) * kK + r + j] = o;
        if (kHalf) {
          if (v < kB && j < n) half[size_t((p + 1) % 2) * kB * kK + size_t(v) * kK + r + j] = __float2bfloat16(o);
          float q = v < kB && j < n ? o * o : 0.0f;  // the 8 lanes of vector v
          for (int m = 4; m > 0; m >>= 1) q += __shfl_xor_sync(0xffffffffu, q, m);
          if (j == 0 && v < kB) atomicAdd(ss + (p + 1) % 3 * 8 + v, q);
        }
      }
    }
    if (kBarrier) {  // every block's outputs in before any block forms the next inputs
      sync_consumers();
      if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(counter, 1ull);
        target += gridDim.x;
        unsigned long long v;
        do asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(counter) : "memory");
        while (v < target);
        __threadfence();
      }
      sync_consumers();
    }
  }
}

// 07's reference, a phase in two plain launches: each vector normed and rounded as
// form_inputs does (with `rounded`, as form_inputs_half does), then a warp a (vector, row) in f32.
__global__ void reference_norm(const float* x, const __nv_bfloat16* nw, __nv_bfloat16* xs, bool rounded) {
  const float* v = x + size_t(blockIdx.x) * kK;
  __shared__ float part[32];
  float ss = 0;
  for (int i = threadIdx.x; i < kK; i += blockDim.x) ss += v[i] * v[i];
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
  __syncthreads();
  float t = 0;
  for (int w = 0; w < int(blockDim.x / 32); ++w) t += part[w];
  const float r = rsqrtf(t / kK + 1e-6f);
  for (int i = threadIdx.x; i < kK; i += blockDim.x)
    xs[size_t(blockIdx.x) * kK + i] =
        __float2bfloat16((rounded ? __bfloat162float(__float2bfloat16(v[i])) : v[i]) * r * __bfloat162float(nw[i]));
}
__global__ void reference_rows(const __nv_bfloat16* w, const __nv_bfloat16* xs, int vectors, float* y) {
  const int item = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  if (item >= vectors * kPhaseRows) return;
  const int v = item / kPhaseRows, r = item % kPhaseRows;
  float s = 0;
  for (int c = lane; c < kK; c += 32)
    s = fmaf(__bfloat162float(w[size_t(r) * kK + c]), __bfloat162float(xs[size_t(v) * kK + c]), s);
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (lane == 0) y[size_t(v) * kK + r] = s;
}

__global__ void reference_kernel(const __nv_bfloat16* w, long long rows_total, const float* x, double* sum) {
  float total = 0;
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  for (long long r = warp; r < rows_total; r += gridDim.x * blockDim.x / 32) {
    float s = 0;
    for (int c = lane; c < kK; c += 32) s = fmaf(__bfloat162float(w[r * kK + c]), x[c], s);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    total += s;
  }
  if (lane == 0) atomicAdd(sum, double(total));
}

__global__ void fill_kernel(__nv_bfloat16* w, long long n) {
  for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const uint32_t h = uint32_t(i * 2654435761u) >> 16;
    w[i] = __float2bfloat16(float(h % 2001) / 1000.0f - 1.0f);
  }
}

int main() {
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  auto time_ms = [&](auto&& launch, int reps) {
    launch();
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaEventRecord(e0));
    for (int i = 0; i < reps; ++i) launch();
    CHECK(cudaEventRecord(e1));
    CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, e0, e1));
    return double(ms) / reps;
  };

  // 01
  unsigned long long* counter;
  CHECK(cudaMalloc(&counter, 8));
  CHECK(cudaMemset(counter, 0, 8));
  const int n_bar = 4000;
  const double bar_ms = time_ms(
      [&] {
        CHECK(cudaMemsetAsync(counter, 0, 8));
        barrier_kernel<<<sms, kConsumers>>>(counter, n_bar);
      },
      3);
  std::printf("01 grid barrier, %d blocks: %.2f us per barrier\n", sms, bar_ms * 1e3 / n_bar);

  const long long bytes = 1ll << 30, rows = bytes / (kK * 2);
  __nv_bfloat16* w;
  float* x;
  double* sum;
  CHECK(cudaMalloc(&w, bytes));
  CHECK(cudaMalloc(&x, kK * 4));
  CHECK(cudaMalloc(&sum, 8));
  fill_kernel<<<1024, 256>>>(w, rows * kK);
  std::vector<float> hx(kK);
  for (int i = 0; i < kK; ++i) hx[size_t(i)] = float((i * 37) % 101) / 100.0f - 0.5f;
  CHECK(cudaMemcpy(x, hx.data(), kK * 4, cudaMemcpyHostToDevice));
  CHECK(cudaMemset(sum, 0, 8));
  reference_kernel<<<sms * 8, 256>>>(w, rows, x, sum);
  double want = 0;
  CHECK(cudaMemcpy(&want, sum, 8, cudaMemcpyDeviceToHost));

  auto report = [&](const char* name, int slots, int slot_bytes, auto kernel, int threads, bool compute) {
    const size_t smem = size_t(slots) * slot_bytes + kK * 4;
    CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    const double ms = time_ms(
        [&] {
          CHECK(cudaMemsetAsync(sum, 0, 8));
          kernel<<<sms, threads, smem>>>(w, rows, x, slots, slot_bytes, sum);
        },
        5);
    double got = 0;
    CHECK(cudaMemcpy(&got, sum, 8, cudaMemcpyDeviceToHost));
    const bool ok = !compute || std::fabs(got - want) <= 1e-3 * std::fabs(want) + 1.0;
    std::printf("%s slots %2d x %3d KiB: %.3f ms, %.2f TB/s = %.2fx 4.3 TB/s%s\n", name, slots, slot_bytes >> 10, ms,
                bytes / ms / 1e9, bytes / ms / 1e9 / 4.3, ok ? "" : "  CHECK FAILED");
    return ok;
  };
  bool ok = true;
  for (auto [s, b] : {std::pair{5, 32 << 10}, {10, 16 << 10}, {3, 64 << 10}, {12, 16 << 10}, {6, 32 << 10}})
    ok &= report("02 bulk ring, no math      ", s, b, ring_kernel<false>, kConsumers, false);
  for (auto [s, b] : {std::pair{5, 32 << 10}, {10, 16 << 10}, {12, 16 << 10}})
    ok &= report("03 bulk ring, GEMV math    ", s, b, ring_kernel<true>, kConsumers, true);
  for (auto [s, b] : {std::pair{5, 32 << 10}, {10, 16 << 10}, {12, 16 << 10}, {16, 8 << 10}})
    ok &= report("04 producer warp, GEMV math", s, b, producer_kernel, kConsumers + 32, true);
  ok &= report("05 cp.async ring, GEMV math", 5, 32 << 10, cp_async_kernel<5>, kConsumers, true);
  ok &= report("05 cp.async ring, GEMV math", 10, 16 << 10, cp_async_kernel<10>, kConsumers, true);
  // 06: the same weights against kB bf16 vectors; the check is the sum over vectors and
  // rows, that is every row against the vectors' sum.
  __nv_bfloat16* xb;
  CHECK(cudaMalloc(&xb, size_t(8) * kK * 2));
  auto report_mma = [&](int b, auto kernel) {
    std::vector<__nv_bfloat16> hb(size_t(b) * kK);
    std::vector<float> xsum(kK, 0.0f);
    for (int v = 0; v < b; ++v)
      for (int i = 0; i < kK; ++i) {
        hb[size_t(v) * kK + i] = __float2bfloat16(float((i * 37 + v * 11) % 101) / 100.0f - 0.5f);
        xsum[size_t(i)] += __bfloat162float(hb[size_t(v) * kK + i]);
      }
    CHECK(cudaMemcpy(xb, hb.data(), hb.size() * 2, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(x, xsum.data(), kK * 4, cudaMemcpyHostToDevice));
    CHECK(cudaMemset(sum, 0, 8));
    reference_kernel<<<sms * 8, 256>>>(w, rows, x, sum);
    double want_b = 0;
    CHECK(cudaMemcpy(&want_b, sum, 8, cudaMemcpyDeviceToHost));
    const int slots = 5, slot_bytes = 32 << 10;
    const size_t smem = size_t(slots) * slot_bytes + size_t(b) * kK * 2 + 2 * (kConsumers / 32) * 64 * 4;
    CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    const double ms = time_ms(
        [&] {
          CHECK(cudaMemsetAsync(sum, 0, 8));
          kernel<<<sms, kConsumers + 32, smem>>>(w, rows, xb, slots, slot_bytes, sum);
        },
        5);
    double got = 0;
    CHECK(cudaMemcpy(&got, sum, 8, cudaMemcpyDeviceToHost));
    const bool good = std::fabs(got - want_b) <= 1e-3 * std::fabs(want_b) + 1.0;
    std::printf("06 producer warp, mma, %d vectors, slots %d x %d KiB: %.3f ms, %.2f TB/s = %.2fx 4.3 TB/s%s\n", b,
                slots, slot_bytes >> 10, ms, bytes / ms / 1e9, bytes / ms / 1e9 / 4.3,
                good ? "" : "  CHECK FAILED");
    return good;
  };
  ok &= report_mma(1, mma_rows_kernel<1>);
  ok &= report_mma(2, mma_rows_kernel<2>);
  ok &= report_mma(4, mma_rows_kernel<4>);
  ok &= report_mma(8, mma_rows_kernel<8>);

  // 07: the chain of phases, first checked over 6 phases against the plain launches
  // (relative L2 of the last outputs), then timed over 112.
  float *act, *ref;
  __nv_bfloat16 *nw, *ref_xs;
  unsigned long long* phase_counter;
  __nv_bfloat16* half8;  // 08's outputs [2][8][kK], and their sums of squares [3][8]
  float* ss8;
  CHECK(cudaMalloc(&half8, size_t(2) * 8 * kK * 2));
  CHECK(cudaMalloc(&ss8, 3 * 8 * 4));
  CHECK(cudaMalloc(&act, size_t(2) * 8 * kK * 4));
  CHECK(cudaMalloc(&ref, size_t(2) * 8 * kK * 4));
  CHECK(cudaMalloc(&nw, kK * 2));
  CHECK(cudaMalloc(&ref_xs, size_t(8) * kK * 2));
  CHECK(cudaMalloc(&phase_counter, 8));
  std::vector<__nv_bfloat16> hnw(kK);
  for (int i = 0; i < kK; ++i) hnw[size_t(i)] = __float2bfloat16(0.5f + float(i % 7) / 7.0f);
  CHECK(cudaMemcpy(nw, hnw.data(), kK * 2, cudaMemcpyHostToDevice));
  std::vector<float> hx0(size_t(8) * kK);
  std::vector<__nv_bfloat16> hx0b(hx0.size());
  std::vector<float> hss(3 * 8, 0.0f);
  for (size_t i = 0; i < hx0.size(); ++i) {
    hx0[i] = float((i * 37 + 11) % 101) / 50.0f - 1.0f;
    hx0b[i] = __float2bfloat16(hx0[i]);
    hss[i / kK] += hx0[i] * hx0[i];
  }
  const int slots7 = 5, slot_bytes7 = 32 << 10;
  auto chain = [&](int b, auto kernel, int phases) {
    const size_t smem = size_t(slots7) * slot_bytes7 + size_t(b) * kK * 2 + 2 * (kConsumers / 32) * 64 * 4 +
                        (kConsumers / 32) * 8 * 4;
    CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    CHECK(cudaMemcpyAsync(act, hx0.data(), size_t(b) * kK * 4, cudaMemcpyHostToDevice));
    CHECK(cudaMemsetAsync(phase_counter, 0, 8));
    CHECK(cudaMemcpyAsync(half8, hx0b.data(), size_t(b) * kK * 2, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpyAsync(ss8, hss.data(), hss.size() * 4, cudaMemcpyHostToDevice));
    kernel<<<sms, kConsumers + 32, smem>>>(w, phases, act, nw, phase_counter, slots7, slot_bytes7, half8, ss8);
  };
  // The relative L2 of the last outputs after `phases` against the plain launches'.
  auto check_chain = [&](int b, auto kernel, int phases, bool rounded) {
    chain(b, kernel, phases);
    CHECK(cudaMemcpy(ref, hx0.data(), size_t(b) * kK * 4, cudaMemcpyHostToDevice));
    for (int p = 0; p < phases; ++p) {
      reference_norm<<<b, 256>>>(ref + size_t(p % 2) * 8 * kK, nw, ref_xs, rounded);
      reference_rows<<<(b * kPhaseRows * 32 + 255) / 256, 256>>>(w + size_t(p) * kPhaseRows * kK, ref_xs, b,
                                                                 ref + size_t((p + 1) % 2) * 8 * kK);
    }
    std::vector<float> got(size_t(b) * kK), want_c(size_t(b) * kK);
    CHECK(cudaMemcpy(got.data(), act + size_t(phases % 2) * 8 * kK, got.size() * 4, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(want_c.data(), ref + size_t(phases % 2) * 8 * kK, got.size() * 4, cudaMemcpyDeviceToHost));
    double num = 0, den = 0;
    for (size_t i = 0; i < got.size(); ++i) num += double(got[i] - want_c[i]) * (got[i] - want_c[i]),
                                             den += double(want_c[i]) * want_c[i];
    return std::sqrt(num / den);
  };
  auto report_chain = [&](int b, auto exchange, auto barrier, auto plain, auto halves) {
    const int check_phases = 6;
    const double rel = check_chain(b, exchange, check_phases, false);
    const double rel8 = check_chain(b, halves, check_phases, true);
    const int phases = 112;
    const double bytes7 = double(phases) * kPhaseRows * kK * 2;
    const double ms_x = time_ms([&] { chain(b, exchange, phases); }, 5);
    const double ms_p = time_ms([&] { chain(b, plain, phases); }, 5);
    const double ms_b = time_ms([&] { chain(b, barrier, phases); }, 5);
    const double ms_h = time_ms([&] { chain(b, halves, phases); }, 5);
    const bool good = rel <= 1e-2, good8 = rel8 <= 1e-2;
    std::printf("07 %d vectors, %d phases of 8 MiB: with inputs and barriers %.1f us a phase (%.2f TB/s); "
                "barriers alone %.1f us; neither %.1f us (%.2f TB/s); a boundary %.2f us; check rel. L2 %.1e over %d "
                "phases%s\n",
                b, phases, ms_x * 1e3 / phases, bytes7 / ms_x / 1e9, ms_b * 1e3 / phases, ms_p * 1e3 / phases,
                bytes7 / ms_p / 1e9, (ms_x - ms_p) * 1e3 / phases, rel, check_phases, good ? "" : "  CHECK FAILED");
    std::printf("08 %d vectors, %d phases of 8 MiB, bf16 outputs and summed squares: %.1f us a phase (%.2f TB/s); a "
                "boundary %.2f us; check rel. L2 %.1e over %d phases%s\n",
                b, phases, ms_h * 1e3 / phases, bytes7 / ms_h / 1e9, (ms_h - ms_p) * 1e3 / phases, rel8, check_phases,
                good8 ? "" : "  CHECK FAILED");
    return good && good8;
  };
  // The kernels of 07 (inputs and barriers, barriers alone, neither) and 08, for B vectors.
#define CHAIN(B)                                                                                          \
  report_chain(B, phase_chain_kernel<B, true>, phase_chain_kernel<B, false, true>, phase_chain_kernel<B, false>, \
               phase_chain_kernel<B, false, true, true>)
  ok &= CHAIN(1);
  ok &= CHAIN(2);
  ok &= CHAIN(4);
  ok &= CHAIN(8);
  return ok ? 0 : 1;
}
