// Causal self-attention of short sequences with no cache (fast::self_attention), in one
// kernel where the composition takes seven: two rope_heads passes, a transposed copy of
// the values, the score GEMM, the masked softmax, the value GEMM and a transposed copy of
// the output.
//
// One block per (batch row, kv head), or per part of a kv head's query heads when the grid
// would be small. It reads the kv head's keys and values and the
// query heads that share them straight from the projections in token order, applies the
// per-head norm and RoPE, and keeps everything in shared memory: scores and products are
// 16x16 tensor-core tiles (WMMA, f32 accumulation). The output goes back in token order,
// ready for the output projection. The roundings are the composition's: q and k rounded
// after RoPE, scores rounded, scaled and rounded again, the f32 softmax rounded before it
// multiplies the values.
//
// LMX_SELF_ATTENTION_KERNEL=0 turns the kernel off (the op then composes), for measuring
// what it gains.
#include <mma.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "backend/cuda/rope.cuh"

namespace lmx::cuda {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kWarps = 8, kThreads = 32 * kWarps;
constexpr int kTile = 16;       // WMMA tile side
constexpr int kMaxTokens = 128;  // bounds shared memory for the longest rows
constexpr int kMaxHeadDim = 128;  // see self_attention() below
constexpr int kPad = 8;          // elements added to each 16-bit shared row: rows start in different banks

// Where each array of a block sits in shared memory, in bytes; every array starts on a
// 128-byte boundary (WMMA wants 32). Arrays whose lives do not overlap share space, so
// that more blocks fit on an SM: the angles die with the rotation, before the scores and
// probabilities are written; the queries die with the scores, before the value tiles are
// staged.
struct SmemPlan {
  int lp, ld, ls, lpp, la;  // tokens padded to whole tiles; row strides of q/k/v, scores, probabilities, angles
  size_t q, stage, k, v, angles, scores, probs, bytes;
  __host__ __device__ SmemPlan(int nl, int d, int group) {
    lp = (nl + kTile - 1) / kTile * kTile;
    ld = d + kPad, ls = lp + 4, lpp = lp + kPad, la = d / 2 + 4;
    auto next = [](size_t at, size_t n) { return (at + n + 127) / 128 * 128; };
    auto larger = [](size_t a, size_t b) { return a > b ? a : b; };
    q = stage = 0;  // [group, lp, ld] 16-bit, then [warps, 16, 16] f32
    k = next(q, larger(size_t(group) * lp * ld * 2, size_t(kWarps) * kTile * kTile * 4));
    v = next(k, size_t(lp) * ld * 2);  // k and v [lp, ld] 16-bit
    angles = scores = next(v, size_t(lp) * ld * 2);  // cos [lp, la], sin [lp, la] f32, then [group, lp, ls] f32
    probs = next(scores, size_t(group) * lp * ls * 4);  // [group, lp, lpp] 16-bit
    bytes = larger(next(angles, size_t(lp) * la * 8), next(probs, size_t(group) * lp * lpp * 2));
  }
};

// 16 bytes from global to shared memory without passing through registers (cp.async);
// complete after cp.async.wait_all.
__device__ __forceinline__ void copy16_async(void* smem_dst, const void* src) {
  const unsigned dst = unsigned(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}

// The WMMA element type of T.
template <class T>
using MmaT = std::conditional_t<std::is_same_v<T, bfloat_t>, __nv_bfloat16, __half>;

template <class T, class W, bool kGemmaNorm>
__global__ void __launch_bounds__(kThreads)
    self_attention_kernel(const T* q, const T* k, const T* v, const float* inv_freq, const int32_t* offsets,
                          const W* q_norm, const W* k_norm, float eps, float scale, int window, T* out, int nl,
                          int hq, int hkv, int d, int lanes, int parts) {
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
  float* cs = reinterpret_cast<float*>(smem + p.angles);
  float* sn = cs + p.lp * p.la;
  float* scores = reinterpret_cast<float*>(smem + p.scores);
  T* probs = reinterpret_cast<T*>(smem + p.probs);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, lp = p.lp;

  // Rows into shared memory as they are: the group's query heads, then the key, then the
  // value, 16 bytes per asynchronous copy, all in flight at once; rows past the sequence
  // are zeros. (Row by row through registers, every row waited out a memory latency.)
  // A thread keeps one column of 16 bytes and steps over rows: no index divisions in the
  // loops, which had cost more instructions than the copies.
  auto row = [&](int kind, int l) {  // kind < group: that query head; group: key; group + 1: value
    return (kind < group ? qs + size_t(kind) * lp * p.ld : kind == group ? ks : vs) + size_t(l) * p.ld;
  };
  const int vecs = d / kE, rows_per_pass = kThreads / vecs;
  const int my_row = int(threadIdx.x) / vecs, my_col = int(threadIdx.x) % vecs * kE;
  for (int kind = 0; my_row < rows_per_pass && kind < group + 2; ++kind) {
    const bool query = kind < group;
    const int64_t token_stride = int64_t(query ? hq : hkv) * d;
    const T* src = (query ? q + (int64_t(b) * nl * hq + first_head + kind) * d
                          : (kind == group ? k : v) + (int64_t(b) * nl * hkv + g) * d) + my_col;
    T* dst = row(kind, 0) + my_col;
    for (int l = my_row; l < lp; l += rows_per_pass) {
      if (l < nl)
        copy16_async(dst + l * p.ld, src + l * token_stride);
      else
        *reinterpret_cast<uint4*>(dst + l * p.ld) = make_uint4(0, 0, 0, 0);
    }
  }
  asm volatile("cp.async.commit_group;\n" ::);
  // The angles of every token, once for all heads of the block, while the rows arrive.
  const int angle_steps = kThreads / half, my_j = int(threadIdx.x) % half;
  if (int(threadIdx.x) / half < angle_steps) {
    const float freq = inv_freq[my_j];
    for (int l = int(threadIdx.x) / half; l < nl; l += angle_steps)
      rope_angle<T>(int64_t(offsets[b]) + l, freq, cs[l * p.la + my_j], sn[l * p.la + my_j]);
  }
  asm volatile("cp.async.wait_all;\n" ::: "memory");
  __syncthreads();

  // Query and key rows normed and rotated in place, `lanes` lanes per row. A warp's rows
  // are all of one kind (lp is a multiple of 16 and a warp holds at most 16 rows), so
  // norm_rotate's shuffles run on whole warps.
  const int rows_per_warp = 32 / lanes;
  const int64_t j0 = int64_t(lane % lanes) * kE;
  for (int r = warp * rows_per_warp + lane / lanes; r - lane / lanes < (group + 1) * lp;
       r += kWarps * rows_per_warp) {
    const int kind = r / lp, l = r % lp;
    const bool live = l < nl && j0 < half;
    T* x = row(kind, l);
    float lo[kE], hi[kE];
    if (live) {
      load_vec(x + j0, lo), load_vec(x + half + j0, hi);
    } else {
      for (int i = 0; i < kE; ++i) lo[i] = hi[i] = 0;
    }
    norm_rotate<T, W, kGemmaNorm>(lo, hi, live, j0, half, lanes, kind < group ? q_norm : k_norm, eps,
                                  cs + l * p.la, sn + l * p.la);
    if (live) store_vec(x + j0, lo), store_vec(x + half + j0, hi);
  }
  __syncthreads();

  // Scores q·kᵀ, tile by tile: only tiles on or below the diagonal hold visible keys.
  using MT = MmaT<T>;
  const int nt = lp / kTile, tri = nt * (nt + 1) / 2;
  for (int t = warp; t < group * tri; t += kWarps) {
    const int j = t / tri;
    int u = t % tri, rt = 0;
    while (u > rt) u -= ++rt;  // (rt, ct = u) with u <= rt
    wmma::fragment<wmma::accumulator, kTile, kTile, kTile, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int kk = 0; kk < d; kk += kTile) {
      wmma::fragment<wmma::matrix_a, kTile, kTile, kTile, MT, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, kTile, kTile, kTile, MT, wmma::col_major> bt;  // kᵀ: k's rows as columns
      wmma::load_matrix_sync(a, reinterpret_cast<const MT*>(qs + (size_t(j) * lp + rt * kTile) * p.ld + kk), p.ld);
      wmma::load_matrix_sync(bt, reinterpret_cast<const MT*>(ks + size_t(u) * kTile * p.ld + kk), p.ld);
      wmma::mma_sync(acc, a, bt, acc);
    }
    wmma::store_matrix_sync(scores + (size_t(j) * lp + rt * kTile) * p.ls + u * kTile, acc, p.ls,
                            wmma::mem_row_major);
  }
  __syncthreads();

  // Softmax per query row, one warp per row, a key per lane and pass, in place in the
  // row of scores. The score is rounded as the GEMM's output, scaled and rounded again;
  // the probabilities are rounded to T. Keys past the row (and past the window) get
  // probability zero, as do rows past the sequence.
  for (int row = warp; row < group * lp; row += kWarps) {
    const int i = row % lp, first = window > 0 ? ::max(0, i - window + 1) : 0;
    float* sr = scores + size_t(row) * p.ls;
    T* pr = probs + size_t(row) * p.lpp;
    float m = -INFINITY;
    for (int t = lane; t < lp; t += 32) {
      const float e = i < nl && t >= first && t <= i ? round_to<T>(round_to<T>(sr[t]) * scale) : -INFINITY;
      sr[t] = e;
      m = fmaxf(m, e);
    }
    m = warp_reduce(m, Max{});
    float sum = 0;
    for (int t = lane; t < lp; t += 32) {
      const float e = sr[t] == -INFINITY ? 0.0f : expf(sr[t] - m);
      sr[t] = e;
      sum += e;
    }
    sum = warp_reduce(sum, Sum{});
    for (int t = lane; t < lp; t += 32) pr[t] = from_float<T>(sum > 0 ? sr[t] / sum : 0.0f);
  }
  __syncthreads();

  // Outputs p·v, one 16x16 tile per warp at a time (keys past the diagonal tile have
  // probability zero), staged in shared memory and stored in token order, 16 bytes a lane.
  float* stage = reinterpret_cast<float*>(smem + p.stage) + warp * kTile * kTile;
  const int dt_count = d / kTile;
  for (int t = warp; t < group * nt * dt_count; t += kWarps) {
    const int j = t / (nt * dt_count), rt = t / dt_count % nt, dt = t % dt_count;
    wmma::fragment<wmma::accumulator, kTile, kTile, kTile, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int kt = 0; kt <= rt; ++kt) {
      wmma::fragment<wmma::matrix_a, kTile, kTile, kTile, MT, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, kTile, kTile, kTile, MT, wmma::row_major> bv;
      wmma::load_matrix_sync(a, reinterpret_cast<const MT*>(probs + (size_t(j) * lp + rt * kTile) * p.lpp + kt * kTile),
                             p.lpp);
      wmma::load_matrix_sync(bv, reinterpret_cast<const MT*>(vs + size_t(kt) * kTile * p.ld + dt * kTile), p.ld);
      wmma::mma_sync(acc, a, bv, acc);
    }
    wmma::store_matrix_sync(stage, acc, kTile, wmma::mem_row_major);
    __syncwarp();
    // 16 rows of 16 values: each lane takes half a row (8 values of a 16-bit T = 16 bytes).
    const int r = lane / 2, c0 = lane % 2 * 8, l = rt * kTile + r;
    if (l < nl) {
      T* o = out + ((int64_t(b) * nl + l) * hq + first_head + j) * d + dt * kTile + c0;
      const float4 lo4 = *reinterpret_cast<const float4*>(stage + r * kTile + c0),
                   hi4 = *reinterpret_cast<const float4*>(stage + r * kTile + c0 + 4);
      const float vals[kE] = {lo4.x, lo4.y, lo4.z, lo4.w, hi4.x, hi4.y, hi4.z, hi4.w};
      store_vec(o, vals);
    }
    __syncwarp();
  }
}

}  // namespace

bool self_attention(const Context& ctx, const Array& q, const Array& k, const Array& v, const Array& inv_freq,
                    const Array& offsets, const Array* q_norm, const Array* k_norm, float eps,
                    fast::RmsNormStyle style, float scale, int64_t window, const Array& out) {
  const int64_t nb = q.shape(0), nl = q.shape(1), hq = q.shape(2), hkv = k.shape(2), d = q.shape(3);
  static const bool enabled = [] {
    const char* v = std::getenv("LMX_SELF_ATTENTION_KERNEL");
    return !v || std::strcmp(v, "0") != 0;
  }();
  if (!enabled) return false;
  if (q.size() == 0) return true;
  const bool sixteen_bit = q.dtype() == Dtype::bf16 || q.dtype() == Dtype::f16;
  // 16-bit elements in 16-byte vectors of 8; a head of at least 32 values keeps a warp's
  // rows in one kind (see the kernel). Heads wider than kMaxHeadDim compose: for Gemma 3's
  // 256-wide heads the composition measured 1-2% faster in classification.
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
  bool ran = false;
  visit_device_dtype(q.dtype(), [&](auto tag) {
    using T = decltype(tag);
    visit_device_dtype(q_norm ? q_norm->dtype() : q.dtype(), [&](auto wtag) {
      using W = decltype(wtag);
      if constexpr ((std::is_same_v<T, bfloat_t> || std::is_same_v<T, half_t>) && kIsFloat<W>) {
        auto* kernel = style == fast::RmsNormStyle::gemma ? self_attention_kernel<T, W, true>
                                                          : self_attention_kernel<T, W, false>;
        check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(plan.bytes)),
              "cudaFuncSetAttribute");
        const W* qn = q_norm ? static_cast<const W*>(q_norm->raw()) : nullptr;
        const W* kn = k_norm ? static_cast<const W*>(k_norm->raw()) : nullptr;
        kernel<<<unsigned(nb * hkv * parts), kThreads, plan.bytes, ctx.stream>>>(
            static_cast<const T*>(q.raw()), static_cast<const T*>(k.raw()), static_cast<const T*>(v.raw()),
            inv_freq.data<float>(), offsets.data<int32_t>(), qn, kn, eps, scale, int(std::min<int64_t>(window, nl + 1)),
            static_cast<T*>(out.raw()), int(nl), int(hq), int(hkv), int(d), lanes, int(parts));
        check_launch("self_attention_kernel");
        ran = true;
      }
    });
  });
  return ran;
}

}  // namespace lmx::cuda
