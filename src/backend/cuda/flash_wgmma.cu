// Attention for long prompts on Hopper (sm_90a): flash_attention.cu's algorithm with the
// products on wgmma, the warpgroup-wide tensor-core instruction. A block takes 128 query rows
// of one query head, 64 for each of its two warpgroups, and walks the visible keys in tiles
// of 64, double-buffered in shared memory by cp.async.
//
// Per tile, a warpgroup:
//   - S [64, 64] = Q·Kᵀ: D/16 wgmma m64n64k16, both operands in shared memory (K-major);
//   - the online softmax on S's registers (flash_softmax.cuh, the mma.sync kernel's code:
//     the accumulator layout is the same, per warp);
//   - O [64, D] += P·V: 4 wgmma m64nDk16, P from registers (the exponentials, rounded, are
//     already the A operand's layout) and V as stored, [keys, D], read N-major.
//
// Why: with mma.sync, each warp issues a product per 16 × 8 × 16 and loads every operand
// fragment with ldmatrix; at two blocks an SM (255 registers) the 4,096-token prefill's
// kernel issued 1.8 instructions a cycle with the tensor pipe 40% busy (Qwen3, ncu: 277 us a
// layer, 248 TFLOP/s). A wgmma covers 64 × 64 × 16 from shared memory with no fragment
// loads, and leaves the warps' issue slots to the softmax.
//
// Shared memory holds the rows in the layout the wgmma descriptors read: 128-byte swizzle,
// 64 values a 128-byte row (a 128-wide head is two such column blocks), the 16-byte chunk c
// of row r at chunk c ^ (r % 8).
#include <cstdlib>
#include <string_view>

#include "backend/cuda/flash_softmax.cuh"
#include "backend/cuda/wgmma.cuh"

namespace lmx::cuda {
namespace {

using namespace flash;

constexpr int kThreads = 256;  // two warpgroups
constexpr int kRows = 128;     // query rows a block: 64 a warpgroup
constexpr int kKeys = 64;      // keys a tile
constexpr int kSwizzleRow = 128;

// Byte offsets in a block's shared memory (1,024-aligned: the swizzle repeats every 1,024
// bytes, and the descriptors assume the pattern starts there).
template <int D>
struct TileLayout {
  static constexpr int kBlocks = D / 64;                            // column blocks of 64 values
  static constexpr size_t q_block = size_t(kRows) * kSwizzleRow;    // [kRows, 64] of one column block
  static constexpr size_t kv_block = size_t(kKeys) * kSwizzleRow;   // [kKeys, 64]
  // The queries first, [kBlocks][kRows, 64]; then the keys and values:
  static constexpr size_t kv = kBlocks * q_block;                   // [2 buffers][k, v][kBlocks][kKeys, 64]
  static constexpr size_t valid = kv + 4 * kBlocks * kv_block;      // [2][kKeys] bool
  static constexpr size_t bytes = valid + 2 * kKeys + 1024;         // + alignment of the dynamic base
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)  // the device code exists only in the sm_90a build

// Where chunk c (16 bytes) of row r of a swizzled column block lies.
__device__ __forceinline__ uint32_t swizzled(int r, int c) { return uint32_t(r * kSwizzleRow + ((c ^ (r & 7)) << 4)); }

// Copies issued by all threads become visible to the wgmma's reads (the async proxy) after
// the barrier that follows.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// Two blocks an SM (128 registers a thread; 128-wide heads spill 24 bytes outside the loop):
// one block of 165 registers prefilled Qwen3's 4,096 tokens 0.97× as fast.
template <class T, int D>
__global__ void __launch_bounds__(kThreads, 2) flash_wgmma_kernel(FlashParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using L = TileLayout<D>;
  constexpr int kChunks = D / 8;  // 16-byte chunks a row
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  bool* valid = reinterpret_cast<bool*>(smem + L::valid);
  const int wg = int(threadIdx.x) / 128, warp = int(threadIdx.x) / 32 % 4, lane = int(threadIdx.x) % 32;
  // As in flash_attention.cu: heads fastest, the longest (last) row blocks first.
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

  // Query rows (zeros past the end), then each tile's keys and values, 16 bytes per cp.async.
  for (int i = int(threadIdx.x); i < kRows * kChunks; i += kThreads) {
    const int r = i / kChunks, c = i % kChunks;
    unsigned char* dst = smem + c / 8 * L::q_block + swizzled(r, c % 8);
    if (row0 + r < p.lq)
      copy16_async(dst, q + int64_t(r) * D + c * 8);
    else
      *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
  }
  asm volatile("cp.async.commit_group;\n" ::);
  auto keys_at = [&](int buf) { return smem + L::kv + size_t(buf) * 2 * L::kBlocks * L::kv_block; };
  auto load_tile = [&](int tile, int buf) {
    unsigned char* ks = keys_at(buf);
    unsigned char* vs = ks + L::kBlocks * L::kv_block;
    const int key0 = tile * kKeys;
    for (int i = int(threadIdx.x); i < kKeys * kChunks; i += kThreads) {
      const int r = i / kChunks, c = i % kChunks, key = key0 + r;
      const uint32_t at = uint32_t(c / 8 * L::kv_block) + swizzled(r, c % 8);
      if (key < p.lk) {
        copy16_async(ks + at, kb + key * p.k_sl + c * 8);
        copy16_async(vs + at, vb + key * p.v_sl + c * 8);
      } else {
        *reinterpret_cast<uint4*>(ks + at) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(vs + at) = make_uint4(0, 0, 0, 0);
      }
    }
    for (int r = int(threadIdx.x); r < kKeys; r += kThreads) {
      const int key = key0 + r;
      valid[buf * kKeys + r] = key < p.lk && (!p.key_valid || p.key_valid[int64_t(b) * p.lk + key]);
    }
    asm volatile("cp.async.commit_group;\n" ::);
  };
  if (first_tile < end_tile) load_tile(first_tile, 0);

  // This lane's rows r and r + 8 (r = 64 wg + 16 warp + lane / 4) and their positions.
  int64_t pos[2];
  bool live[2];
#pragma unroll
  for (int hrow = 0; hrow < 2; ++hrow) {
    const int r = wg * 64 + warp * 16 + lane / 4 + hrow * 8;
    pos[hrow] = qoff + row0 + r;
    live[hrow] = row0 + r < p.lq;
  }
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0, 0};
  float o[D / 8][4];
#pragma unroll
  for (int c = 0; c < D / 8; ++c) o[c][0] = o[c][1] = o[c][2] = o[c][3] = 0;
  const unsigned char* qw = smem + size_t(wg) * 64 * kSwizzleRow;  // the warpgroup's 64 rows

  for (int tile = first_tile; tile < end_tile; ++tile) {
    const int buf = (tile - first_tile) % 2;
    if (tile + 1 < end_tile) {
      load_tile(tile + 1, buf ^ 1);
      asm volatile("cp.async.wait_group 1;\n" ::: "memory");
    } else {
      asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    }
    fence_proxy_async();
    __syncthreads();
    const unsigned char* ks = keys_at(buf);
    const unsigned char* vs = ks + L::kBlocks * L::kv_block;

    // S = Q·Kᵀ over the head, 16 columns a product; +2 in a descriptor moves 32 bytes along a
    // swizzled row.
    float s[kKeys / 8][4];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint64_t da = wgmma_descriptor(qw + kk / 4 * L::q_block) + 2 * (kk % 4);
      const uint64_t db = wgmma_descriptor(ks + kk / 4 * L::kv_block) + 2 * (kk % 4);
      wgmma_m64n64k16_ss<T>(s, da, db, kk > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_hold(s);

    const int key0 = tile * kKeys;
    const bool whole = tile_whole(p, key0, kKeys, qoff + row0, qoff + last_row);
    prepare_scores<T>(s, p, whole, key0, pos, live, valid + buf * kKeys);
    float corr[2], mb[2];
    if (!update_maxima(s, m, l, corr, mb)) {
#pragma unroll
      for (int c = 0; c < D / 8; ++c)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[c][e] *= corr[e / 2];
    }
    uint32_t pr[kKeys / 8][2];
    exponentials<T>(s, mb, l, pr);

    // O += P·V, 16 keys a product: V's 8-key row groups are 1,024 bytes apart, its column
    // blocks kv_block apart.
    wgmma_fence();
#pragma unroll
    for (int st = 0; st < kKeys / 16; ++st) {
      const uint32_t a[4] = {pr[2 * st][0], pr[2 * st][1], pr[2 * st + 1][0], pr[2 * st + 1][1]};
      wgmma_m64k16_rs<T, D>(o, a, wgmma_descriptor_mn(vs + st * 16 * kSwizzleRow, uint32_t(L::kv_block)));
    }
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_hold(o);
    __syncthreads();  // the buffer is refilled two tiles on
  }

  // Normalised, rounded, staged in the (now free) key buffers as plain rows, and stored 16
  // bytes a lane.
  constexpr int ld = D + 8;
  T* stage = reinterpret_cast<T*>(smem + L::kv) + (wg * 64 + warp * 16) * ld;
  float inv[2];
  row_inverses(l, inv);
  const int quad = lane % 4;
#pragma unroll
  for (int hrow = 0; hrow < 2; ++hrow)
#pragma unroll
    for (int c = 0; c < D / 8; ++c)
      *reinterpret_cast<uint32_t*>(stage + (lane / 4 + hrow * 8) * ld + c * 8 + quad * 2) =
          pack2<T>(o[c][2 * hrow] * inv[hrow], o[c][2 * hrow + 1] * inv[hrow]);
  __syncwarp();
  const int first = row0 + wg * 64 + warp * 16;
  T* out = static_cast<T*>(p.out) + ((int64_t(b) * p.hq + h) * p.lq + first) * D;
  for (int i = lane; i < 16 * kChunks; i += 32) {
    const int r = i / kChunks, c = i % kChunks * 8;
    if (first + r < p.lq)
      *reinterpret_cast<uint4*>(out + int64_t(r) * D + c) = *reinterpret_cast<const uint4*>(stage + r * ld + c);
  }
#else
  __trap();  // built for sm_90a only; the host never launches it elsewhere
#endif
}

template <class T, int D>
void launch(const Context& ctx, const FlashParams& p, int nb) {
  constexpr size_t smem = TileLayout<D>::bytes;
  allow_shared_memory(flash_wgmma_kernel<T, D>, smem);
  const dim3 grid(unsigned(p.hq), unsigned((p.lq + kRows - 1) / kRows), unsigned(nb));
  flash_wgmma_kernel<T, D><<<grid, kThreads, smem, ctx.stream>>>(p);
  check_launch("flash_wgmma_kernel");
}

}  // namespace

bool flash_wgmma(const Context& ctx, const FlashParams& p, Dtype dtype, int64_t d, int64_t nb) {
  static const bool enabled = [] {
    const char* v = std::getenv("LMX_FLASH_WGMMA");
    return !v || std::string_view(v) != "0";
  }();
  if (!enabled || ctx.compute_capability != 90 || (d != 64 && d != 128)) return false;
  if (size_t(ctx.max_smem_per_block) < (d == 64 ? TileLayout<64>::bytes : TileLayout<128>::bytes)) return false;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    d == 64 ? launch<T, 64>(ctx, p, int(nb)) : launch<T, 128>(ctx, p, int(nb));
  };
  if (dtype == Dtype::bf16)
    run(bfloat_t{});
  else
    run(half_t{});
  return true;
}

}  // namespace lmx::cuda
