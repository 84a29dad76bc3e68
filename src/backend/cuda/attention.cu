// Scaled dot-product attention with the CPU's roundings (HF eager): scores rounded to
// the dtype, multiplied by the f32 scale and rounded again; softmax in f32;
// probabilities rounded to the dtype before the value product, which accumulates in f32.
//
// Two families of kernels. Because the rounded probability needs the row's final max and
// sum, both find those before they form any probability.
//
// - Few query rows per kv head (decode, Lq < 8: `decode_kernel` and its split form). A
//   block holds up to 8 query rows of one kv head (fewer, down to one, where the grid
//   would otherwise have fewer than two blocks per SM). For the scores each thread takes whole
//   keys; for p·v a group of lanes takes one value row at a time, each lane 16 bytes of
//   it. Up to 256 keys (or when one split covers them), one kernel does everything.
//   Longer caches are split across blocks (split-K, "flash decoding"): the first kernel
//   stores the rounded scores and each split's (max, sum); the second turns its split's
//   scores into probabilities and sums p·v; a last kernel adds the splits' sums and
//   rounds once.
// - Otherwise (`attention_kernel`), flash-style tiling: a block holds kRows query rows of
//   one kv head (with GQA these are rows of all the query heads that share it) and streams
//   tiles of 32 keys through shared memory in two passes: `stats` finds (max, sum)
//   online, `output` recomputes the scores and accumulates p·v.
#include <algorithm>

#include "backend/cuda/common.cuh"

namespace lmx::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 4;
constexpr int kRows = kWarps * kRowsPerWarp;  // query rows per block
constexpr int kKeys = 32;                     // keys per tile: one per lane
constexpr int kMaxHeadDim = 256;

struct AttnParams : AttentionOperands {
  int64_t batch, hq, hkv, lq, lk, d;
  int64_t rep;  // Hq / Hkv
  float scale;  // f32 (the product is rounded, the scale is not)
  bool causal;
  int64_t window;
  int splits;
  int64_t split_len;  // keys per split, a multiple of kKeys
  float2* stats;      // [splits, B*Hq*Lq] (max, sum)
  float* partial;     // [splits, B*Hq*Lq, D] when splits > 1
};

enum class Pass { stats, output };

// Shared memory: Q rows [kRows][D], K tile [kKeys][D + 1] (padded: lanes read distinct
// banks), V tile [kKeys][D], all f32.
size_t shared_bytes(int64_t d) {
  return size_t(kRows * d + kKeys * (d + 1) + kKeys * d) * sizeof(float);
}

template <class T, int kChunks, Pass kPass>
__global__ void __launch_bounds__(kWarps * 32) attention_kernel(AttnParams p) {
  extern __shared__ float smem[];
  const int64_t d = p.d;
  float* qs = smem;                  // [kRows][D]
  float* ks = qs + kRows * d;        // [kKeys][D + 1]
  float* vs = ks + kKeys * (d + 1);  // [kKeys][D]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t b = blockIdx.y / p.hkv, kvh = blockIdx.y % p.hkv;
  const int64_t group_rows = p.rep * p.lq;  // rows of this kv head: (g, i) -> g * Lq + i
  const int64_t row0 = int64_t(blockIdx.x) * kRows;
  const int64_t n_rows = p.hq * p.lq;  // rows per batch element
  const int64_t q_off = p.q_offsets[b];

  // Global row index (into out and stats) and position of each of this warp's rows.
  int64_t grow[kRowsPerWarp], qpos[kRowsPerWarp];
  bool live[kRowsPerWarp];
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int64_t r = row0 + warp * kRowsPerWarp + rr;
    live[rr] = r < group_rows;
    const int64_t g = live[rr] ? r / p.lq : 0, i = live[rr] ? r % p.lq : 0;
    grow[rr] = b * n_rows + (kvh * p.rep + g) * p.lq + i;
    qpos[rr] = q_off + i;
  }
  // The key range this block may see: its split, cut by the causal and window bounds.
  int64_t lo = int64_t(blockIdx.z) * p.split_len, hi = min64(p.lk, lo + p.split_len);
  {
    int64_t min_i = p.lq, max_i = -1;
    for (int r = 0; r < kRows; ++r) {
      const int64_t rg = row0 + r;
      if (rg >= group_rows) break;
      min_i = min64(min_i, rg % p.lq);
      max_i = max64(max_i, rg % p.lq);
    }
    if (p.causal) hi = min64(hi, q_off + max_i + 1);
    if (p.window > 0) lo = max64(lo, q_off + min_i - p.window + 1);
  }

  // Q rows -> shared, f32.
  const T* q = static_cast<const T*>(p.q);
  for (int64_t e = threadIdx.x; e < kRows * d; e += blockDim.x) {
    const int64_t r = row0 + e / d;
    float val = 0;
    if (r < group_rows) {
      const int64_t g = r / p.lq, i = r % p.lq;
      val = to_float(q[((b * p.hq + kvh * p.rep + g) * p.lq + i) * d + e % d]);
    }
    qs[e] = val;
  }

  // Output pass: the row's final (max, 1/sum) from every split's statistics.
  float row_max[kRowsPerWarp], row_inv[kRowsPerWarp];
  const int64_t total_rows = p.batch * n_rows;
  if constexpr (kPass == Pass::output) {
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      float m = -INFINITY, l = 0;
      if (live[rr]) {
        for (int s = 0; s < p.splits; ++s) m = fmaxf(m, p.stats[s * total_rows + grow[rr]].x);
        if (m > -INFINITY)
          for (int s = 0; s < p.splits; ++s) {
            const float2 st = p.stats[s * total_rows + grow[rr]];
            if (st.x > -INFINITY) l += st.y * ::expf(st.x - m);
          }
      }
      row_max[rr] = m;
      row_inv[rr] = l > 0 ? 1.0f / l : 0.0f;
    }
  }
  float m_run[kRowsPerWarp], l_run[kRowsPerWarp];
  float acc[kRowsPerWarp][kChunks];
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    m_run[rr] = -INFINITY;
    l_run[rr] = 0;
    for (int c = 0; c < kChunks; ++c) acc[rr][c] = 0;
  }

  const T* kp = static_cast<const T*>(p.k) + b * p.k_sb + kvh * p.k_sh;
  const T* vp = static_cast<const T*>(p.v) + b * p.v_sb + kvh * p.v_sh;
  const int64_t tile0 = lo <= 0 ? 0 : lo / kKeys * kKeys;
  for (int64_t tile = tile0; tile < hi; tile += kKeys) {
    __syncthreads();  // the previous tile is no longer read
    for (int64_t e = threadIdx.x; e < kKeys * d; e += blockDim.x) {
      const int64_t jj = e / d, dd = e % d, j = tile + jj;
      const bool in = j >= lo && j < hi;
      ks[jj * (d + 1) + dd] = in ? to_float(kp[j * p.k_sl + dd]) : 0.0f;
      if constexpr (kPass == Pass::output)
        vs[jj * d + dd] = in ? to_float(vp[j * p.v_sl + dd]) : 0.0f;
    }
    __syncthreads();
    const int64_t j = tile + lane;
    const bool key_ok = j >= lo && j < hi && (!p.key_valid || p.key_valid[b * p.lk + j]);
    float prob[kRowsPerWarp];
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const bool visible = key_ok && live[rr] && (!p.causal || j <= qpos[rr]) &&
                           (p.window <= 0 || j > qpos[rr] - p.window);
      float s = -INFINITY;
      if (visible) {
        const float* qr = qs + (warp * kRowsPerWarp + rr) * d;
        const float* kr = ks + lane * (d + 1);
        float dot = 0;
        for (int64_t dd = 0; dd < d; ++dd) dot += qr[dd] * kr[dd];
        s = round_to<T>(round_to<T>(dot) * p.scale);
      }
      if constexpr (kPass == Pass::stats) {
        const float m_new = fmaxf(m_run[rr], warp_reduce(s, Max{}));
        if (m_new == -INFINITY) continue;  // nothing visible yet (uniform across the warp)
        const float e = s == -INFINITY ? 0.0f : ::expf(s - m_new);
        l_run[rr] = l_run[rr] * ::expf(m_run[rr] - m_new) + warp_reduce(e, Sum{});
        m_run[rr] = m_new;
      } else {
        prob[rr] = s == -INFINITY ? 0.0f : round_to<T>(::expf(s - row_max[rr]) * row_inv[rr]);
      }
    }
    if constexpr (kPass == Pass::output) {
      for (int jj = 0; jj < kKeys; ++jj) {
        const float* vr = vs + jj * d;
        for (int rr = 0; rr < kRowsPerWarp; ++rr) {
          const float pj = __shfl_sync(0xffffffffu, prob[rr], jj);
          for (int c = 0; c < kChunks; ++c) {
            const int64_t dd = lane + 32 * c;
            if (dd < d) acc[rr][c] += pj * vr[dd];
          }
        }
      }
    }
  }

  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    if (!live[rr]) continue;
    if constexpr (kPass == Pass::stats) {
      if (lane == 0)
        p.stats[blockIdx.z * total_rows + grow[rr]] = make_float2(m_run[rr], l_run[rr]);
    } else {
      for (int c = 0; c < kChunks; ++c) {
        const int64_t dd = lane + 32 * c;
        if (dd >= d) continue;
        if (p.splits == 1)
          static_cast<T*>(p.out)[grow[rr] * d + dd] = from_float<T>(acc[rr][c]);
        else
          p.partial[(blockIdx.z * total_rows + grow[rr]) * d + dd] = acc[rr][c];
      }
    }
  }
}

// out[row, d] = sum over splits of partial[split, row, d], rounded once.
template <class T>
__global__ void combine_kernel(const float* partial, T* out, int splits, int64_t n) {
  for (int64_t e = global_thread(); e < n; e += grid_threads()) {
    float s = 0;
    for (int k = 0; k < splits; ++k) s += partial[k * n + e];
    out[e] = from_float<T>(s);
  }
}

template <class T, int kChunks, Pass kPass>
void launch_pass(const Context& ctx, const AttnParams& p, dim3 grid) {
  const size_t smem = shared_bytes(p.d);
  // Above 48 KiB a kernel must opt in to more shared memory (per kernel and device).
  if (smem > 48 * 1024) allow_shared_memory(attention_kernel<T, kChunks, kPass>, smem);
  attention_kernel<T, kChunks, kPass><<<grid, kWarps * 32, smem, ctx.stream>>>(p);
  check_launch("attention_kernel");
}

template <class T, int kChunks>
void run(const Context& ctx, AttnParams p, dim3 grid) {
  launch_pass<T, kChunks, Pass::stats>(ctx, p, grid);
  launch_pass<T, kChunks, Pass::output>(ctx, p, grid);
  if (p.splits > 1) {
    const int64_t n = p.batch * p.hq * p.lq * p.d;
    combine_kernel<<<grid_for(n), kBlock, 0, ctx.stream>>>(p.partial, static_cast<T*>(p.out),
                                                           p.splits, n);
    check_launch("combine_kernel");
  }
}

// ---- few query rows per kv head (decode) ----

constexpr int kDecodeThreads = 128;
constexpr int kDecodeRows = 8;        // query rows per block at most (R, a power of two, is chosen per call)
constexpr int kDecodeMaxSplit = 512;  // keys per block at most: scores of R rows in R * 2 KiB
constexpr int kDecodeUnroll = 4;      // value rows per lane group with loads in flight at once
constexpr int kSingle = 256;          // keys up to which one kernel does everything
// Shared floats of a block of R rows: the scores or probabilities [R][split], later the
// lane groups' partial sums [groups][R][D] (groups * D <= threads * 8: a lane holds at
// most 8 elements of a key).
template <int R>
constexpr int kDecodeBuf = R * kDecodeThreads * 8;
static_assert(kDecodeMaxSplit <= kDecodeThreads * 8);

struct DecodeParams : AttentionOperands {  // k and v rows 16-byte aligned
  int hq, hkv, lq, rep, row_groups, total_rows;  // total_rows = B * Hq * Lq < 2^31; row_groups of R rows
  int64_t lk, d;
  float scale;
  bool causal;
  int64_t window;
  int splits, split_len;
  float* scores;   // [total_rows, Lk]: rounded scaled scores, -inf where masked (splits > 1)
  float2* stats;   // [splits, total_rows]: the split's (max, sum of exp(s - max))
  float* partial;  // [splits, total_rows, D]
};

// The block's R query rows: blockIdx.y = (b * Hkv + kv head) * row_groups + row group.
// Rows past the last live one repeat it, so that reading theirs is always in bounds.
// Fewer rows a block (a smaller R) give more blocks, which read the same keys through L2,
// and fewer registers a thread: at batch 64 a block for each kv head and 8 rows left the
// GPU under-filled (Gemma 3 has one kv head) or its blocks short of registers.
template <int R>
struct DecodeRows {
  int b, kvh, n;        // n live rows, at most R
  int grow[R];          // row index into q, out, scores and stats
  int64_t qpos[R];      // the query's position
  __device__ explicit DecodeRows(const DecodeParams& p) {
    const int bh = int(blockIdx.y) / p.row_groups, r0 = (int(blockIdx.y) % p.row_groups) * R;
    b = bh / p.hkv, kvh = bh % p.hkv;
    n = ::min(R, p.rep * p.lq - r0);
    const int64_t q_off = p.q_offsets[b];
    int g = r0 / p.lq, i = r0 % p.lq;  // query head within the group, query index
#pragma unroll
    for (int r = 0; r < R; ++r) {
      grow[r] = (b * p.hq + kvh * p.rep + g) * p.lq + i;
      qpos[r] = q_off + i;
      if (r + 1 < n && ++i == p.lq) i = 0, ++g;
    }
  }
};

// Lane layout for the value product: groups of G lanes take one value row each; lane
// `slot` of a group holds chunks slot, slot + G, ... (NC of them) of kVecElems<T> elements.
template <class T, int G, int NC>
struct DecodeLanes {
  static constexpr int E = kVecElems<T>, kGroups = kDecodeThreads / G;
  int slot, group;
  __device__ DecodeLanes() : slot(threadIdx.x % G), group(threadIdx.x / G) {}
  __device__ bool has(int c, int64_t d) const { return (slot + c * G) * E < d; }
  __device__ int64_t at(int c) const { return int64_t(slot + c * G) * E; }
  // The NC chunks of the row at `base`, zeros past D.
  __device__ void load(const T* base, int64_t d, float (&x)[NC * E]) const {
    for (int c = 0; c < NC; ++c) {
      float v[E];
      if (has(c, d)) load_vec<T>(base + at(c), v);
      for (int e = 0; e < E; ++e) x[c * E + e] = has(c, d) ? v[e] : 0.0f;
    }
  }
};

// sc[r][j - lo] = the rounded, scaled score of row r and key j in [lo, hi), or -inf.
// Each thread takes whole keys: it streams its key in 16-byte loads, eight in flight, and
// reads the block's query rows from shared memory (qs [R][D], f32), so no score
// needs a reduction across lanes.
template <class T, int R>
__device__ __forceinline__ void split_scores(const DecodeParams& p, const DecodeRows<R>& rows, int64_t lo, int64_t hi,
                                             float* sc, float4* qs) {
  constexpr int E = kVecElems<T>, kInFlight = 8;
  const int64_t d = p.d, n = hi - lo, vd = d / E;
  const T* q = static_cast<const T*>(p.q);
  float* qf = reinterpret_cast<float*>(qs);
  for (int e = threadIdx.x; e < rows.n * int(vd); e += kDecodeThreads) {  // at most 4 trips
    float x[E];
    load_vec<T>(q + int64_t(rows.grow[e / int(vd)]) * d + (e % int(vd)) * E, x);
    for (int i = 0; i < E; ++i) qf[e * E + i] = x[i];
  }
  __syncthreads();
  const T* kp = static_cast<const T*>(p.k) + rows.b * p.k_sb + rows.kvh * p.k_sh;
  const char* vp = static_cast<const char*>(p.v) + (rows.b * p.v_sb + rows.kvh * p.v_sh) * int64_t(sizeof(T));
  for (int64_t j = lo + threadIdx.x; j < hi; j += kDecodeThreads) {
    // The value rows are read once the scores are done: ask L2 for them now.
    for (int64_t off = 0; off < d * int64_t(sizeof(T)); off += 128)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(vp + j * p.v_sl * int64_t(sizeof(T)) + off));
    const T* kr = kp + j * p.k_sl;
    float dot[R] = {};
    for (int64_t c = 0; c < d; c += kInFlight * E) {
      float kx[kInFlight][E];
#pragma unroll
      for (int u = 0; u < kInFlight; ++u)
        if (c + u * E < d) load_vec<T>(kr + c + u * E, kx[u]);
#pragma unroll
      for (int u = 0; u < kInFlight; ++u) {
        if (c + u * E >= d) break;
#pragma unroll
        for (int r = 0; r < R; ++r) {
          if (r >= rows.n) break;
#pragma unroll
          for (int h = 0; h < E / 4; ++h) {
            const float4 x = qs[(r * d + c + u * E) / 4 + h];
            dot[r] = __fmaf_rn(x.x, kx[u][4 * h], dot[r]);
            dot[r] = __fmaf_rn(x.y, kx[u][4 * h + 1], dot[r]);
            dot[r] = __fmaf_rn(x.z, kx[u][4 * h + 2], dot[r]);
            dot[r] = __fmaf_rn(x.w, kx[u][4 * h + 3], dot[r]);
          }
        }
      }
    }
    const bool key_ok = !p.key_valid || p.key_valid[rows.b * p.lk + j];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (r >= rows.n) break;
      const int64_t pos = rows.qpos[r];
      const bool visible = key_ok && (!p.causal || j <= pos) && (p.window <= 0 || j > pos - p.window);
      sc[r * n + (j - lo)] = visible ? round_to<T>(round_to<T>(dot[r]) * p.scale) : -INFINITY;
    }
  }
}

// Row r's max m and sum of exp(s - m) over sc[r][0, n), by one warp.
__device__ inline float2 row_stats(const float* sc, int64_t n) {
  const int lane = threadIdx.x % 32;
  float m = -INFINITY;
  for (int64_t jj = lane; jj < n; jj += 32) m = fmaxf(m, sc[jj]);
  m = warp_reduce(m, Max{});
  float l = 0;
  for (int64_t jj = lane; jj < n; jj += 32)
    if (sc[jj] != -INFINITY) l += ::expf(sc[jj] - m);
  return make_float2(m, warp_reduce(l, Sum{}));
}

// The probability of a score from its row's final max and 1/sum, rounded to T.
template <class T>
__device__ __forceinline__ float probability(float s, float m, float inv) {
  return s == -INFINITY ? 0.0f : round_to<T>(::expf(s - m) * inv);
}

// Sum over keys [lo, hi) of prob[r][j - lo] * v[j], for every live row: into out (rounded)
// when the block holds all keys, else into the split's partial sums. buf holds prob and
// then the lane groups' sums.
template <class T, int G, int NC, int R>
__device__ __forceinline__ void split_values(const DecodeParams& p, const DecodeRows<R>& rows, int64_t lo, int64_t hi,
                                             float* buf) {
  using L = DecodeLanes<T, G, NC>;
  constexpr int E = L::E;
  const L lanes;
  const int64_t d = p.d, n = hi - lo;
  const float* prob = buf;
  float acc[R][NC * E] = {};
  const T* vp = static_cast<const T*>(p.v) + rows.b * p.v_sb + rows.kvh * p.v_sh;
  for (int64_t j0 = lo + lanes.group; j0 < hi; j0 += int64_t(kDecodeUnroll) * L::kGroups) {
    float vx[kDecodeUnroll][NC * E];
#pragma unroll
    for (int u = 0; u < kDecodeUnroll; ++u) {
      const int64_t j = j0 + int64_t(u) * L::kGroups;
      if (j < hi) lanes.load(vp + j * p.v_sl, d, vx[u]);
    }
#pragma unroll
    for (int u = 0; u < kDecodeUnroll; ++u) {
      const int64_t j = j0 + int64_t(u) * L::kGroups;
      if (j >= hi) break;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if (r >= rows.n) break;
        const float pj = prob[r * n + (j - lo)];
        for (int e = 0; e < NC * E; ++e) acc[r][e] = __fmaf_rn(pj, vx[u][e], acc[r][e]);
      }
    }
  }
  __syncthreads();  // the probabilities are read; buf now takes the groups' sums [groups][R][D]
  float* red = buf;
#pragma unroll
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NC && r < rows.n; ++c)
      if (lanes.has(c, d))
        for (int e = 0; e < E; ++e) red[(lanes.group * R + r) * d + lanes.at(c) + e] = acc[r][c * E + e];
  __syncthreads();
  for (int e = threadIdx.x; e < rows.n * int(d); e += kDecodeThreads) {
    const int r = e / int(d), dd = e % int(d);  // 32-bit: no 64-bit division in the loop
    float sum = 0;
    for (int g = 0; g < L::kGroups; ++g) sum += red[(g * R + r) * d + dd];
    if (p.splits == 1)
      static_cast<T*>(p.out)[int64_t(rows.grow[r]) * d + dd] = from_float<T>(sum);
    else
      p.partial[(int64_t(blockIdx.x) * p.total_rows + rows.grow[r]) * d + dd] = sum;
  }
}

// All keys in one block (splits == 1): scores, softmax and p·v in one kernel.
template <class T, int G, int NC, int R>
__global__ void __launch_bounds__(kDecodeThreads) decode_kernel(DecodeParams p) {
  __shared__ float buf[kDecodeBuf<R>];
  __shared__ float4 qs[R * kMaxHeadDim / 4];
  __shared__ float2 st[R];  // (max, 1/sum) per row
  const DecodeRows<R> rows(p);
  const int64_t n = p.lk;
  split_scores<T>(p, rows, 0, n, buf, qs);
  __syncthreads();
  for (int r = threadIdx.x / 32; r < rows.n; r += kDecodeThreads / 32) {
    const float2 s = row_stats(buf + r * n, n);
    if (threadIdx.x % 32 == 0) st[r] = make_float2(s.x, s.y > 0 ? 1.0f / s.y : 0.0f);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < rows.n * int(n); e += kDecodeThreads)
    buf[e] = probability<T>(buf[e], st[e / int(n)].x, st[e / int(n)].y);
  __syncthreads();
  split_values<T, G, NC, R>(p, rows, 0, n, buf);
}

// Split keys, pass 1: the split's scores to global memory and its (max, sum) per row.
template <class T, int R>
__global__ void __launch_bounds__(kDecodeThreads) decode_scores_kernel(DecodeParams p) {
  __shared__ float sc[R * kDecodeMaxSplit];
  __shared__ float4 qs[R * kMaxHeadDim / 4];
  const DecodeRows<R> rows(p);
  const int64_t lo = int64_t(blockIdx.x) * p.split_len, hi = min64(p.lk, lo + p.split_len), n = hi - lo;
  split_scores<T>(p, rows, lo, hi, sc, qs);
  __syncthreads();
  for (int r = threadIdx.x / 32; r < rows.n; r += kDecodeThreads / 32) {
    const float2 s = row_stats(sc + r * n, n);
    float* out = p.scores + int64_t(rows.grow[r]) * p.lk + lo;
    for (int64_t jj = threadIdx.x % 32; jj < n; jj += 32) out[jj] = sc[r * n + jj];
    if (threadIdx.x % 32 == 0) p.stats[int64_t(blockIdx.x) * p.total_rows + rows.grow[r]] = s;
  }
}

// Split keys, pass 2: the split's probabilities from the rows' final (max, sum) over all
// splits, then their partial sum of p·v.
template <class T, int G, int NC, int R>
__global__ void __launch_bounds__(kDecodeThreads) decode_values_kernel(DecodeParams p) {
  __shared__ float buf[kDecodeBuf<R>];
  __shared__ float2 st[R];  // (max, 1/sum) per row
  const DecodeRows<R> rows(p);
  const int64_t lo = int64_t(blockIdx.x) * p.split_len, hi = min64(p.lk, lo + p.split_len), n = hi - lo;
  if (threadIdx.x < R) {
    const int64_t g = rows.grow[threadIdx.x];
    float m = -INFINITY, l = 0;
    for (int s = 0; s < p.splits; ++s) m = fmaxf(m, p.stats[s * p.total_rows + g].x);
    if (m > -INFINITY)
      for (int s = 0; s < p.splits; ++s) {
        const float2 x = p.stats[s * p.total_rows + g];
        if (x.x > -INFINITY) l += x.y * ::expf(x.x - m);
      }
    st[threadIdx.x] = make_float2(m, l > 0 ? 1.0f / l : 0.0f);
  }
  __syncthreads();
  // Every score of a thread is loaded before any is used: the loads overlap.
  constexpr int kPerThread = R * kDecodeMaxSplit / kDecodeThreads;
  float sv[kPerThread];
#pragma unroll
  for (int u = 0; u < kPerThread; ++u) {
    const int e = threadIdx.x + u * kDecodeThreads, r = e / int(n);
    sv[u] = r < rows.n ? p.scores[int64_t(rows.grow[r]) * p.lk + lo + e % int(n)] : -INFINITY;
  }
#pragma unroll
  for (int u = 0; u < kPerThread; ++u) {
    const int e = threadIdx.x + u * kDecodeThreads;
    if (e < R * int(n)) buf[e] = probability<T>(sv[u], st[e / int(n)].x, st[e / int(n)].y);
  }
  __syncthreads();
  split_values<T, G, NC, R>(p, rows, lo, hi, buf);
}

template <class T, int G, int NC, int R>
void run_decode(const Context& ctx, const DecodeParams& p, dim3 grid) {
  if (p.splits == 1) {
    decode_kernel<T, G, NC, R><<<grid, kDecodeThreads, 0, ctx.stream>>>(p);
    check_launch("decode_kernel");
    return;
  }
  decode_scores_kernel<T, R><<<grid, kDecodeThreads, 0, ctx.stream>>>(p);
  check_launch("decode_scores_kernel");
  decode_values_kernel<T, G, NC, R><<<grid, kDecodeThreads, 0, ctx.stream>>>(p);
  check_launch("decode_values_kernel");
  const int64_t n = int64_t(p.total_rows) * p.d;
  combine_kernel<<<grid_for(n), kBlock, 0, ctx.stream>>>(p.partial, static_cast<T*>(p.out), p.splits, n);
  check_launch("combine_kernel");
}

// Lanes per key: D / kVecElems chunks, at least 8 lanes (a smaller D leaves some idle) and
// at most 32 (a larger one gives each lane two chunks).
template <class T, int R>
void run_decode_for_head_dim(const Context& ctx, const DecodeParams& p, dim3 grid) {
  const int64_t chunks = p.d / kVecElems<T>;
  if (chunks <= 8)
    run_decode<T, 8, 1, R>(ctx, p, grid);
  else if (chunks <= 16)
    run_decode<T, 16, 1, R>(ctx, p, grid);
  else if constexpr (sizeof(T) == 4)  // f32 past D = 128; 16-bit heads stop at 256 = 32 chunks
    chunks <= 32 ? run_decode<T, 32, 1, R>(ctx, p, grid) : run_decode<T, 32, 2, R>(ctx, p, grid);
  else
    run_decode<T, 32, 1, R>(ctx, p, grid);
}

template <class T>
void run_decode_for_rows(const Context& ctx, const DecodeParams& p, dim3 grid, int rows) {
  switch (rows) {
    case 1: return run_decode_for_head_dim<T, 1>(ctx, p, grid);
    case 2: return run_decode_for_head_dim<T, 2>(ctx, p, grid);
    case 4: return run_decode_for_head_dim<T, 4>(ctx, p, grid);
    default: return run_decode_for_head_dim<T, kDecodeRows>(ctx, p, grid);
  }
}

// The decode kernels, or false (nothing done) where they do not apply: many query rows,
// or rows that 16-byte loads cannot read.
bool attention_for_few_rows(const Context& ctx, const Array& q, const Array& k, const Array& v, float scale,
                            bool causal, int64_t window, const Array& q_offsets, const Array* key_valid,
                            const Array& out) {
  const int64_t nb = q.shape(0), hq = q.shape(1), lq = q.shape(2), d = q.shape(3);
  const int64_t hkv = k.shape(1), lk = k.shape(2), e = 16 / int64_t(itemsize(q.dtype()));
  if (lq >= 8 || lk == 0 || d % e != 0 || d > 64 * e || !q.is_contiguous() || !aligned16(q) || !aligned16(k) ||
      !aligned16(v) || !aligned16(out))
    return false;
  if (!rows_in_vectors(k, e) || !rows_in_vectors(v, e)) return false;
  // Rows a block (R): all of a kv head's, up to 8, then halved while the grid has fewer
  // than two blocks per SM.
  const int64_t rep = hq / hkv, total_rows = nb * hq * lq;
  auto groups_of = [&](int64_t r) { return (rep * lq + r - 1) / r; };
  int rows = 1;
  while (rows < kDecodeRows && rows < rep * lq) rows *= 2;
  while (rows > 1 && nb * hkv * groups_of(rows) < 2 * int64_t(ctx.sm_count)) rows /= 2;
  const int64_t row_groups = groups_of(rows), blocks = nb * hkv * row_groups;
  if (blocks > 65535 || total_rows > INT32_MAX) return false;
  DecodeParams p{};
  static_cast<AttentionOperands&>(p) = attention_operands(q, k, v, out, q_offsets, key_valid);
  p.hq = int(hq), p.hkv = int(hkv), p.lq = int(lq), p.rep = int(rep), p.row_groups = int(row_groups);
  p.total_rows = int(total_rows), p.lk = lk, p.d = d;
  p.scale = scale, p.causal = causal, p.window = window;
  // Up to kSingle keys one kernel does it all, however few the blocks: on the H200 at batch
  // 8, splitting such short caches over more blocks (two more launches) decoded slower.
  // Longer, the keys are split for two blocks per SM, each split of 64 to 512 keys (one
  // split still takes the single kernel).
  const int64_t want = (2 * int64_t(ctx.sm_count) + blocks - 1) / blocks;
  const int64_t len = std::clamp<int64_t>(((lk + want - 1) / want + 31) / 32 * 32, 64, kDecodeMaxSplit);
  p.split_len = int(lk <= kSingle ? lk : std::min(len, lk));
  p.splits = int((lk + p.split_len - 1) / p.split_len);
  Array scores, stats, partial;  // scratch of the split passes
  if (p.splits > 1) {
    scores = Array({total_rows * lk}, Dtype::f32, q.device());
    stats = Array({p.splits * total_rows * 2}, Dtype::f32, q.device());
    partial = Array({p.splits * total_rows * d}, Dtype::f32, q.device());
    p.scores = scores.data<float>();
    p.stats = static_cast<float2*>(stats.raw());
    p.partial = partial.data<float>();
  }
  const dim3 grid(unsigned(p.splits), unsigned(blocks));
  switch (q.dtype()) {
    case Dtype::f32: run_decode_for_rows<float>(ctx, p, grid, rows); return true;
    case Dtype::f16: run_decode_for_rows<half_t>(ctx, p, grid, rows); return true;
    case Dtype::bf16: run_decode_for_rows<bfloat_t>(ctx, p, grid, rows); return true;
    default: return false;
  }
}

// Lanes hold D / 32 accumulators per row: the smallest of 2, 4 or 8 that fits.
template <class T>
void run_for_head_dim(const Context& ctx, const AttnParams& p, dim3 grid) {
  if (p.d <= 64)
    run<T, 2>(ctx, p, grid);
  else if (p.d <= 128)
    run<T, 4>(ctx, p, grid);
  else
    run<T, 8>(ctx, p, grid);
}

}  // namespace

void attention(const Context& ctx, const Array& q, const Array& k, const Array& v, float scale,
               bool causal, int64_t window, const Array& q_offsets, const Array* key_valid,
               const Array& out) {
  if (out.size() == 0) return;
  const int64_t nb = q.shape(0), hq = q.shape(1), lq = q.shape(2), d = q.shape(3);
  const int64_t hkv = k.shape(1), lk = k.shape(2);
  LMX_CHECK(d <= kMaxHeadDim, "scaled_dot_product_attention", "head dimension ", d,
            " is above the CUDA kernel's limit of ", kMaxHeadDim);
  if (flash_attention(ctx, q, k, v, scale, causal, window, q_offsets, key_valid, out)) return;
  if (attention_by_gemm(ctx, q, k, v, scale, causal, window, q_offsets, key_valid, out)) return;
  if (attention_for_few_rows(ctx, q, k, v, scale, causal, window, q_offsets, key_valid, out)) return;
  LMX_CHECK(nb * hkv <= 65535, "scaled_dot_product_attention", "batch x kv heads (", nb * hkv,
            ") is above 65535 on cuda");
  AttnParams p{};
  static_cast<AttentionOperands&>(p) = attention_operands(q, k, v, out, q_offsets, key_valid);
  p.batch = nb, p.hq = hq, p.hkv = hkv, p.lq = lq, p.lk = lk, p.d = d, p.rep = hq / hkv;
  p.causal = causal;
  p.window = window;
  p.scale = scale;

  const int64_t row_blocks = (p.rep * lq + kRows - 1) / kRows;
  LMX_CHECK(row_blocks <= INT32_MAX, "scaled_dot_product_attention",
            "too many query rows for cuda");
  // Split the keys when the blocks would not fill the device twice over.
  const int64_t blocks = row_blocks * nb * hkv, want = 2 * int64_t(ctx.sm_count);
  int64_t splits = 1;
  if (blocks < want && lk > 512)
    splits = std::min<int64_t>((lk + 255) / 256, (want + blocks - 1) / blocks);
  p.split_len = ((lk + splits - 1) / splits + kKeys - 1) / kKeys * kKeys;
  if (p.split_len == 0) p.split_len = kKeys;
  splits = std::max<int64_t>(1, (lk + p.split_len - 1) / p.split_len);
  p.splits = int(splits);

  const int64_t total_rows = nb * hq * lq;
  Array stats({splits * total_rows * 2}, Dtype::f32, q.device());  // [splits, rows] (max, sum)
  p.stats = static_cast<float2*>(stats.raw());
  Array partial;
  if (splits > 1) {
    partial = Array({splits * total_rows * d}, Dtype::f32, q.device());  // [splits, rows, D]
    p.partial = partial.data<float>();
  }
  const dim3 grid(unsigned(row_blocks), unsigned(nb * hkv), unsigned(splits));
  switch (q.dtype()) {
    case Dtype::f32: return run_for_head_dim<float>(ctx, p, grid);
    case Dtype::f16: return run_for_head_dim<half_t>(ctx, p, grid);
    case Dtype::bf16: return run_for_head_dim<bfloat_t>(ctx, p, grid);
    default: fail("scaled_dot_product_attention", "unsupported dtype ", dtype_name(q.dtype()));
  }
}

}  // namespace lmx::cuda
