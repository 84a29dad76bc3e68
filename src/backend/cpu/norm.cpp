// RMSNorm (Llama and Gemma forms) and LayerNorm over the last axis. Rows are
// independent and run in parallel; statistics are accumulated in f32 with several
// partial sums, which lets the compiler vectorise the reductions.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "backend/cpu/cpu_fast.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace lmx::cpu {
namespace {

constexpr int kLanes = 16;  // partial sums per reduction

// The element types the norms take (the float dtypes).
template <class T>
constexpr bool kFloatType = std::is_same_v<T, float> || std::is_same_v<T, bf16_t> || std::is_same_v<T, f16_t>;

// sum_i f(x[i]) in f32 with kLanes independent partial sums.
template <class F>
float lane_sum(const float* x, int64_t n, F&& f) {
  float part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) part[l] += f(x[i + l]);
  float s = 0;
  for (; i < n; ++i) s += f(x[i]);
  for (int l = 0; l < kLanes; ++l) s += part[l];
  return s;
}

// One row of each norm, written once for every dtype pair. `x32` is scratch of D floats.
template <class T, class W>
struct NormRow {
  const T* x;
  const W* w;
  const W* bias;  // layer norm only, may be null
  T* out;
  int64_t d;
  float eps;

  void load(float* x32) const {
    for (int64_t i = 0; i < d; ++i) x32[i] = to_f32(x[i]);
  }

  float inv_rms(const float* x32) const {
    const float ms = lane_sum(x32, d, [](float v) { return v * v; }) / float(d);
    return 1.0f / std::sqrt(ms + eps);
  }

  // HF Llama: the normalised value is cast to the input dtype before the weight multiply.
  void rms_llama(float* x32) const {
    load(x32);
    const float r = inv_rms(x32);
    for (int64_t i = 0; i < d; ++i) {
      const float y = to_f32(from_f32<T>(x32[i] * r));
      out[i] = from_f32<T>(y * to_f32(w[i]));
    }
  }

  // HF Gemma: everything in f32, the weight is stored as an offset from one.
  void rms_gemma(float* x32) const {
    load(x32);
    const float r = inv_rms(x32);
    for (int64_t i = 0; i < d; ++i) out[i] = from_f32<T>(x32[i] * r * (1.0f + to_f32(w[i])));
  }

  // Two passes (mean, then the biased variance of the centred values): stable for
  // rows with a large mean.
  void layer(float* x32) const {
    load(x32);
    const float mean = lane_sum(x32, d, [](float v) { return v; }) / float(d);
    const float var =
        lane_sum(x32, d, [mean](float v) { return (v - mean) * (v - mean); }) / float(d);
    const float r = 1.0f / std::sqrt(var + eps);
    for (int64_t i = 0; i < d; ++i) {
      float y = (x32[i] - mean) * r * to_f32(w[i]);
      if (bias) y += to_f32(bias[i]);
      out[i] = from_f32<T>(y);
    }
  }
};

enum class NormKind { rms_llama, rms_gemma, layer };

void run_norm(NormKind kind, const Array& x, const Array& w, const Array* bias, float eps,
              const Array& out) {
  const int64_t d = x.ndim() == 0 ? 1 : x.shape(-1);
  if (d == 0 || x.size() == 0) return;
  const int64_t rows = x.size() / d;
  visit_dtype(x.dtype(), [&](auto xt) {
    using T = decltype(xt);
    if constexpr (kFloatType<T>) {
      visit_dtype(w.dtype(), [&](auto wt) {
        using W = decltype(wt);
        if constexpr (kFloatType<W>) {
          const T* xp = x.data<T>();                       // x [R, D]
          const W* wp = w.data<W>();                       // w [D]
          const W* bp = bias ? bias->data<W>() : nullptr;  // bias [D]
          T* op = out.data<T>();                           // out [R, D]
          const int64_t grain = std::max<int64_t>(1, 16384 / d);
          parallel_for(rows, grain, [&](int64_t r0, int64_t r1) {
            std::vector<float> x32(static_cast<size_t>(d));  // one row in f32
            for (int64_t r = r0; r < r1; ++r) {
              const NormRow<T, W> row{xp + r * d, wp, bp, op + r * d, d, eps};
              switch (kind) {
                case NormKind::rms_llama: row.rms_llama(x32.data()); break;
                case NormKind::rms_gemma: row.rms_gemma(x32.data()); break;
                case NormKind::layer: row.layer(x32.data()); break;
              }
            }
          });
        }
      });
    }
  });
}

}  // namespace

bool add_rms_norm(const Array& x, const Array& y, const Array* y_w, const Array& w, float eps,
                  fast::RmsNormStyle style, const Array& sum, const Array& normed) {
  if (y_w && y_w->dtype() != w.dtype()) return false;
  const int64_t d = y.ndim() == 0 ? 1 : y.shape(-1);
  if (d == 0 || y.size() == 0) return true;
  const int64_t rows = y.size() / d;
  const bool gemma = style == fast::RmsNormStyle::gemma;
  bool ran = false;
  visit_dtype(y.dtype(), [&](auto yt) {
    using T = decltype(yt);
    visit_dtype(w.dtype(), [&](auto wt) {
      using W = decltype(wt);
      if constexpr (kFloatType<T> && kFloatType<W>) {
        const T* xp = x.data<T>();  // x, y, sum, normed [R, D]
        const T* yp = y.data<T>();
        T* sp = sum.data<T>();
        T* np = normed.data<T>();
        const int64_t grain = std::max<int64_t>(1, 16384 / d);
        // Row by row, as the ops composed would compute it (norm of y, add, norm), while
        // the row is still in cache.
        parallel_for(rows, grain, [&](int64_t r0, int64_t r1) {
          std::vector<float> x32(static_cast<size_t>(d));  // one row in f32
          for (int64_t r = r0; r < r1; ++r) {
            const T* yr = yp + r * d;
            T* sr = sp + r * d;
            if (y_w) {  // sum row <- rms_norm(y, y_w), rounded to T as the op's output
              const NormRow<T, W> yn{yr, y_w->data<W>(), nullptr, sr, d, eps};
              gemma ? yn.rms_gemma(x32.data()) : yn.rms_llama(x32.data());
              yr = sr;
            }
            for (int64_t i = 0; i < d; ++i) sr[i] = from_f32<T>(to_f32(xp[r * d + i]) + to_f32(yr[i]));
            const NormRow<T, W> sn{sr, w.data<W>(), nullptr, np + r * d, d, eps};
            gemma ? sn.rms_gemma(x32.data()) : sn.rms_llama(x32.data());
          }
        });
        ran = true;
      }
    });
  });
  return ran;
}

void rms_norm(const Array& x, const Array& w, float eps, fast::RmsNormStyle style,
              const Array& out) {
  run_norm(style == fast::RmsNormStyle::gemma ? NormKind::rms_gemma : NormKind::rms_llama, x, w,
           nullptr, eps, out);
}

void layer_norm(const Array& x, const Array& w, const Array* bias, float eps, const Array& out) {
  LMX_CHECK(!bias || bias->dtype() == w.dtype(), "layer_norm", "bias dtype ",
            dtype_name(bias->dtype()), " differs from the weight dtype ", dtype_name(w.dtype()));
  run_norm(NormKind::layer, x, w, bias, eps, out);
}

}  // namespace lmx::cpu
