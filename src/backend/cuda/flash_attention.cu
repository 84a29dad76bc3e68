// Attention for long prompts (prefill), FlashAttention-2 style: S = Q·Kᵀ is never stored.
// A block takes 128 query rows of one query head; each of its 4 warps owns two groups of 16
// of them and walks the visible keys in tiles of 64, double-buffered in shared memory by
// cp.async (256-wide heads: 64 rows, one group a warp, tiles of 32 keys).
// Scores are tensor-core products held in registers (mma m16n8k16, the layouts of
// mma.cuh); the softmax runs online on them (a running max and sum per row, the output
// sums rescaled when the max grows), and the exponentials feed the value product straight
// from the score registers. Tiles past a block's causal limit or before its window are
// never loaded.
//
// Roundings and the online softmax: flash_softmax.cuh, which flash_wgmma.cu shares.
//
// The softmax and the shared-memory reads, more than the products, pace the kernel:
// conversions and exponentials run at a quarter of the arithmetic rate, and per score they
// took as long as its two products or longer. Hence the packed roundings, the exponent
// folded into one fused multiply-add, no rescaling while a warp's maxima stand still, two
// groups of rows a warp (each fragment read feeds two products) and the longest blocks
// first (bench/NOTES.md, prefill).
//
// Why: the composition (attention_gemm.cu) wrote, normalised and read back S, 1 GiB per
// layer for Llama's 4,096-token prefill, and its softmax took 63 of that prefill's 85 ms.
// It also computes every score of a sliding window's layer, where this kernel loads only
// the tiles the window reaches (Gemma 3: five layers in six, 512 keys).
#include <cmath>
#include <cstdlib>
#include <string_view>

#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/flash_softmax.cuh"

namespace lmx::cuda {
namespace {

constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kPad = 8;  // elements after each shared row: ldmatrix rows in distinct banks
using namespace flash;

// A warp owns G groups of 16 query rows. Every key and value fragment it reads from shared
// memory then feeds G products: with one group the ldmatrix traffic outran the tensor
// cores (64 loads of 512 bytes for 128 products a tile, 128-wide heads). Two groups
// prefilled 4,096 tokens 1.014× (Llama) and 1.087× (Qwen3) as fast as one, 16,384 tokens
// 1.079× and 1.189×, at two blocks an SM (255 registers).
template <int G>
constexpr int kRowsPerBlock = 16 * G * kWarps;

// 128-wide heads with two groups read the queries from shared memory at every tile rather
// than hold them: 64 registers that would not fit beside the output sums' 128.
template <int D, int G>
constexpr bool kQueriesInRegisters = D * G <= 128;

// Keys per tile. 256-wide heads take 32: two buffers of 64 keys and values would make a
// block 169 KiB, one an SM; with 32, 101 KiB, two.
template <int D>
constexpr int kKeysPerTile = D == 256 ? 32 : 64;

template <int D, int G>
constexpr size_t smem_bytes() {
  return size_t(kRowsPerBlock<G> + 4 * kKeysPerTile<D>) * (D + kPad) * 2 + 2 * kKeysPerTile<D>;
}

// Blocks an SM must hold, which caps a thread's registers. With one group, left alone, the
// compiler took 166 for 64-wide heads: three blocks an SM, where four (128 registers, 20
// bytes spilled outside the loop) prefilled Llama 1% faster. For 128-wide heads it takes
// 240 (two blocks); three (168 registers, 48 bytes spilled) made Qwen3's prefill 4% slower.
template <int D, int G>
constexpr int kBlocksPerSm = D == 64 && G == 1 ? 4 : 1;

template <class T, int D, int G>
__global__ void __launch_bounds__(kThreads, (kBlocksPerSm<D, G>)) flash_attention_kernel(FlashParams p) {
  constexpr int ld = D + kPad, kE = kVecElems<T>, kRows = kRowsPerBlock<G>, kKeys = kKeysPerTile<D>;
  constexpr bool q_in_registers = kQueriesInRegisters<D, G>;
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

  // The key tiles any row of this block sees.
  const int last_row = ::min(row0 + kRows, p.lq) - 1;
  const KeyTiles visible = visible_tiles(p, qoff, row0, last_row, kKeys);
  const int first_tile = visible.first, end_tile = visible.end;

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

  // Group j of this warp: block rows [16 (G warp + j), + 16). Its query rows as A operands,
  // 16 columns a step; held in registers, or loaded at each step.
  const T* qw = qs + (warp * G * 16 + mat % 2 * 8 + mrow) * ld + mat / 2 * 8;
  uint32_t qa[q_in_registers ? G : 1][q_in_registers ? D / 16 : 1][4];
  if constexpr (q_in_registers) {
#pragma unroll
    for (int j = 0; j < G; ++j)
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) ldmatrix_x4(qa[j][kk], qw + j * 16 * ld + kk * 16);
  }
  // This lane's rows in group j: r and r + 8 (r = 16 (G warp + j) + lane / 4); their positions.
  int64_t pos[G][2];
  bool live[G][2];
#pragma unroll
  for (int j = 0; j < G; ++j)
#pragma unroll
    for (int hrow = 0; hrow < 2; ++hrow) {
      const int r = (warp * G + j) * 16 + lane / 4 + hrow * 8;
      pos[j][hrow] = qoff + row0 + r;
      live[j][hrow] = row0 + r < p.lq;
    }

  float m[G][2], l[G][2];
  float o[G][D / 8][4];
#pragma unroll
  for (int j = 0; j < G; ++j) {
    m[j][0] = m[j][1] = -INFINITY, l[j][0] = l[j][1] = 0;
#pragma unroll
    for (int c = 0; c < D / 8; ++c) o[j][c][0] = o[j][c][1] = o[j][c][2] = o[j][c][3] = 0;
  }

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

    // Scores of the warp's rows against the tile's keys, in tiles of 8 keys, per group.
    float s[G][kKeys / 8][4];
#pragma unroll
    for (int j = 0; j < G; ++j)
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) s[j][n][0] = s[j][n][1] = s[j][n][2] = s[j][n][3] = 0;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qf[q_in_registers ? 1 : G][4];
      if constexpr (!q_in_registers) {
#pragma unroll
        for (int j = 0; j < G; ++j) ldmatrix_x4(qf[j], qw + j * 16 * ld + kk * 16);
      }
#pragma unroll
      for (int n = 0; n < kKeys / 8; n += 2) {
        uint32_t kf[4];  // keys as B: matrices (keys 0-7, 8-15 of the pair) × (columns 0-7, 8-15)
        ldmatrix_x4(kf, ks + (n * 8 + mat / 2 * 8 + mrow) * ld + kk * 16 + mat % 2 * 8);
#pragma unroll
        for (int j = 0; j < G; ++j) {
          const uint32_t(&a)[4] = [&]() -> const uint32_t(&)[4] {
            if constexpr (q_in_registers)
              return qa[j][kk];
            else
              return qf[j];
          }();
          mma_16816<T>(s[j][n], a, kf[0], kf[1]);
          mma_16816<T>(s[j][n + 1], a, kf[2], kf[3]);
        }
      }
    }

    // Rounded, scaled and masked (flash_softmax.cuh); the rows' new maxima.
    const int key0 = tile * kKeys;
    const bool whole = tile_whole(p, key0, kKeys, qoff + row0, qoff + last_row);
    float corr[G][2], mb[G][2];
    bool settled = true;
#pragma unroll
    for (int j = 0; j < G; ++j) {
      prepare_scores<T>(s[j], p, whole, key0, pos[j], live[j], [&](int k, int64_t) { return ok[k]; });
      settled = update_maxima(s[j], m[j], l[j], corr[j], mb[j]) && settled;
    }
    // Once a row's maximum settles, most tiles leave it alone: the warp then skips the
    // rescaling (a product by exactly 1).
    if (!__all_sync(0xffffffffu, settled)) {
#pragma unroll
      for (int j = 0; j < G; ++j)
#pragma unroll
        for (int c = 0; c < D / 8; ++c)
#pragma unroll
          for (int e = 0; e < 4; ++e) o[j][c][e] *= corr[j][e / 2];
    }
    uint32_t pr[G][kKeys / 8][2];
#pragma unroll
    for (int j = 0; j < G; ++j) exponentials<T>(s[j], mb[j], l[j], pr[j]);
    // Output sums: 16 keys a step, 16 columns per ldmatrix.
#pragma unroll
    for (int n = 0; n < kKeys / 8; n += 2) {
#pragma unroll
      for (int c = 0; c < D / 8; c += 2) {
        uint32_t vf[4];  // values as B, transposed: matrices (columns 0-7, 8-15) × (keys 0-7, 8-15)
        ldmatrix_x4_trans(vf, vs + (n * 8 + mat % 2 * 8 + mrow) * ld + c * 8 + mat / 2 * 8);
#pragma unroll
        for (int j = 0; j < G; ++j) {
          const uint32_t a[4] = {pr[j][n][0], pr[j][n][1], pr[j][n + 1][0], pr[j][n + 1][1]};
          mma_16816<T>(o[j][c], a, vf[0], vf[1]);
          mma_16816<T>(o[j][c + 1], a, vf[2], vf[3]);
        }
      }
    }
    __syncthreads();  // the buffer is refilled two tiles on
  }

  // Normalised, rounded, staged in the warp's query rows and stored 16 bytes a lane.
  T* stage = qs + warp * G * 16 * ld;
#pragma unroll
  for (int j = 0; j < G; ++j) {
    float inv[2];
    row_inverses(l[j], inv);
#pragma unroll
    for (int hrow = 0; hrow < 2; ++hrow)
#pragma unroll
      for (int c = 0; c < D / 8; ++c)
        *reinterpret_cast<uint32_t*>(stage + (j * 16 + lane / 4 + hrow * 8) * ld + c * 8 + quad * 2) =
            pack2<T>(o[j][c][2 * hrow] * inv[hrow], o[j][c][2 * hrow + 1] * inv[hrow]);
  }
  __syncwarp();
  T* out = static_cast<T*>(p.out) + ((int64_t(b) * p.hq + h) * p.lq + row0 + warp * G * 16) * D;
  for (int i = lane; i < G * 16 * vecs; i += 32) {
    const int r = i / vecs, c = i % vecs * kE;
    if (row0 + warp * G * 16 + r < p.lq)
      *reinterpret_cast<uint4*>(out + int64_t(r) * D + c) = *reinterpret_cast<const uint4*>(stage + r * ld + c);
  }
}

template <class T, int D, int G>
void launch(const Context& ctx, const FlashParams& p, int nb) {
  constexpr size_t smem = smem_bytes<D, G>();
  constexpr int rows = kRowsPerBlock<G>;
  allow_shared_memory(flash_attention_kernel<T, D, G>, smem);
  const dim3 grid(unsigned(p.hq), unsigned((p.lq + rows - 1) / rows), unsigned(nb));
  flash_attention_kernel<T, D, G><<<grid, kThreads, smem, ctx.stream>>>(p);
  check_launch("flash_attention_kernel");
}

// Row groups a warp takes: LMX_FLASH_GROUPS=1 keeps one (for measuring against).
int row_groups() {
  static const int groups = [] {
    const char* v = std::getenv("LMX_FLASH_GROUPS");
    return v && std::string_view(v) == "1" ? 1 : 2;
  }();
  return groups;
}

}  // namespace

bool flash_attention(const Context& ctx, const Array& q, const Array& k, const Array& v, float scale, bool causal,
                     int64_t window, const Array& q_offsets, const Array* key_valid, const Array& out) {
  const int64_t nb = q.shape(0), hq = q.shape(1), lq = q.shape(2), d = q.shape(3);
  const int64_t hkv = k.shape(1), lk = k.shape(2);
  const bool sixteen_bit = q.dtype() == Dtype::bf16 || q.dtype() == Dtype::f16;
  // Long prompts only: shorter ones keep the composition, whose roundings are HF's eager
  // path exactly, and whose S is small.
  if (!sixteen_bit || (d != 64 && d != 128 && d != 256) || lq < kRowsPerBlock<1> || lk < 512) return false;
  if (!q.is_contiguous() || !out.is_contiguous() || !rows_in_vectors(k, 8) || !rows_in_vectors(v, 8)) return false;
  if (!aligned16(q) || !aligned16(k) || !aligned16(v) || !aligned16(out)) return false;
  if (lk > INT32_MAX || lq > INT32_MAX || (lq + kRowsPerBlock<1> - 1) / kRowsPerBlock<1> > 65535 || nb > 65535 ||
      hq > 65535 || window > INT32_MAX)
    return false;
  FlashParams p{};
  static_cast<AttentionOperands&>(p) = attention_operands(q, k, v, out, q_offsets, key_valid);
  p.hq = int(hq), p.hkv = int(hkv), p.lq = int(lq), p.lk = int(lk);
  p.scale = scale, p.causal = causal, p.window = int(window);
  int exponent = 0;
  p.exact_scale = q.dtype() == Dtype::bf16 && std::frexp(scale, &exponent) == 0.5f;
  if (flash_wgmma(ctx, p, q.dtype(), d, nb)) return true;
  const bool two_groups = row_groups() == 2;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    if (d == 64)
      two_groups ? launch<T, 64, 2>(ctx, p, int(nb)) : launch<T, 64, 1>(ctx, p, int(nb));
    else if (d == 128)
      two_groups ? launch<T, 128, 2>(ctx, p, int(nb)) : launch<T, 128, 1>(ctx, p, int(nb));
    else
      launch<T, 256, 1>(ctx, p, int(nb));  // the output sums of one group take 128 registers
  };
  if (q.dtype() == Dtype::bf16)
    run(bfloat_t{});
  else
    run(half_t{});
  return true;
}

}  // namespace lmx::cuda
