// Row reductions over a contiguous [rows, cols] matrix: sum, max, min, logsumexp,
// argmax and softmax, accumulating floats in f32.
#include <cmath>
#include <limits>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/strided.h"

namespace lmx::cpu {
namespace {

// Calls fn(row_index, row_pointer, cols) for every row, in parallel.
template <class T, class Fn>
void for_rows(const Array& in, Fn&& fn) {
  const int64_t rows = in.shape(0), cols = in.shape(1);
  const T* p = in.data<T>();
  parallel_for(rows, std::max<int64_t>(1, 8192 / std::max<int64_t>(1, cols)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) fn(r, p + r * cols, cols);
  });
}

}  // namespace

void reduce(detail::ReduceOp op, const Array& in, const Array& out) {
  visit_dtype(in.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    T* o = out.data<T>();
    for_rows<T>(in, [&](int64_t r, const T* x, int64_t n) {
      C acc{};
      switch (op) {
        case detail::ReduceOp::sum:
          for (int64_t i = 0; i < n; ++i) acc += load(x[i]);
          break;
        case detail::ReduceOp::max:
          acc = load(x[0]);
          for (int64_t i = 1; i < n; ++i) acc = std::max(acc, load(x[i]));
          break;
        case detail::ReduceOp::min:
          acc = load(x[0]);
          for (int64_t i = 1; i < n; ++i) acc = std::min(acc, load(x[i]));
          break;
        case detail::ReduceOp::logsumexp:
          if constexpr (std::is_same_v<C, float>) {
            float m = -std::numeric_limits<float>::infinity();
            for (int64_t i = 0; i < n; ++i) m = std::max(m, load(x[i]));
            if (std::isinf(m)) {
              acc = m;  // all -inf gives -inf; any +inf gives +inf
              break;
            }
            float s = 0;
            for (int64_t i = 0; i < n; ++i) s += std::exp(load(x[i]) - m);
            acc = m + std::log(s);
          }
          break;
      }
      o[r] = store<T>(acc);
    });
  });
}

void argmax(const Array& in, const Array& out) {
  int32_t* o = out.data<int32_t>();
  visit_dtype(in.dtype(), [&](auto tag) {
    using T = decltype(tag);
    for_rows<T>(in, [&](int64_t r, const T* x, int64_t n) {
      // NaN never wins (v != v holds only for NaN), and a row of nothing else has no index.
      int64_t best = -1;
      decltype(load(x[0])) bv{};
      for (int64_t i = 0; i < n; ++i) {
        const auto v = load(x[i]);
        if (v == v && (best < 0 || v > bv)) {
          bv = v;
          best = i;
        }
      }
      o[r] = int32_t(best);
    });
  });
}

void softmax(const Array& in, const Array& out) {
  visit_dtype(in.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<compute_t<T>, float>) {
      T* base = out.data<T>();
      for_rows<T>(in, [&](int64_t r, const T* x, int64_t n) {
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t i = 0; i < n; ++i) m = std::max(m, to_f32(x[i]));
        std::vector<float> e(static_cast<size_t>(n));
        float s = 0;
        for (int64_t i = 0; i < n; ++i) s += e[size_t(i)] = std::exp(to_f32(x[i]) - m);
        const float inv = 1.0f / s;
        T* o = base + r * n;
        for (int64_t i = 0; i < n; ++i) o[i] = from_f32<T>(e[size_t(i)] * inv);
      });
    }
  });
}

namespace {

// A row's maximum and the sum of exp(x - max), in f32.
template <class T>
void row_stats(const T* x, int64_t n, float& m, float& s) {
  m = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) m = std::max(m, to_f32(x[i]));
  s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(to_f32(x[i]) - m);
}

// fn(tag) for logits whose dtype sums in f32; false otherwise.
template <class Fn>
bool for_f32_rows(const Array& logits, Fn&& fn) {
  bool ran = false;
  visit_dtype(logits.dtype(), [&](auto tag) {
    if constexpr (std::is_same_v<compute_t<decltype(tag)>, float>) fn(tag), ran = true;
  });
  return ran;
}

}  // namespace

// One pass for the maximum and one for the sum, as the softmax above; no [R, V] temporaries,
// where the ops' composition made several f32 copies of the logits (1.2 GB at 2,048 rows of a
// 151,936-token vocabulary).
bool cross_entropy_rows(const Array& logits, const Array& targets, const Array& loss) {
  return for_f32_rows(logits, [&](auto tag) {
    using T = decltype(tag);
    const int32_t* t = targets.data<int32_t>();
    float* out = loss.data<float>();
    for_rows<T>(logits, [&](int64_t r, const T* x, int64_t n) {
      float m, s;
      row_stats(x, n, m, s);
      out[r] = m + std::log(s) - to_f32(x[t[r]]);
    });
  });
}

// d_r = g_r · (softmax(x_r) − onehot(t_r)); zeros where g_r is 0, without reading the row.
bool cross_entropy_rows_grad(const Array& logits, const Array& targets, const Array& g, const Array& d) {
  return for_f32_rows(logits, [&](auto tag) {
    using T = decltype(tag);
    const int32_t* t = targets.data<int32_t>();
    const float* gr = g.data<float>();
    T* base = d.data<T>();
    for_rows<T>(logits, [&](int64_t r, const T* x, int64_t n) {
      T* o = base + r * n;
      if (gr[r] == 0.0f) {
        for (int64_t i = 0; i < n; ++i) o[i] = from_f32<T>(0.0f);
        return;
      }
      float m, s;
      row_stats(x, n, m, s);
      const float scale = gr[r] / s;
      for (int64_t i = 0; i < n; ++i)
        o[i] = from_f32<T>(std::exp(to_f32(x[i]) - m) * scale - (i == t[r] ? gr[r] : 0.0f));
    });
  });
}

}  // namespace lmx::cpu
