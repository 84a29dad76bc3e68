// Free functions on Array: creation, element-wise math, matmul, reductions, indexing,
// layout, sorting and sampling. Shapes and meanings follow NumPy/PyTorch.
//
// Every op checks its arguments and throws lmx::Error("[op] ...") before touching any
// data, then hands the work to its device's kernels (ops/kernels.h). Floating-point
// math accumulates in f32 whatever the storage dtype; results are rounded once.
//
// Autodiff: op signatures stay as they are when a gradient tape records (src/autograd).
// Each differentiable op reports what it computed from what through ops/tape.h, and
// fast:: ops whose inputs the tape tracks run as their compositions.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "core/allocator.h"
#include "core/array.h"

namespace lmx {

// ---- creation ----
Array zeros(const Shape& shape, Dtype dtype = Dtype::f32, Device device = Device::cpu());
Array ones(const Shape& shape, Dtype dtype = Dtype::f32, Device device = Device::cpu());
Array full(const Shape& shape, double value, Dtype dtype = Dtype::f32, Device device = Device::cpu());
Array scalar(double value, Dtype dtype = Dtype::f32, Device device = Device::cpu());  // rank 0
Array arange(double start, double stop, double step = 1, Dtype dtype = Dtype::i32,
             Device device = Device::cpu());
// Copies host memory holding `dtype` elements in row-major order.
Array from_host(const void* data, const Shape& shape, Dtype dtype, Device device = Device::cpu());
template <class T>
Array from_vector(const std::vector<T>& v, const Shape& shape, Device device = Device::cpu()) {
  return from_host(v.data(), shape, dtype_of<T>(), device);
}
Array from_floats(const std::vector<float>& v, const Shape& shape, Dtype dtype = Dtype::f32,
                  Device device = Device::cpu());
// Counter-based random numbers: element i depends only on (seed, i), so results are
// the same on every device and thread count.
Array random_uniform(const Shape& shape, uint64_t seed, float low = 0, float high = 1,
                     Dtype dtype = Dtype::f32, Device device = Device::cpu());
Array random_normal(const Shape& shape, uint64_t seed, float mean = 0, float stddev = 1,
                    Dtype dtype = Dtype::f32, Device device = Device::cpu());

// ---- host access (synchronises) ----
std::vector<float> to_floats(const Array& a);  // any dtype, row-major
template <class T>
std::vector<T> to_vector(const Array& a);  // T must match the dtype
float item(const Array& a);                // a rank-0 or one-element array, as f32
Array to_device(const Array& a, Device device);
Array copy(const Array& a);  // a fresh contiguous array

// ---- element-wise ----
enum class UnaryOp { neg, abs, exp, log, sqrt, rsqrt, tanh, sigmoid, silu, gelu_tanh, square,
                     logical_not, sin, cos };
enum class BinaryOp { add, sub, mul, div, pow, maximum, minimum, eq, ne, lt, le, gt, ge,
                      logical_and, logical_or };
Array unary(UnaryOp op, const Array& a);
Array binary(BinaryOp op, const Array& a, const Array& b);  // broadcasts; promotes dtypes

Array neg(const Array& a);
Array abs(const Array& a);
Array exp(const Array& a);
Array log(const Array& a);
Array sqrt(const Array& a);
Array rsqrt(const Array& a);
Array tanh(const Array& a);
Array sigmoid(const Array& a);
Array silu(const Array& a);
Array gelu_tanh(const Array& a);
Array square(const Array& a);
Array logical_not(const Array& a);
Array sin(const Array& a);
Array cos(const Array& a);

Array add(const Array& a, const Array& b);
Array subtract(const Array& a, const Array& b);
Array multiply(const Array& a, const Array& b);
Array divide(const Array& a, const Array& b);
Array power(const Array& a, const Array& b);
Array maximum(const Array& a, const Array& b);
Array minimum(const Array& a, const Array& b);
Array equal(const Array& a, const Array& b);
Array not_equal(const Array& a, const Array& b);
Array less(const Array& a, const Array& b);
Array less_equal(const Array& a, const Array& b);
Array greater(const Array& a, const Array& b);
Array greater_equal(const Array& a, const Array& b);
Array logical_and(const Array& a, const Array& b);
Array logical_or(const Array& a, const Array& b);
// A scalar takes the array's dtype (as NumPy does for Python scalars).
Array add(const Array& a, double b);
Array multiply(const Array& a, double b);
Array operator+(const Array& a, const Array& b);
Array operator-(const Array& a, const Array& b);
Array operator*(const Array& a, const Array& b);
Array operator/(const Array& a, const Array& b);
Array operator-(const Array& a);

Array where(const Array& cond, const Array& a, const Array& b);  // cond is bool
Array astype(const Array& a, Dtype dtype);                        // round to nearest even

// ---- linear algebra ----
// a [..., M, K] x b [..., K, N] -> [..., M, N], batch dims broadcast. Pass transposed
// views (transpose/swapaxes) for A·Bᵀ: no copy is made for them.
Array matmul(const Array& a, const Array& b);

// ---- reductions (empty `axes` means all axes) ----
Array sum(const Array& a, std::vector<int> axes = {}, bool keepdims = false);
Array mean(const Array& a, std::vector<int> axes = {}, bool keepdims = false);
Array max(const Array& a, std::vector<int> axes = {}, bool keepdims = false);
Array min(const Array& a, std::vector<int> axes = {}, bool keepdims = false);
Array logsumexp(const Array& a, std::vector<int> axes = {}, bool keepdims = false);
// int32; the first of equal maxima wins. NaN never wins (as numpy's nanargmax), and a row
// with nothing but NaN gives -1, where torch.argmax would give a NaN's index.
Array argmax(const Array& a, int axis = -1, bool keepdims = false);
Array softmax(const Array& a, int axis = -1);  // computed in f32

// ---- indexing ----
// An index out of range is an lmx::Error naming the op: on the CPU at once; on CUDA, where
// the device checks the indices itself, at the next wait for the device (any read of a
// result, or synchronize), with the bad index's entries zeros meanwhile. Arrays written
// in between from such a result (a KV cache) hold those zeros: validate indices that come
// from outside before uploading them, as generate does with prompt tokens.
Array take(const Array& a, const Array& indices, int axis);  // indices int32/uint32, any shape
Array embedding(const Array& weight, const Array& ids);      // take(weight, ids, 0)
Array take_along_axis(const Array& a, const Array& indices, int axis);
// Python-style a[start:stop:step] on each axis (missing trailing axes are taken whole).
Array slice(const Array& a, std::vector<int64_t> start, std::vector<int64_t> stop,
            std::vector<int64_t> step = {});
Array slice_axis(const Array& a, int axis, int64_t start, int64_t stop);
// Returns a copy of `a` with a[start:stop:step] = update (update broadcasts).
Array slice_update(const Array& a, const Array& update, std::vector<int64_t> start,
                   std::vector<int64_t> stop, std::vector<int64_t> step = {});
// Writes `src` (broadcast, cast) into the memory that `dst` views. This is the only
// op that mutates: it exists for preallocated buffers such as KV caches.
void assign(const Array& dst, const Array& src);

// ---- layout ----
Array reshape(const Array& a, Shape shape);  // one -1 allowed; a view when strides allow
Array flatten(const Array& a);
Array transpose(const Array& a, std::vector<int> perm = {});  // a view; empty = reverse
Array swapaxes(const Array& a, int axis1, int axis2);
Array squeeze(const Array& a, std::vector<int> axes = {});
Array expand_dims(const Array& a, int axis);
Array broadcast_to(const Array& a, const Shape& shape);  // a view with zero strides
Array contiguous(const Array& a);                       // a itself when already contiguous
Array concatenate(const std::vector<Array>& arrays, int axis = 0);

// ---- sorting and sampling (along the last axis) ----
Array sort(const Array& a, bool descending = false);
Array argsort(const Array& a, bool descending = false);  // int32, stable
// The k largest values, largest first, with their int32 indices; ties keep the lower index.
std::pair<Array, Array> topk(const Array& a, int k);
// One draw per row from softmax(logits); [..., V] -> [...] int32.
Array categorical(const Array& logits, uint64_t seed);

// ---- memory ----
MemoryStats memory_stats(Device device = Device::cpu());

}  // namespace lmx
