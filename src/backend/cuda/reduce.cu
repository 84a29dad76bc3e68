// Row reductions over a contiguous [rows, cols] matrix: sum, max, min, logsumexp,
// argmax and softmax, one block per row, accumulating floats in f32 as the CPU does.
#include <cfloat>
#include <climits>

#include "backend/cuda/common.cuh"

namespace lmx::cuda {
namespace {

template <class C>
__device__ __forceinline__ C lowest() {
  if constexpr (std::is_same_v<C, float>)
    return -INFINITY;
  else
    return LLONG_MIN;
}
template <class C>
__device__ __forceinline__ C highest() {
  if constexpr (std::is_same_v<C, float>)
    return INFINITY;
  else
    return LLONG_MAX;
}

template <class T, detail::ReduceOp Op>
__global__ void reduce_kernel(const T* in, T* out, int64_t cols) {
  using C = compute_t<T>;
  const T* x = in + int64_t(blockIdx.x) * cols;
  C acc;
  if constexpr (Op == detail::ReduceOp::sum) {
    acc = 0;
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) acc += load(x[i]);
    acc = block_reduce(acc, Sum{});
  } else if constexpr (Op == detail::ReduceOp::max) {
    acc = lowest<C>();
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) acc = Max{}(acc, load(x[i]));
    acc = block_reduce(acc, Max{});
  } else if constexpr (Op == detail::ReduceOp::min) {
    acc = highest<C>();
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) acc = Min{}(acc, load(x[i]));
    acc = block_reduce(acc, Min{});
  } else {
    float m = -INFINITY;
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) m = fmaxf(m, load(x[i]));
    m = block_reduce(m, Max{});
    float s = 0;
    if (!isinf(m))
      for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) s += cr_exp(load(x[i]) - m);
    s = block_reduce(s, Sum{});
    acc = isinf(m) ? m : m + cr_log(s);  // all -inf gives -inf; any +inf gives +inf
  }
  if (threadIdx.x == 0) out[blockIdx.x] = store<T>(acc);
}

// Rows of a few columns (a gradient summed back over a grouped-query repeat of 2: 524,288
// rows of 2), one thread per row: a block per row spent 318 us on what this reads in a few.
template <class T, detail::ReduceOp Op>
__global__ void reduce_short_rows_kernel(const T* in, T* out, int64_t rows, int64_t cols) {
  using C = compute_t<T>;
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const T* x = in + r * cols;
  C acc;
  if constexpr (Op == detail::ReduceOp::sum) {
    acc = 0;
    for (int64_t i = 0; i < cols; ++i) acc += load(x[i]);
  } else if constexpr (Op == detail::ReduceOp::max) {
    acc = lowest<C>();
    for (int64_t i = 0; i < cols; ++i) acc = Max{}(acc, load(x[i]));
  } else if constexpr (Op == detail::ReduceOp::min) {
    acc = highest<C>();
    for (int64_t i = 0; i < cols; ++i) acc = Min{}(acc, load(x[i]));
  } else {
    float m = -INFINITY, s = 0;
    for (int64_t i = 0; i < cols; ++i) m = fmaxf(m, load(x[i]));
    if (!isinf(m))
      for (int64_t i = 0; i < cols; ++i) s += cr_exp(load(x[i]) - m);
    acc = isinf(m) ? m : m + cr_log(s);
  }
  out[r] = store<T>(acc);
}
constexpr int64_t kShortRow = 16;  // columns up to which a thread takes a whole row

// The better of two (value, index) candidates: the larger value, then the lower index.
template <class C>
__device__ __forceinline__ void better(C& v, int64_t& i, C v2, int64_t i2) {
  if (v2 > v || (v2 == v && i2 < i)) {
    v = v2;
    i = i2;
  }
}

template <class T>
__global__ void argmax_kernel(const T* in, int32_t* out, int64_t cols, bool vectors) {
  using C = compute_t<T>;
  __shared__ C part_v[32];
  __shared__ int64_t part_i[32];
  const T* x = in + int64_t(blockIdx.x) * cols;
  C v = lowest<C>();
  int64_t at = cols;  // past the end: loses every tie
  if constexpr (kIsFloat<T>) {
    // Rows of whole aligned 16-byte vectors (LM-head logits): one load per vector, so
    // that a block streams a 262K-entry row at the copy rate.
    constexpr int kE = kVecElems<T>;
    if (vectors) {
      for (int64_t i = int64_t(threadIdx.x) * kE; i < cols; i += int64_t(blockDim.x) * kE) {
        float e[kE];
        load_vec(x + i, e);
        for (int k = 0; k < kE; ++k) better(v, at, e[k], i + k);
      }
    }
  }
  if (!vectors)
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) better(v, at, load(x[i]), i);
  for (int o = 16; o > 0; o >>= 1)
    better(v, at, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, at, o));
  if (threadIdx.x % 32 == 0) {
    part_v[threadIdx.x / 32] = v;
    part_i[threadIdx.x / 32] = at;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    C best = part_v[0];
    int64_t best_at = part_i[0];
    for (int w = 1; w < int(blockDim.x / 32); ++w) better(best, best_at, part_v[w], part_i[w]);
    out[blockIdx.x] = int32_t(best_at < cols ? best_at : -1);  // a row of NaNs has no index
  }
}

template <class T>
__global__ void softmax_kernel(const T* in, T* out, int64_t cols) {
  const T* x = in + int64_t(blockIdx.x) * cols;
  T* o = out + int64_t(blockIdx.x) * cols;
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) m = fmaxf(m, to_float(x[i]));
  m = block_reduce(m, Max{});
  float s = 0;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) s += cr_exp(to_float(x[i]) - m);
  s = block_reduce(s, Sum{});
  const float inv = 1.0f / s;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x)
    o[i] = from_float<T>(cr_exp(to_float(x[i]) - m) * inv);
}

void check_rows(int64_t rows, const char* op) {
  LMX_CHECK(rows <= int64_t(INT32_MAX), op, rows, " rows are too many for one launch on cuda");
}

}  // namespace

void reduce(const Context& ctx, detail::ReduceOp op, const Array& in, const Array& out) {
  const int64_t rows = in.shape(0), cols = in.shape(1);
  if (rows == 0) return;
  check_rows(rows, "reduce");
  visit_device_dtype(in.dtype(), [&](auto tag) {
    using T = decltype(tag);
    auto launch = [&](auto op_c) {
      constexpr detail::ReduceOp kOp = decltype(op_c)::value;
      if constexpr (kOp == detail::ReduceOp::logsumexp && !kIsFloat<T>) {
        fail("logsumexp", "expects a floating-point array, got ", dtype_name(in.dtype()));
      } else {
        if (cols <= kShortRow) {
          reduce_short_rows_kernel<T, kOp><<<unsigned((rows + 255) / 256), 256, 0, ctx.stream>>>(
              static_cast<const T*>(in.raw()), static_cast<T*>(out.raw()), rows, cols);
          return check_launch("reduce_short_rows_kernel");
        }
        reduce_kernel<T, kOp><<<unsigned(rows), row_block(cols), 0, ctx.stream>>>(
            static_cast<const T*>(in.raw()), static_cast<T*>(out.raw()), cols);
        check_launch("reduce_kernel");
      }
    };
    using R = detail::ReduceOp;
    switch (op) {
      case R::sum: return launch(std::integral_constant<R, R::sum>{});
      case R::max: return launch(std::integral_constant<R, R::max>{});
      case R::min: return launch(std::integral_constant<R, R::min>{});
      case R::logsumexp: return launch(std::integral_constant<R, R::logsumexp>{});
    }
  });
}

void argmax(const Context& ctx, const Array& in, const Array& out) {
  const int64_t rows = in.shape(0), cols = in.shape(1);
  if (rows == 0) return;
  check_rows(rows, "argmax");
  visit_device_dtype(in.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const bool vectors = kIsFloat<T> && cols % (16 / int64_t(sizeof(T))) == 0 && aligned16(in);
    argmax_kernel<<<unsigned(rows), vectors ? 1024 : row_block(cols), 0, ctx.stream>>>(
        static_cast<const T*>(in.raw()), static_cast<int32_t*>(out.raw()), cols, vectors);
    check_launch("argmax_kernel");
  });
}

void softmax(const Context& ctx, const Array& in, const Array& out) {
  const int64_t rows = in.shape(0), cols = in.shape(1);
  if (rows == 0 || cols == 0) return;
  check_rows(rows, "softmax");
  visit_device_dtype(in.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (kIsFloat<T>) {
      softmax_kernel<<<unsigned(rows), row_block(cols), 0, ctx.stream>>>(
          static_cast<const T*>(in.raw()), static_cast<T*>(out.raw()), cols);
      check_launch("softmax_kernel");
    } else {
      fail("softmax", "expects a floating-point array, got ", dtype_name(in.dtype()));
    }
  });
}

}  // namespace lmx::cuda
