// Attention for long prompts on Hopper (sm_90a): flash_attention.cu's algorithm with the
// products on wgmma, the warpgroup-wide tensor-core instruction. A block takes 128 query rows
// of one query head, 64 for each of its two warpgroups, and walks the visible keys in tiles
// of 64 through two or three buffers (stages) of shared memory. One thread loads the queries
// once and each tile's keys and values by TMA (tensor maps of the [B, H, L, D] arrays,
// whatever their strides), counted on an mbarrier per stage; the copies of 16 bytes a thread
// had been a quarter of the kernel's instructions (ncu's SASS profile).
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

#include "backend/cuda/flash_softmax.cuh"
#include "backend/cuda/tensor_map.h"
#include "backend/cuda/wgmma.cuh"

namespace lmx::cuda {
namespace {

using namespace flash;

constexpr int kKeys = 64;  // keys a tile
constexpr int kSwizzleRow = 128;

// Per head dim: warpgroups a block (64 query rows each), key buffers (stages), blocks an SM,
// and whether a warpgroup's softmax overlaps its own value product (below). The overlap holds
// two tiles' exponentials: 120 registers for 64-wide heads, 167 for 128-wide ones, which then
// fit one block of three warpgroups an SM; that prefilled Qwen3's 4,096 tokens 0.88× as fast
// as two blocks of two warpgroups without it (ncu: 221 against 164 us a layer). 64-wide
// heads gained 2.3% at 16,384 tokens (Llama), nothing at 4,096.
template <int D>
struct Config;
template <>
struct Config<64> {
  static constexpr int kGroups = 2, kStages = 3, kMinBlocks = 2;
  static constexpr bool kOverlap = true;
};
template <>
struct Config<128> {
  static constexpr int kGroups = 2, kStages = 2, kMinBlocks = 2;
  static constexpr bool kOverlap = false;
};

// Byte offsets in a block's shared memory (1,024-aligned: the swizzle repeats every 1,024
// bytes, and the descriptors assume the pattern starts there).
template <int D>
struct TileLayout {
  static constexpr int kBlocks = D / 64;  // column blocks of 64 values
  static constexpr int kRows = 64 * Config<D>::kGroups, kStages = Config<D>::kStages;
  static constexpr size_t q_block = size_t(kRows) * kSwizzleRow;   // [kRows, 64] of one column block
  static constexpr size_t kv_block = size_t(kKeys) * kSwizzleRow;  // [kKeys, 64]
  static constexpr size_t stage = 2 * kBlocks * kv_block;          // k, v: [kBlocks][kKeys, 64] each
  // The queries first, [kBlocks][kRows, 64]; then the stages; then full[kStages], queries: mbarriers.
  static constexpr size_t kv = kBlocks * q_block;
  static constexpr size_t bars = kv + kStages * stage;
  static constexpr size_t bytes = bars + (kStages + 1) * 8 + 1024;  // + alignment of the dynamic base
};

template <class T, int D>
__global__ void __launch_bounds__(128 * Config<D>::kGroups, Config<D>::kMinBlocks)
    flash_wgmma_kernel(const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap tk,
                       const __grid_constant__ CUtensorMap tv, FlashParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)  // the device code exists only in the sm_90a build
  using L = TileLayout<D>;
  constexpr int kRows = L::kRows, kStages = L::kStages, kChunks = D / 8;  // 16-byte chunks a row
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + L::bars);  // [kStages]: a stage's keys and values are in
  uint64_t* queries = full + kStages;
  const int wg = int(threadIdx.x) / 128, warp = int(threadIdx.x) / 32 % 4, lane = int(threadIdx.x) % 32;
  // As in flash_attention.cu: heads fastest, the longest (last) row blocks first.
  const int row0 = int(gridDim.y - 1 - blockIdx.y) * kRows, h = int(blockIdx.x), b = int(blockIdx.z),
            g = h / (p.hq / p.hkv);
  const int64_t qoff = p.q_offsets[b];
  const bool* key_valid = p.key_valid ? p.key_valid + int64_t(b) * p.lk : nullptr;  // [Lk] or null

  // The key tiles any row of this block sees.
  const int last_row = ::min(row0 + kRows, p.lq) - 1;
  const KeyTiles visible = visible_tiles(p, qoff, row0, last_row, kKeys);
  const int first_tile = visible.first, tiles = ::max(visible.end - visible.first, 0);

  // Boxes of 64 rows × 64 values, swizzled as the descriptors read them; rows past the
  // arrays' ends arrive as zeros. Tile i (from first_tile) goes to stage i % kStages.
  auto load_tile = [&](int i) {
    const int st = i % kStages;
    unsigned char* ks = smem + L::kv + st * L::stage;
    mbarrier_expect(&full[st], unsigned(L::stage));
    const int key0 = (first_tile + i) * kKeys;
#pragma unroll
    for (int cb = 0; cb < L::kBlocks; ++cb) {
      tensor_copy_4d(ks + cb * L::kv_block, &tk, &full[st], cb * 64, key0, g, b);
      tensor_copy_4d(ks + (L::kBlocks + cb) * L::kv_block, &tv, &full[st], cb * 64, key0, g, b);
    }
  };
  if (threadIdx.x == 0) {
    for (int st = 0; st < kStages; ++st) mbarrier_init(&full[st], 1);
    mbarrier_init(queries, 1);
    mbarrier_init_fence();
    mbarrier_expect(queries, unsigned(L::kBlocks * L::q_block));
#pragma unroll
    for (int cb = 0; cb < L::kBlocks; ++cb)
#pragma unroll
      for (int part = 0; part < Config<D>::kGroups; ++part)
        tensor_copy_4d(smem + cb * L::q_block + part * 64 * kSwizzleRow, &tq, queries, cb * 64, row0 + part * 64, h,
                       b);
    for (int i = 0; i < kStages && i < tiles; ++i) load_tile(i);
  }
  __syncthreads();  // the barriers' initialisation

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

  // Descriptors: +1 moves 16 bytes. The warpgroup's 64 queries; stage 0's keys and values (a
  // stage's are those moved by its offset: computed, not indexed, which went to local memory).
  const uint64_t dq = wgmma_descriptor(smem + size_t(wg) * 64 * kSwizzleRow),
                 dk0 = wgmma_descriptor(smem + L::kv),
                 dv0 = wgmma_descriptor_mn(smem + L::kv + L::kBlocks * L::kv_block, uint32_t(L::kv_block));
  constexpr uint64_t kStageStep = L::stage >> 4;
  // O += P·V for tile i's values, 16 keys a product: V's 8-key row groups are 1,024 bytes
  // apart, its column blocks kv_block apart.
  auto add_values = [&](uint32_t(&pr)[kKeys / 8][2], int i) {
#pragma unroll
    for (int kt = 0; kt < kKeys / 16; ++kt) {
      const uint32_t a[4] = {pr[2 * kt][0], pr[2 * kt][1], pr[2 * kt + 1][0], pr[2 * kt + 1][1]};
      wgmma_m64k16_rs<T, D>(o, a, dv0 + i % kStages * kStageStep + kt * (16 * kSwizzleRow >> 4));
    }
    wgmma_commit();
  };
  mbarrier_wait(queries, 0);

  // Every register a product reads, pr included, must be defined before the fence that
  // precedes it: a move or a definition between them (here, pr's copy, which the compiler sank
  // to its use) makes ptxas serialise the products. s is "defined" as anything: its first
  // product overwrites it.
  auto define = [&](float(&s)[kKeys / 8][4], uint32_t(&pr)[kKeys / 8][2]) {
    wgmma_hold(s);
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n) asm volatile("" : "+r"(pr[n][0]), "+r"(pr[n][1]));
  };
  // S(i) = Q·Kᵀ for tile i, 16 columns a product, issued and committed.
  auto issue_scores = [&](int i, float(&s)[kKeys / 8][4]) {
    const int st = i % kStages;
    mbarrier_wait(&full[st], unsigned(i / kStages) & 1u);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint64_t step = kk % 4 * 2;  // 32 bytes along the swizzled rows
      wgmma_m64n64k16_ss<T>(s, dq + kk / 4 * (L::q_block >> 4) + step,
                            dk0 + st * kStageStep + kk / 4 * (L::kv_block >> 4) + step, kk > 0);
    }
    wgmma_commit();
  };
  // The online softmax of S(i) (flash_softmax.cuh) into the next product's operand; false
  // where O must be rescaled by corr.
  auto softmax = [&](int i, float(&s)[kKeys / 8][4], uint32_t(&next)[kKeys / 8][2], float(&corr)[2]) {
    const int key0 = (first_tile + i) * kKeys;
    const bool whole = tile_whole(p, key0, kKeys, qoff + row0, qoff + last_row);
    prepare_scores<T>(s, p, whole, key0, pos, live,
                      [&](int, int64_t key) { return key < p.lk && (!key_valid || key_valid[key]); });
    float mb[2];
    const bool settled = update_maxima(s, m, l, corr, mb);
    exponentials<T>(s, mb, l, next);
    return settled;
  };
  // Every warpgroup is done with tile `done`'s stage: tile done + kStages goes there. (Tile
  // done + kStages - 1, a tile later than the stage allows, cost the plain order 2-4%.)
  auto refill = [&](int done) {
    __syncthreads();
    if (threadIdx.x == 0 && done + kStages < tiles) load_tile(done + kStages);
  };

  // Tile i's scores are computed while tile i - 1's values are added: S(i), then PV(i - 1),
  // are issued, and the softmax of S(i) runs as the tensor cores work on PV(i - 1). So the
  // exponentials of two tiles are live at once (pr for PV(i - 1), next for PV(i)), and O is
  // rescaled once PV(i - 1) is done.
  auto step = [&](int i, uint32_t(&pr)[kKeys / 8][2], uint32_t(&next)[kKeys / 8][2]) {
    float s[kKeys / 8][4], corr[2];
    define(s, pr);
    issue_scores(i, s);  // its fence serves PV(i - 1) too
    add_values(pr, i - 1);
    wgmma_wait<1>();
    wgmma_hold(s);
    const bool settled = softmax(i, s, next, corr);
    wgmma_wait<0>();
    wgmma_hold(o);
    // pr was the running product's operand: kept in its registers until it is done.
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n) asm volatile("" ::"r"(pr[n][0]), "r"(pr[n][1]));
    if (!settled) {
#pragma unroll
      for (int c = 0; c < D / 8; ++c)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[c][e] *= corr[e / 2];
    }
    refill(i - 1);  // PV(i - 1) is done
  };
  auto last_values = [&](uint32_t(&pr)[kKeys / 8][2]) {
    float s[kKeys / 8][4];
    define(s, pr);
    wgmma_fence();
    add_values(pr, tiles - 1);
    wgmma_wait<0>();
    wgmma_hold(o);
  };
  if constexpr (!Config<D>::kOverlap) {
    for (int i = 0; i < tiles; ++i) {
      float s[kKeys / 8][4], corr[2];
      uint32_t pr[kKeys / 8][2];
      wgmma_hold(s);
      issue_scores(i, s);
      wgmma_wait<0>();
      wgmma_hold(s);
      if (!softmax(i, s, pr, corr)) {
#pragma unroll
        for (int c = 0; c < D / 8; ++c)
#pragma unroll
          for (int e = 0; e < 4; ++e) o[c][e] *= corr[e / 2];
      }
      wgmma_fence();
      add_values(pr, i);
      wgmma_wait<0>();
      wgmma_hold(o);
      refill(i);
    }
  } else if (tiles > 0) {
    // The first tile is peeled, and the loop takes two tiles a turn, the two operand arrays
    // swapping roles: a branch in the loop, or a copy of next into pr, put instructions
    // between the fence and the products that ptxas answered by serialising them.
    uint32_t p0[kKeys / 8][2], p1[kKeys / 8][2];
    {
      float s[kKeys / 8][4], corr[2];
      wgmma_hold(s);
      issue_scores(0, s);
      wgmma_wait<0>();
      wgmma_hold(s);
      softmax(0, s, p0, corr);  // O is still zero: nothing to rescale
    }
    int i = 1;
    for (; i + 1 < tiles; i += 2) {
      step(i, p0, p1);
      step(i + 1, p1, p0);
    }
    if (i < tiles) {
      step(i, p0, p1);
      last_values(p1);
    } else {
      last_values(p0);
    }
  }

  // Normalised, rounded, staged in the key buffers as plain rows, and stored 16 bytes a lane.
  // The buffers are free once every warpgroup is past its last product: with the overlap,
  // the other warpgroup may still be adding its last tile's values.
  __syncthreads();
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

// A tensor map of [B, H, L, D] (element strides sb, sh, sl; D contiguous) in boxes of 64
// rows × 64 values, 128-byte swizzled.
bool head_map(CUtensorMap& map, const void* base, bool bf16, int64_t nb, int64_t nh, int64_t nl, int64_t d,
              int64_t sb, int64_t sh, int64_t sl) {
  const int64_t dims[4] = {d, nl, nh, nb};
  int64_t strides[3] = {sl * 2, sh * 2, sb * 2};
  // A dimension of one is never stepped over: any valid stride serves (a broadcast one is 0).
  if (nh == 1) strides[1] = strides[0] * nl;
  if (nb == 1) strides[2] = strides[1] * nh;
  const int box[4] = {64, kKeys, 1, 1};
  return tensor_map_16bit(map, base, bf16, 4, dims, strides, box, CU_TENSOR_MAP_SWIZZLE_128B);
}

template <class T, int D>
void launch(const Context& ctx, const CUtensorMap (&maps)[3], const FlashParams& p, int nb) {
  constexpr size_t smem = TileLayout<D>::bytes;
  // The overlap frees a stage one tile later, so it needs a third to keep a tile in flight.
  static_assert(!Config<D>::kOverlap || Config<D>::kStages >= 3);
  allow_shared_memory(flash_wgmma_kernel<T, D>, smem);
  constexpr int rows = TileLayout<D>::kRows;
  const dim3 grid(unsigned(p.hq), unsigned((p.lq + rows - 1) / rows), unsigned(nb));
  flash_wgmma_kernel<T, D><<<grid, 128 * Config<D>::kGroups, smem, ctx.stream>>>(maps[0], maps[1], maps[2], p);
  check_launch("flash_wgmma_kernel");
}

}  // namespace

bool flash_wgmma(const Context& ctx, const FlashParams& p, Dtype dtype, int64_t d, int64_t nb) {
  static const bool enabled = switch_on("LMX_FLASH_WGMMA");
  if (!enabled || ctx.compute_capability != 90 || (d != 64 && d != 128)) return false;
  if (size_t(ctx.max_smem_per_block) < (d == 64 ? TileLayout<64>::bytes : TileLayout<128>::bytes)) return false;
  const bool bf16 = dtype == Dtype::bf16;
  CUtensorMap maps[3];  // q, k, v
  if (!head_map(maps[0], p.q, bf16, nb, p.hq, p.lq, d, int64_t(p.hq) * p.lq * d, int64_t(p.lq) * d, d) ||
      !head_map(maps[1], p.k, bf16, nb, p.hkv, p.lk, d, p.k_sb, p.k_sh, p.k_sl) ||
      !head_map(maps[2], p.v, bf16, nb, p.hkv, p.lk, d, p.v_sb, p.v_sh, p.v_sl))
    return false;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    d == 64 ? launch<T, 64>(ctx, maps, p, int(nb)) : launch<T, 128>(ctx, maps, p, int(nb));
  };
  if (bf16)
    run(bfloat_t{});
  else
    run(half_t{});
  return true;
}

}  // namespace lmx::cuda
