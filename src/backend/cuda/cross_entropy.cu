// Cross-entropy of each row of logits against its target, and its gradient, one block a row
// (fast::cross_entropy_rows, ops/fused_steps.cpp).
//
// Why: composed, a training step's loss converted its [rows, V] logits to f32 and ran the
// log-sum-exp, the target's pick and, backwards, an exponential, a one-hot selection and a
// sum over the whole vocabulary, about ten passes over 1.2 GB for 2,048 rows of Qwen3's
// 151,936 tokens (11 ms of a 4 x 512 LoRA step on an H100). Here the forward reads the logits
// twice and the rule three times, writing the gradient once in the logits' dtype.
#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_ops.h"

namespace lmx::cuda {
namespace {

constexpr int kRowThreads = 1024;

// fn(j, x_j) over the row, 16 bytes a load where `vectors` (V whole aligned vectors).
template <class T, class Fn>
__device__ __forceinline__ void for_row(const T* x, int64_t v, bool vectors, Fn&& fn) {
  constexpr int kE = kVecElems<T>;
  if (vectors) {
    for (int64_t j = int64_t(threadIdx.x) * kE; j < v; j += int64_t(blockDim.x) * kE) {
      float f[kE];
      load_vec(x + j, f);
      for (int e = 0; e < kE; ++e) fn(j + e, f[e]);
    }
    return;
  }
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) fn(j, to_float(x[j]));
}

// The row's maximum and the sum of exp(x - max), in f32.
template <class T>
__device__ __forceinline__ void row_stats(const T* x, int64_t v, bool vectors, float& m, float& s) {
  float mx = -INFINITY;
  for_row(x, v, vectors, [&](int64_t, float f) { mx = fmaxf(mx, f); });
  m = block_reduce(mx, Max{});
  float sum = 0;
  for_row(x, v, vectors, [&](int64_t, float f) { sum += __expf(f - m); });
  s = block_reduce(sum, Sum{});
}

// loss[r] = log Σ_j exp(x_rj) − x_r,target, in f32.
template <class T>
__global__ void __launch_bounds__(kRowThreads) cross_entropy_kernel(const T* logits, const int32_t* targets,
                                                                     float* loss, int64_t v, bool vectors) {
  const T* x = logits + int64_t(blockIdx.x) * v;
  float m, s;
  row_stats(x, v, vectors, m, s);
  if (threadIdx.x == 0) loss[blockIdx.x] = m + logf(s) - to_float(x[targets[blockIdx.x]]);
}

// d_r = g_r · (softmax(x_r) − onehot(target_r)), rounded to T; zeros where g_r is 0 (a row
// the loss leaves out, whose logits may be anything, NaN included).
template <class T>
__global__ void __launch_bounds__(kRowThreads) cross_entropy_grad_kernel(const T* logits, const int32_t* targets,
                                                                          const float* g, T* d_all, int64_t v,
                                                                          bool vectors) {
  const T* x = logits + int64_t(blockIdx.x) * v;
  T* d = d_all + int64_t(blockIdx.x) * v;
  const float gr = g[blockIdx.x];
  if (gr == 0.0f) {
    for (int64_t j = threadIdx.x; j < v; j += blockDim.x) d[j] = from_float<T>(0.0f);
    return;
  }
  float m, s;
  row_stats(x, v, vectors, m, s);
  const float scale = gr / s;
  const int64_t t = targets[blockIdx.x];
  for_row(x, v, vectors, [&](int64_t j, float f) { d[j] = from_float<T>(__expf(f - m) * scale - (j == t ? gr : 0)); });
}

template <class Fn>
void run_rows(const Array& logits, Fn&& fn) {
  const int64_t rows = logits.shape(0), v = logits.shape(1);
  LMX_CHECK(rows <= int64_t(INT32_MAX), "cross_entropy_rows", rows, " rows are too many for one launch on cuda");
  visit_device_dtype(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (kIsFloat<T>) fn(T{}, unsigned(rows), v % kVecElems<T> == 0 && aligned16(logits));
  });
}

}  // namespace

void cross_entropy_rows(const Context& ctx, const Array& logits, const Array& targets, const Array& loss) {
  if (logits.shape(0) == 0) return;
  run_rows(logits, [&](auto tag, unsigned rows, bool vectors) {
    using T = decltype(tag);
    cross_entropy_kernel<T><<<rows, kRowThreads, 0, ctx.stream>>>(static_cast<const T*>(logits.raw()),
                                                                   targets.data<int32_t>(), loss.data<float>(),
                                                                   logits.shape(1), vectors);
    check_launch("cross_entropy_kernel");
  });
}

void cross_entropy_rows_grad(const Context& ctx, const Array& logits, const Array& targets, const Array& g,
                             const Array& d_logits) {
  if (logits.shape(0) == 0) return;
  run_rows(logits, [&](auto tag, unsigned rows, bool vectors) {
    using T = decltype(tag);
    cross_entropy_grad_kernel<T><<<rows, kRowThreads, 0, ctx.stream>>>(
        static_cast<const T*>(logits.raw()), targets.data<int32_t>(), g.data<float>(),
        static_cast<T*>(d_logits.raw()), logits.shape(1), vectors);
    check_launch("cross_entropy_grad_kernel");
  });
}

}  // namespace lmx::cuda
