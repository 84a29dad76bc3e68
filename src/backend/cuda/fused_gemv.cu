// The GEMVs of the fused decode step: y = W·v for bf16 W [N, K] and one f32 vector,
// bound by the bandwidth of reading W once. Each warp owns R rows and streams them with
// 16-byte loads, R rows at a time, so that many loads are in flight per thread; the
// vector sits in shared memory as f32. The prologue forms the vector (residual add,
// RMSNorms) in every block, and the epilogue turns the dot products into plain outputs,
// gated activations, or logits with their argmax.
#include "backend/cuda/fused_gemv.cuh"

namespace lmx::cuda::fused {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;

template <Epilogue E>
constexpr bool kGlu = E == Epilogue::glu_silu || E == Epilogue::glu_gelu;

// Outputs a warp produces: R rows, or R/2 gated pairs.
template <Epilogue E, int R>
constexpr int kOutsPerWarp = kGlu<E> ? R / 2 : R;

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

// One loop trip of warp_dots: U steps of 256 columns of each of the R rows, from column c.
template <int R>
struct Trip {
  static constexpr int U = 16 / R;
  uint4 w[R][U];
  __device__ __forceinline__ void load(const bf16* const (&rows)[R], int c) {
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int j = 0; j < R; ++j) w[j][u] = load_stream(rows[j] + c + u * 256);
  }
  __device__ __forceinline__ void add_to(const float* xs, int c, float (&acc)[R]) const {
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int j = 0; j < R; ++j) acc[j] = dot8(w[j][u], xs + c + u * 256, acc[j]);
  }
  // Whether the lane's first trip lies wholly inside a row of k columns.
  static __device__ __forceinline__ bool fits(int k) { return int(threadIdx.x % 32) * 8 + (U - 1) * 256 < k; }
};

// The R dot products of one warp, summed over the warp. U steps of 256 columns per loop
// trip, with every load of a trip issued before its arithmetic. With `use_first`, `first` is
// the lane's first trip, already loaded (before the previous kernel finished).
template <int R>
__device__ __forceinline__ void warp_dots(const bf16* const (&rows)[R], const float* xs, int k, float (&acc)[R],
                                          const Trip<R>& first, bool use_first) {
  constexpr int U = Trip<R>::U;
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int j = 0; j < R; ++j) acc[j] = 0;
  int c = lane * 8;
  if (use_first) {
    first.add_to(xs, c, acc);
    c += U * 256;
  }
  for (; c + (U - 1) * 256 < k; c += U * 256) {
    Trip<R> t;
    t.load(rows, c);
    t.add_to(xs, c, acc);
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
__global__ void __launch_bounds__(kThreads) gemv_kernel(GemvInput in, GemvOutput out, GemvShape shape) {
  extern __shared__ float xs[];  // [K]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, k = in.k;
  constexpr int kOuts = kOutsPerWarp<E, R>;
  const int n_out = kGlu<E> ? out.rows[0] : out.rows[0] + out.rows[1] + out.rows[2];
  const int groups = (n_out + kWarps * kOuts - 1) / (kWarps * kOuts);
  const int prefetch = ::min(shape.prefetch, k);
  // Early: the next kernel may be scheduled now, so that it too can load its first weights
  // while this one runs (it still waits for this one to finish before reading its results).
  // The LM head keeps the late signal: the step ends there.
  const bool early = shape.early && E != Epilogue::logits;
  if (early) allow_next_kernel();

  // The weights do not depend on the previous kernel: load the first trip of this block's
  // first group into registers while that kernel finishes (preload), and start pulling
  // the rest towards L2 when asked to (prefetch).
  const bf16* rows[R];
  warp_rows<R, E>(out, (blockIdx.x * kWarps + warp) * kOuts, n_out, k, rows);
  Trip<R> first;
  const bool preload = shape.preload && int(blockIdx.x) < groups && Trip<R>::fits(k);
  if (preload) first.load(rows, lane * 8);
  prefetch_rows<R>(rows, prefetch);

  wait_for_previous_kernel();
  form_input<false>(in, xs);

  float best = -INFINITY;  // logits: this warp's argmax so far
  int best_idx = INT_MAX;
  // One group of kWarps * kOuts outputs; `use_first` only for the block's first group.
  auto run_group = [&](int grp, bool use_first) {
    const int first_out = (grp * kWarps + warp) * kOuts;  // this warp's first output
    if (grp + gridDim.x < groups) {  // the next group's rows, while this one streams
      const bf16* next[R];
      warp_rows<R, E>(out, first_out + gridDim.x * kWarps * kOuts, n_out, k, next);
      prefetch_rows<R>(next, prefetch);
    }
    warp_rows<R, E>(out, first_out, n_out, k, rows);
    float acc[R];
    warp_dots<R>(rows, xs, k, acc, first, use_first);
    if (lane != 0) return;
    if constexpr (E == Epilogue::plain) {
#pragma unroll
      for (int j = 0; j < R; ++j)
        if (first_out + j < n_out) out.y[first_out + j] = acc[j];
    } else if constexpr (kGlu<E>) {
#pragma unroll
      for (int j = 0; j < kOuts; ++j) {
        const float g = acc[2 * j], u = acc[2 * j + 1];
        if (first_out + j < n_out) out.y[first_out + j] = (E == Epilogue::glu_silu ? silu(g) : gelu_tanh(g)) * u;
      }
    } else {
#pragma unroll
      for (int j = 0; j < R; ++j) {
        float v = acc[j];
        if (out.softcap > 0) v = out.softcap * tanhf(v / out.softcap);
        if (first_out + j < n_out) {
          out.y[first_out + j] = v;
          if (better(v, first_out + j, best, best_idx)) best = v, best_idx = first_out + j;
        }
      }
    }
  };
  // The first group apart, so that the preloaded registers are free for the rest.
  int grp = blockIdx.x;
  if (grp < groups) run_group(grp, preload);
  for (grp += gridDim.x; grp < groups; grp += gridDim.x) run_group(grp, false);
  if (!early) allow_next_kernel();
  if constexpr (E == Epilogue::logits) publish_argmax<false>(out, best, best_idx);
}

template <int R, Epilogue E>
void launch_one(cudaStream_t stream, bool pdl, const GemvInput& in, const GemvOutput& out, const GemvShape& s) {
  const size_t smem = size_t(in.k) * sizeof(float) * staged_arrays(in);
  allow_shared_memory(gemv_kernel<R, E>, 96 * 1024);
  launch("fused gemv", gemv_kernel<R, E>, stream, pdl, dim3(s.blocks), dim3(kThreads), smem, in, out, s);
}

template <Epilogue E>
void launch_rows(cudaStream_t stream, bool pdl, const GemvInput& in, const GemvOutput& out, const GemvShape& s) {
  switch (s.rows_per_warp) {
    case 1:
      if constexpr (!kGlu<E>) return launch_one<1, E>(stream, pdl, in, out, s);
      break;
    case 2: return launch_one<2, E>(stream, pdl, in, out, s);
    case 4: return launch_one<4, E>(stream, pdl, in, out, s);
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
    return GemvShape{r, std::min(blocks, t.blocks_per_sm * sm_count), t.prefetch >= 0 ? t.prefetch : 4096 / r,
                     t.early, t.preload};
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
    case Epilogue::argmax: break;  // the persistent step's only
  }
  fail("fused decode", "the filtered argmax head runs only in the persistent step");
}

}  // namespace lmx::cuda::fused
