// The GEMVs of the fused decode step: y = W·v for bf16 W [N, K] and one f32 vector,
// bound by the bandwidth of reading W once. Each warp owns R rows and streams them with
// 16-byte loads, R rows at a time, so that many loads are in flight per thread; the
// vector sits in shared memory as f32. The prologue forms the vector (residual add,
// RMSNorms) in every block, and the epilogue turns the dot products into plain outputs,
// gated activations, or logits with their argmax.
#include "backend/cuda/fused_common.cuh"

namespace lmx::cuda::fused {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;

template <Epilogue E>
constexpr bool kGlu = E == Epilogue::glu_silu || E == Epilogue::glu_gelu;

// Outputs a warp produces: R rows, or R/2 gated pairs.
template <Epilogue E, int R>
constexpr int kOutsPerWarp = kGlu<E> ? R / 2 : R;

__device__ __forceinline__ const bf16* stacked_row(const GemvOutput& o, int r, int k) {
  // Spelled out rather than looped: an indexed o.w[s] would put the parameters in local memory.
  if (r < o.rows[0]) return o.w[0] + size_t(r) * k;
  r -= o.rows[0];
  if (r < o.rows[1]) return o.w[1] + size_t(r) * k;
  return o.w[2] + size_t(r - o.rows[1]) * k;
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + __expf(-g)); }
__device__ __forceinline__ float gelu_tanh(float g) {
  return 0.5f * g * (1.0f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g)));
}

// Floats of shared memory a GEMV needs: the vector, plus staged copies of the inputs its
// prologue combines.
__host__ __device__ inline int staged_arrays(const GemvInput& in) {
  return 1 + (in.add != nullptr) + (in.add && in.add_norm) + (in.norm != nullptr);
}

// Copies the first `k` values of up to four inputs into shared memory, f32, with every
// load of a trip in flight at once: done one element at a time, each load would wait out
// the whole memory latency before the next.
__device__ void stage(const float* x, const float* add, const bf16* add_norm, const bf16* norm, bool gemma, int k,
                      float* xs, float* as, float* anw, float* nw) {
  constexpr int V = 4;  // float4s per array per thread and trip
  for (int base = threadIdx.x * 4; base < k; base += kThreads * 4 * V) {
    float4 xv[V], av[V];
    uint2 anv[V], nv[V];
#pragma unroll
    for (int u = 0; u < V; ++u) {
      const int i = base + u * kThreads * 4;
      if (i >= k) continue;
      xv[u] = *reinterpret_cast<const float4*>(x + i);
      if (add) av[u] = *reinterpret_cast<const float4*>(add + i);
      if (add_norm) anv[u] = *reinterpret_cast<const uint2*>(add_norm + i);
      if (norm) nv[u] = *reinterpret_cast<const uint2*>(norm + i);
    }
    auto weights = [&](uint2 w) {
      const float o = gemma ? 1.0f : 0.0f;
      return make_float4(o + bf16_lo(w.x), o + bf16_hi(w.x), o + bf16_lo(w.y), o + bf16_hi(w.y));
    };
#pragma unroll
    for (int u = 0; u < V; ++u) {
      const int i = base + u * kThreads * 4;
      if (i >= k) continue;
      *reinterpret_cast<float4*>(xs + i) = xv[u];
      if (add) *reinterpret_cast<float4*>(as + i) = av[u];
      if (add_norm) *reinterpret_cast<float4*>(anw + i) = weights(anv[u]);
      if (norm) *reinterpret_cast<float4*>(nw + i) = weights(nv[u]);
    }
  }
  __syncthreads();
}

// Fills xs[0..K) with the vector the product reads (see GemvInput); the staged inputs
// follow it in shared memory.
__device__ void form_input(const GemvInput& in, float* xs) {
  const int k = in.k;
  const bool add_norm = in.add && in.add_norm;
  float* as = xs + k;
  float* anw = in.add ? as + k : as;
  float* nw = add_norm ? anw + k : anw;
  stage(in.x, in.add, add_norm ? in.add_norm : nullptr, in.norm, in.gemma, k, xs, as, anw, nw);
  float add_scale = 1.0f;
  if (add_norm) {
    float ss = 0;
    for (int i = threadIdx.x; i < k; i += kThreads) ss = __fmaf_rn(as[i], as[i], ss);
    add_scale = rsqrtf(block_reduce(ss, Sum{}) / float(k) + in.eps);
  }
  float ss = 0;
  for (int i = threadIdx.x; i < k; i += kThreads) {
    float v = xs[i];
    if (in.add) v += add_norm ? as[i] * add_scale * anw[i] : as[i];
    xs[i] = v;
    if (in.x_out && blockIdx.x == 0) in.x_out[i] = v;
    ss = __fmaf_rn(v, v, ss);
  }
  if (in.norm) {
    const float r = rsqrtf(block_reduce(ss, Sum{}) / float(k) + in.eps);
    for (int i = threadIdx.x; i < k; i += kThreads) xs[i] *= r * nw[i];
  }
  __syncthreads();
}

// The last block of the LM head: the argmax over every block's partial becomes the next
// token (state and history), and the counter is reset for the next step.
__device__ void finish_argmax(const GemvOutput& out) {
  float best = -INFINITY;
  int idx = INT_MAX;
  for (int b = threadIdx.x; b < int(gridDim.x); b += kThreads) {
    const float2 p = __ldcg(out.partial + b);
    if (better(p.x, __float_as_int(p.y), best, idx)) best = p.x, idx = __float_as_int(p.y);
  }
  __shared__ float wv[kWarps];
  __shared__ int wi[kWarps];
  for (int o = 16; o > 0; o >>= 1) {
    const float v = __shfl_xor_sync(0xffffffffu, best, o);
    const int i = __shfl_xor_sync(0xffffffffu, idx, o);
    if (better(v, i, best, idx)) best = v, idx = i;
  }
  if (threadIdx.x % 32 == 0) wv[threadIdx.x / 32] = best, wi[threadIdx.x / 32] = idx;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; ++w)
      if (better(wv[w], wi[w], wv[0], wi[0])) wv[0] = wv[w], wi[0] = wi[w];
    const int token = wi[0], count = out.state[2];
    out.history[count % out.history_len] = token;
    out.state[0] = token;
    out.state[1] += 1;
    out.state[2] = count + 1;
    *out.counter = 0;
  }
}

// This warp's R weight rows for its outputs from `first`: R consecutive rows, or
// (gate, up) pairs. Rows past the end read the last row again and are never stored.
template <int R, Epilogue E>
__device__ __forceinline__ void warp_rows(const GemvOutput& out, int first, int n_out, int k, const bf16* (&rows)[R]) {
#pragma unroll
  for (int j = 0; j < R; ++j) {
    const int o = ::min(first + (kGlu<E> ? j / 2 : j), ::max(n_out - 1, 0));
    rows[j] = kGlu<E> ? out.w[j % 2] + size_t(o) * k : stacked_row(out, o, k);
  }
}

// The R dot products of one warp, summed over the warp. U steps of 256 columns per loop
// trip, with every load of a trip issued before its arithmetic.
template <int R>
__device__ __forceinline__ void warp_dots(const bf16* const (&rows)[R], const float* xs, int k, float (&acc)[R]) {
  constexpr int U = 16 / R;
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int j = 0; j < R; ++j) acc[j] = 0;
  int c = lane * 8;
  for (; c + (U - 1) * 256 < k; c += U * 256) {
    uint4 w[R][U];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int j = 0; j < R; ++j) w[j][u] = load_stream(rows[j] + c + u * 256);
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int j = 0; j < R; ++j) acc[j] = dot8(w[j][u], xs + c + u * 256, acc[j]);
  }
  for (; c < k; c += 256)
#pragma unroll
    for (int j = 0; j < R; ++j) acc[j] = dot8(load_stream(rows[j] + c), xs + c, acc[j]);
#pragma unroll
  for (int j = 0; j < R; ++j) acc[j] = warp_reduce(acc[j], Sum{});
}

// Blocks take groups of kWarps * kOuts outputs, striding over the grid, so that a block
// forms its input vector once however many outputs it computes (the LM head has
// thousands of groups).
// Asks L2 for the first `cols` columns of each row (128-byte lines, 64 columns each).
template <int R>
__device__ __forceinline__ void prefetch_rows(const bf16* const (&rows)[R], int cols) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int j = 0; j < R; ++j)
    for (int c = lane * 64; c < cols; c += 32 * 64) prefetch_l2(rows[j] + c);
}

template <int R, Epilogue E>
__global__ void __launch_bounds__(kThreads) gemv_kernel(GemvInput in, GemvOutput out, int prefetch) {
  extern __shared__ float xs[];  // [K]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, k = in.k;
  constexpr int kOuts = kOutsPerWarp<E, R>;
  const int n_out = kGlu<E> ? out.rows[0] : out.rows[0] + out.rows[1] + out.rows[2];
  const int groups = (n_out + kWarps * kOuts - 1) / (kWarps * kOuts);

  // Start pulling the first group's weights towards L2 while the previous kernel finishes.
  const bf16* rows[R];
  warp_rows<R, E>(out, (blockIdx.x * kWarps + warp) * kOuts, n_out, k, rows);
  prefetch_rows<R>(rows, ::min(prefetch, k));

  wait_for_previous_kernel();
  form_input(in, xs);

  float best = -INFINITY;  // logits: this warp's argmax so far
  int best_idx = INT_MAX;
  for (int grp = blockIdx.x; grp < groups; grp += gridDim.x) {
    const int first = (grp * kWarps + warp) * kOuts;  // this warp's first output
    if (grp + gridDim.x < groups) {  // the next group's rows, while this one streams
      const bf16* next[R];
      warp_rows<R, E>(out, first + gridDim.x * kWarps * kOuts, n_out, k, next);
      prefetch_rows<R>(next, ::min(prefetch, k));
    }
    warp_rows<R, E>(out, first, n_out, k, rows);
    float acc[R];
    warp_dots<R>(rows, xs, k, acc);
    if (lane != 0) continue;
    if constexpr (E == Epilogue::plain) {
#pragma unroll
      for (int j = 0; j < R; ++j)
        if (first + j < n_out) out.y[first + j] = acc[j];
    } else if constexpr (kGlu<E>) {
#pragma unroll
      for (int j = 0; j < kOuts; ++j) {
        const float g = acc[2 * j], u = acc[2 * j + 1];
        if (first + j < n_out) out.y[first + j] = (E == Epilogue::glu_silu ? silu(g) : gelu_tanh(g)) * u;
      }
    } else {
#pragma unroll
      for (int j = 0; j < R; ++j) {
        float v = acc[j];
        if (out.softcap > 0) v = out.softcap * tanhf(v / out.softcap);
        if (first + j < n_out) {
          out.y[first + j] = v;
          if (better(v, first + j, best, best_idx)) best = v, best_idx = first + j;
        }
      }
    }
  }
  allow_next_kernel();
  if constexpr (E == Epilogue::logits) {
    __shared__ float wv[kWarps];
    __shared__ int wi[kWarps];
    __shared__ bool last;
    if (lane == 0) wv[warp] = best, wi[warp] = best_idx;
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < kWarps; ++w)
        if (better(wv[w], wi[w], wv[0], wi[0])) wv[0] = wv[w], wi[0] = wi[w];
      out.partial[blockIdx.x] = make_float2(wv[0], __int_as_float(wi[0]));
      __threadfence();  // the partial is visible before the count says so
      last = atomicAdd(out.counter, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (last) {
      __threadfence();
      finish_argmax(out);
    }
  }
}

template <int R, Epilogue E>
void launch_one(cudaStream_t stream, bool pdl, const GemvInput& in, const GemvOutput& out, int blocks, int prefetch) {
  const size_t smem = size_t(in.k) * sizeof(float) * staged_arrays(in);
  static const bool kSized = [] {  // up to 96 KiB of shared memory
    check(cudaFuncSetAttribute(gemv_kernel<R, E>, cudaFuncAttributeMaxDynamicSharedMemorySize, 96 * 1024),
          "cudaFuncSetAttribute");
    return true;
  }();
  (void)kSized;
  launch("fused gemv", gemv_kernel<R, E>, stream, pdl, dim3(blocks), dim3(kThreads), smem, in, out, prefetch);
}

template <Epilogue E>
void launch_rows(cudaStream_t stream, bool pdl, const GemvInput& in, const GemvOutput& out, const GemvShape& s) {
  switch (s.rows_per_warp) {
    case 1:
      if constexpr (!kGlu<E>) return launch_one<1, E>(stream, pdl, in, out, s.blocks, s.prefetch);
      break;
    case 2: return launch_one<2, E>(stream, pdl, in, out, s.blocks, s.prefetch);
    case 4: return launch_one<4, E>(stream, pdl, in, out, s.blocks, s.prefetch);
  }
  fail("fused decode", "no GEMV for ", s.rows_per_warp, " rows per warp");
}

}  // namespace

GemvShape gemv_shape(const GemvOutput& out, int sm_count, const GemvTuning& t) {
  const bool glu = out.epilogue == Epilogue::glu_silu || out.epilogue == Epilogue::glu_gelu;
  const int n_out = glu ? out.rows[0] : out.rows[0] + out.rows[1] + out.rows[2];
  auto shape = [&](int r) {
    const int outs = glu ? r / 2 : r;
    const int blocks = (n_out + kWarps * outs - 1) / (kWarps * outs);
    // One loop trip streams 16 loads of 8 columns per lane: 4096 / r columns of each row.
    // Prefetching that much (not whole rows) keeps what is fetched ahead within L2.
    return GemvShape{r, std::min(blocks, t.blocks_per_sm * sm_count), t.prefetch >= 0 ? t.prefetch : 4096 / r};
  };
  if (t.rows_per_warp == 1 || t.rows_per_warp == 2 || t.rows_per_warp == 4)
    return shape(glu ? std::max(2, t.rows_per_warp) : t.rows_per_warp);
  // The most rows per warp (loads in flight per thread) that still gives every SM at
  // least two blocks; small matrices get more, thinner blocks instead.
  for (int r : {4, 2, 1}) {
    const int outs = glu ? r / 2 : r;
    if (outs == 0) break;
    if ((n_out + kWarps * outs - 1) / (kWarps * outs) >= 2 * sm_count) return shape(r);
  }
  return shape(glu ? 2 : 1);
}

void launch_gemv(cudaStream_t stream, bool pdl, const GemvInput& in, const GemvOutput& out, const GemvShape& s) {
  LMX_CHECK(in.k % 8 == 0 && in.k * staged_arrays(in) <= 24576, "fused decode", "GEMV width ", in.k,
            " must be a multiple of 8 and, with its staged inputs, at most 24576 floats");
  switch (out.epilogue) {
    case Epilogue::plain: return launch_rows<Epilogue::plain>(stream, pdl, in, out, s);
    case Epilogue::glu_silu: return launch_rows<Epilogue::glu_silu>(stream, pdl, in, out, s);
    case Epilogue::glu_gelu: return launch_rows<Epilogue::glu_gelu>(stream, pdl, in, out, s);
    case Epilogue::logits: return launch_rows<Epilogue::logits>(stream, pdl, in, out, s);
  }
}

}  // namespace lmx::cuda::fused
