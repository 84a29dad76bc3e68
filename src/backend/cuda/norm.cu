// RMSNorm (Llama and Gemma forms) and LayerNorm over the last axis, one block per row,
// statistics in f32, with the CPU backend's roundings (backend/cpu/norm.cpp).
#include "backend/cuda/common.cuh"

namespace lmx::cuda {
namespace {

enum class NormKind { rms_llama, rms_gemma, layer };

// x, out [R, D]; w, bias [D] (bias may be null).
template <NormKind kKind, class T, class W>
__global__ void norm_kernel(const T* x_all, const W* w, const W* bias, T* out_all, int64_t d,
                            float eps) {
  const T* x = x_all + int64_t(blockIdx.x) * d;
  T* out = out_all + int64_t(blockIdx.x) * d;
  if constexpr (kKind == NormKind::layer) {
    // Two passes (mean, then the variance of the centred values): stable for large means.
    float s = 0;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) s += to_float(x[i]);
    const float mean = block_reduce(s, Sum{}) / float(d);
    float v = 0;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float c = to_float(x[i]) - mean;
      v += c * c;
    }
    const float r = 1.0f / ::sqrtf(block_reduce(v, Sum{}) / float(d) + eps);
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      float y = (to_float(x[i]) - mean) * r * to_float(w[i]);
      if (bias) y += to_float(bias[i]);
      out[i] = from_float<T>(y);
    }
  } else {
    float s = 0;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float v = to_float(x[i]);
      s += v * v;
    }
    const float r = 1.0f / ::sqrtf(block_reduce(s, Sum{}) / float(d) + eps);
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float v = to_float(x[i]);
      if constexpr (kKind == NormKind::rms_llama) {
        // HF Llama: the normalised value is cast to the input dtype before the weight multiply.
        out[i] = from_float<T>(round_to<T>(v * r) * to_float(w[i]));
      } else {
        out[i] = from_float<T>(v * r *
                               (1.0f + to_float(w[i])));  // Gemma: all f32, weight offset from one
      }
    }
  }
}

template <NormKind kKind>
void run_norm(const Context& ctx, const Array& x, const Array& w, const Array* bias, float eps,
              const Array& out) {
  const int64_t d = x.ndim() == 0 ? 1 : x.shape(-1);
  if (d == 0 || x.size() == 0) return;
  const int64_t rows = x.size() / d;
  LMX_CHECK(rows <= int64_t(INT32_MAX), "norm", rows, " rows are too many for one launch on cuda");
  visit_device_dtype(x.dtype(), [&](auto xt) {
    using T = decltype(xt);
    visit_device_dtype(w.dtype(), [&](auto wt) {
      using W = decltype(wt);
      if constexpr (kIsFloat<T> && kIsFloat<W>) {
        norm_kernel<kKind, T, W><<<unsigned(rows), row_block(d), 0, ctx.stream>>>(
            static_cast<const T*>(x.raw()), static_cast<const W*>(w.raw()),
            bias ? static_cast<const W*>(bias->raw()) : nullptr, static_cast<T*>(out.raw()), d,
            eps);
        check_launch("norm_kernel");
      } else {
        fail("norm", "expects floating-point arrays, got ", dtype_name(x.dtype()), " and ",
             dtype_name(w.dtype()));
      }
    });
  });
}

}  // namespace

void rms_norm(const Context& ctx, const Array& x, const Array& w, float eps,
              fast::RmsNormStyle style, const Array& out) {
  if (style == fast::RmsNormStyle::gemma)
    run_norm<NormKind::rms_gemma>(ctx, x, w, nullptr, eps, out);
  else
    run_norm<NormKind::rms_llama>(ctx, x, w, nullptr, eps, out);
}

void layer_norm(const Context& ctx, const Array& x, const Array& w, const Array* bias, float eps,
                const Array& out) {
  LMX_CHECK(!bias || bias->dtype() == w.dtype(), "layer_norm", "bias dtype ",
            dtype_name(bias->dtype()), " differs from the weight dtype ", dtype_name(w.dtype()));
  run_norm<NormKind::layer>(ctx, x, w, bias, eps, out);
}

}  // namespace lmx::cuda
