// Kernel lab: the gated MLP's first half as one GEMM. For bf16 x [M, K] and the gate and
// up weights wg, wu [N, K]: out [M, N] = act(x·wgᵀ) ⊙ (x·wuᵀ), rounded as HF rounds it
// (each product to bf16, the activation of the rounded gate to bf16, their product to
// bf16). In Gemma 3's classification (M = 32,768) the separate activation pass takes
// 7.9 ms of 77 per 1,024 prompts. A GEMM with the activation in its epilogue removes that
// pass and writes [M, N] once where the composition writes [M, 2N] and reads it back
// (bench/NOTES.md: to close Gemma 3's target alone it must reach about 715 TFLOP/s).
//
//   nvcc -O3 -std=c++20 -gencode arch=compute_90a,code=sm_90a -Isrc -o /tmp/glu_gemm_lab bench/kernels/glu_gemm_lab.cu \
//       -lcublasLt -lcublas && /tmp/glu_gemm_lab
//
// (compute_90a: wgmma exists only in the sm_90a target; plain -arch=sm_90a also emits
// compute_90 PTX, which cannot hold it.)
//
// Variants (bench/NOTES.md has their figures; src/backend/cuda/glu_gemm.cu is 06):
//   01  cublasGemmEx for the gate and for up, then the activation pass (the composition)
//   02  one persistent kernel: a producer thread loads 128 × 64 tiles of x and of the gate's
//       and up's rows by TMA into a ring of 4 stages (128-byte swizzle); two consumer
//       warpgroups each multiply 64 rows by the stage's 256 weight rows with wgmma
//       m64n256k16 (columns 0-127 the gate, 128-255 the matching up columns), so each
//       thread holds a gate value and its up value in the same registers' positions, and
//       the epilogue rounds, activates and stores 128 × 128 outputs straight from them.
//   03  the same parts with the consumers on alternate tiles of 128 rows × 64 outputs
//       (two wgmma m64n128k16 a K step, 64 gate and 64 up columns): one warpgroup's
//       epilogue overlaps the other's products; a ring of 6 stages of 32 KiB.
//   04  02 in clusters of two blocks on neighbouring rows: each loads half of a stage's
//       weight rows (the gate's or up's) by TMA multicast into both.
//   05  03 in clusters of two, likewise.
//   06  04 with the epilogue in warps 1-3 of the loading warpgroup: the consumers stage
//       rounded (gate, up) pairs in shared memory and go on to the next tile (3 stages).
//   07  06 with a staging tile of half the size, which the two consumer warpgroups take in
//       turn: 4 stages, as 04 has. Slower than 06 on all three shapes (7-13%): the turns
//       cost more than the stage gains.
// 02-07 are first checked at every output of a small problem against float64, with two
// blocks and with four. Then each variant is checked on sampled outputs against float64,
// and 02-07 against 01 at every output; prints microseconds, TFLOP/s (2·M·2N·K) and the
// ratio to 790. Exits 1 if a check fails.
#include <cublas_v2.h>
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "backend/cuda/async_copy.cuh"
#include "backend/cuda/wgmma.cuh"
#include "lab.cuh"

// The library's TMA, mbarrier, cluster and wgmma helpers (the kernel that came out of this
// lab, src/backend/cuda/glu_gemm.cu, uses the same ones).
using namespace lmx::cuda;

using bf16 = __nv_bfloat16;

enum class Act { silu, gelu_tanh };

struct Shape {
  const char* name;
  int n, k;  // intermediate and hidden sizes
  Act act;
};
constexpr Shape kShapes[] = {{"gemma3-1b", 6912, 1152, Act::gelu_tanh},
                             {"llama-3.2-1b", 8192, 2048, Act::silu},
                             {"qwen3-0.6b", 3072, 1024, Act::silu}};
constexpr int kM = 32768;  // 1,024 prompts × 32 tokens

__host__ __device__ inline float activate(Act act, float g) {
  if (act == Act::silu) return g / (1.0f + expf(-g));
  return 0.5f * g * (1.0f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g)));
}
__host__ __device__ inline float round_bf16(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
// The HF rounding of one output from the gate's and up's f32 sums.
__host__ __device__ inline float glu(Act act, float g, float u) {
  return round_bf16(activate(act, round_bf16(g))) * round_bf16(u);
}

// ---------------------------------------------------------------- 01: cuBLAS + activation

cublasHandle_t blas;

// out = act(g) · u over bf16 arrays already rounded, 8 values a thread.
__global__ void activation_kernel(Act act, const bf16* g, const bf16* u, bf16* out, size_t count) {
  for (size_t i = (size_t(blockIdx.x) * blockDim.x + threadIdx.x) * 8; i < count; i += size_t(gridDim.x) * blockDim.x * 8) {
    const uint4 gv = *reinterpret_cast<const uint4*>(g + i), uv = *reinterpret_cast<const uint4*>(u + i);
    const bf16* ge = reinterpret_cast<const bf16*>(&gv);
    const bf16* ue = reinterpret_cast<const bf16*>(&uv);
    uint4 ov;
    bf16* oe = reinterpret_cast<bf16*>(&ov);
    for (int e = 0; e < 8; ++e)
      oe[e] = __float2bfloat16_rn(round_bf16(activate(act, __bfloat162float(ge[e]))) * __bfloat162float(ue[e]));
    *reinterpret_cast<uint4*>(out + i) = ov;
  }
}

// ---------------------------------------------------------------- Hopper helpers (02, 03)

namespace hopper {

constexpr int kBK = 64;  // a k-tile: 64 values, one 128-byte swizzle row

// wgmma_m64n256k16 (wgmma.cuh) with N = 128, which only the lab uses: d is the m64n128
// accumulator layout (registers 4j..4j+3: columns 8j + 2(lane%4) (+1)).
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// act(g) in the epilogue's few instructions: gelu_tanh(g) = ½g(1 + tanh(u)) = g·σ(2u),
// u = √(2/π)(g + 0.044715g³), and silu(g) = g·σ(g), with the hardware's exp2 and reciprocal.
// Their error (a few f32 units) is far below the bf16 rounding that follows, and the σ form
// has no cancellation for negative g, where 1 + tanh(u) loses digits.
__device__ __forceinline__ float activate_fast(Act act, float g) {
  constexpr float kLog2e = 1.4426950408889634f;
  const float t = act == Act::silu ? g * -kLog2e : g * fmaf(0.044715f * g, g, 1.0f) * (-1.5957691216057308f * kLog2e);
  float e;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(t));
  return __fdividef(g, 1.0f + e);  // 0 (the limit) where e is infinite
}

// Two neighbouring outputs from their gate and up sums, rounded as glu() rounds them, with
// the conversions paired.
__device__ __forceinline__ __nv_bfloat162 glu_pair(Act act, float g0, float g1, float u0, float u1) {
  const float2 g = __bfloat1622float2(__floats2bfloat162_rn(g0, g1));
  const float2 u = __bfloat1622float2(__floats2bfloat162_rn(u0, u1));
  const float2 a = __bfloat1622float2(__floats2bfloat162_rn(activate_fast(act, g.x), activate_fast(act, g.y)));
  return __floats2bfloat162_rn(a.x * u.x, a.y * u.y);
}

// Stores one warpgroup's activated outputs from an m64 accumulator: registers 4j..4j+3 hold
// columns 8j + 2(lane%4) (+1) of rows r0 and r0 + 8, the gate's for j < kJ and up's matching
// columns at j + kJ. (The array by reference: chosen through a pointer, it would go to local
// memory.)
template <int kJ>
__device__ __forceinline__ void store_glu(const float (&d)[8 * kJ], Act act, bf16* out, int n, int r0, int col,
                                          int lane) {
#pragma unroll
  for (int j = 0; j < kJ; ++j) {
    const int c = col + 8 * j + 2 * (lane % 4);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int i = 4 * j + 2 * h, iu = 4 * (j + kJ) + 2 * h;
      *reinterpret_cast<__nv_bfloat162*>(out + size_t(r0 + 8 * h) * n + c) = glu_pair(act, d[i], d[i + 1], d[iu], d[iu + 1]);
    }
  }
}

// A row-major bf16 [rows, cols] array read in boxes of `box_rows` × 64, 128-byte swizzled.
CUtensorMap tensor_map(const bf16* p, int rows, int cols, int box_rows) {
  return bf16_box_map(p, rows, cols, box_rows, kBK, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B);
}

// The tensor maps of one problem, built once: x, the gate and up, in boxes of a variant's
// tile rows by 64 values of K.
struct Maps {
  CUtensorMap x, gate, up;
};

// A variant's geometry: kBM rows of x and kBN rows each of the gate and up a stage (gate
// rows first), kStages stages, kTurns extra barriers after the ring's, clusters of kRanks
// blocks that share each stage's weight rows (1: no cluster), and kExtra bytes of shared
// memory after the ring for the variant's own use.
template <int kBM_, int kBN_, int kStages_, int kTurns_, int kRanks_, int kExtra_ = 0>
struct Layout {
  static constexpr int kBM = kBM_, kBN = kBN_, kStages = kStages_, kTurns = kTurns_, kRanks = kRanks_;
  static constexpr int kExtra = kExtra_;
  static constexpr int kThreads = 384;  // warpgroup 0 loads; 1 and 2 multiply
  static constexpr int kABytes = kBM * kBK * 2;
  static constexpr int kBBytes = 2 * kBN * kBK * 2;
  static constexpr int kStageBytes = kABytes + kBBytes;
  static constexpr size_t kSmem =
      size_t(kStages) * kStageBytes + kExtra + (2 * kStages + kTurns) * 8 + 1024;  // + alignment
  static_assert(kRanks == 1 || kRanks == 2, "a cluster's blocks split the weight rows: the gate, and up");
};

// The block's tiles in order. The blocks of a cluster take the same columns and
// neighbouring row tiles, so that each stage's weight rows are loaded once for all of them:
// the cluster's tile t is rows (t / tiles_n · kRanks + rank) · kBM, columns t % tiles_n · kBN.
template <class L>
struct Schedule {
  int tiles_n, count, first, step, rank;
  __device__ Schedule(int m, int n)
      : tiles_n(n / L::kBN),
        count(m / L::kBM / L::kRanks * tiles_n),
        first(int(blockIdx.x) / L::kRanks),
        step(int(gridDim.x) / L::kRanks),
        rank(int(blockIdx.x) % L::kRanks) {}
  __device__ int row(int t) const { return (t / tiles_n * L::kRanks + rank) * L::kBM; }
  __device__ int col(int t) const { return t % tiles_n * L::kBN; }
};

// The block's shared memory: the ring (swizzled tiles start on 1,024-byte boundaries), then
// full[kStages] (loaded), empty[kStages] (consumed: `consumers` warp arrivals from each
// block of the cluster, whose loads write into every block's slot) and the variant's other
// barriers, set up by thread 0 before any thread of the cluster goes on.
template <class L>
struct Ring {
  unsigned char* stages;
  uint64_t *full, *empty, *other;
  __device__ Ring(unsigned char* raw, unsigned consumers) {
    stages = raw + ((1024 - (smem_addr(raw) & 1023)) & 1023);
    full = reinterpret_cast<uint64_t*>(stages + L::kStages * L::kStageBytes + L::kExtra);
    empty = full + L::kStages;
    other = empty + L::kStages;
    if (threadIdx.x == 0) {
      for (int s = 0; s < L::kStages; ++s) mbarrier_init(&full[s], 1), mbarrier_init(&empty[s], consumers * L::kRanks);
      for (int s = 0; s < L::kTurns; ++s) mbarrier_init(&other[s], 1);
      mbarrier_init_fence();
    }
    if (L::kRanks > 1) {
      cluster_sync();
    } else {
      __syncthreads();
    }
  }
  __device__ unsigned char* stage(int s) const { return stages + s * L::kStageBytes; }

  // A consumer warp is done with `slot`: in every block of the cluster, since each block's
  // producer writes into all of them.
  __device__ void release(int slot) const {
    if (L::kRanks == 1) {
      mbarrier_arrive(&empty[slot]);
    } else {
      for (int r = 0; r < L::kRanks; ++r) mbarrier_arrive_at(&empty[slot], unsigned(r));
    }
  }

  // The producer (one thread): every k-tile of the block's tiles in order, into the ring's
  // slots in turn. In a cluster of two, rank 0 loads the gate's rows and rank 1 up's, each
  // into both blocks.
  __device__ void produce(const CUtensorMap* tx, const CUtensorMap* tg, const CUtensorMap* tu, const Schedule<L>& s,
                          int k_tiles) const {
    int slot = 0;
    unsigned phase = 0;
    for (int t = s.first; t < s.count; t += s.step) {
      const int row = s.row(t), col = s.col(t);
      for (int kt = 0; kt < k_tiles; ++kt) {
        mbarrier_wait(&empty[slot], phase ^ 1);  // the first round finds every slot free
        unsigned char* st = stage(slot);
        mbarrier_expect(&full[slot], L::kStageBytes);
        tensor_copy(st, tx, &full[slot], kt * kBK, row);
        if (L::kRanks == 1) {
          tensor_copy(st + L::kABytes, tg, &full[slot], kt * kBK, col);
          tensor_copy(st + L::kABytes + L::kBBytes / 2, tu, &full[slot], kt * kBK, col);
        } else {
          tensor_multicast(st + L::kABytes + s.rank * L::kBBytes / 2, s.rank ? tu : tg, &full[slot], kt * kBK, col, 3);
        }
        if (++slot == L::kStages) slot = 0, phase ^= 1;
      }
    }
  }
};

template <class L>
Maps maps(const bf16* x, const bf16* wg, const bf16* wu, int m, int n, int k) {
  return {tensor_map(x, m, k, L::kBM), tensor_map(wg, n, k, L::kBN), tensor_map(wu, n, k, L::kBN)};
}

using Kernel = void (*)(CUtensorMap, CUtensorMap, CUtensorMap, Act, bf16*, int, int, int);

// Launches a variant's kernel, persistent: as many blocks (or clusters) as fit at once, or
// one per tile where fewer.
template <class L>
void launch(Kernel kernel, const Maps& maps, Act act, bf16* out, int m, int n, int k, int sms) {
  cudaLaunchConfig_t config = {};
  cudaLaunchAttribute cluster = {};
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = L::kRanks, cluster.val.clusterDim.y = 1, cluster.val.clusterDim.z = 1;
  config.blockDim = dim3(L::kThreads);
  config.dynamicSmemBytes = L::kSmem;
  config.attrs = &cluster;
  config.numAttrs = 1;
  static const int resident = [&] {  // once: one kernel per layout
    CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(L::kSmem)));
    if (L::kRanks == 1) return 1 << 30;  // `sms`
    int clusters = 0;
    config.gridDim = dim3(sms / L::kRanks * L::kRanks);
    CHECK(cudaOccupancyMaxActiveClusters(&clusters, kernel, &config));
    std::printf("  (%d clusters of %d blocks fit at once)\n", clusters, L::kRanks);
    return clusters * L::kRanks;
  }();
  const int tiles = (m / L::kBM) * (n / L::kBN);
  config.gridDim = dim3(std::min(tiles, std::min(resident, sms)) / L::kRanks * L::kRanks);
  CHECK(cudaLaunchKernelEx(&config, kernel, maps.x, maps.gate, maps.up, act, out, m, n, k));
}

}  // namespace hopper

// ---------------------------------------------------------------- 02, 04: cooperative consumers

// Tiles of 128 × 128 outputs, in order along N within a row of tiles, taken by the grid in
// turn (persistent: the producer runs ahead into the next tile while the consumers store).
// 02 alone; 04 in clusters of two blocks on neighbouring rows, each block loading half of
// the stage's weight rows for both, so that each block reads 32 KiB a stage from L2 where
// 02 reads 48.
namespace cooperative {

using namespace hopper;

using L02 = Layout<128, 128, 4, 0, 1>;  // 128 × 128 outputs; stages of 48 KiB: 128 gate rows, then 128 up rows
using L04 = Layout<128, 128, 4, 0, 2>;

// One consumer warpgroup's products for one tile: its 64 rows (`half`) of the stage times
// all 256 weight rows, over k_tiles stages from ring slot `stage` (its parity `phase`), which
// it advances; each slot is freed as soon as its products are done.
template <class L>
__device__ __forceinline__ void multiply_tile(const Ring<L>& ring, float (&d)[128], int half, int k_tiles, int& stage,
                                              unsigned& phase, int lane) {
  int previous = -1;
  for (int kt = 0; kt < k_tiles; ++kt) {
    mbarrier_wait(&ring.full[stage], phase);
    unsigned char* s = ring.stage(stage);
    const uint64_t a = wgmma_descriptor(s + half * 64 * 128), b = wgmma_descriptor(s + L::kABytes);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) wgmma_m64n256k16(d, a + 2 * kk, b + 2 * kk, kt > 0 || kk > 0);
    wgmma_commit();
    // One group stays in flight: the previous k-tile's products are done, so its slot is free.
    wgmma_wait<1>();
    if (previous >= 0 && lane == 0) ring.release(previous);
    previous = stage;
    if (++stage == L::kStages) stage = 0, phase ^= 1;
  }
  wgmma_wait<0>();
  wgmma_hold(d);
  if (lane == 0) ring.release(previous);
}

template <class L>
__global__ void __launch_bounds__(L::kThreads, 1)
    glu_gemm_kernel(const __grid_constant__ CUtensorMap tx, const __grid_constant__ CUtensorMap tg,
                    const __grid_constant__ CUtensorMap tu, Act act, bf16* out, int m, int n, int k) {
  extern __shared__ unsigned char smem_raw[];
  const Ring<L> ring(smem_raw, 8);  // 8: the consumer warps
  const Schedule<L> tiles(m, n);
  const int group = int(threadIdx.x) / 128, lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) % 128 / 32;
  const int k_tiles = k / kBK;
  if (group == 0) {
    if (threadIdx.x == 0) ring.produce(&tx, &tg, &tu, tiles, k_tiles);
  } else {
    const int half = group - 1;  // this warpgroup's 64 rows of the tile
    float d[128];
    int stage = 0;
    unsigned phase = 0;
    for (int t = tiles.first; t < tiles.count; t += tiles.step) {
      const int row = tiles.row(t) + half * 64, col = tiles.col(t);
      multiply_tile(ring, d, half, k_tiles, stage, phase, lane);
      store_glu<16>(d, act, out, n, row + warp * 16 + lane / 4, col, lane);
    }
  }
  // No block leaves while a peer may still write into its ring or arrive on its barriers.
  if (L::kRanks > 1) cluster_sync();
}

template <class L>
void run(const Maps& maps, Act act, bf16* out, int m, int n, int k, int sms) {
  launch<L>(glu_gemm_kernel<L>, maps, act, out, m, n, k, sms);
}

}  // namespace cooperative

// ---------------------------------------------------------------- 03, 05: ping-pong consumers

// Each consumer warpgroup owns every other tile of the block's list, whole: 128 rows × 64
// outputs, that is two wgmma m64n128k16 a K step (rows 0-63 and 64-127) against 64 gate
// rows and the matching 64 up rows. The producer fills the ring in the order the tiles
// come, so the second warpgroup's products start as the first's run out of stages, and
// each warpgroup's epilogue overlaps the other's products. Stage g of the block (tile i of
// its list, k-tile kt: g = i·k_tiles + kt) sits in slot g % kStages, phase g / kStages.
// 03 alone; 05 in clusters of two, as 04 (24 KiB a stage from L2 where 03 reads 32).
namespace pingpong {

using namespace hopper;

using L03 = Layout<128, 64, 6, 2, 1>;  // 128 × 64 outputs a warpgroup; stages of 32 KiB: 64 gate rows, then 64 up rows
using L05 = Layout<128, 64, 6, 2, 2>;

template <class L>
__global__ void __launch_bounds__(L::kThreads, 1)
    glu_gemm_kernel(const __grid_constant__ CUtensorMap tx, const __grid_constant__ CUtensorMap tg,
                    const __grid_constant__ CUtensorMap tu, Act act, bf16* out, int m, int n, int k) {
  extern __shared__ unsigned char smem_raw[];
  const Ring<L> ring(smem_raw, 4);  // 4: one warpgroup's warps
  const Schedule<L> tiles(m, n);
  uint64_t* turn = ring.other;  // [2]: turn[c], the other warpgroup has waited out its tile's stages
  const int group = int(threadIdx.x) / 128, lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) % 128 / 32;
  const int k_tiles = k / kBK;
  if (group == 0) {
    if (threadIdx.x == 0) ring.produce(&tx, &tg, &tu, tiles, k_tiles);
  } else {
    const int mine = group - 1;  // tiles mine, mine + 2, ... of the block's list
    float d0[64], d1[64];        // rows 0-63 and 64-127 of the tile
    for (int i = mine, t = tiles.first + mine * tiles.step; t < tiles.count; i += 2, t += 2 * tiles.step) {
      const int row = tiles.row(t), col = tiles.col(t);
      // A stage's barrier tells phases apart only by parity. Waiting for stage g is safe once
      // the load before it in the same slot (stage g - L::kStages) has completed; tile i's
      // stages follow tile i - 1's, which the other warpgroup waits out: its ((i - 1) / 2)-th
      // signal on turn[mine].
      if (i > 0) mbarrier_wait(&turn[mine], unsigned((i - 1) / 2) & 1);
      int previous = -1;
      for (int kt = 0; kt < k_tiles; ++kt) {
        const int g = i * k_tiles + kt, slot = g % L::kStages;
        mbarrier_wait(&ring.full[slot], unsigned(g / L::kStages) & 1);
        unsigned char* s = ring.stage(slot);
        const uint64_t a0 = wgmma_descriptor(s), a1 = wgmma_descriptor(s + 64 * 128), b = wgmma_descriptor(s + L::kABytes);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kBK / 16; ++kk) {
          wgmma_m64n128k16(d0, a0 + 2 * kk, b + 2 * kk, kt > 0 || kk > 0);
          wgmma_m64n128k16(d1, a1 + 2 * kk, b + 2 * kk, kt > 0 || kk > 0);
        }
        wgmma_commit();
        wgmma_wait<1>();
        if (previous >= 0 && lane == 0) ring.release(previous);
        previous = slot;
      }
      // Its loads are all in: the other warpgroup's turn. All four warps first, so that none
      // of them is still before its own turn wait when the other can signal again (a parity
      // wait would then miss its phase; a model of the barriers found that interleaving).
      asm volatile("bar.sync %0, 128;" ::"r"(1 + mine) : "memory");
      if (threadIdx.x % 128 == 0) mbarrier_arrive(&turn[1 - mine]);
      wgmma_wait<0>();
      wgmma_hold(d0);
      wgmma_hold(d1);
      if (lane == 0) ring.release(previous);

      store_glu<8>(d0, act, out, n, row + warp * 16 + lane / 4, col, lane);
      store_glu<8>(d1, act, out, n, row + 64 + warp * 16 + lane / 4, col, lane);
    }
  }
  if (L::kRanks > 1) cluster_sync();  // as in 04
}

template <class L>
void run(const Maps& maps, Act act, bf16* out, int m, int n, int k, int sms) {
  launch<L>(glu_gemm_kernel<L>, maps, act, out, m, n, k, sms);
}

}  // namespace pingpong

// ---------------------------------------------------------------- 06, 07: the epilogue in other warps

// 04 with the activation moved off the warpgroups that own the tensor cores. At a tile's
// end each consumer thread only rounds its gate and up sums to bf16 and writes the pairs to
// a staging tile in shared memory, then goes on to the next tile's products; warps 1-3 of
// warpgroup 0 (idle in 04: only thread 0 loads) activate the staged tile and store it while
// those products run. In 04 the epilogue (two MUFU operations and about 14 instructions an
// output) left the tensor cores idle for about a tenth of each tile.
//   06: the staging tile holds the block's 128 rows (64 column pairs × 8 bytes a row, rows
//       padded by 32 bytes against bank conflicts), which leaves room for 3 ring stages.
//   07: it holds one warpgroup's 64 rows, unpadded: the 8-byte slots of row r are XORed
//       with 4·(r % 4), which spreads a half-warp's four rows over distinct banks. The ring
//       has 4 stages again. The warpgroups take turns: the first stages its rows once the
//       workers have drained the second's of the tile before, the second once they have
//       drained the first's; meanwhile the one not staging runs its next products alone.
namespace staged {

using namespace hopper;

template <bool kHalf>
struct Geometry {
  static constexpr int kRows = kHalf ? 64 : 128;           // rows a staging tile holds
  static constexpr int kRowBytes = 64 * 8 + (kHalf ? 0 : 32);  // 64 × {gate pair, up pair}
  static constexpr int kBarriers = kHalf ? 4 : 2;           // staged and drained, per half in 07
  static constexpr int kStagingBytes = kRows * kRowBytes + kBarriers * 8;
  using L = Layout<128, 128, kHalf ? 4 : 3, 0, 2, kStagingBytes>;
  // Where 8-byte slot s of staged row r lies.
  static __device__ __forceinline__ int slot(int r, int s) { return kHalf ? s ^ ((r & 3) << 2) : s; }
};
using L06 = Geometry<false>::L;
using L07 = Geometry<true>::L;
constexpr int kWorkers = 96;  // warps 1-3

template <bool kHalf>
__global__ void __launch_bounds__(L06::kThreads, 1)
    glu_gemm_kernel(const __grid_constant__ CUtensorMap tx, const __grid_constant__ CUtensorMap tg,
                    const __grid_constant__ CUtensorMap tu, Act act, bf16* out, int m, int n, int k) {
  using G = Geometry<kHalf>;
  using L = typename G::L;
  extern __shared__ unsigned char smem_raw[];
  const Ring<L> ring(smem_raw, 8);
  unsigned char* staging = ring.stages + L::kStages * L::kStageBytes;
  // staged[h]: the 128 threads of consumer warpgroup h have written their rows (06: one
  // barrier for all 256); drained[h]: the 96 workers have read them.
  uint64_t* staged = reinterpret_cast<uint64_t*>(staging + G::kRows * G::kRowBytes);
  uint64_t* drained = staged + G::kBarriers / 2;
  if (threadIdx.x == 0)
    for (int h = 0; h < G::kBarriers / 2; ++h) mbarrier_init(&staged[h], kHalf ? 128 : 256), mbarrier_init(&drained[h], kWorkers);
  __syncthreads();
  const Schedule<L> tiles(m, n);
  const int group = int(threadIdx.x) / 128, lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) % 128 / 32;
  const int k_tiles = k / kBK;
  if (group == 0) {
    if (threadIdx.x == 0) {
      ring.produce(&tx, &tg, &tu, tiles, k_tiles);
    } else if (threadIdx.x >= 32) {
      // Workers: four pairs (8 outputs, 16 bytes of output) a step, along rows.
      const int me = int(threadIdx.x) - 32;
      int i = 0;
      for (int t = tiles.first; t < tiles.count; t += tiles.step, ++i)
        for (int h = 0; h < G::kBarriers / 2; ++h) {
          mbarrier_wait(&staged[h], unsigned(i) & 1);
          const int row = tiles.row(t) + h * G::kRows, col = tiles.col(t);
          for (int q = me; q < G::kRows * 16; q += kWorkers) {
            const int r = q / 16, p = q % 16 * 4;  // row in the staging tile, first pair
            const uint4* src = reinterpret_cast<const uint4*>(staging + r * G::kRowBytes + G::slot(r, p) * 8);
            const uint4 a = src[0], b = src[1];  // {g01, u01, g23, u23}, {g45, u45, g67, u67}
            auto pair = [&](uint32_t g2, uint32_t u2) {
              const float2 g = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&g2));
              const float2 u = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u2));
              const float2 a2 =
                  __bfloat1622float2(__floats2bfloat162_rn(activate_fast(act, g.x), activate_fast(act, g.y)));
              const __nv_bfloat162 o = __floats2bfloat162_rn(a2.x * u.x, a2.y * u.y);
              return *reinterpret_cast<const uint32_t*>(&o);
            };
            const uint4 o = make_uint4(pair(a.x, a.y), pair(a.z, a.w), pair(b.x, b.y), pair(b.z, b.w));
            if (row + r < m) *reinterpret_cast<uint4*>(out + size_t(row + r) * n + col + 2 * p) = o;
          }
          mbarrier_arrive(&drained[h]);
        }
    }
  } else {
    const int half = group - 1;
    float d[128];
    int stage = 0, i = 0;
    unsigned phase = 0;
    for (int t = tiles.first; t < tiles.count; t += tiles.step, ++i) {
      cooperative::multiply_tile(ring, d, half, k_tiles, stage, phase, lane);
      // The staging tile's last user is done: in 06 the workers' read of the previous tile;
      // in 07, for the first warpgroup, their read of the second's rows of the previous tile
      // (at least i drains of them, and at most i have happened), for the second, of the
      // first's rows of this tile (at least i + 1, at most i + 1: the first cannot stage
      // again before the second has).
      if (!kHalf || half == 0) {
        mbarrier_wait(&drained[G::kBarriers / 2 - 1], (unsigned(i) & 1) ^ 1);
      } else {
        mbarrier_wait(&drained[0], unsigned(i) & 1);
      }
      // Rows r and r + 8 of the staging tile; gate pair j at registers 4j + 2h, up's at
      // 4(j + 16) + 2h, in slot 4j + lane % 4 (07: 4(j ^ (r % 4)) + lane % 4; r % 4 is the
      // same for both rows).
      const int r = (kHalf ? 0 : half * 64) + warp * 16 + lane / 4, swizzle = kHalf ? (r & 3) * 32 : 0;
      unsigned char* base = staging + r * G::kRowBytes + lane % 4 * 8;
#pragma unroll
      for (int j = 0; j < 16; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const __nv_bfloat162 g = __floats2bfloat162_rn(d[4 * j + 2 * h], d[4 * j + 2 * h + 1]);
          const __nv_bfloat162 u = __floats2bfloat162_rn(d[4 * (j + 16) + 2 * h], d[4 * (j + 16) + 2 * h + 1]);
          *reinterpret_cast<uint2*>(base + 8 * h * G::kRowBytes + ((32 * j) ^ swizzle)) =
              make_uint2(*reinterpret_cast<const uint32_t*>(&g), *reinterpret_cast<const uint32_t*>(&u));
        }
      mbarrier_arrive(&staged[kHalf ? half : 0]);
    }
  }
  cluster_sync();
}

template <bool kHalf>
void run(const Maps& maps, Act act, bf16* out, int m, int n, int k, int sms) {
  launch<typename Geometry<kHalf>::L>(glu_gemm_kernel<kHalf>, maps, act, out, m, n, k, sms);
}

}  // namespace staged

// ---------------------------------------------------------------- checks and timing

// Largest error of sampled outputs against the float64 formula, in units of the output's
// bf16 spacing (2^-7 relative at most). The kernel's f32 sums may round the gate or up to
// the neighbouring bf16 value, which the activation and the product carry into the output:
// a few units.
double check(Act act, const std::vector<bf16>& hx, const std::vector<bf16>& hg, const std::vector<bf16>& hu,
             const std::vector<bf16>& got, int m, int n, int k) {
  std::mt19937 rng(7);
  double worst = 0;
  for (int s = 0; s < 256; ++s) {
    const int i = int(rng() % m), j = int(rng() % n);
    double g = 0, u = 0;
    for (int c = 0; c < k; ++c) {
      const double xv = __bfloat162float(hx[size_t(i) * k + c]);
      g += xv * __bfloat162float(hg[size_t(j) * k + c]);
      u += xv * __bfloat162float(hu[size_t(j) * k + c]);
    }
    const double want = round_bf16(float(glu(act, float(g), float(u))));
    const double unit = std::max(std::fabs(want), 1e-2) * 0x1p-7;
    worst = std::max(worst, std::fabs(double(__bfloat162float(got[size_t(i) * n + j])) - want) / unit);
  }
  return worst;
}

// A wgmma variant on a small problem against float64 at every output: 256 × 256 outputs
// (2 × 2 tiles for 02, 04 and 06, 2 × 4 for 03 and 05), K = 512 (8 k-tiles: the rings of
// 3, 4 and 6 stages wrap), `blocks` blocks, so each takes several tiles. The first
// mismatches are printed with their coordinates: a wrong descriptor, swizzle or register
// mapping shows as a pattern.
template <class Run>
bool check_small(const char* variant, int blocks, Run&& run) {
  const int m = 256, n = 256, k = 512;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<bf16> hx(size_t(m) * k), hg(size_t(n) * k), hu(size_t(n) * k), got(size_t(m) * n);
  for (auto& v : hx) v = __float2bfloat16(dist(rng));
  for (auto& v : hg) v = __float2bfloat16(dist(rng) * 0.1f);
  for (auto& v : hu) v = __float2bfloat16(dist(rng) * 0.1f);
  bf16 *x, *wg, *wu, *out;
  CHECK(cudaMalloc(&x, hx.size() * sizeof(bf16)));
  CHECK(cudaMalloc(&wg, hg.size() * sizeof(bf16)));
  CHECK(cudaMalloc(&wu, hu.size() * sizeof(bf16)));
  CHECK(cudaMalloc(&out, got.size() * sizeof(bf16)));
  CHECK(cudaMemcpy(x, hx.data(), hx.size() * sizeof(bf16), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(wg, hg.data(), hg.size() * sizeof(bf16), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(wu, hu.data(), hu.size() * sizeof(bf16), cudaMemcpyHostToDevice));
  CHECK(cudaMemset(out, 0xff, got.size() * sizeof(bf16)));
  run(x, wg, wu, out, m, n, k);
  CHECK(cudaDeviceSynchronize());
  CHECK(cudaMemcpy(got.data(), out, got.size() * sizeof(bf16), cudaMemcpyDeviceToHost));
  size_t bad = 0;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double g = 0, u = 0;
      for (int c = 0; c < k; ++c) {
        const double xv = __bfloat162float(hx[size_t(i) * k + c]);
        g += xv * __bfloat162float(hg[size_t(j) * k + c]);
        u += xv * __bfloat162float(hu[size_t(j) * k + c]);
      }
      const double want = round_bf16(glu(Act::silu, float(g), float(u)));
      const double have = __bfloat162float(got[size_t(i) * n + j]);
      if (!(std::fabs(have - want) <= std::max(std::fabs(want), 1e-2) * 0x1p-5)) {
        if (bad < 8) std::printf("  %s small check: out[%d, %d] = %g, want %g\n", variant, i, j, have, want);
        ++bad;
      }
    }
  std::printf("%s small check (%d x %d, K %d, %d blocks): %zu of %zu outputs off by more than 4 units\n", variant, m,
              n, k, blocks, bad, got.size());
  for (bf16* p : {x, wg, wu, out}) CHECK(cudaFree(p));
  return bad == 0;
}

int main() {
  CHECK_STATUS(cublasCreate(&blas));
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  // Two blocks (a cluster of two for 04 and 05), then four (two clusters).
  bool ok = true;
  for (int blocks : {2, 4}) {
    auto small = [&](const char* name, auto run, auto layout) {
      using L = decltype(layout);
      ok = check_small(name, blocks, [&](const bf16* x, const bf16* wg, const bf16* wu, bf16* out, int m, int n, int k) {
        run(hopper::maps<L>(x, wg, wu, m, n, k), Act::silu, out, m, n, k, blocks);
      }) && ok;
    };
    small("02", cooperative::run<cooperative::L02>, cooperative::L02{});
    small("03", pingpong::run<pingpong::L03>, pingpong::L03{});
    small("04", cooperative::run<cooperative::L04>, cooperative::L04{});
    small("05", pingpong::run<pingpong::L05>, pingpong::L05{});
    small("06", staged::run<false>, staged::L06{});
    small("07", staged::run<true>, staged::L07{});
  }
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1, 1);
  for (const Shape& sh : kShapes) {
    const int m = kM, n = sh.n, k = sh.k;
    if (m % (2 * cooperative::L04::kBM) || n % cooperative::L04::kBN || k % hopper::kBK) {
      std::printf("  %s: 04 needs M, N and K in whole tiles\n", sh.name);
      ok = false;
      continue;
    }
    std::vector<bf16> hx(size_t(m) * k), hg(size_t(n) * k), hu(size_t(n) * k);
    for (auto& v : hx) v = __float2bfloat16(dist(rng));
    for (auto& v : hg) v = __float2bfloat16(dist(rng) * 0.05f);
    for (auto& v : hu) v = __float2bfloat16(dist(rng) * 0.05f);
    bf16 *x, *wg, *wu, *g, *u, *out;
    CHECK(cudaMalloc(&x, hx.size() * sizeof(bf16)));
    CHECK(cudaMalloc(&wg, hg.size() * sizeof(bf16)));
    CHECK(cudaMalloc(&wu, hu.size() * sizeof(bf16)));
    for (bf16** p : {&g, &u, &out}) CHECK(cudaMalloc(p, size_t(m) * n * sizeof(bf16)));
    CHECK(cudaMemcpy(x, hx.data(), hx.size() * sizeof(bf16), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(wg, hg.data(), hg.size() * sizeof(bf16), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(wu, hu.data(), hu.size() * sizeof(bf16), cudaMemcpyHostToDevice));
    const double flops = 2.0 * m * 2.0 * n * k;
    std::vector<bf16> first(size_t(m) * n), second(size_t(m) * n);
    auto report = [&](const char* variant, float us, const std::vector<bf16>& got) {
      const double err = check(sh.act, hx, hg, hu, got, m, n, k), tflops = flops / (us * 1e-6) / 1e12;
      std::printf("%-13s %s %8.1f us  %6.1f TFLOP/s  %.2fx of 790  worst sampled error %.2f units\n", sh.name, variant,
                  us, tflops, tflops / 790, err);
      if (err > 4) {
        std::printf("  CHECK FAILED: %s %s\n", sh.name, variant);
        ok = false;
      }
    };
    const float us1 = median_us([&] {
      gemm_blas(blas, x, wg, g, m, n, k);
      gemm_blas(blas, x, wu, u, m, n, k);
      activation_kernel<<<sms * 8, 256>>>(sh.act, g, u, out, size_t(m) * n);
    });
    CHECK(cudaMemcpy(first.data(), out, first.size() * sizeof(bf16), cudaMemcpyDeviceToHost));
    report("01", us1, first);
    // A wgmma variant: timed, checked against float64 on samples and against 01 everywhere
    // (the same roundings from differently ordered f32 sums).
    auto variant = [&](const char* name, auto&& run) {
      CHECK(cudaMemset(out, 0xff, size_t(m) * n * sizeof(bf16)));  // NaNs where it writes nothing
      const float us = median_us(run);
      CHECK(cudaMemcpy(second.data(), out, second.size() * sizeof(bf16), cudaMemcpyDeviceToHost));
      report(name, us, second);
      size_t off = 0;
      for (size_t i = 0; i < first.size(); ++i) {
        const float a = __bfloat162float(first[i]), b = __bfloat162float(second[i]);
        if (!(std::fabs(a - b) <= std::max(std::fabs(a), 1e-2f) * 0x1p-5f)) ++off;
      }
      std::printf("%-13s %s against 01: %zu of %zu outputs differ by more than 4 units\n", sh.name, name, off,
                  first.size());
      if (off > first.size() / 1000) {
        std::printf("  CHECK FAILED: %s %s against 01\n", sh.name, name);
        ok = false;
      }
    };
    // (02 and 04 share a geometry, and so do 03 and 05: one set of tensor maps each.)
    const hopper::Maps cm = hopper::maps<cooperative::L02>(x, wg, wu, m, n, k),
                       pm = hopper::maps<pingpong::L03>(x, wg, wu, m, n, k);
    variant("02", [&] { cooperative::run<cooperative::L02>(cm, sh.act, out, m, n, k, sms); });
    variant("03", [&] { pingpong::run<pingpong::L03>(pm, sh.act, out, m, n, k, sms); });
    variant("04", [&] { cooperative::run<cooperative::L04>(cm, sh.act, out, m, n, k, sms); });
    variant("05", [&] { pingpong::run<pingpong::L05>(pm, sh.act, out, m, n, k, sms); });
    variant("06", [&] { staged::run<false>(cm, sh.act, out, m, n, k, sms); });
    variant("07", [&] { staged::run<true>(cm, sh.act, out, m, n, k, sms); });
    for (bf16* p : {x, wg, wu, g, u, out}) CHECK(cudaFree(p));
  }
  std::printf(ok ? "all checks passed\n" : "some checks FAILED\n");
  return ok ? 0 : 1;
}
