// Kernel lab for the persistent step's fused down projection (fused_down_rows and issue in
// src/backend/cuda/fused_persistent.cu): how fast a block reads its columns of down, as the
// step lays them out and as a transposed copy would. Qwen3-0.6B's shapes: down is [1,024,
// 3,072] a layer, 28 layers (176 MB, beyond L2), and each of 128 blocks reads 3 units of 8
// columns (48 bytes of every row, 48 KiB a layer) through a ring of three 32 KiB slots
// filled by a copying warp, as the step's blocks do.
//
//   06  tensor-map boxes of 256 rows × 48 bytes, one box a stage (four stages a layer)
//   07  the same, two boxes a stage (the step's stages for Qwen3-0.6B since p31, which it
//       reads as 10 does since p32)
//   08  the block's 24 columns as 24 contiguous rows of a transposed copy ([3,072, 1,024]
//       a layer): bulk copies of 12 rows (24 KiB) a stage, two stages a layer
//   09  08 with stages of 16 rows (a whole slot) and 8
//   10  07's boxes as a tiled copy: each block's 24 columns of a layer stored contiguously
//       ([128][1,024][24] a layer), so that a stage of two boxes is one 24 KiB bulk copy
//       and lands in shared memory as 07's boxes do
//
// The workers only add up the bits of every value they are handed (as integers, so the
// sum does not depend on the order), and each variant's sum is checked against the host's.
// Prints µs a layer and the rate over the grid, against the 4.3 TB/s copy figure.
// From the repository root: nvcc -O3 -std=c++20 -arch=sm_90a -Isrc -Iinclude bench/kernels/down_lab.cu
#include <cuda_bf16.h>

#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "lab.cuh"
#include "backend/cuda/async_copy.cuh"

using namespace lmx::cuda;

constexpr int kRows = 1024, kCols = 3072, kLayers = 28;
constexpr int kBlocks = 128, kUnits = 3, kBlockCols = 8 * kUnits;  // 128 × 24 = 3,072 columns
constexpr int kWorkers = 256, kSlots = 3, kSlotBytes = 32 << 10;
constexpr int kBoxRows = 256;

// What a variant's block copies: `stages` stages a layer, stage s holding `rows[s]` rows of
// `row_bytes` each (a box row of 48 bytes, or a transposed row of 2 KiB).
struct Plan {
  enum class Source { boxes, transposed, tiled } source;  // W's boxes (06, 07), T's rows (08, 09), Y (10)
  int per_stage;      // boxes a stage (06, 07, 10), or transposed rows a stage (08, 09)
  int stages;         // a layer
  int last;           // rows of the last stage of a layer (08, 09)
};

__device__ __forceinline__ unsigned long long add_bits(uint4 v) {
  auto two = [](unsigned w) { return (unsigned long long)(w & 0xffffu) + (w >> 16); };
  return two(v.x) + two(v.y) + two(v.z) + two(v.w);
}

__global__ void __launch_bounds__(kWorkers + 32, 1)
    down_kernel(const __grid_constant__ CUtensorMap map, const __nv_bfloat16* t, const __nv_bfloat16* y, Plan plan,
                unsigned long long* sum) {
  extern __shared__ __align__(128) unsigned char sm[];
  __shared__ __align__(8) uint64_t full[kSlots], empty[kSlots];
  const int b = blockIdx.x;
  if (threadIdx.x == 0) {
    for (int i = 0; i < kSlots; ++i) mbarrier_init(&full[i], 1), mbarrier_init(&empty[i], kWorkers / 32);
    mbarrier_init_fence();
  }
  __syncthreads();
  const int total = kLayers * plan.stages;
  // Bytes of stage s of a layer.
  auto bytes_of = [&](int s) {
    if (plan.source != Plan::Source::transposed) return unsigned(plan.per_stage * kBoxRows * kBlockCols * 2);
    return unsigned((s + 1 < plan.stages ? plan.per_stage : plan.last) * kRows * 2);
  };
  if (threadIdx.x >= kWorkers) {  // the copying warp's first thread
    if (threadIdx.x != kWorkers) return;
    const uint64_t policy = evict_first_policy();
    for (int i = 0; i < total; ++i) {
      const int slot = i % kSlots, layer = i / plan.stages, s = i % plan.stages;
      if (i >= kSlots) mbarrier_wait(&empty[slot], unsigned(i / kSlots - 1) & 1u);
      unsigned char* dst = sm + size_t(slot) * kSlotBytes;
      mbarrier_expect(&full[slot], bytes_of(s));
      if (plan.source == Plan::Source::boxes) {
        for (int k = 0; k < plan.per_stage; ++k)
          tensor_copy(dst + size_t(k) * kBoxRows * kBlockCols * 2, &map, &full[slot], b * kBlockCols,
                      layer * kRows + (s * plan.per_stage + k) * kBoxRows, policy);
      } else if (plan.source == Plan::Source::tiled) {
        const size_t row = (size_t(layer) * kBlocks + b) * kRows + size_t(s) * plan.per_stage * kBoxRows;
        bulk_copy(dst, y + row * kBlockCols, bytes_of(s), &full[slot], policy);
      } else {
        const size_t row = size_t(layer) * kCols + size_t(b) * kBlockCols + size_t(s) * plan.per_stage;
        bulk_copy(dst, t + row * kRows, bytes_of(s), &full[slot], policy);
      }
    }
    return;
  }
  unsigned long long acc = 0;
  for (int i = 0; i < total; ++i) {
    const int slot = i % kSlots, s = i % plan.stages;
    mbarrier_wait(&full[slot], unsigned(i / kSlots) & 1u);
    const uint4* v = reinterpret_cast<const uint4*>(sm + size_t(slot) * kSlotBytes);
    const int n = int(bytes_of(s) / 16);  // 16-byte pieces, a thread's a row apart in 06/07
    for (int j = int(threadIdx.x); j < n; j += kWorkers) acc += add_bits(v[j]);
    __syncwarp();
    if (threadIdx.x % 32 == 0) mbarrier_arrive(&empty[slot]);
  }
  atomicAdd(sum, acc);
}

int main() {
  const size_t n = size_t(kLayers) * kRows * kCols;
  std::vector<uint16_t> w(n), tr(n), tiled(n);
  std::mt19937 rng(7);
  unsigned long long expected = 0;
  for (size_t i = 0; i < n; ++i) {
    const float x = std::normal_distribution<float>(0.0f, 0.02f)(rng);
    const __nv_bfloat16 h = __float2bfloat16(x);
    w[i] = *reinterpret_cast<const uint16_t*>(&h);
    expected += w[i];
  }
  for (int l = 0; l < kLayers; ++l)  // T_l[c][r] = W_l[r][c]
    for (int r = 0; r < kRows; ++r)
      for (int c = 0; c < kCols; ++c)
        tr[(size_t(l) * kCols + c) * kRows + r] = w[(size_t(l) * kRows + r) * kCols + c];
  for (int l = 0; l < kLayers; ++l)  // Y_l[b][r][j] = W_l[r][24·b + j]
    for (int b = 0; b < kBlocks; ++b)
      for (int r = 0; r < kRows; ++r)
        for (int j = 0; j < kBlockCols; ++j)
          tiled[((size_t(l) * kBlocks + b) * kRows + r) * kBlockCols + j] =
              w[(size_t(l) * kRows + r) * kCols + b * kBlockCols + j];
  __nv_bfloat16 *dw, *dt, *dy;
  unsigned long long* dsum;
  CHECK(cudaMalloc(&dw, n * 2));
  CHECK(cudaMalloc(&dt, n * 2));
  CHECK(cudaMalloc(&dy, n * 2));
  CHECK(cudaMalloc(&dsum, sizeof(unsigned long long)));
  CHECK(cudaMemcpy(dw, w.data(), n * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dt, tr.data(), n * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dy, tiled.data(), n * 2, cudaMemcpyHostToDevice));
  // Down as the step maps it: the layers stacked along the rows, boxes of 256 rows × 24
  // columns, 128-byte L2 promotion (persistent_fuse_down).
  const CUtensorMap map = bf16_box_map(dw, kLayers * kRows, kCols, kBoxRows, kBlockCols, CU_TENSOR_MAP_SWIZZLE_NONE,
                                       CU_TENSOR_MAP_L2_PROMOTION_L2_128B);
  const size_t smem = size_t(kSlots) * kSlotBytes;
  CHECK(cudaFuncSetAttribute(down_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  struct Variant {
    const char* name;
    Plan plan;
  };
  const Variant variants[] = {
      {"06 boxes of 256 rows x 48 B, one a stage", {Plan::Source::boxes, 1, kRows / kBoxRows, 0}},
      {"07 the same, two a stage", {Plan::Source::boxes, 2, kRows / kBoxRows / 2, 0}},
      {"08 transposed rows, 12 a stage (24 KiB)", {Plan::Source::transposed, 12, 2, 12}},
      {"09 transposed rows, 16 then 8 a stage", {Plan::Source::transposed, 16, 2, 8}},
      {"10 07's boxes from a tiled copy (24 KiB)", {Plan::Source::tiled, 2, kRows / kBoxRows / 2, 0}},
  };
  int failed = 0;
  const double bytes = double(n) * 2;
  for (const Variant& v : variants) {
    auto run = [&] { down_kernel<<<kBlocks, kWorkers + 32, smem>>>(map, dt, dy, v.plan, dsum); };
    CHECK(cudaMemset(dsum, 0, sizeof(unsigned long long)));
    run();
    CHECK(cudaDeviceSynchronize());
    unsigned long long got = 0;
    CHECK(cudaMemcpy(&got, dsum, sizeof(got), cudaMemcpyDeviceToHost));
    const bool ok = got == expected;
    failed += ok ? 0 : 1;
    const float us = median_us(run);
    std::printf("%-44s %7.2f us a layer  %5.2f TB/s (%.2f of 4.3)  %s\n", v.name, us / kLayers, bytes / us / 1e6,
                bytes / us / 1e6 / 4.3, ok ? "ok" : "SUM MISMATCH");
  }
  return failed ? 1 : 0;
}
