// fast::sample_tokens and fast::edit_logits on the CPU, the references for the device kernels. It
// takes the steps of Sampler::process and Sampler::draw (runtime/sampler.cpp) in their plainest
// form: top-k by nth_element, top-p by sorting the survivors, every sum in id order.
#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/strided.h"

namespace lmx::cpu {
namespace {

constexpr float kGone = -std::numeric_limits<float>::infinity();

// p = exp(x - max) / Z in f32 with Z summed in f64, 0 for removed tokens (all 0 where
// every token is removed); and the most likely token (the lowest id at the maximum).
int64_t probabilities(const std::vector<float>& x, std::vector<float>& p) {
  const int64_t top = std::max_element(x.begin(), x.end()) - x.begin();  // the first of equals
  double z = 0;
  for (size_t i = 0; i < x.size(); ++i)
    z += p[i] = std::isinf(x[i]) ? 0.0f : std::exp(x[i] - x[size_t(top)]);
  const double inv = z > 0 ? 1.0 / z : 0.0;
  for (float& q : p) q = float(double(q) * inv);
  return top;
}

int32_t sample_row(std::vector<float>& x, const fast::SampleFilter& f, uint64_t word) {
  const size_t n = x.size();
  std::vector<float> p(n);
  if (f.top_k > 0 && size_t(f.top_k) < n) {  // every value at or above the k-th largest stays
    std::vector<float> sorted = x;
    std::nth_element(sorted.begin(), sorted.begin() + (f.top_k - 1), sorted.end(),
                     std::greater<>());
    const float kth = sorted[size_t(f.top_k - 1)];
    for (float& v : x) v = v < kth ? kGone : v;
  }
  if (f.top_p < 1 || f.min_p > 0) {
    const int64_t top = probabilities(x, p);
    std::vector<float> cut = x;  // top-p and min-p both judge the same probabilities
    if (f.top_p < 1) {
      // Ascending, the higher id first among equal values; tokens go while the running
      // mass stays <= 1 - top_p, and the most likely token stays.
      std::vector<int32_t> order;
      for (size_t i = 0; i < n; ++i)
        if (x[i] != kGone) order.push_back(int32_t(i));
      std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
        return x[size_t(a)] != x[size_t(b)] ? x[size_t(a)] < x[size_t(b)] : a > b;
      });
      double mass = 0;
      for (int32_t i : order) {
        mass += p[size_t(i)];
        if (i == top || mass > 1.0 - double(f.top_p)) break;
        cut[size_t(i)] = kGone;
      }
    }
    if (f.min_p > 0)
      for (size_t i = 0; i < n; ++i)
        if (p[i] < f.min_p * p[size_t(top)]) cut[i] = kGone;
    x.swap(cut);
  }
  probabilities(x, p);
  const double u = double(word >> 11) * 0x1p-53;
  double cdf = 0;
  int32_t last = -1;  // no token with mass: every logit NaN or -inf
  for (size_t i = 0; i < n; ++i) {
    if (p[i] <= 0) continue;
    cdf += p[i], last = int32_t(i);
    if (u < cdf) return int32_t(i);
  }
  return last;  // rounding left u at or past the total
}

}  // namespace

void edit_logits(const Array& x, const Array& starts, const Array& edits,
                 const fast::Penalties& p) {
  const int64_t v = x.shape(1);
  const int32_t* s = starts.data<int32_t>();
  const int32_t* e = edits.data<int32_t>();  // [E, 4]: id, count, the bias's bits, has_bias
  for (int64_t r = 0; r + 1 < starts.size(); ++r)
    for (int32_t i = s[r]; i < s[r + 1]; ++i) {
      float& l = x.data<float>()[r * v + e[4 * i]];
      if (e[4 * i + 3]) l += std::bit_cast<float>(e[4 * i + 2]);
      // The penalties once an id, after its biases (its last entry).
      const bool last = i + 1 == s[r + 1] || e[4 * (i + 1)] != e[4 * i];
      if (last && e[4 * i + 1] > 0) {
        if (p.repetition != 1) l = l < 0 ? l * p.repetition : l / p.repetition;
        l -= p.presence + p.frequency * float(e[4 * i + 1]);
      }
    }
}

void sample_tokens(const Array& logits, std::span<const uint64_t> words,
                   const fast::SampleFilter& f, const Array& out) {
  const int64_t rows = logits.shape(0), cols = logits.shape(1);
  visit_dtype(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<compute_t<T>, float>) {
      parallel_for(rows, 1, [&](int64_t r0, int64_t r1) {
        std::vector<float> x(static_cast<size_t>(cols));
        for (int64_t r = r0; r < r1; ++r) {
          const T* row = logits.data<T>() + r * cols;
          for (int64_t i = 0; i < cols; ++i) {  // NaN is never drawn
            const float v = to_f32(row[i]) / f.temperature;
            x[size_t(i)] = std::isnan(v) ? kGone : v;
          }
          out.data<int32_t>()[r] = sample_row(x, f, words[size_t(r)]);
        }
      });
    }
  });
}

}  // namespace lmx::cpu
