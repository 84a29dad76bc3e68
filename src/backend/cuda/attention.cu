// Scaled dot-product attention with the CPU's roundings (HF eager): scores rounded to
// the dtype, multiplied by the f32 scale and rounded again; softmax in f32;
// probabilities rounded to the dtype before the value product, which accumulates in f32.
//
// Flash-style tiling: a block holds kRows query rows of one kv head (with GQA these are
// rows of all the query heads that share it) and streams tiles of 32 keys through shared
// memory. Because the rounded probability needs the row's final max and sum, each
// block makes two passes: `stats` finds (max, sum) online, `output` recomputes the
// scores and accumulates p·v. When there are too few blocks to fill the device (decode,
// Lq == 1) the keys are split across blocks (split-K): each split writes its (max, sum)
// and its partial p·v, and a last kernel adds the partials.
#include "backend/cuda/common.cuh"

namespace lmx::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 4;
constexpr int kRows = kWarps * kRowsPerWarp;  // query rows per block
constexpr int kKeys = 32;                     // keys per tile: one per lane
constexpr int kMaxHeadDim = 256;

struct AttnParams {
  const void* q;  // [B, Hq, Lq, D] contiguous
  const void* k;  // [B, Hkv, Lk, D], last axis dense
  const void* v;
  void* out;  // [B, Hq, Lq, D] contiguous
  int64_t k_sb, k_sh, k_sl, v_sb, v_sh, v_sl;
  const int32_t* q_offsets;  // [B]
  const bool* key_valid;     // [B, Lk] or null
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
  if (smem > 48 * 1024)
    check(cudaFuncSetAttribute(attention_kernel<T, kChunks, kPass>,
                               cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
          "cudaFuncSetAttribute");
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
  if (attention_by_gemm(ctx, q, k, v, scale, causal, window, q_offsets, key_valid, out)) return;
  LMX_CHECK(nb * hkv <= 65535, "scaled_dot_product_attention", "batch x kv heads (", nb * hkv,
            ") is above 65535 on cuda");
  AttnParams p{};
  p.q = q.raw();
  p.k = k.raw();
  p.v = v.raw();
  p.out = out.raw();
  p.k_sb = k.strides()[0], p.k_sh = k.strides()[1], p.k_sl = k.strides()[2];
  p.v_sb = v.strides()[0], p.v_sh = v.strides()[1], p.v_sl = v.strides()[2];
  p.q_offsets = q_offsets.data<int32_t>();
  p.key_valid = key_valid ? key_valid->data<bool>() : nullptr;
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
