// Device code shared by the fused GEMV kernels (fused_gemv.cu) and the persistent decode
// step (fused_persistent.cu): forming a GEMV's input vector in shared memory, the gated
// activations, and the argmax that ends the LM head. Written for any block size (a
// multiple of 32). kPersistent: inside the persistent step, where values that other
// blocks of the same kernel may have written are read through L2 (load_activation), and
// only the worker threads take part (sync_workers).
#pragma once

#include "backend/cuda/fused_common.cuh"

namespace lmx::cuda::fused {

__device__ __forceinline__ float silu(float g) { return g / (1.0f + __expf(-g)); }
__device__ __forceinline__ float gelu_tanh(float g) {
  return 0.5f * g * (1.0f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g)));
}

// Row r of the stacked matrices of a plain GEMV (GemvOutput: w[0], then w[1], then w[2]).
__device__ __forceinline__ const bf16* stacked_row(const GemvOutput& o, int r, int k) {
  // Spelled out rather than looped: an indexed o.w[s] would put the parameters in local memory.
  if (r < o.rows[0]) return o.w[0] + size_t(r) * k;
  r -= o.rows[0];
  if (r < o.rows[1]) return o.w[1] + size_t(r) * k;
  return o.w[2] + size_t(r - o.rows[1]) * k;
}

// Floats of shared memory a GEMV needs: the vector, plus staged copies of the inputs its
// prologue combines.
__host__ __device__ inline int staged_arrays(const GemvInput& in) {
  return 1 + (in.add != nullptr) + (in.add && in.add_norm) + (in.norm != nullptr);
}

// Copies the first `k` values of up to four inputs into shared memory, f32, with every
// load of a trip in flight at once: done one element at a time, each load would wait out
// the whole memory latency before the next.
template <bool kPersistent>
__device__ inline void stage(const float* x, const float* add, const bf16* add_norm, const bf16* norm, bool gemma, int k,
                      float* xs, float* as, float* anw, float* nw) {
  // float4s per array per thread and trip (fewer in the persistent step: 168 registers)
  constexpr int V = kPersistent ? 2 : 4;
  for (int base = threadIdx.x * 4; base < k; base += workers<kPersistent>() * 4 * V) {
    float4 xv[V], av[V];
    uint2 anv[V], nv[V];
#pragma unroll
    for (int u = 0; u < V; ++u) {
      const int i = base + u * workers<kPersistent>() * 4;
      if (i >= k) continue;
      xv[u] = load_activation<kPersistent>(reinterpret_cast<const float4*>(x + i));
      if (add) av[u] = load_activation<kPersistent>(reinterpret_cast<const float4*>(add + i));
      if (add_norm) anv[u] = *reinterpret_cast<const uint2*>(add_norm + i);
      if (norm) nv[u] = *reinterpret_cast<const uint2*>(norm + i);
    }
#pragma unroll
    for (int u = 0; u < V; ++u) {
      const int i = base + u * workers<kPersistent>() * 4;
      if (i >= k) continue;
      *reinterpret_cast<float4*>(xs + i) = xv[u];
      if (add) *reinterpret_cast<float4*>(as + i) = av[u];
      if (add_norm) *reinterpret_cast<float4*>(anw + i) = norm_weights4(anv[u], gemma);
      if (norm) *reinterpret_cast<float4*>(nw + i) = norm_weights4(nv[u], gemma);
    }
  }
  sync_workers<kPersistent>();
}

// Fills xs[0..K) with the vector the product reads (see GemvInput); the staged inputs
// follow it in shared memory.
template <bool kPersistent>
__device__ inline void form_input(const GemvInput& in, float* xs) {
  const int k = in.k;
  const bool add_norm = in.add && in.add_norm;
  float* as = xs + k;
  float* anw = in.add ? as + k : as;
  float* nw = add_norm ? anw + k : anw;
  stage<kPersistent>(in.x, in.add, add_norm ? in.add_norm : nullptr, in.norm, in.gemma, k, xs, as, anw, nw);
  float add_scale = 1.0f;
  if (add_norm) {
    float ss = 0;
    for (int i = threadIdx.x; i < k; i += workers<kPersistent>()) ss = __fmaf_rn(as[i], as[i], ss);
    add_scale = rsqrtf(workers_reduce<kPersistent>(ss, Sum{}) / float(k) + in.eps);
  }
  float ss = 0;
  for (int i = threadIdx.x; i < k; i += workers<kPersistent>()) {
    float v = xs[i];
    if (in.add) v += add_norm ? as[i] * add_scale * anw[i] : as[i];
    xs[i] = v;
    if (in.x_out && blockIdx.x == 0) in.x_out[i] = v;
    ss = __fmaf_rn(v, v, ss);
  }
  if (in.norm) {
    const float r = rsqrtf(workers_reduce<kPersistent>(ss, Sum{}) / float(k) + in.eps);
    for (int i = threadIdx.x; i < k; i += workers<kPersistent>()) xs[i] *= r * nw[i];
  }
  sync_workers<kPersistent>();
}

// The best (value, index) over the warp, in every lane (value returned, index in place).
__device__ __forceinline__ float warp_reduce_argmax(float best, int& idx) {
  for (int o = 16; o > 0; o >>= 1) {
    const float v = __shfl_xor_sync(0xffffffffu, best, o);
    const int i = __shfl_xor_sync(0xffffffffu, idx, o);
    if (better(v, i, best, idx)) best = v, idx = i;
  }
  return best;
}

// acc + w[0..8)·x[0..8) for bf16 w and x, in f32.
__device__ __forceinline__ float dot8_bf16(uint4 w, uint4 x, float acc) {
  acc = __fmaf_rn(bf16_lo(w.x), bf16_lo(x.x), acc);
  acc = __fmaf_rn(bf16_hi(w.x), bf16_hi(x.x), acc);
  acc = __fmaf_rn(bf16_lo(w.y), bf16_lo(x.y), acc);
  acc = __fmaf_rn(bf16_hi(w.y), bf16_hi(x.y), acc);
  acc = __fmaf_rn(bf16_lo(w.z), bf16_lo(x.z), acc);
  acc = __fmaf_rn(bf16_hi(w.z), bf16_hi(x.z), acc);
  acc = __fmaf_rn(bf16_lo(w.w), bf16_lo(x.w), acc);
  acc = __fmaf_rn(bf16_hi(w.w), bf16_hi(x.w), acc);
  return acc;
}

// The dot products of row `a` (and row `b` when kTwo) of a slot with the bf16 vector `xb`
// (the persistent step's; its argmax head reads a row from global memory the same way),
// by one warp, returned to every lane. Lane l takes columns [8l, 8l + 8) of every 256: a
// warp's 16-byte reads cover 512 contiguous bytes, free of bank conflicts. Two rows at
// once read the vector once for both. The vector is bf16, as the plain path's activations
// are; in f32 it would take twice the weights' shared-memory bandwidth.
template <bool kTwo>
__device__ __forceinline__ float2 warp_dots(const bf16* a, const bf16* b, const bf16* xb, int k) {
  auto at = [](const bf16* p, int c) { return *reinterpret_cast<const uint4*>(p + c); };
  float s0 = 0, s1 = 0, t0 = 0, t1 = 0;  // two chains per row: half the dependent FMAs
  int c = (threadIdx.x % 32) * 8;
#pragma unroll 2
  for (; c + 256 < k; c += 512) {
    const uint4 x0 = at(xb, c), x1 = at(xb, c + 256);
    s0 = dot8_bf16(at(a, c), x0, s0);
    s1 = dot8_bf16(at(a, c + 256), x1, s1);
    if constexpr (kTwo) {
      t0 = dot8_bf16(at(b, c), x0, t0);
      t1 = dot8_bf16(at(b, c + 256), x1, t1);
    }
  }
  if (c < k) {
    const uint4 x0 = at(xb, c);
    s0 = dot8_bf16(at(a, c), x0, s0);
    if constexpr (kTwo) t0 = dot8_bf16(at(b, c), x0, t0);
  }
  return make_float2(warp_reduce(s0 + s1, Sum{}), kTwo ? warp_reduce(t0 + t1, Sum{}) : 0.0f);
}

// The last block of the LM head: the argmax over every block's partial becomes the next
// token (state and history), and the counter is reset for the next step.
template <bool kPersistent>
__device__ inline void finish_argmax(const GemvOutput& out) {
  float best = -INFINITY;
  int idx = INT_MAX;
  for (int b = threadIdx.x; b < int(gridDim.x); b += workers<kPersistent>()) {
    const float2 p = __ldcg(out.partial + b);
    if (better(p.x, __float_as_int(p.y), best, idx)) best = p.x, idx = __float_as_int(p.y);
  }
  __shared__ float wv[32];
  __shared__ int wi[32];
  best = warp_reduce_argmax(best, idx);
  if (threadIdx.x % 32 == 0) wv[threadIdx.x / 32] = best, wi[threadIdx.x / 32] = idx;
  sync_workers<kPersistent>();
  if (threadIdx.x == 0) {
    for (int w = 1; w < workers<kPersistent>() / 32; ++w)
      if (better(wv[w], wi[w], wv[0], wi[0])) wv[0] = wv[w], wi[0] = wi[w];
    advance_sequence(out.state, out.history, out.history_len, wi[0]);
    *out.counter = 0;
  }
}

// Every block hands in its best (value, index) of the logits; the last block to do so
// finishes the argmax. Called by every thread of every block, once per step.
template <bool kPersistent>
__device__ inline void publish_argmax(const GemvOutput& out, float best, int best_idx) {
  best = warp_reduce_argmax(best, best_idx);
  __shared__ float wv[32];
  __shared__ int wi[32];
  __shared__ bool last;
  if (threadIdx.x % 32 == 0) wv[threadIdx.x / 32] = best, wi[threadIdx.x / 32] = best_idx;
  sync_workers<kPersistent>();
  if (threadIdx.x == 0) {
    for (int w = 1; w < workers<kPersistent>() / 32; ++w)
      if (better(wv[w], wi[w], wv[0], wi[0])) wv[0] = wv[w], wi[0] = wi[w];
    out.partial[blockIdx.x] = make_float2(wv[0], __int_as_float(wi[0]));
    last = count_arrival(out.counter) == gridDim.x - 1;  // the partial is visible before the count says so
  }
  sync_workers<kPersistent>();
  if (last) finish_argmax<kPersistent>(out);
}

}  // namespace lmx::cuda::fused
