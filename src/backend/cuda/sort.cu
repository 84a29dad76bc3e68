// Sorting (sort, argsort and topk share one kernel) and categorical sampling.
// Rows are sorted with CUB's stable segmented sort on (key, column) pairs (one row with its
// stable radix sort), so ties keep the lower index first in both directions, as on the CPU.
// categorical draws the same random number per row as the CPU backend and inverts the same CDF.
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_segmented_sort.cuh>

#include "backend/cuda/common.cuh"

namespace lmx::cuda {
namespace {

// Sort keys: f32 for the floats (exact for 16-bit ones), int64 for the integers and bool.
template <class T>
using key_t = std::conditional_t<kIsFloat<T>, float, long long>;

// keys[r, c] = in[r, c] as a key (-0 becomes +0: equal values must tie), cols_idx[r, c] = c,
// offsets[r] = r * cols.
template <class T>
__global__ void prepare_kernel(const T* in, key_t<T>* keys, int32_t* cols_idx, int64_t* offsets,
                               int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t e = global_thread(); e < n; e += grid_threads()) {
    key_t<T> k = key_t<T>(load(in[e]));
    if constexpr (kIsFloat<T>) k = k == 0.0f ? 0.0f : k;
    keys[e] = k;
    cols_idx[e] = int32_t(e % cols);
  }
  for (int64_t r = global_thread(); r <= rows; r += grid_threads()) offsets[r] = r * cols;
}

// The first k of each sorted row: values [R, k] from the input, indices [R, k].
template <class T>
__global__ void select_kernel(const T* in, const int32_t* order, T* values, int32_t* indices,
                              int64_t rows, int64_t cols, int64_t k) {
  const int64_t n = rows * k;
  for (int64_t e = global_thread(); e < n; e += grid_threads()) {
    const int64_t r = e / k, i = e % k;
    const int32_t c = order[r * cols + i];
    if (values) values[e] = in[r * cols + c];
    if (indices) indices[e] = c;
  }
}

constexpr int kScanBlock = 256;

// Carries the running total of a chunked block scan from one chunk to the next.
struct RunningTotal {
  double total = 0;
  __device__ double operator()(double chunk_total) {
    const double before = total;
    total += chunk_total;
    return before;
  }
};

// One block per row: softmax weights exp(x - max) in double as the CPU computes them, a
// draw u = unit(seed, row) * total, and the first class whose cumulative weight passes u.
template <class T>
__global__ void __launch_bounds__(kScanBlock)
    categorical_kernel(const T* logits, int32_t* out, int64_t cols, uint64_t seed) {
  using Scan = cub::BlockScan<double, kScanBlock>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ double total_s;
  __shared__ long long pick_s;
  const int64_t row = blockIdx.x;
  const T* x = logits + row * cols;
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) m = fmaxf(m, to_float(x[i]));
  m = block_reduce(m, Max{});
  auto weight = [&](int64_t i) -> double {
    if (i >= cols) return 0.0;
    return isinf(m) ? 1.0
                    : ::exp(double(to_float(x[i]) - m));  // an infinite max: uniform, as the CPU
  };
  // Pass 1: the total weight.
  RunningTotal running;
  for (int64_t base = 0; base < cols; base += blockDim.x) {
    double before;
    Scan(scan_tmp).ExclusiveSum(weight(base + threadIdx.x), before, running);
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    total_s = running.total;
    pick_s = cols;
  }
  __syncthreads();
  const double u = double(random_unit(seed, uint64_t(row))) * total_s;
  // Pass 2: the same scan again, stopping at the first chunk that passes u. A class of
  // weight zero is never picked.
  running = RunningTotal{};
  long long last_positive = -1;
  for (int64_t base = 0; base < cols; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    const double w = weight(i);
    double before;
    Scan(scan_tmp).ExclusiveSum(w, before, running);
    if (w > 0) last_positive = i;
    if (w > 0 && before + w > u) atomicMin(&pick_s, (long long)i);
    __syncthreads();
    if (pick_s < cols) break;
  }
  last_positive = block_reduce(last_positive, Max{});
  if (threadIdx.x == 0) {
    // u passes the total only through rounding: then the last class that has weight.
    const long long pick = pick_s < cols ? pick_s : (last_positive >= 0 ? last_positive : 0);
    out[row] = int32_t(pick);
  }
}

}  // namespace

void sort(const Context& ctx, const Array& in, bool descending, int k, const Array& values,
          const Array& indices) {
  // in [R, C] contiguous -> values/indices [R, k]
  const int64_t rows = in.shape(0), cols = in.shape(1);
  if (rows == 0 || cols == 0 || k == 0) return;
  LMX_CHECK(cols <= int64_t(INT32_MAX), "sort", "rows of ", cols,
            " elements are too long for cuda");
  const Device dev = in.device();
  visit_device_dtype(in.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using K = key_t<T>;
    const int64_t n = rows * cols;
    const Dtype key_dtype = kIsFloat<T> ? Dtype::f32 : Dtype::i32;
    // int64 keys live in an i32 array of twice the length: only the bytes matter here.
    Array keys({n * int64_t(sizeof(K) / 4)}, key_dtype, dev),
        keys_out({n * int64_t(sizeof(K) / 4)}, key_dtype, dev);
    Array cols_idx({n}, Dtype::i32, dev), order({n}, Dtype::i32, dev);
    Array offsets({2 * (rows + 1)}, Dtype::i32, dev);  // [R + 1] int64
    auto* kp = static_cast<K*>(keys.raw());
    auto* kop = static_cast<K*>(keys_out.raw());
    auto* off = static_cast<int64_t*>(offsets.raw());
    prepare_kernel<<<grid_for(n + rows + 1), kBlock, 0, ctx.stream>>>(
        static_cast<const T*>(in.raw()), kp, cols_idx.data<int32_t>(), off, rows, cols);
    check_launch("prepare_kernel");
    // One row takes the device-wide radix sort (stable too): the segmented sort gives a
    // segment one block, and took most of a sampled decode step for one row of 152K logits.
    auto run = [&](void* tmp, size_t& bytes) {
      if (rows == 1)
        return descending ? cub::DeviceRadixSort::SortPairsDescending(
                                tmp, bytes, kp, kop, cols_idx.data<int32_t>(),
                                order.data<int32_t>(), n, 0, int(sizeof(K) * 8), ctx.stream)
                          : cub::DeviceRadixSort::SortPairs(
                                tmp, bytes, kp, kop, cols_idx.data<int32_t>(),
                                order.data<int32_t>(), n, 0, int(sizeof(K) * 8), ctx.stream);
      return descending ? cub::DeviceSegmentedSort::StableSortPairsDescending(
                              tmp, bytes, kp, kop, cols_idx.data<int32_t>(), order.data<int32_t>(),
                              n, rows, off, off + 1, ctx.stream)
                        : cub::DeviceSegmentedSort::StableSortPairs(
                              tmp, bytes, kp, kop, cols_idx.data<int32_t>(), order.data<int32_t>(),
                              n, rows, off, off + 1, ctx.stream);
    };
    size_t tmp_bytes = 0;
    check(run(nullptr, tmp_bytes), "cub sort (size query)");
    Array tmp({int64_t(std::max<size_t>(tmp_bytes, 1))}, Dtype::u8, dev);
    check(run(tmp.raw(), tmp_bytes), "cub sort");
    const int64_t nk = rows * k;
    select_kernel<<<grid_for(nk), kBlock, 0, ctx.stream>>>(
        static_cast<const T*>(in.raw()), order.data<int32_t>(),
        values.valid() ? static_cast<T*>(values.raw()) : nullptr,
        indices.valid() ? indices.data<int32_t>() : nullptr, rows, cols, int64_t(k));
    check_launch("select_kernel");
  });
}

void categorical(const Context& ctx, const Array& logits, uint64_t seed, const Array& out) {
  // logits [R, V] contiguous -> out [R] int32
  const int64_t rows = logits.shape(0), cols = logits.shape(1);
  if (rows == 0) return;
  LMX_CHECK(cols > 0, "categorical", "needs at least one class");
  LMX_CHECK(rows <= int64_t(INT32_MAX), "categorical", rows,
            " rows are too many for one launch on cuda");
  visit_device_dtype(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (kIsFloat<T>) {
      categorical_kernel<<<unsigned(rows), kScanBlock, 0, ctx.stream>>>(
          static_cast<const T*>(logits.raw()), out.data<int32_t>(), cols, seed);
      check_launch("categorical_kernel");
    } else {
      fail("categorical", "expects floating-point logits, got ", dtype_name(logits.dtype()));
    }
  });
}

}  // namespace lmx::cuda
