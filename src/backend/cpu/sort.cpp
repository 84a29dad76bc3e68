// Sorting kernels (sort, argsort, topk share one) and categorical sampling.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/strided.h"

namespace lmx::cpu {

void sort(const Array& in, bool descending, int k, const Array& values, const Array& indices) {
  const int64_t rows = in.shape(0), cols = in.shape(1);
  visit_dtype(in.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = in.data<T>();
    parallel_for(rows, 1, [&](int64_t r0, int64_t r1) {
      std::vector<int32_t> order(static_cast<size_t>(cols));
      for (int64_t r = r0; r < r1; ++r) {
        const T* row = x + r * cols;
        std::iota(order.begin(), order.end(), 0);
        // Ties keep the lower index first, in both directions: the result is deterministic.
        auto before = [&](int32_t i, int32_t j) {
          const auto a = load(row[i]), b = load(row[j]);
          if (a != b) return descending ? a > b : a < b;
          return i < j;
        };
        if (k < cols) std::partial_sort(order.begin(), order.begin() + k, order.end(), before);
        else std::sort(order.begin(), order.end(), before);
        for (int i = 0; i < k; ++i) {
          if (values.valid()) values.data<T>()[r * k + i] = row[order[size_t(i)]];
          if (indices.valid()) indices.data<int32_t>()[r * k + i] = order[size_t(i)];
        }
      }
    });
  });
}

void categorical(const Array& logits, uint64_t seed, const Array& out) {
  const int64_t rows = logits.shape(0), cols = logits.shape(1);
  visit_dtype(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<compute_t<T>, float>) {
      const T* x = logits.data<T>();
      parallel_for(rows, 1, [&](int64_t r0, int64_t r1) {
        std::vector<double> cdf(static_cast<size_t>(cols));
        for (int64_t r = r0; r < r1; ++r) {
          const T* row = x + r * cols;
          float m = -INFINITY;
          for (int64_t i = 0; i < cols; ++i) m = std::max(m, to_f32(row[i]));
          double total = 0;
          for (int64_t i = 0; i < cols; ++i) cdf[size_t(i)] = total += std::isinf(m) ? 1.0 : std::exp(double(to_f32(row[i]) - m));
          // Inverse CDF; the draw for row r depends only on (seed, r).
          const double u = double(random_unit(seed, uint64_t(r))) * total;
          int64_t pick = std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin();
          pick = std::min(pick, cols - 1);
          while (pick > 0 && cdf[size_t(pick)] == cdf[size_t(pick - 1)]) --pick;  // never a zero-probability class
          out.data<int32_t>()[r] = int32_t(pick);
        }
      });
    }
  });
}

}  // namespace lmx::cpu
