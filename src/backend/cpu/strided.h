// The one strided-loop driver of the CPU backend. Element-wise kernels describe the
// math for one element; this walks any number of arrays of one shape with their own
// strides, collapsing dimensions that are contiguous in all of them.
#pragma once

#include <array>
#include <cstdint>

#include "core/array.h"
#include "core/thread_pool.h"

namespace lmx::cpu {

template <size_t N>
struct Walk {
  Shape shape;                          // collapsed; the last axis is the inner loop
  std::array<Strides, N> strides;       // per array, in elements
  int64_t rows() const {
    int64_t r = 1;
    for (size_t i = 0; i + 1 < shape.size(); ++i) r *= shape[i];
    return r;
  }
  int64_t inner() const { return shape.empty() ? 1 : shape.back(); }
};

template <size_t N>
Walk<N> make_walk(const Shape& shape, const std::array<const Array*, N>& arrays) {
  Walk<N> w;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;  // size-1 axes never move a pointer
    const bool can_merge = !w.shape.empty() && [&] {
      for (size_t k = 0; k < N; ++k)
        if (w.strides[k].back() != arrays[k]->strides()[d] * shape[d]) return false;
      return true;
    }();
    if (can_merge) {
      w.shape.back() *= shape[d];
      for (size_t k = 0; k < N; ++k) w.strides[k].back() = arrays[k]->strides()[d];
    } else {
      w.shape.push_back(shape[d]);
      for (size_t k = 0; k < N; ++k) w.strides[k].push_back(arrays[k]->strides()[d]);
    }
  }
  if (w.shape.empty()) {
    w.shape.push_back(1);
    for (size_t k = 0; k < N; ++k) w.strides[k].push_back(0);
  }
  return w;
}

// Calls row_fn(offsets, n, inner_strides) for every inner row, in parallel over rows.
// `offsets[k]` is the element offset of the row's first element in array k.
template <size_t N, class RowFn>
void walk_rows(const Walk<N>& w, RowFn&& row_fn) {
  const int64_t rows = w.rows(), inner = w.inner();
  const int nd = int(w.shape.size()) - 1;
  std::array<int64_t, N> inner_strides;
  for (size_t k = 0; k < N; ++k) inner_strides[k] = w.strides[k].back();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, inner));
  parallel_for(rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      std::array<int64_t, N> off{};
      int64_t rem = r;
      for (int d = nd - 1; d >= 0; --d) {
        const int64_t idx = rem % w.shape[d];
        rem /= w.shape[d];
        for (size_t k = 0; k < N; ++k) off[k] += idx * w.strides[k][d];
      }
      row_fn(off, inner, inner_strides);
    }
  });
}

// Element types as the kernels compute with them: f32 for floats, int64 for integers.
template <class T>
struct Compute { using type = int64_t; };
template <> struct Compute<float> { using type = float; };
template <> struct Compute<f16_t> { using type = float; };
template <> struct Compute<bf16_t> { using type = float; };
template <class T>
using compute_t = typename Compute<T>::type;

template <class T>
inline compute_t<T> load(T v) {
  if constexpr (std::is_same_v<compute_t<T>, float>) return to_f32(v);
  else return int64_t(v);
}
template <class T, class C>
inline T store(C v) {
  if constexpr (std::is_same_v<T, bool>) return v != 0;
  else if constexpr (std::is_same_v<compute_t<T>, float>) return from_f32<T>(float(v));
  else return T(v);  // integers wrap modulo 2^n (C++20)
}

}  // namespace lmx::cpu
