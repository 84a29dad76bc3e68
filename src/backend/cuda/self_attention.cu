// Causal self-attention of short sequences with no cache (fast::self_attention), in one
// kernel where the composition takes seven: two rope_heads passes, a transposed copy of
// the values, the score GEMM, the masked softmax, the value GEMM and a transposed copy of
// the output.
//
// One block per (batch row, kv head), or per part of a kv head's query heads when the grid
// would be small. It reads the kv head's keys and values and the
// query heads that share them straight from the projections in token order, applies the
// per-head norm and RoPE in shared memory. Then each warp takes 16 query rows of one head
// (and a slice of the head's columns): their scores are tensor-core products (mma.sync,
// f32 accumulation) held in registers, the softmax runs on those registers, and the
// probabilities feed the value product straight from them, as in FlashAttention-2; no
// score or probability touches shared memory. The output goes back in token order, ready
// for the output projection. The roundings are the composition's: q and k rounded after
// RoPE, scores rounded, scaled and rounded again, the f32 softmax rounded before it
// multiplies the values.
//
// The RoPE angles, rounded to T as HF rounds them, come from a table of [L, D] (cos of
// the half's columns, then sin) that a small kernel computes once per call for row 0's
// positions; a block copies it with its rows. Only a block whose row starts at another
// position computes its own. (The angles had been computed in every block, shared by
// thread-block clusters: 8% of the kernel's instructions, and the clusters' exchange and
// syncs more.)
//
// LMX_SELF_ATTENTION_KERNEL=0 turns the kernel off (the op then composes), for measuring
// what it gains.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "backend/cuda/mma.cuh"
#include "backend/cuda/rope.cuh"

namespace lmx::cuda {
namespace {

constexpr int kWarps = 8, kThreads = 32 * kWarps;
constexpr int kTile = 16;         // rows of queries per warp task, and keys per value step
constexpr int kMaxTokens = 128;   // bounds shared memory and the score registers
// Up to this many tokens, a kernel with fewer score registers (8-key tiles), built for
// kShortBlocksPerSm blocks an SM.
constexpr int kShortTokens = 32;
constexpr int kShortBlocksPerSm = 4;
constexpr int kMaxHeadDim = 256;  // wider heads compose; see self_attention() below
constexpr int kMaxCols = 64;      // output columns per warp task: 32 f32 accumulators a lane
constexpr int kPad = 8;           // elements added to each 16-bit shared row: ldmatrix rows fall in distinct banks

// Where each array of a block sits in shared memory, in bytes; every array starts on a
// 128-byte boundary. The angles die with the rotation, before the warps stage their
// output tiles, so the two share space.
struct SmemPlan {
  // Tokens padded to whole tiles; row strides of q/k/v and the angles, of the output staging.
  int lp, ld, lo;
  size_t q, k, v, angles, stage, bytes;
  __host__ __device__ SmemPlan(int nl, int d, int group) {
    lp = (nl + kTile - 1) / kTile * kTile;
    ld = d + kPad, lo = kMaxCols + kPad;
    auto next = [](size_t at, size_t n) { return (at + n + 127) / 128 * 128; };
    auto larger = [](size_t a, size_t b) { return a > b ? a : b; };
    q = 0;                                           // [group, lp, ld] 16-bit
    k = next(q, size_t(group) * lp * ld * 2);        // [lp, ld] 16-bit
    v = next(k, size_t(lp) * ld * 2);                // [lp, ld] 16-bit
    // [lp, ld] 16-bit angles (cos [D/2], sin [D/2]), then the staging [warps, 16, lo] 16-bit
    angles = stage = next(v, size_t(lp) * ld * 2);
    bytes = next(stage, larger(size_t(lp) * ld * 2, size_t(kWarps) * kTile * lo * 2));
  }
};

// One warp: rows [16 rt, 16 rt + 16) of one query head attend causally over the keys,
// output columns [c0, c0 + cols). qh [lp, ld], ks and vs [lp, ld] in shared memory, rotated
// and rounded; out points at the head's first row in token order (row stride
// out_stride), `stage` at the warp's [16, lo] staging tile. Scores, probabilities and
// output sums stay in registers: in the mma layouts a lane holds rows r0 = 16 rt + l/4
// and r1 = r0 + 8, at columns 2(l%4) and 2(l%4) + 1 of every 8-wide tile.
template <class T, int kKeyTiles>  // kKeyTiles: 8-key tiles the longest row may see
__device__ __forceinline__ void attend(const T* qh, const T* ks, const T* vs, int ld, int rt, int c0, int cols,
                                       int nl, float scale, int window, T* stage, int lo, T* out,
                                       int64_t out_stride) {
  const int lane = int(threadIdx.x) % 32, quad = lane % 4, mat = lane / 8, mrow = lane % 8;
  const int key_tiles = 2 * (rt + 1);  // tiles up to the diagonal: later keys are masked
  // The scores: 16 rows × key_tiles × 8 keys, summed over the head in steps of 16 columns.
  float s[kKeyTiles][4];
#pragma unroll
  for (int n = 0; n < kKeyTiles; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0;
  const int d = ld - kPad;
  for (int kk = 0; kk < d; kk += kTile) {
    uint32_t a[4];  // query rows: matrices (rows 0-7, 8-15) × (columns 0-7, 8-15)
    ldmatrix_x4(a, qh + (rt * kTile + mat % 2 * 8 + mrow) * ld + kk + mat / 2 * 8);
#pragma unroll
    for (int n = 0; n < kKeyTiles; n += 2) {
      if (n >= key_tiles) break;
      uint32_t kb[4];  // keys as B: matrices (keys 0-7, 8-15 of the pair) × (columns 0-7, 8-15)
      ldmatrix_x4(kb, ks + (n * 8 + mat / 2 * 8 + mrow) * ld + kk + mat % 2 * 8);
      mma_16816<T>(s[n], a, kb[0], kb[1]);
      mma_16816<T>(s[n + 1], a, kb[2], kb[3]);
    }
  }

  // Softmax over each row, in place: the four lanes of a quad share a row. The score is
  // rounded as the GEMM's output, scaled and rounded again; masked keys (later ones, those
  // out of the window, and rows past the sequence) get probability zero.
  const int r0 = rt * kTile + lane / 4;
  float m[2] = {-INFINITY, -INFINITY}, sum[2] = {0, 0};
#pragma unroll
  for (int n = 0; n < kKeyTiles; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = r0 + e / 2 * 8, key = n * 8 + quad * 2 + e % 2;
      const bool seen = n < key_tiles && r < nl && key <= r && (window == 0 || key > r - window);
      s[n][e] = seen ? round_to<T>(round_to<T>(s[n][e]) * scale) : -INFINITY;
      m[e / 2] = fmaxf(m[e / 2], s[n][e]);
    }
#pragma unroll
  for (int h = 0; h < 2; ++h)
    for (int o = 1; o < 4; o *= 2) m[h] = fmaxf(m[h], __shfl_xor_sync(0xffffffffu, m[h], o));
#pragma unroll
  for (int n = 0; n < kKeyTiles; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[n][e] = s[n][e] == -INFINITY ? 0.0f : expf(s[n][e] - m[e / 2]);
      sum[e / 2] += s[n][e];
    }
#pragma unroll
  for (int h = 0; h < 2; ++h)
    for (int o = 1; o < 4; o *= 2) sum[h] += __shfl_xor_sync(0xffffffffu, sum[h], o);
  // The probabilities rounded to T: tile n's two registers are an A operand's half for
  // keys [8n, 8n + 8) (rows r0 and r1). Masked keys skip the division: a zero numerator
  // takes the IEEE division's slow path, which cost 7% of the kernel's instructions.
  uint32_t pr[kKeyTiles][2];
#pragma unroll
  for (int n = 0; n < kKeyTiles; ++n)
#pragma unroll
    for (int h = 0; h < 2; ++h)
      pr[n][h] = pack2<T>(s[n][2 * h] != 0 ? s[n][2 * h] / sum[h] : 0.0f,  // (a NaN still divides)
                          s[n][2 * h + 1] != 0 ? s[n][2 * h + 1] / sum[h] : 0.0f);

  // Output p·v over 16 keys a step, 16 columns per ldmatrix, kMaxCols columns (the
  // accumulators) at a time: the scores and probabilities above serve all of the task's
  // columns, so wide heads do not compute them once per slice.
  for (int slice = c0; slice < c0 + cols; slice += kMaxCols) {
    const int width = ::min(kMaxCols, c0 + cols - slice);
    float o[kMaxCols / 8][4];
#pragma unroll
    for (int c = 0; c < kMaxCols / 8; ++c) o[c][0] = o[c][1] = o[c][2] = o[c][3] = 0;
#pragma unroll
    for (int n = 0; n < kKeyTiles; n += 2) {
      if (n >= key_tiles) break;
      const uint32_t a[4] = {pr[n][0], pr[n][1], pr[n + 1][0], pr[n + 1][1]};
#pragma unroll
      for (int c = 0; c < kMaxCols / 8; c += 2) {
        if (c * 8 >= width) break;
        uint32_t vb[4];  // values as B, transposed: matrices (columns 0-7, 8-15) × (keys 0-7, 8-15)
        ldmatrix_x4_trans(vb, vs + (n * 8 + mat % 2 * 8 + mrow) * ld + slice + c * 8 + mat / 2 * 8);
        mma_16816<T>(o[c], a, vb[0], vb[1]);
        mma_16816<T>(o[c + 1], a, vb[2], vb[3]);
      }
    }

    // Rounded to T through the warp's staging tile, then to global memory 16 bytes a lane.
#pragma unroll
    for (int c = 0; c < kMaxCols / 8; ++c) {
      if (c * 8 >= width) break;
#pragma unroll
      for (int h = 0; h < 2; ++h)
        *reinterpret_cast<uint32_t*>(stage + (lane / 4 + h * 8) * lo + c * 8 + quad * 2) =
            pack2<T>(o[c][2 * h], o[c][2 * h + 1]);
    }
    __syncwarp();
    constexpr int kE = kVecElems<T>;
    const int vecs = width / kE;
    for (int i = lane; i < kTile * vecs; i += 32) {
      const int r = i / vecs, c = i % vecs * kE, l = rt * kTile + r;
      if (l < nl)
        *reinterpret_cast<uint4*>(out + l * out_stride + slice + c) = *reinterpret_cast<const uint4*>(stage + r * lo + c);
    }
    __syncwarp();
  }
}

// Column j of a row of angles at position pos (cos of the half's columns, then sin),
// rounded to T as HF rounds them.
template <class T>
__device__ __forceinline__ void put_angle(int64_t pos, float freq, int j, int half, T* row) {
  float c, s;
  rope_angle<T>(pos, freq, c, s);
  row[j] = from_float<T>(c);
  row[half + j] = from_float<T>(s);
}

// table [nl, 2 half]: the angles of positions offsets[0] + l.
template <class T>
__global__ void rope_table_kernel(const float* inv_freq, const int32_t* offsets, int nl, int half,
                                  T* table) {
  const int i = int(blockIdx.x) * int(blockDim.x) + int(threadIdx.x), l = i / half, j = i % half;
  if (l >= nl) return;
  put_angle<T>(int64_t(offsets[0]) + l, inv_freq[j], j, half, table + l * 2 * half);
}

template <class T, class W, bool kGemmaNorm, int kKeyTiles>
__global__ void __launch_bounds__(kThreads, kKeyTiles <= kShortTokens / 8 ? kShortBlocksPerSm : 1)
    self_attention_kernel(const T* q, const T* k, const T* v, const T* table, const float* inv_freq,
                          const int32_t* offsets, const W* q_norm, const W* k_norm, float eps,
                          float scale, int window, T* out, int nl, int hq, int hkv, int d,
                          int lanes, int parts, int splits) {
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int kE = kVecElems<T>;
  // This block: batch row b, kv head g, and `group` of the query heads that share it, from
  // first_head (the kv head's query heads are split over `parts` blocks).
  const int group = hq / hkv / parts, part = int(blockIdx.x) % parts, g = int(blockIdx.x) / parts % hkv,
            b = int(blockIdx.x) / (parts * hkv), first_head = g * (hq / hkv) + part * group, half = d / 2;
  const SmemPlan p(nl, d, group);
  T* qs = reinterpret_cast<T*>(smem + p.q);
  T* ks = reinterpret_cast<T*>(smem + p.k);
  T* vs = reinterpret_cast<T*>(smem + p.v);
  T* angles = reinterpret_cast<T*>(smem + p.angles);  // row l: cos [half], sin [half]
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, lp = p.lp;

  // Rows into shared memory as they are: the group's query heads, the key, the value and
  // the angles, 16 bytes per asynchronous copy, all in flight at once; rows past the
  // sequence are zeros. (Row by row through registers, every row waited out a memory
  // latency.) A thread keeps one column of 16 bytes and steps over rows: no index
  // divisions in the loops, which had cost more instructions than the copies.
  // kind < group: that query head; group: the key; group + 1: the value; group + 2: the angles.
  auto row = [&](int kind, int l) {
    return (kind < group        ? qs + size_t(kind) * lp * p.ld
            : kind == group     ? ks
            : kind == group + 1 ? vs
                                : angles) +
           size_t(l) * p.ld;
  };
  const bool own_angles = offsets[b] != offsets[0];  // the table holds row 0's positions
  const int vecs = d / kE, rows_per_pass = kThreads / vecs;
  const int my_row = int(threadIdx.x) / vecs, my_col = int(threadIdx.x) % vecs * kE;
  for (int kind = 0; my_row < rows_per_pass && kind < group + (own_angles ? 2 : 3); ++kind) {
    const bool query = kind < group;
    const int64_t token_stride = kind == group + 2 ? d : int64_t(query ? hq : hkv) * d;
    const T* src =
        (query               ? q + (int64_t(b) * nl * hq + first_head + kind) * d
         : kind == group + 2 ? table
                             : (kind == group ? k : v) + (int64_t(b) * nl * hkv + g) * d) +
        my_col;
    T* dst = row(kind, 0) + my_col;
    for (int l = my_row; l < lp; l += rows_per_pass) {
      if (l < nl)
        copy16_async(dst + l * p.ld, src + l * token_stride);
      else
        *reinterpret_cast<uint4*>(dst + l * p.ld) = make_uint4(0, 0, 0, 0);
    }
  }
  asm volatile("cp.async.commit_group;\n" ::);
  if (own_angles)  // while the rows arrive
    for (int i = int(threadIdx.x); i < nl * half; i += kThreads) {
      const int l = i / half, j = i % half;
      put_angle<T>(int64_t(offsets[b]) + l, inv_freq[j], j, half, angles + l * p.ld);
    }
  copy_async_wait_all();
  __syncthreads();

  // Query and key rows normed and rotated in place, `lanes` lanes per row. A warp's rows
  // are all of one kind (lp is a multiple of 16 and a warp holds at most 16 rows), so
  // norm_rotate's shuffles run on whole warps.
  const int rows_per_warp = 32 / lanes;
  const int64_t j0 = int64_t(lane % lanes) * kE;
  for (int kind = 0; kind < group + 1; ++kind) {
    const W* norm_w = kind < group ? q_norm : k_norm;
    for (int l = warp * rows_per_warp + lane / lanes; l - lane / lanes < lp; l += kWarps * rows_per_warp) {
      const bool live = l < nl && j0 < half;
      T* x = row(kind, l);
      uint4 lo = live ? *reinterpret_cast<const uint4*>(x + j0) : make_uint4(0, 0, 0, 0);
      uint4 hi = live ? *reinterpret_cast<const uint4*>(x + half + j0) : make_uint4(0, 0, 0, 0);
      const T* cs = angles + l * p.ld;
      norm_rotate<T, W, kGemmaNorm, T>(lo, hi, live, j0, half, lanes, norm_w, eps, cs, cs + half);
      if (live) *reinterpret_cast<uint4*>(x + j0) = lo, *reinterpret_cast<uint4*>(x + half + j0) = hi;
    }
  }
  __syncthreads();  // the staging tiles below overwrite the angles

  // Each warp task: 16 query rows (row tile rt) of query head j, output columns
  // [c0, c0 + cols). Tasks of one row tile and head recompute the same scores, a small
  // product beside the softmax and the values that they split.
  const int row_tiles = lp / kTile, cols = d / splits;
  for (int task = warp; task < group * row_tiles * splits; task += kWarps)
    attend<T, kKeyTiles>(qs + size_t(task / (row_tiles * splits)) * lp * p.ld, ks, vs, p.ld,
                         task / splits % row_tiles, task % splits * cols, cols, nl, scale, window,
                         reinterpret_cast<T*>(smem + p.stage) + warp * kTile * p.lo, p.lo,
                         out + (int64_t(b) * nl * hq + first_head + task / (row_tiles * splits)) * d, int64_t(hq) * d);
}

}  // namespace

bool self_attention(const Context& ctx, const Array& q, const Array& k, const Array& v, const Array& inv_freq,
                    const Array& offsets, const Array* q_norm, const Array* k_norm, float eps,
                    fast::RmsNormStyle style, float scale, int64_t window, const Array& out) {
  const int64_t nb = q.shape(0), nl = q.shape(1), hq = q.shape(2), hkv = k.shape(2), d = q.shape(3);
  static const bool enabled = switch_on("LMX_SELF_ATTENTION_KERNEL");
  if (!enabled) return false;
  if (q.size() == 0) return true;
  const bool sixteen_bit = q.dtype() == Dtype::bf16 || q.dtype() == Dtype::f16;
  // 16-bit elements in 16-byte vectors of 8; a head of at least 32 values keeps a warp's
  // rows in one kind (see the kernel). Gemma 3's 256-wide heads run here too: as fast as
  // the composition in classification (ncu: 208 us a layer for 1,024 prompts), in one
  // kernel and without the composition's intermediate arrays.
  const bool norms_alike = (q_norm == nullptr) == (k_norm == nullptr) && (!q_norm || q_norm->dtype() == k_norm->dtype());
  if (!sixteen_bit || !norms_alike || d % kTile != 0 || d < 32 || d > kMaxHeadDim || nl > kMaxTokens ||
      !aligned16(q) || !aligned16(k) || !aligned16(v) || !aligned16(out))
    return false;
  // The kv head's query heads split over more blocks while that gives an SM at least two
  // blocks or the grid at least four waves (few rows, or few kv heads with wide queries).
  const int64_t group = hq / hkv;
  int64_t parts = 1;
  auto blocks_per_sm = [&](int64_t n) {
    return int64_t(ctx.max_smem_per_block) / int64_t(SmemPlan(int(nl), int(d), int(group / n)).bytes + 1024);
  };
  while (group % (parts * 2) == 0 &&
         (blocks_per_sm(parts) < 2 || nb * hkv * parts < 4 * int64_t(ctx.sm_count)))
    parts *= 2;
  const SmemPlan plan(int(nl), int(d), int(group / parts));
  if (plan.bytes > size_t(ctx.max_smem_per_block) || nb * hkv * parts > int64_t(INT32_MAX)) return false;
  const int lanes = rope_lanes(d / 2, 8, 2);
  // A warp task's output columns: the whole head (kMaxCols at a time), split into whole
  // 16-column steps only while an SM would have fewer than 16 warps with a task. Split
  // tasks each compute the same scores and softmax, and the kernel is bound by issuing
  // instructions: at 4 blocks an SM and 4 tasks a block, Qwen3's classification ran it in
  // 293 us a layer whole and 328 split; at 2 blocks, Gemma 3's in 189 whole and 181 split.
  const int64_t row_tiles = (nl + kTile - 1) / kTile, heads = group / parts;
  // Blocks an SM: by shared memory, at most the 4 that short rows' kernel is built for (see
  // pick); taken as 1 for longer rows, whose kernel may use all of a block's registers.
  const int64_t resident = std::min<int64_t>(blocks_per_sm(parts), nl <= kShortTokens ? kShortBlocksPerSm : 1);
  int64_t splits = 1;
  while (d % (splits * 2 * kTile) == 0 && heads * row_tiles * splits * 2 <= kWarps &&
         resident * heads * row_tiles * splits < 16)
    splits *= 2;
  if (d % (splits * kTile) != 0) return false;
  // [L, D]: cos [D/2], sin [D/2] of row 0's positions
  const Array table({nl, d}, q.dtype(), q.device());
  bool ran = false;
  visit_device_dtype(q.dtype(), [&](auto tag) {
    using T = decltype(tag);
    visit_device_dtype(q_norm ? q_norm->dtype() : q.dtype(), [&](auto wtag) {
      using W = decltype(wtag);
      if constexpr ((std::is_same_v<T, bfloat_t> || std::is_same_v<T, half_t>) && kIsFloat<W>) {
        // Score registers for up to 32 keys (the common short prompt; 64 registers a thread,
        // four blocks an SM), else for up to 128.
        auto pick = [&](auto gemma) {
          return nl <= kShortTokens
                     ? self_attention_kernel<T, W, decltype(gemma)::value, kShortTokens / 8>
                     : self_attention_kernel<T, W, decltype(gemma)::value, kMaxTokens / 8>;
        };
        auto* kernel = style == fast::RmsNormStyle::gemma ? pick(std::true_type{}) : pick(std::false_type{});
        const W* qn = q_norm ? static_cast<const W*>(q_norm->raw()) : nullptr;
        const W* kn = k_norm ? static_cast<const W*>(k_norm->raw()) : nullptr;
        T* angles = static_cast<T*>(table.raw());
        rope_table_kernel<T><<<grid_for(nl * d / 2), kBlock, 0, ctx.stream>>>(
            inv_freq.data<float>(), offsets.data<int32_t>(), int(nl), int(d / 2), angles);
        check_launch("rope_table_kernel");
        // The device's largest shared memory per block, with all of the SM's unified memory
        // as shared memory: short rows fit four blocks.
        allow_shared_memory(kernel, size_t(ctx.max_smem_per_block), /*all_shared=*/true);
        kernel<<<unsigned(nb * hkv * parts), kThreads, plan.bytes, ctx.stream>>>(
            static_cast<const T*>(q.raw()), static_cast<const T*>(k.raw()),
            static_cast<const T*>(v.raw()), angles, inv_freq.data<float>(), offsets.data<int32_t>(),
            qn, kn, eps, scale, int(std::min<int64_t>(window, nl + 1)), static_cast<T*>(out.raw()),
            int(nl), int(hq), int(hkv), int(d), lanes, int(parts), int(splits));
        check_launch("self_attention_kernel");
        ran = true;
      }
    });
  });
  return ran;
}

}  // namespace lmx::cuda
