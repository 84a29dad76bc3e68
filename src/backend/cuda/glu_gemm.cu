// The gated MLP's first half as one GEMM on Hopper (sm_90a): for bf16 x [R, K] and the
// gate and up weights [N, K], out [R, N] = act(x·gateᵀ) ⊙ (x·upᵀ), rounded as fast::glu
// rounds it (each product to bf16, the activation to bf16, their product to bf16).
//
// Why: composed, two cuBLAS GEMMs write [R, 2N] and the activation pass reads it back and
// writes [R, N]. In Gemma 3's classification that pass alone took 7.9 of 77 ms. Here the
// activation runs in the GEMM's epilogue, on registers that hold a gate sum and its up sum
// at the same positions, and only [R, N] is ever written. bench/kernels/glu_gemm_lab.cu
// has the variants this one was chosen from (it is the lab's 06) and bench/NOTES.md their
// figures: 0.96 of the 790 TFLOP/s ceiling on Gemma 3's shape, 20% faster than the
// composition.
//
// How (bench/kernels/glu_gemm_lab.cu explains each part at more length):
//   - persistent: as many blocks as fit, one an SM, in clusters of two; each cluster walks
//     output tiles of 256 rows (128 a block) × 128 columns, along N first, so that the x
//     rows a wave needs stay in L2 and every weight row is read from L2, not from memory;
//   - warpgroup 0's first thread loads, by TMA, 64-wide K slices of the block's 128 x rows
//     and of 128 gate and 128 up rows into a ring of 3 stages (48 KiB each, 128-byte
//     swizzle); the cluster's two blocks need the same weight rows, so block 0 loads the
//     gate's and block 1 up's, each multicast into both (32 KiB a stage from L2, not 48);
//   - warpgroups 1 and 2 each multiply 64 of the rows by all 256 weight rows with wgmma
//     m64n256k16: accumulator columns 0-127 are the gate's, 128-255 the matching up's;
//   - a stage's slot is free again when all 8 consumer warps of both blocks have arrived on
//     its `empty` barrier (the other block's loads write into it too);
//   - at a tile's end the consumers only round their sums to bf16 and write the (gate, up)
//     pairs to a staging tile, then go on to the next tile's products; warps 1-3 of
//     warpgroup 0 activate the staged tile and store it meanwhile. Done by the consumers
//     themselves (two MUFU operations and about 14 instructions an output), the epilogue
//     had left the tensor cores idle for a tenth of every tile.
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "backend/cuda/async_copy.cuh"
#include "backend/cuda/common.cuh"
#include "backend/cuda/tensor_map.h"
#include "backend/cuda/wgmma.cuh"

namespace lmx::cuda {
namespace {

constexpr int kBM = 128;        // x rows a block: 64 a consumer warpgroup
constexpr int kBN = 128;        // outputs a tile: 128 gate and 128 up rows a stage
constexpr int kBK = 64;         // K a stage: one 128-byte swizzle row
constexpr int kStages = 3;      // what the staging tile leaves room for
constexpr int kRanks = 2;       // blocks a cluster
constexpr int kThreads = 384;   // warpgroup 0: thread 0 loads, warps 1-3 activate; 1 and 2 multiply
constexpr int kABytes = kBM * kBK * 2;
constexpr int kBBytes = 2 * kBN * kBK * 2;
constexpr int kStageBytes = kABytes + kBBytes;
// A staged row: 64 column pairs × {gate pair, up pair} in bf16, padded by 32 bytes so that a
// warp's 8 rows of stores fall in distinct banks.
constexpr int kStagedRow = 64 * 8 + 32;
constexpr size_t kSmem = size_t(kStages) * kStageBytes + size_t(kBM) * kStagedRow + (2 * kStages + 2) * 8 +
                         1024;  // + barriers, alignment
constexpr int64_t kMinRows = 256;  // below a tile pair, cuBLAS and the activation pass
// What the kernel gains over the composition, end to end (H200, 1,024 × 32-token
// classification; one 4,096-token prefill): K 1,024 (Qwen3) +7%, +2.7%; K 1,152 (Gemma 3)
// +8.5%, +3.8%; K 2,048 (Llama 3.2 1B) 0%, -1.5%. The activation pass it saves shrinks
// beside the products as K grows, so above this K the composition stays
// (LMX_GLU_GEMM=all lifts the limit, =0 turns the kernel off).
constexpr int64_t kMaxK = 1536;

// The device code exists only in the sm_90a build (elsewhere the kernel is an empty shell).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

constexpr int kWorkers = 96;  // warps 1-3 of warpgroup 0

// act(g) in a few instructions: gelu_tanh(g) = ½g(1 + tanh(u)) = g·σ(2u) with
// u = √(2/π)(g + 0.044715g³), and silu(g) = g·σ(g), from the hardware's exp2 and reciprocal.
// Their error (a few f32 units) is far below the bf16 rounding that follows, and the σ form
// has no cancellation for negative g, where 1 + tanh(u) loses digits. The epilogue is
// bound by instruction issue: tanhf's longer sequence made it a fifth of the kernel's time.
__device__ __forceinline__ float activate(fast::GluActivation act, float g) {
  constexpr float kLog2e = 1.4426950408889634f;
  const float t = act == fast::GluActivation::silu
                      ? g * -kLog2e
                      : g * fmaf(0.044715f * g, g, 1.0f) * (-1.5957691216057308f * kLog2e);
  float e;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(t));
  return __fdividef(g, 1.0f + e);  // 0, the limit, where e is infinite
}

__device__ __forceinline__ uint32_t bits(__nv_bfloat162 v) { return *reinterpret_cast<const uint32_t*>(&v); }

// Two neighbouring outputs from their gate and up sums, already rounded to bf16 (paired).
__device__ __forceinline__ uint32_t glu_pair(fast::GluActivation act, uint32_t g2, uint32_t u2) {
  const float2 g = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&g2));
  const float2 u = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u2));
  const float2 a = __bfloat1622float2(__floats2bfloat162_rn(activate(act, g.x), activate(act, g.y)));
  return bits(__floats2bfloat162_rn(a.x * u.x, a.y * u.y));
}

// The cluster's tiles in order: tile t is rows (t / tiles_n · 2 + rank) · kBM of this block,
// columns t % tiles_n · kBN; both blocks of a cluster take the same columns.
struct Schedule {
  int tiles_n, count, first, step, rank;
  __device__ Schedule(int m, int n)
      : tiles_n(n / kBN),
        count((m + kRanks * kBM - 1) / (kRanks * kBM) * tiles_n),
        first(int(blockIdx.x) / kRanks),
        step(int(gridDim.x) / kRanks),
        rank(int(blockIdx.x) % kRanks) {}
  __device__ int row(int t) const { return (t / tiles_n * kRanks + rank) * kBM; }
  __device__ int col(int t) const { return t % tiles_n * kBN; }
};

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// x [m, k], the gate and up [n, k] through their tensor maps; out [m, n] row-major.
// n a multiple of kBN, k of kBK; rows past m are read as zeros and not stored.
__global__ void __launch_bounds__(kThreads, 1)
    glu_gemm_kernel(const __grid_constant__ CUtensorMap tx, const __grid_constant__ CUtensorMap tg,
                    const __grid_constant__ CUtensorMap tu, fast::GluActivation act, bfloat_t* out, int m, int n,
                    int k) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char smem_raw[];
  // The ring (swizzled tiles start on 1,024-byte boundaries), the staging tile, then
  // full[kStages] (loaded), empty[kStages] (consumed by the 8 consumer warps of both blocks),
  // staged (written by the 256 consumer threads) and drained (read by the 96 workers).
  unsigned char* ring = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  unsigned char* staging = ring + kStages * kStageBytes;
  uint64_t* full = reinterpret_cast<uint64_t*>(staging + kBM * kStagedRow);
  uint64_t* empty = full + kStages;
  uint64_t* staged = empty + kStages;
  uint64_t* drained = staged + 1;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) mbarrier_init(&full[s], 1), mbarrier_init(&empty[s], 8 * kRanks);
    mbarrier_init(staged, 256), mbarrier_init(drained, kWorkers);
    mbarrier_init_fence();
  }
  cluster_sync();  // the peer's loads and arrivals may reach these barriers from now on
  const Schedule tiles(m, n);
  const int group = int(threadIdx.x) / 128, lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) % 128 / 32;
  const int k_tiles = k / kBK;
  if (threadIdx.x == 0) {  // the producer: every stage of the block's tiles, in order
    int slot = 0;
    unsigned phase = 0;
    for (int t = tiles.first; t < tiles.count; t += tiles.step)
      for (int kt = 0; kt < k_tiles; ++kt) {
        mbarrier_wait(&empty[slot], phase ^ 1);  // the first round finds every slot free
        unsigned char* s = ring + slot * kStageBytes;
        mbarrier_expect(&full[slot], kStageBytes);
        tensor_copy(s, &tx, &full[slot], kt * kBK, tiles.row(t));
        tensor_multicast(s + kABytes + tiles.rank * kBBytes / 2, tiles.rank ? &tu : &tg, &full[slot], kt * kBK,
                         tiles.col(t), (1 << kRanks) - 1);
        if (++slot == kStages) slot = 0, phase ^= 1;
      }
  } else if (group == 0 && warp > 0) {  // the workers: 4 pairs (16 bytes of output) a step, along rows
    const int me = int(threadIdx.x) - 32;
    int i = 0;
    for (int t = tiles.first; t < tiles.count; t += tiles.step, ++i) {
      mbarrier_wait(staged, unsigned(i) & 1);
      const int row = tiles.row(t), col = tiles.col(t);
      for (int q = me; q < kBM * 16; q += kWorkers) {
        const int r = q / 16, p = q % 16 * 4;  // the row in the tile, its first pair
        const uint4* src = reinterpret_cast<const uint4*>(staging + r * kStagedRow + p * 8);
        const uint4 a = src[0], b = src[1];  // {g, u} of pairs p, p + 1; then p + 2, p + 3
        if (row + r < m)
          *reinterpret_cast<uint4*>(out + size_t(row + r) * n + col + 2 * p) =
              make_uint4(glu_pair(act, a.x, a.y), glu_pair(act, a.z, a.w), glu_pair(act, b.x, b.y),
                         glu_pair(act, b.z, b.w));
      }
      mbarrier_arrive(drained);
    }
  } else if (group > 0) {
    const int half = group - 1;  // this warpgroup's 64 rows of the block's 128
    float d[128];                // [64 rows, 128 gate | 128 up] in the m64n256 layout
    int slot = 0, i = 0;
    unsigned phase = 0;
    auto release = [&](int s) {  // this warp is done with slot s, in both blocks' rings
      if (lane == 0)
        for (int r = 0; r < kRanks; ++r) mbarrier_arrive_at(&empty[s], unsigned(r));
    };
    for (int t = tiles.first; t < tiles.count; t += tiles.step, ++i) {
      int previous = -1;
      for (int kt = 0; kt < k_tiles; ++kt) {
        mbarrier_wait(&full[slot], phase);
        const unsigned char* s = ring + slot * kStageBytes;
        const uint64_t a = wgmma_descriptor(s + half * 64 * 128), b = wgmma_descriptor(s + kABytes);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kBK / 16; ++kk) wgmma_m64n256k16(d, a + 2 * kk, b + 2 * kk, kt > 0 || kk > 0);
        wgmma_commit();
        // One group stays in flight: the previous stage's products are done, so its slot is free.
        wgmma_wait<1>();
        if (previous >= 0) release(previous);
        previous = slot;
        if (++slot == kStages) slot = 0, phase ^= 1;
      }
      wgmma_wait<0>();
      wgmma_hold(d);
      release(previous);

      // Rows r and r + 8 of the tile: gate pair 4j + lane%4 (columns 8j + 2(lane%4), + 1)
      // at registers 4j + 2h, up's at 4(j + 16) + 2h. The workers must have read the last tile.
      mbarrier_wait(drained, (unsigned(i) & 1) ^ 1);
      const int r = half * 64 + warp * 16 + lane / 4;
#pragma unroll
      for (int j = 0; j < 16; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          *reinterpret_cast<uint2*>(staging + (r + 8 * h) * kStagedRow + (4 * j + lane % 4) * 8) =
              make_uint2(bits(__floats2bfloat162_rn(d[4 * j + 2 * h], d[4 * j + 2 * h + 1])),
                         bits(__floats2bfloat162_rn(d[4 * (j + 16) + 2 * h], d[4 * (j + 16) + 2 * h + 1])));
      mbarrier_arrive(staged);
    }
  }
  cluster_sync();  // no block leaves while its peer may still load into its ring or arrive on its barriers
#else
  __trap();  // built for sm_90a only; the host never launches it elsewhere
#endif
}

// A row-major bf16 [rows, cols] array read in boxes of `box_rows` × kBK, 128-byte swizzled.
bool tensor_map(CUtensorMap& map, const void* p, int64_t rows, int64_t cols, int box_rows) {
  return bf16_tensor_map(map, p, rows, cols, box_rows, kBK, CU_TENSOR_MAP_SWIZZLE_128B);
}

// The kernel's launch on ctx's stream, in clusters of kRanks (`cluster` holds the attribute).
cudaLaunchConfig_t launch_config(const Context& ctx, cudaLaunchAttribute& cluster) {
  cudaLaunchConfig_t config{};
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = kSmem;
  config.stream = ctx.stream;
  cluster = cluster_attribute(kRanks);
  config.attrs = &cluster;
  config.numAttrs = 1;
  return config;
}

// Blocks that fit at once, in whole clusters (0: none fits); asked of the driver once per
// device.
int resident_blocks(const Context& ctx) {
  const void* kernel = reinterpret_cast<const void*>(glu_gemm_kernel);
  return per_device(ctx, kernel, [](const Context& c) {
    const void* kernel = reinterpret_cast<const void*>(glu_gemm_kernel);
    allow_shared_memory(kernel, kSmem);
    cudaLaunchAttribute cluster;
    cudaLaunchConfig_t config = launch_config(c, cluster);
    config.gridDim = dim3(unsigned(c.sm_count / kRanks * kRanks));
    int clusters = 0;
    check(cudaOccupancyMaxActiveClusters(&clusters, kernel, &config), "cudaOccupancyMaxActiveClusters");
    return std::max(clusters, 0) * kRanks;
  });
}

// The one kernel, where its shape, dtype and GPU allow it; an empty Array otherwise.
Array glu_gemm(const Context& ctx, fast::GluActivation act, const Array& x, const Array& w_gate, const Array& w_up) {
  static const char* const mode = std::getenv("LMX_GLU_GEMM");  // "0": off; "all": any K
  static const bool enabled = !mode || std::strcmp(mode, "0") != 0, any_k = mode && std::strcmp(mode, "all") == 0;
  const int64_t m = x.shape(0), k = x.shape(1), n = w_gate.shape(0);
  if (!enabled || ctx.compute_capability != 90 || size_t(ctx.max_smem_per_block) < kSmem) return {};
  if (x.dtype() != Dtype::bf16 || w_gate.dtype() != Dtype::bf16 || w_up.dtype() != Dtype::bf16) return {};
  // (Row and tile indices are ints in the kernel, with a tile pair of slack past m.)
  const int64_t cluster_tiles = (m + kRanks * kBM - 1) / (kRanks * kBM) * (n / kBN);
  if (m < kMinRows || m > INT32_MAX / 2 || n % kBN != 0 || n > INT32_MAX / 2 || k % kBK != 0 ||
      (k > kMaxK && !any_k) || cluster_tiles > INT32_MAX)
    return {};
  if (!aligned16(x) || !aligned16(w_gate) || !aligned16(w_up)) return {};
  CUtensorMap tx, tg, tu;
  if (!tensor_map(tx, x.raw(), m, k, kBM) || !tensor_map(tg, w_gate.raw(), n, k, kBN) ||
      !tensor_map(tu, w_up.raw(), n, k, kBN))
    return {};
  const int resident = resident_blocks(ctx);
  if (resident == 0) return {};
  cudaLaunchAttribute cluster;
  cudaLaunchConfig_t config = launch_config(ctx, cluster);
  Array out({m, n}, Dtype::bf16, x.device());  // [R, N]
  config.gridDim = dim3(unsigned(std::min<int64_t>(cluster_tiles * kRanks, resident)));
  check(cudaLaunchKernelEx(&config, glu_gemm_kernel, tx, tg, tu, act, static_cast<bfloat_t*>(out.raw()), int(m),
                           int(n), int(k)),
        "glu_gemm_kernel");
  check_launch("glu_gemm_kernel");
  return out;
}

}  // namespace

Array gated_projection(const Context& ctx, fast::GluActivation act, const Array& x, const Array& w_gate,
                       const Array& w_up) {
  if (Array out = glu_gemm(ctx, act, x, w_gate, w_up); out.valid()) return out;
  const int64_t m = x.shape(0), n = w_gate.shape(0);
  if (x.dtype() != w_gate.dtype() || x.dtype() != w_up.dtype()) return {};
  // Decode steps and short prompts (up to kPairedRowsUpTo rows): two small GEMMs, each paced by
  // its launch more than by its weights, in one launch side by side; then the activation, as
  // the composition rounds it.
  const auto [gate, up] = matmul_pair(ctx, x, w_gate, w_up);  // [R, N] each
  if (!gate.valid()) return {};
  Array out({m, n}, x.dtype(), x.device());  // [R, N]
  glu(ctx, act, gate, up, out);
  return out;
}

}  // namespace lmx::cuda
