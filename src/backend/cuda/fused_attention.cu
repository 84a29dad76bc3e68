// Decode attention for the fused step, split over the keys (split-K, "flash decoding"):
// block (g, s) takes kv head g and the s-th chunk of the visible positions, for all the
// query heads that share g. Each block first forms what it needs of the new token (its
// query heads and key after the q/k RMSNorm and RoPE, and the value) from the QKV GEMV's
// output; the block whose chunk holds the new position also stores its key and value in
// the cache. The last block of each kv head to finish merges the chunks' softmax partials,
// so no second kernel is launched.
#include "backend/cuda/fused_common.cuh"

namespace lmx::cuda::fused {
namespace {

constexpr int kThreads = 128;

// One head vector of D values: RMSNorm (optional) then rotate-half RoPE at `pos`, by one
// warp. With `round`, the result is rounded to bf16 as the cache stores it.
__device__ void norm_rope(const float* x, const bf16* norm, bool gemma, float eps, const float* inv_freq, int pos,
                          int d, bool round, float* out) {
  const int lane = threadIdx.x % 32, half = d / 2;
  float r = 1.0f;
  if (norm) {
    float ss = 0;
    for (int i = lane; i < d; i += 32) ss = __fmaf_rn(x[i], x[i], ss);
    r = rsqrtf(warp_reduce(ss, Sum{}) / float(d) + eps);
  }
  for (int i = lane; i < half; i += 32) {
    float a = x[i] * r, b = x[i + half] * r;
    if (norm) a *= norm_weight(norm, i, gemma), b *= norm_weight(norm, i + half, gemma);
    float s, c;
    sincosf(float(pos) * inv_freq[i], &s, &c);
    float lo = a * c - b * s, hi = b * c + a * s;
    if (round) lo = __bfloat162float(__float2bfloat16_rn(lo)), hi = __bfloat162float(__float2bfloat16_rn(hi));
    out[i] = lo;
    out[i + half] = hi;
  }
}

__global__ void __launch_bounds__(kThreads) attention_kernel(AttentionStep a) {
  extern __shared__ float sm[];
  const int g = blockIdx.x, split = blockIdx.y, d = a.head_dim;
  const int group = a.n_heads / a.n_kv_heads;  // query heads per kv head
  float* q = sm;                  // [group, D]
  float* k_new = q + group * d;   // [D]
  float* v_new = k_new + d;       // [D]
  float* e = v_new + d;           // [group, chunk]: scores, then softmax weights
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  wait_for_previous_kernel();
  const int pos = a.state[1];
  const int lo = a.window > 0 ? ::max(0, pos - a.window + 1) : 0;
  const int begin = lo + split * a.chunk, end = ::min(begin + a.chunk, pos + 1), n = ::max(0, end - begin);

  const float* q_in = a.qkv + size_t(g) * group * d;
  const float* k_in = a.qkv + size_t(a.n_heads) * d + size_t(g) * d;
  const float* v_in = a.qkv + size_t(a.n_heads + a.n_kv_heads) * d + size_t(g) * d;
  for (int vec = warp; vec < group + 2; vec += kThreads / 32) {
    if (vec < group)
      norm_rope(q_in + vec * d, a.q_norm, a.gemma, a.eps, a.inv_freq, pos, d, false, q + vec * d);
    else if (vec == group)
      norm_rope(k_in, a.k_norm, a.gemma, a.eps, a.inv_freq, pos, d, true, k_new);
    else
      for (int i = lane; i < d; i += 32) v_new[i] = __bfloat162float(__float2bfloat16_rn(v_in[i]));
  }
  __syncthreads();

  const size_t head_base = size_t(g) * a.slots * d;
  if (pos >= begin && pos < end) {  // this block holds the new position: store it
    const size_t at = head_base + size_t(pos % a.slots) * d;
    for (int i = threadIdx.x; i < d; i += kThreads) {
      a.k_cache[at + i] = __float2bfloat16_rn(k_new[i]);
      a.v_cache[at + i] = __float2bfloat16_rn(v_new[i]);
    }
  }

  // Scores q·k·scale for every (query head, key) pair of the chunk.
  for (int idx = threadIdx.x; idx < group * n; idx += kThreads) {
    const int j = idx / n, p = begin + idx % n;
    const float* qj = q + j * d;
    float s = 0;
    if (p == pos) {
      for (int i = 0; i < d; ++i) s = __fmaf_rn(qj[i], k_new[i], s);
    } else {
      const bf16* kp = a.k_cache + head_base + size_t(p % a.slots) * d;
      for (int i = 0; i < d; i += 8) s = dot8(*reinterpret_cast<const uint4*>(kp + i), qj + i, s);
    }
    e[j * a.chunk + idx % n] = s * a.scale;
  }
  __syncthreads();

  // Softmax statistics per query head, one warp each; e becomes exp(s - m).
  __shared__ float m_head[32], l_head[32];
  for (int j = warp; j < group; j += kThreads / 32) {
    float m = -INFINITY;
    for (int i = lane; i < n; i += 32) m = fmaxf(m, e[j * a.chunk + i]);
    m = warp_reduce(m, Max{});
    float l = 0;
    for (int i = lane; i < n; i += 32) {
      const float w = __expf(e[j * a.chunk + i] - m);
      e[j * a.chunk + i] = w;
      l += w;
    }
    l = warp_reduce(l, Sum{});
    if (lane == 0) m_head[j] = m, l_head[j] = l;
  }
  __syncthreads();

  // This chunk's partial: m, l and the unnormalised weighted sum of values.
  const int stride = d + 2;
  for (int idx = threadIdx.x; idx < group * d; idx += kThreads) {
    const int j = idx / d, i = idx % d;
    float acc = 0;
    for (int t = 0; t < n; ++t) {
      const int p = begin + t;
      const float v = p == pos ? v_new[i] : __bfloat162float(a.v_cache[head_base + size_t(p % a.slots) * d + i]);
      acc = __fmaf_rn(e[j * a.chunk + t], v, acc);
    }
    float* part = a.partial + (size_t(g * group + j) * a.splits + split) * stride;
    if (a.splits == 1) {
      a.out[size_t(g * group + j) * d + i] = acc / l_head[j];
      continue;
    }
    part[2 + i] = acc;
    if (i == 0) part[0] = n > 0 ? m_head[j] : -INFINITY, part[1] = n > 0 ? l_head[j] : 0.0f;
  }
  allow_next_kernel();
  if (a.splits == 1) return;

  // The last block of this kv head merges the chunks.
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(a.counter + g, 1u) == unsigned(a.splits) - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int idx = threadIdx.x; idx < group * d; idx += kThreads) {
    const int j = idx / d, i = idx % d;
    const float* part = a.partial + size_t(g * group + j) * a.splits * stride;
    float m = -INFINITY;
    for (int s = 0; s < a.splits; ++s) m = fmaxf(m, __ldcg(part + s * stride));
    float l = 0, acc = 0;
    for (int s = 0; s < a.splits; ++s) {
      const float ms = __ldcg(part + s * stride);
      if (ms == -INFINITY) continue;
      const float w = __expf(ms - m);
      l = __fmaf_rn(__ldcg(part + s * stride + 1), w, l);
      acc = __fmaf_rn(__ldcg(part + s * stride + 2 + i), w, acc);
    }
    a.out[size_t(g * group + j) * d + i] = acc / l;
  }
  if (threadIdx.x == 0) a.counter[g] = 0;
}

__global__ void embed_kernel(const bf16* embed, const int* state, float scale, int hidden, float* x) {
  wait_for_previous_kernel();
  const bf16* row = embed + size_t(state[0]) * hidden;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < hidden; i += gridDim.x * blockDim.x) {
    const float v = __bfloat162float(row[i]);
    x[i] = scale > 0 ? v * scale : v;
  }
  allow_next_kernel();
}

}  // namespace

void attention_split(int slots, int& chunk, int& splits) {
  // At least 64 keys per block, and at most 128 blocks per kv head.
  chunk = std::max(64, (slots + 127) / 128);
  splits = (slots + chunk - 1) / chunk;
}

void launch_attention(cudaStream_t stream, bool pdl, const AttentionStep& a) {
  const int group = a.n_heads / a.n_kv_heads;
  const size_t smem = sizeof(float) * (size_t(group) * a.head_dim + 2 * a.head_dim + size_t(group) * a.chunk);
  LMX_CHECK(smem <= 96 * 1024 && group <= 32 && a.head_dim % 8 == 0, "fused decode",
            "attention with ", group, " query heads per kv head and head_dim ", a.head_dim, " is not supported");
  static const bool kSized = [] {
    check(cudaFuncSetAttribute(attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 96 * 1024),
          "cudaFuncSetAttribute");
    return true;
  }();
  (void)kSized;
  launch("fused attention", attention_kernel, stream, pdl, dim3(a.n_kv_heads, a.splits), dim3(kThreads), smem, a);
}

void launch_embed(cudaStream_t stream, bool pdl, const bf16* embed, const int* state, float scale, int hidden,
                  float* x) {
  launch("fused embedding", embed_kernel, stream, pdl, dim3((hidden + 255) / 256), dim3(256), 0, embed, state,
         scale, hidden, x);
}

}  // namespace lmx::cuda::fused
