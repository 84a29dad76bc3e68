// Device-side building blocks shared by the .cu files: the element types, conversions
// with the CPU backend's semantics, a dtype visitor, launch sizes and the strided layout
// that element-wise kernels walk.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "backend/cuda/cuda_ops.h"
#include "core/error.h"

namespace lmx::cuda {

using half_t = __half;
using bfloat_t = __nv_bfloat16;

// The type kernels use for values stored as host type T: CUDA's own 16-bit floats in
// place of core/dtype.h's storage structs, the rest as they are.
template <class T>
struct DeviceType {
  using type = T;
};
template <>
struct DeviceType<f16_t> {
  using type = half_t;
};
template <>
struct DeviceType<bf16_t> {
  using type = bfloat_t;
};

// Calls f(T{}) with the device type that stores dtype t.
template <class F>
decltype(auto) visit_device_dtype(Dtype t, F&& f) {
  return visit_dtype(t, [&](auto host) -> decltype(auto) {
    return f(typename DeviceType<decltype(host)>::type{});
  });
}

template <class T>
constexpr bool kIsFloat =
    std::is_same_v<T, float> || std::is_same_v<T, half_t> || std::is_same_v<T, bfloat_t>;

// As the CPU backend computes: f32 for floats, int64 for integers and bool.
template <class T>
using compute_t = std::conditional_t<kIsFloat<T>, float, long long>;

template <class T>
__device__ __forceinline__ float to_float(T v) {
  if constexpr (std::is_same_v<T, half_t>)
    return __half2float(v);
  else if constexpr (std::is_same_v<T, bfloat_t>)
    return __bfloat162float(v);
  else
    return float(v);
}
// Round to nearest even, as lmx::from_f32.
template <class T>
__device__ __forceinline__ T from_float(float v) {
  if constexpr (std::is_same_v<T, half_t>)
    return __float2half_rn(v);
  else if constexpr (std::is_same_v<T, bfloat_t>)
    return __float2bfloat16_rn(v);
  else if constexpr (std::is_same_v<T, bool>)
    return v != 0.0f;
  else
    return T(v);
}
// The value a float takes after one rounding to T (identity for f32).
template <class T>
__device__ __forceinline__ float round_to(float v) {
  return to_float(from_float<T>(v));
}

template <class T>
__device__ __forceinline__ compute_t<T> load(T v) {
  if constexpr (kIsFloat<T>)
    return to_float(v);
  else
    return (long long)(v);
}
template <class T, class C>
__device__ __forceinline__ T store(C v) {
  if constexpr (std::is_same_v<T, bool>)
    return v != 0;
  else if constexpr (kIsFloat<T>)
    return from_float<T>(float(v));
  else
    return T(v);  // integers wrap modulo 2^n
}

// The range of an integer type, usable in device code.
template <class T>
struct IntRange;
template <>
struct IntRange<int32_t> {
  static constexpr double lo = -2147483648.0, hi = 2147483647.0;
};
template <>
struct IntRange<uint32_t> {
  static constexpr double lo = 0, hi = 4294967295.0;
};
template <>
struct IntRange<int8_t> {
  static constexpr double lo = -128, hi = 127;
};
template <>
struct IntRange<uint8_t> {
  static constexpr double lo = 0, hi = 255;
};

// Float to integer as a C cast, but saturating and NaN -> 0 (the CPU's float_to_int).
template <class T>
__device__ __forceinline__ T float_to_int(double v) {
  if (v != v) return T(0);
  return T(::trunc(::fmin(::fmax(v, IntRange<T>::lo), IntRange<T>::hi)));
}

// dst = src converted with the semantics of the CPU backend's copy.
template <class D, class S>
__device__ __forceinline__ D convert(S v) {
  if constexpr (std::is_same_v<D, S>) {
    return v;
  } else if constexpr (std::is_same_v<D, bool>) {
    if constexpr (kIsFloat<S>)
      return to_float(v) != 0.0f;
    else
      return v != 0;
  } else if constexpr (kIsFloat<D>) {
    if constexpr (kIsFloat<S>)
      return from_float<D>(to_float(v));
    else
      return from_float<D>(float(v));
  } else if constexpr (kIsFloat<S>) {
    return float_to_int<D>(double(to_float(v)));
  } else {
    return D(v);
  }
}

// The CPU's random_bits (backend/cpu/copy.cpp): splitmix64 over (seed, counter).
__device__ __forceinline__ uint64_t random_bits(uint64_t seed, uint64_t i) {
  uint64_t z = seed * 0x9e3779b97f4a7c15ull + (i + 1) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
__device__ __forceinline__ float random_unit(uint64_t seed, uint64_t i) {  // uniform in [0, 1)
  return float(random_bits(seed, i) >> 40) * (1.0f / 16777216.0f);
}

// f32 math through double, rounded once: the correctly rounded results in all but rare
// cases. glibc's f32 functions, which the CPU backend calls, are within one ulp of them
// and equal to them in most cases (logf and cosf: all but about 1%).
// Element-wise and row kernels are bound by memory: the double math costs little.
__device__ __forceinline__ float cr_exp(float x) { return float(::exp(double(x))); }
__device__ __forceinline__ float cr_log(float x) { return float(::log(double(x))); }
__device__ __forceinline__ float cr_tanh(float x) { return float(::tanh(double(x))); }
__device__ __forceinline__ float cr_sin(float x) { return float(::sin(double(x))); }
__device__ __forceinline__ float cr_cos(float x) { return float(::cos(double(x))); }
__device__ __forceinline__ float cr_pow(float a, float b) {
  return float(::pow(double(a), double(b)));
}

// lmx::min/max (array reductions) hide the CUDA overloads inside namespace lmx.
__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a < b ? b : a; }

// Elements of T in one 16-byte vector, and such vectors as floats: kernels that stream
// contiguous rows move 16 bytes per load and store.
template <class T>
constexpr int kVecElems = 16 / int(sizeof(T));

template <class T>
__device__ __forceinline__ void load_vec(const T* p, float (&v)[kVecElems<T>]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const T* e = reinterpret_cast<const T*>(&raw);
  for (int i = 0; i < kVecElems<T>; ++i) v[i] = to_float(e[i]);
}
template <class T>
__device__ __forceinline__ void store_vec(T* p, const float (&v)[kVecElems<T>]) {
  uint4 raw;
  T* e = reinterpret_cast<T*>(&raw);
  for (int i = 0; i < kVecElems<T>; ++i) e[i] = from_float<T>(v[i]);
  *reinterpret_cast<uint4*>(p) = raw;
}

// Two values of a 16-bit T in one register, the operand of the paired instructions. For
// bf16 and f16 these round exactly as f32 math rounded to T does: the product of two T
// values is exact in f32, and a sum of two rounded to f32 and then to T is the sum's
// correct rounding (f32 carries more than 2p + 2 bits, which makes the double rounding
// innocuous).
template <class T>
using Pair = std::conditional_t<std::is_same_v<T, bfloat_t>, __nv_bfloat162, __half2>;

template <class T>
__device__ __forceinline__ Pair<T> to_pair(float a, float b) {  // each rounded to T
  if constexpr (std::is_same_v<T, bfloat_t>)
    return __floats2bfloat162_rn(a, b);
  else
    return __floats2half2_rn(a, b);
}
template <class T>
__device__ __forceinline__ float2 from_pair(Pair<T> p) {
  if constexpr (std::is_same_v<T, bfloat_t>)
    return __bfloat1622float2(p);
  else
    return __half22float2(p);
}

inline bool aligned16(const Array& a) { return reinterpret_cast<uintptr_t>(a.raw()) % 16 == 0; }
// Whether every row of a 4-D array (its last axis) starts a whole number of 16-byte
// vectors of `elems` elements after the first: unit stride in the last axis, the others
// multiples of `elems`. With aligned16, such rows can be read 16 bytes at a time.
inline bool rows_in_vectors(const Array& a, int64_t elems) {
  return a.strides()[3] == 1 && a.strides()[0] % elems == 0 && a.strides()[1] % elems == 0 &&
         a.strides()[2] % elems == 0;
}

// What every attention kernel reads and writes (the params of attention.cu and
// flash_attention.cu start with it): q and out [B, Hq, Lq, D] contiguous, k and v
// [B, Hkv, Lk, D] with a dense last axis and these element strides, each sequence's first
// query position, and the optional key mask [B, Lk].
struct AttentionOperands {
  const void *q, *k, *v;
  void* out;
  int64_t k_sb, k_sh, k_sl, v_sb, v_sh, v_sl;
  const int32_t* q_offsets;  // [B]
  const bool* key_valid;     // [B, Lk] or null
};
inline AttentionOperands attention_operands(const Array& q, const Array& k, const Array& v, const Array& out,
                                            const Array& q_offsets, const Array* key_valid) {
  AttentionOperands o{};
  o.q = q.raw(), o.k = k.raw(), o.v = v.raw(), o.out = out.raw();
  o.k_sb = k.strides()[0], o.k_sh = k.strides()[1], o.k_sl = k.strides()[2];
  o.v_sb = v.strides()[0], o.v_sh = v.strides()[1], o.v_sl = v.strides()[2];
  o.q_offsets = q_offsets.data<int32_t>();
  o.key_valid = key_valid ? key_valid->data<bool>() : nullptr;
  return o;
}

constexpr int kBlock = 256;

// Blocks for a grid-stride loop over n elements: enough to fill the device, no more.
inline unsigned grid_for(int64_t n, int block = kBlock) {
  const int64_t want = (n + block - 1) / block;
  return unsigned(want < 1 ? 1 : (want > 65536 ? 65536 : want));
}

__device__ __forceinline__ int64_t global_thread() {
  return int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_threads() { return int64_t(gridDim.x) * blockDim.x; }

// Threads per block for one block per row of `cols` elements: a multiple of the warp
// size, at most kBlock.
inline int row_block(int64_t cols) {
  if (cols >= kBlock) return kBlock;
  return cols <= 32 ? 32 : int((cols + 31) / 32 * 32);
}

template <class T, class Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

struct SyncBlock {
  __device__ __forceinline__ void operator()() const { __syncthreads(); }
};

// The reduction of v over the first `threads` threads of the block (a multiple of 32),
// which meet at `sync()`, returned to each of them. The warps' partials are combined in a
// fixed order, so results are deterministic.
template <class T, class Op, class Sync>
__device__ T block_reduce(T v, Op op, int threads, Sync sync) {
  __shared__ T part[32];
  v = warp_reduce(v, op);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  sync();
  T r = part[0];
  for (int w = 1; w < threads / 32; ++w) r = op(r, part[w]);
  sync();  // part may be reused by the next call
  return r;
}
// The same over the whole block.
template <class T, class Op>
__device__ T block_reduce(T v, Op op) {
  return block_reduce(v, op, int(blockDim.x), SyncBlock{});
}

// One thread's side of a grid-wide barrier on a counter that only grows: arrive, then wait
// until it reaches `target` (every block's arrival). The block syncs around the call. A
// release reduction makes the block's writes (ordered before it by that sync) visible
// before its arrival is, without a full fence; relaxed polls, then one acquire load. The
// lab (bench/kernels/exchange_lab.cu: a barrier, then every block loads a 1,024-float
// vector) measured 1.33 µs a round this way, 1.58 with an acquire fence after the polls
// and 1.40 acquiring on every poll.
__device__ __forceinline__ void arrive_and_wait(unsigned long long* counter,
                                                unsigned long long target) {
  asm volatile("red.release.gpu.global.add.u64 [%0], 1;" ::"l"(counter) : "memory");
  unsigned long long v = 0;
  do {
    asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(counter) : "memory");
  } while (v < target);
  asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(counter) : "memory");
}

// A counter that one block's threads hand on to another's: add `n` with release
// semantics (the adding thread's block syncs before the call, so the writes of all its
// threads are visible first), and wait until it reaches `target` (relaxed polls, then one
// acquire load, as arrive_and_wait; the block syncs after the call).
__device__ __forceinline__ void release_add(unsigned* counter, unsigned n) {
  asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(counter), "r"(n) : "memory");
}
__device__ __forceinline__ void wait_until_count(const unsigned* counter, unsigned target) {
  unsigned v = 0;
  do {
    asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(counter) : "memory");
  } while (v < target);
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(counter) : "memory");
}

struct Sum {
  template <class T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};
struct Max {
  template <class T>
  __device__ T operator()(T a, T b) const {
    return a < b ? b : a;
  }
};
struct Min {
  template <class T>
  __device__ T operator()(T a, T b) const {
    return b < a ? b : a;
  }
};

// N arrays of one shape with their own strides, dimensions that are contiguous in all
// of them merged (as the CPU's make_walk). Passed to kernels by value.
constexpr int kMaxDims = 8;
template <int N>
struct Layout {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[N][kMaxDims] = {};

  // Element offsets of logical (row-major) element i in each array.
  __device__ __forceinline__ void offsets(int64_t i, int64_t (&off)[N]) const {
    for (int k = 0; k < N; ++k) off[k] = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      const int64_t idx = i % shape[d];
      i /= shape[d];
      for (int k = 0; k < N; ++k) off[k] += idx * strides[k][d];
    }
  }
};

template <int N>
Layout<N> make_layout(const Shape& shape, const Array* const (&arrays)[N]) {
  Layout<N> l;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;  // size-1 axes never move a pointer
    bool merge = l.ndim > 0;
    for (int k = 0; k < N && merge; ++k)
      merge = l.strides[k][l.ndim - 1] == arrays[k]->strides()[d] * shape[d];
    if (merge) {
      l.shape[l.ndim - 1] *= shape[d];
      for (int k = 0; k < N; ++k) l.strides[k][l.ndim - 1] = arrays[k]->strides()[d];
    } else {
      LMX_CHECK(l.ndim < kMaxDims, "cuda", "arrays of rank above ", kMaxDims,
                " with this stride pattern are not supported; make them contiguous first");
      l.shape[l.ndim] = shape[d];
      for (int k = 0; k < N; ++k) l.strides[k][l.ndim] = arrays[k]->strides()[d];
      ++l.ndim;
    }
  }
  return l;
}

// True when every array is dense row-major in the same order (one flat index serves all).
template <int N>
bool is_flat(const Layout<N>& l) {
  if (l.ndim > 1) return false;
  for (int k = 0; k < N; ++k)
    if (l.ndim == 1 && l.strides[k][0] != 1) return false;
  return true;
}

// The launch attribute for clusters of `blocks` blocks along x.
inline cudaLaunchAttribute cluster_attribute(int blocks) {
  cudaLaunchAttribute cluster{};
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = unsigned(blocks), cluster.val.clusterDim.y = cluster.val.clusterDim.z = 1;
  return cluster;
}

}  // namespace lmx::cuda
