// Kernel lab for the persistent decode step's phase boundaries: what it costs for every
// block to see a vector that all blocks wrote a part of. A decode step crosses 140 such
// boundaries (Qwen3: five a layer), and each GEMV input needs the whole of the previous
// phase's output. From the repository root:
//   nvcc -O3 -std=c++20 -arch=sm_90a -Isrc bench/kernels/exchange_lab.cu
//
// Every variant runs R rounds in one cooperative kernel of one block per SM (256 worker
// threads). In round r each block writes its share of a 1,024-float vector y_r, then
// every block reads all of y_r and sums it (the sum of squares an RMSNorm needs), and
// the next round's values depend on that sum, so the rounds form one dependent chain.
// The last round's sum is checked against the host's.
//
//   01  the grid barrier as the persistent step had it until p15 (release reduction,
//       relaxed polls, one acquire fence), then the vector's loads through L2
//   02  01 with an acquire load as the last poll in place of the fence (the step's since)
//   03  tagged words ("LL", as NCCL's low-latency protocol): each value travels with its
//       round's tag in one 8-byte word, stored and loaded whole, so a reader that sees
//       the tag sees the value; no barrier, no fence. Two buffers, by round parity.
//   04  03 with 16-byte loads of two tagged words each
//   05  02, but every warp polls the counter itself and goes on when it sees the count:
//       no block barrier after the wait
//   06  02 with blocks in clusters of two (an SM pair): the pair meets on the cluster
//       barrier, and only its first block arrives at the counter and polls it
//   08  every poll an acquire load (02 polls relaxed, then makes one acquire load)
//   09  02 with the arrivals spread over 8 counters (block b on counter b % 8, each on
//       its own 256 bytes); eight lanes poll one each and add them up
//   10  02 while a copying warp in every block streams 1 GiB through a ring of five 32 KiB
//       slots with bulk copies (as the decode step's weights stream), at the copy limit
//   11  04 with the same stream running
//   12  02, but each block adds into the whole vector with vector reductions
//       (red.global.add.v4.f32, a thread 4 values): its own share's values, zeros
//       elsewhere, as the fused down projection adds its partial sums. The next round's
//       buffer (of three) is zeroed by its owners before the barrier.
//   13  12 with the same stream running
//   14  12 into four vectors (block b into vector b % 4), which the readers add up: a
//       quarter of the reductions on each address, as many per block
//   15  12, each block adding only into the quarter of the vector that holds its share:
//       a quarter of the reductions per block, a quarter on each address
//   16  02 where each round first takes two 32 KiB stages from a ring that the copying
//       warp refills only once the workers have freed a slot, as the decode step's phases
//       do: the exchange's cost beside a stream that the workers pace
//   17  04 (tagged words) in the same rounds
//   18  the same rounds' stages alone, with no exchange
//   19  the exchange inside clusters of 2 blocks through distributed shared memory: each
//       block writes its share of the vector into its own shared memory, the cluster
//       meets on its hardware barrier, and every block reads the whole vector from its
//       peers' shared memory. No grid-wide step: each cluster runs the chain alone, as a
//       decode step would for the work of one cluster (a kv head's QKV rows and its
//       attention). Also prints how many clusters of each size one block per SM allows.
//   20  19 with clusters of 8 (128 blocks)
//   21  19 with clusters of 16 (128 blocks; a size beyond the portable 8)
//   22-25  the fused down's partial sums for B = 1, 2, 4 or 8 sequences: every block adds
//       B vectors of 2,048 floats (Llama-3.2-1B's hidden size) into L2 with vector
//       reductions, its own share's values and zeros elsewhere as 12 does; 02's barrier;
//       then every block reads the B vectors back and sums them (the next norm's input).
//       At B = 8: 4,096 reductions a block a round, 540 K over 132 blocks, what a Llama
//       layer's fused down makes for 8 sequences
//   26  25 with the weights streaming; 27 22 with them
//   28  25's rounds with plain stores of each block's share and no reductions (a down
//       projection as a phase of its own, whose outputs each have one writer)
//   07  02 without the loads and the sum: the barrier alone
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "lab.cuh"
#include "backend/cuda/async_copy.cuh"

constexpr int kN = 1024;
constexpr int kWorkers = 256;

// The worker threads' barrier: a copying warp (10, 11) never joins it.
__device__ __forceinline__ void sync_all() { asm volatile("bar.sync 1, %0;" ::"n"(kWorkers) : "memory"); }

// 10, 11: the copying warp's one thread streams `src` through the ring until the workers
// set `done`, then waits for its copies in flight.
// 16-18 (fed): it copies exactly `stages` stages, each into a slot the workers have freed
// (an "empty" mbarrier that every worker warp arrives on), as the decode step's ring does.
constexpr int kSlots = 5, kSlotBytes = 32 << 10;
constexpr size_t kStreamBytes = size_t(1) << 30;
__device__ void stream(const char* src, char* ring, uint64_t* full, uint64_t* empty, volatile int* done, int stages) {
  size_t off = size_t(blockIdx.x) * kSlotBytes;
  int i = 0;
  for (; stages > 0 ? i < stages : !*done; ++i) {
    const int slot = i % kSlots;
    if (i >= kSlots) lmx::cuda::mbarrier_wait(stages > 0 ? &empty[slot] : &full[slot], unsigned(i / kSlots - 1) & 1u);
    lmx::cuda::mbarrier_expect(&full[slot], kSlotBytes);
    lmx::cuda::bulk_copy(ring + size_t(slot) * kSlotBytes, src + off, kSlotBytes, &full[slot]);
    off = (off + size_t(gridDim.x) * kSlotBytes) % kStreamBytes;
  }
  if (stages > 0) return;  // the workers wait for every copy they read
  for (int j = i < kSlots ? 0 : i - kSlots; j < i; ++j) lmx::cuda::mbarrier_wait(&full[j % kSlots], unsigned(j / kSlots) & 1u);
}

__shared__ int stream_done;  // set by the workers when their rounds are over
__shared__ __align__(8) uint64_t ring_full[kSlots], ring_empty[kSlots];

// Sets up the ring; true for the copying warp, which has then streamed until the workers
// were done (end_stream), or fed its `stages`, and must return.
__device__ bool run_stream(const char* src, int stages = 0) {
  extern __shared__ __align__(128) char ring[];
  if (!src) return false;
  if (threadIdx.x == 0) {
    stream_done = 0;
    for (int i = 0; i < kSlots; ++i) {
      lmx::cuda::mbarrier_init(&ring_full[i], 1);
      lmx::cuda::mbarrier_init(&ring_empty[i], kWorkers / 32);
    }
    lmx::cuda::mbarrier_init_fence();
  }
  __syncthreads();
  if (threadIdx.x < kWorkers) return false;
  if (threadIdx.x == kWorkers) stream(src, ring, ring_full, ring_empty, &stream_done, stages);
  return true;
}
__device__ void end_stream() {
  if (threadIdx.x == 0) *(volatile int*)&stream_done = 1;
}

// 16-18: the workers' use of stage `stage` of a fed ring: each thread folds 8 of the
// slot's 16-byte words (the weights are zeros, so the result is 0, which the compiler
// cannot know), then each warp frees the slot for the copying warp.
__device__ unsigned consume_stage(int stage) {
  extern __shared__ __align__(128) char ring[];
  const int slot = stage % kSlots;
  lmx::cuda::mbarrier_wait(&ring_full[slot], unsigned(stage / kSlots) & 1u);
  const uint4* words = reinterpret_cast<const uint4*>(ring + size_t(slot) * kSlotBytes) + threadIdx.x;
  unsigned x = 0;
#pragma unroll
  for (int u = 0; u < kSlotBytes / 16 / kWorkers; ++u) {
    const uint4 v = words[u * kWorkers];
    x ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  __syncwarp();
  if (threadIdx.x % 32 == 0) lmx::cuda::mbarrier_arrive(&ring_empty[slot]);
  return x;
}
// A round's stages before its exchange, as a phase of the decode step streams its rows:
// the fold of every stage, as a float to add to the round's sum (0).
template <int kStages>
__device__ float consume_round(int round) {
  unsigned x = 0;
  for (int s = 0; s < kStages; ++s) x |= consume_stage(round * kStages + s);
  return float(x);
}

__device__ float block_sum(float v) {
  __shared__ float part[kWorkers / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  sync_all();
  float r = 0;
  for (int w = 0; w < kWorkers / 32; ++w) r += part[w];
  sync_all();
  return r;
}

// Round r+1's value at i from round r's sum: small integers, so every sum is exact.
__host__ __device__ inline float next_value(float sum, int i) { return float((int(sum) + i) % 7); }

enum class Wait { fence, acquire, acquire_polls, every_warp, pair, spread };
constexpr int kSpread = 8, kCounterStride = 32;  // counters, and u64s between them

template <Wait kWait>
__device__ void grid_barrier(unsigned long long* counter, unsigned long long target) {
  auto poll = [&] {
    unsigned long long v = 0;
    if constexpr (kWait == Wait::acquire_polls) {
      do {
        asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(counter) : "memory");
      } while (v < target);
    } else {
      do {
        asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(counter) : "memory");
      } while (v < target);
      if constexpr (kWait == Wait::fence)
        asm volatile("fence.acq_rel.gpu;" ::: "memory");
      else
        asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(counter) : "memory");
    }
  };
  if constexpr (kWait == Wait::pair) {
    // Arrive (release) and wait (acquire) at cluster scope: the pair's writes are ordered
    // before the first block's release at GPU scope, which is cumulative.
    sync_all();
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
    unsigned rank;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
    if (threadIdx.x == 0 && rank == 0) asm volatile("red.release.gpu.global.add.u64 [%0], 1;" ::"l"(counter) : "memory");
    if (threadIdx.x == 0) poll();
    sync_all();
    return;
  }
  if constexpr (kWait == Wait::spread) {
    sync_all();
    if (threadIdx.x == 0)
      asm volatile("red.release.gpu.global.add.u64 [%0], 1;" ::"l"(counter + blockIdx.x % kSpread * kCounterStride)
                   : "memory");
    if (threadIdx.x < 32) {
      const unsigned long long* mine = counter + (threadIdx.x % kSpread) * kCounterStride;
      unsigned long long total = 0;
      do {
        unsigned long long v = 0;
        if (threadIdx.x < kSpread) asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(mine) : "memory");
        for (int o = 4; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        total = __shfl_sync(0xffffffffu, v, 0);
      } while (total < target);
      unsigned long long v;
      if (threadIdx.x < kSpread) asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(mine) : "memory");
    }
    sync_all();
    return;
  }
  sync_all();
  if (threadIdx.x == 0) asm volatile("red.release.gpu.global.add.u64 [%0], 1;" ::"l"(counter) : "memory");
  if constexpr (kWait == Wait::every_warp) {
    if (threadIdx.x % 32 == 0) poll();
    __syncwarp();
    return;
  }
  if (threadIdx.x == 0) poll();
  sync_all();
}

// 01, 02: y in two plain buffers (by round parity), a grid barrier between write and read.
// 12, 13 (kReduce): y in three buffers, each zero before its round's reductions.
// 14: kGroups vectors a round; block b adds into vector b % kGroups, and readers sum them.
// 15 (kWindow): a block adds only into the 256 floats that hold its share.
// 16 (kStages > 0): each round first consumes kStages stages of a fed ring.
template <Wait kWait, bool kLoads = true, bool kReduce = false, int kGroups = 1, bool kWindow = false, int kStages = 0>
__global__ void barrier_rounds(float* y, unsigned long long* counter, int rounds, float* out, const char* src) {
  if (run_stream(src, rounds * kStages)) return;
  const unsigned arrivals = kWait == Wait::pair ? gridDim.x / 2 : gridDim.x;
  const int lo = blockIdx.x * kN / gridDim.x, hi = (blockIdx.x + 1) * kN / gridDim.x;
  float sum = 0;  // round -1's sum: round 0's values are next_value(0, i)
  unsigned long long target = 0;
  constexpr int kRoundFloats = kN * kGroups;
  for (int r = 0; r < rounds; ++r) {
    if constexpr (kStages > 0) sum += consume_round<kStages>(r);
    float* buf = y + (r % (kReduce ? 3 : 2)) * kRoundFloats;
    if constexpr (kReduce) {
      // kWindow: the block's share [lo, hi) lies in one window of 256 floats where the
      // grid is a multiple of 4 blocks (132: the edges fall between shares; elsewhere the
      // check fails), and a quarter of the threads add.
      const bool mine = !kWindow || int(threadIdx.x) / (kWorkers / 4) == lo / (kN / 4);
      const int i = int(threadIdx.x) * 4;  // kN = 4 kWorkers
      float v[4];
      for (int j = 0; j < 4; ++j) v[j] = i + j >= lo && i + j < hi ? next_value(sum, i + j) : 0.0f;
      float* dst = buf + (blockIdx.x % kGroups) * kN + i;
      if (mine)
        asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "f"(v[0]), "f"(v[1]), "f"(v[2]),
                     "f"(v[3])
                     : "memory");
      float* following = y + ((r + 1) % 3) * kRoundFloats;  // read two rounds ago, added into next round
      for (int g = 0; g < kGroups; ++g)
        for (int j = lo + int(threadIdx.x); j < hi; j += kWorkers) following[g * kN + j] = 0;
    } else {
      for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) buf[i] = next_value(sum, i);
    }
    grid_barrier<kWait>(counter, target += arrivals);
    if constexpr (!kLoads) continue;
    float s = 0;
    for (int g = 0; g < kGroups; ++g) {
      const float4 v = __ldcg(reinterpret_cast<const float4*>(buf + g * kN) + threadIdx.x);
      s += v.x + v.y + v.z + v.w;
    }
    sum = block_sum(s);
  }
  end_stream();
  if (blockIdx.x == 0 && threadIdx.x == 0) *out = sum;
}

// 22-28: B vectors of kHidden floats a round, added into by every block (or stored by
// their owners, kPlain), then read back by every block and summed.
constexpr int kHidden = 2048, kMaxVectors = 8;
template <int kVectors, bool kPlain = false>
__global__ void partial_rounds(float* y, unsigned long long* counter, int rounds, float* out, const char* src) {
  if (run_stream(src)) return;
  constexpr int kFloats = kVectors * kHidden;  // a round's vectors, side by side
  // The block's share of each vector.
  const int lo = blockIdx.x * kHidden / gridDim.x, hi = (blockIdx.x + 1) * kHidden / gridDim.x;
  float sum = 0;
  unsigned long long target = 0;
  for (int r = 0; r < rounds; ++r) {
    float* buf = y + (r % 3) * kFloats;
    if constexpr (kPlain) {
      for (int v = 0; v < kVectors; ++v)
        for (int i = lo + int(threadIdx.x); i < hi; i += kWorkers)
          buf[v * kHidden + i] = next_value(sum, v * kHidden + i);
    } else {
      for (int q = int(threadIdx.x); q < kFloats / 4; q += kWorkers) {  // four floats a reduction
        const int i = q * 4, e = i % kHidden;                          // e: the place in its vector
        float x[4];
        for (int j = 0; j < 4; ++j) x[j] = e + j >= lo && e + j < hi ? next_value(sum, i + j) : 0.0f;
        asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(buf + i), "f"(x[0]), "f"(x[1]), "f"(x[2]),
                     "f"(x[3])
                     : "memory");
      }
      // The buffer after this round's was read two rounds ago; its owners zero it for the next.
      float* following = y + ((r + 1) % 3) * kFloats;
      for (int v = 0; v < kVectors; ++v)
        for (int i = lo + int(threadIdx.x); i < hi; i += kWorkers) following[v * kHidden + i] = 0;
    }
    grid_barrier<Wait::acquire>(counter, target += gridDim.x);
    float s = 0;
    for (int q = int(threadIdx.x); q < kFloats / 4; q += kWorkers) {
      const float4 v = __ldcg(reinterpret_cast<const float4*>(buf) + q);
      s += v.x + v.y + v.z + v.w;
    }
    sum = block_sum(s);
  }
  end_stream();
  if (blockIdx.x == 0 && threadIdx.x == 0) *out = sum;
}

__device__ __forceinline__ void store_tagged(unsigned long long* p, float v, unsigned tag) {
  const unsigned long long w = (static_cast<unsigned long long>(tag) << 32) | __float_as_uint(v);
  asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(w) : "memory");
}

// 03, 04: y as tagged words; a reader spins on its own words until they carry round r's tag.
// 17 (kStages > 0): each round first consumes kStages stages of a fed ring.
template <bool kWide, int kStages = 0>
__global__ void tagged_rounds(unsigned long long* y, int rounds, float* out, const char* src) {
  if (run_stream(src, rounds * kStages)) return;
  const int lo = blockIdx.x * kN / gridDim.x, hi = (blockIdx.x + 1) * kN / gridDim.x;
  float sum = 0;
  for (int r = 0; r < rounds; ++r) {
    if constexpr (kStages > 0) sum += consume_round<kStages>(r);
    unsigned long long* buf = y + (r % 2) * kN;
    const unsigned tag = unsigned(r + 1);
    for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) store_tagged(buf + i, next_value(sum, i), tag);
    float s = 0;
    if constexpr (kWide) {
      // Two 16-byte loads of two words each: each 8-byte word is read whole.
      for (int h = 0; h < 2; ++h) {
        const unsigned long long* p = buf + (threadIdx.x * 2 + h * 2 * kWorkers);
        unsigned long long a, b;
        do {
          asm volatile("ld.relaxed.gpu.global.v2.u64 {%0, %1}, [%2];" : "=l"(a), "=l"(b) : "l"(p) : "memory");
        } while (unsigned(a >> 32) != tag || unsigned(b >> 32) != tag);
        s += __uint_as_float(unsigned(a)) + __uint_as_float(unsigned(b));
      }
    } else {
      for (int u = 0; u < 4; ++u) {
        const unsigned long long* p = buf + threadIdx.x + u * kWorkers;
        unsigned long long a;
        do {
          asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(a) : "l"(p) : "memory");
        } while (unsigned(a >> 32) != tag);
        s += __uint_as_float(unsigned(a));
      }
    }
    sum = block_sum(s);
  }
  end_stream();
  if (blockIdx.x == 0 && threadIdx.x == 0) *out = sum;
}

// 19-21: y in each block's shared memory (by round parity), its share [lo, hi) of the
// cluster's vector; the cluster's barrier between write and read. A block may only write
// buffer r % 2 once every peer is past round r - 2's reads, which the barrier of round
// r - 1 ensures; the last barrier keeps each block's shared memory alive for its peers.
template <int kCluster>
__global__ void cluster_rounds(int rounds, float* out) {
  __shared__ __align__(16) float vec[2][kN];
  cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
  const int rank = int(cluster.block_rank()), share = kN / kCluster;  // 64 or more: whole float4s
  float sum = 0;
  for (int r = 0; r < rounds; ++r) {
    float* mine = vec[r % 2];
    for (int i = rank * share + int(threadIdx.x); i < (rank + 1) * share; i += kWorkers) mine[i] = next_value(sum, i);
    cluster.sync();
    const int i = int(threadIdx.x) * 4;  // kN = 4 kWorkers: four floats a thread, all of one peer's share
    const float4 v = *reinterpret_cast<const float4*>(cluster.map_shared_rank(mine, unsigned(i / share)) + i);
    sum = block_sum(v.x + v.y + v.z + v.w);
  }
  cluster.sync();
  if (blockIdx.x == 0 && threadIdx.x == 0) *out = sum;
}

// 18: a fed ring's stages alone, kStages a round, with no exchange: the stream's own pace.
template <int kStages>
__global__ void fed_rounds(int rounds, float* out, const char* src) {
  if (run_stream(src, rounds * kStages)) return;
  float sum = 0;
  for (int r = 0; r < rounds; ++r) sum += consume_round<kStages>(r);
  if (blockIdx.x == 0 && threadIdx.x == 0) *out = sum;
}

int main() {
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  constexpr int kRounds = 4000;
  auto chain_sum = [&](int elements) {  // the last round's sum over `elements` values a round
    float sum = 0;
    for (int r = 0; r < kRounds; ++r) {
      float s = 0;
      for (int i = 0; i < elements; ++i) s += next_value(sum, i);
      sum = s;
    }
    return sum;
  };
  const float host_sum = chain_sum(kN);
  float *y, *out;
  unsigned long long *counter, *tagged;
  const size_t y_floats = 3 * size_t(std::max(4 * kN, kMaxVectors * kHidden));
  CHECK(cudaMalloc(&y, y_floats * sizeof(float)));
  CHECK(cudaMalloc(&tagged, 2 * kN * sizeof(unsigned long long)));
  CHECK(cudaMalloc(&counter, kSpread * kCounterStride * sizeof(unsigned long long)));
  CHECK(cudaMalloc(&out, sizeof(float)));
  int failed = 0;
  // want: the last round's sum where the rounds' vectors are not kN floats (22-28)
  auto run = [&](const char* name, auto launch, int blocks = 0, float want = -1) {
    const float us = median_us([&] {
      CHECK(cudaMemset(counter, 0, kSpread * kCounterStride * sizeof(unsigned long long)));
      CHECK(cudaMemset(tagged, 0, 2 * kN * sizeof(unsigned long long)));
      CHECK(cudaMemset(y, 0, y_floats * sizeof(float)));
      launch();
    });
    CHECK(cudaGetLastError());
    float got = 0;
    CHECK(cudaMemcpy(&got, out, sizeof(float), cudaMemcpyDeviceToHost));
    const bool ok = got == (want >= 0 ? want : host_sum);
    failed += !ok;
    std::printf("%s, %d blocks: %.3f us per round%s\n", name, blocks ? blocks : sms, us / kRounds,
                ok ? "" : "  CHECK FAILED");
  };
  // Cooperative launches: every block resident, which the spinning relies on.
  // With a stream (10, 11) a copying warp joins the workers, and the ring takes shared memory.
  const char* no_stream = nullptr;
  char* weights;
  CHECK(cudaMalloc(&weights, kStreamBytes));
  CHECK(cudaMemset(weights, 0, kStreamBytes));
  auto coop = [&](auto kernel, auto... args) {
    void* params[] = {&args...};
    const bool streaming = *static_cast<const char* const*>(params[sizeof...(args) - 1]) != nullptr;
    const size_t smem = streaming ? size_t(kSlots) * kSlotBytes : 0;
    CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize,
                               int(smem)));
    CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(kernel), dim3(sms), dim3(kWorkers + (streaming ? 32 : 0)),
                                      params, smem, 0));
  };
  int rounds = kRounds;
  run("01 grid barrier, then the loads", [&] { coop(barrier_rounds<Wait::fence>, y, counter, rounds, out, no_stream); });
  run("02 the same, an acquire load for the fence", [&] { coop(barrier_rounds<Wait::acquire>, y, counter, rounds, out, no_stream); });
  run("03 tagged words, 8-byte loads", [&] { coop(tagged_rounds<false>, tagged, rounds, out, no_stream); });
  run("04 tagged words, 16-byte loads", [&] { coop(tagged_rounds<true>, tagged, rounds, out, no_stream); });
  run("08 acquire polls", [&] { coop(barrier_rounds<Wait::acquire_polls>, y, counter, rounds, out, no_stream); });
  run("09 arrivals over 8 counters", [&] { coop(barrier_rounds<Wait::spread>, y, counter, rounds, out, no_stream); });
  run("05 every warp polls", [&] { coop(barrier_rounds<Wait::every_warp>, y, counter, rounds, out, no_stream); });
  run("06 pairs of blocks in clusters", [&] {
    cudaLaunchAttribute attrs[2]{};
    attrs[0].id = cudaLaunchAttributeCooperative;
    attrs[0].val.cooperative = 1;
    attrs[1].id = cudaLaunchAttributeClusterDimension;
    attrs[1].val.clusterDim.x = 2, attrs[1].val.clusterDim.y = 1, attrs[1].val.clusterDim.z = 1;
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(sms), config.blockDim = dim3(kWorkers), config.attrs = attrs, config.numAttrs = 2;
    CHECK(cudaLaunchKernelEx(&config, barrier_rounds<Wait::pair>, y, counter, rounds, out, no_stream));
  });
  const char* src = weights;
  run("10 02 with the weights streaming", [&] { coop(barrier_rounds<Wait::acquire>, y, counter, rounds, out, src); });
  run("11 04 with the weights streaming", [&] { coop(tagged_rounds<true>, tagged, rounds, out, src); });
  run("12 02 with vector reductions into the whole vector", [&] {
    coop(barrier_rounds<Wait::acquire, true, true>, y, counter, rounds, out, no_stream);
  });
  run("13 12 with the weights streaming", [&] {
    coop(barrier_rounds<Wait::acquire, true, true>, y, counter, rounds, out, src);
  });
  run("14 12 into 4 vectors (block b into vector b % 4), readers summing them", [&] {
    coop(barrier_rounds<Wait::acquire, true, true, 4>, y, counter, rounds, out, no_stream);
  });
  run("15 12, each block only into the 256 floats that hold its share", [&] {
    coop(barrier_rounds<Wait::acquire, true, true, 1, true>, y, counter, rounds, out, no_stream);
  });
  // 22-28: the fused down's reductions for 1-8 sequences.
  const auto partial = [&](const char* name, auto kernel, int vectors, const char* stream) {
    run(name, [&] { coop(kernel, y, counter, rounds, out, stream); }, 0, chain_sum(vectors * kHidden));
  };
  partial("22 1 vector of 2,048 floats, every block's reductions into it", partial_rounds<1>, 1, no_stream);
  partial("23 2 vectors", partial_rounds<2>, 2, no_stream);
  partial("24 4 vectors", partial_rounds<4>, 4, no_stream);
  partial("25 8 vectors", partial_rounds<8>, 8, no_stream);
  partial("26 25 with the weights streaming", partial_rounds<8>, 8, src);
  partial("27 22 with the weights streaming", partial_rounds<1>, 1, src);
  partial("28 8 vectors, each block storing its share, no reductions", partial_rounds<8, true>, 8, no_stream);
  // 16-18: the decode step's shape, a phase of two 32 KiB stages a block (Qwen3's phases
  // have one to three), then the exchange.
  constexpr int kPhaseStages = 2;
  run("16 02 after each round's two stages of a fed ring", [&] {
    coop(barrier_rounds<Wait::acquire, true, false, 1, false, kPhaseStages>, y, counter, rounds, out, src);
  });
  run("17 04 after each round's two stages of a fed ring", [&] {
    coop(tagged_rounds<true, kPhaseStages>, tagged, rounds, out, src);
  });
  {  // 18's sum is the stages' fold, 0 (reported, not checked)
    const float us = median_us([&] { coop(fed_rounds<kPhaseStages>, rounds, out, src); });
    std::printf("18 the two stages a round alone, no exchange, %d blocks: %.3f us per round\n", sms, us / kRounds);
  }
  // 19-21: clusters, each on its own chain (not cooperative: no block waits for another
  // cluster), over as many whole clusters as the SMs hold.
  cudaLaunchAttribute cluster_attr{};
  cluster_attr.id = cudaLaunchAttributeClusterDimension;
  auto cluster_config = [&](int size, size_t smem) {
    cluster_attr.val.clusterDim.x = unsigned(size), cluster_attr.val.clusterDim.y = 1;
    cluster_attr.val.clusterDim.z = 1;
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(unsigned(sms / size * size)), config.blockDim = dim3(kWorkers);
    config.dynamicSmemBytes = smem, config.attrs = &cluster_attr, config.numAttrs = 1;
    return config;
  };
  {  // First, how many clusters of each size fit with one block an SM (the decode step's
     // blocks take 200-227 KiB). The query takes the cluster's size from the configuration.
    const void* kernel = reinterpret_cast<const void*>(cluster_rounds<16>);
    const int one_per_sm = 200 << 10;
    CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, one_per_sm));
    for (int size : {2, 4, 8, 16}) {
      const cudaLaunchConfig_t config = cluster_config(size, one_per_sm);
      int clusters = 0;
      CHECK(cudaOccupancyMaxActiveClusters(&clusters, kernel, &config));
      std::printf("19-21: clusters of %d with one block an SM: %d resident (%d blocks)\n", size, clusters,
                  clusters * size);
    }
    CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 0));
  }
  auto clustered = [&](auto kernel, int size) {
    const cudaLaunchConfig_t config = cluster_config(size, 0);
    CHECK(cudaLaunchKernelEx(&config, kernel, rounds, out));
  };
  run("19 clusters of 2, shared memory across the cluster", [&] { clustered(cluster_rounds<2>, 2); }, sms / 2 * 2);
  run("20 clusters of 8", [&] { clustered(cluster_rounds<8>, 8); }, sms / 8 * 8);
  run("21 clusters of 16", [&] { clustered(cluster_rounds<16>, 16); }, sms / 16 * 16);
  // 07's sum is not the vector's: it reads none (reported, not checked).
  const float us = median_us([&] {
    CHECK(cudaMemset(counter, 0, sizeof(unsigned long long)));
    coop(barrier_rounds<Wait::acquire, false>, y, counter, rounds, out, no_stream);
  });
  std::printf("07 the barrier alone (02's), %d blocks: %.3f us per round\n", sms, us / kRounds);
  return failed ? 1 : 0;
}
