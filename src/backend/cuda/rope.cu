// Rotate-half RoPE with HF's roundings, as the CPU backend (backend/cpu/rope.cpp):
// cos/sin of an f32 product position * inv_freq, cast to x's dtype; x*cos and
// rotate_half(x)*sin each rounded to the dtype before their (rounded) sum.
#include <algorithm>

#include "backend/cuda/common.cuh"

namespace lmx::cuda {
namespace {

// x, out [B, H, L, D] contiguous; one thread per (b, h, l, j < D/2) computes out[j] and out[j +
// D/2].
template <class T>
__global__ void rope_kernel(const T* x, const float* inv_freq, const int32_t* offsets, T* out,
                            int64_t nh, int64_t nl, int64_t half, int64_t n) {
  for (int64_t e = global_thread(); e < n; e += grid_threads()) {
    const int64_t j = e % half, row = e / half;  // row = (b * H + h) * L + l
    const int64_t l = row % nl, b = row / (nl * nh);
    const float f = float(int64_t(offsets[b]) + l) * inv_freq[j];
    // cos/sin in double, rounded once: the correctly rounded f32 values, as glibc gives them.
    const float cs = round_to<T>(float(::cos(double(f)))),
                sn = round_to<T>(float(::sin(double(f))));
    const T* xr = x + row * 2 * half;
    T* o = out + row * 2 * half;
    const float x1 = to_float(xr[j]), x2 = to_float(xr[j + half]);
    // out[j] = x1*cos - x2*sin; out[j+half] = x2*cos + x1*sin (negation is exact)
    o[j] = from_float<T>(round_to<T>(x1 * cs) + round_to<T>(-x2 * sn));
    o[j + half] = from_float<T>(round_to<T>(x2 * cs) + round_to<T>(x1 * sn));
  }
}

constexpr int kMaxHalf = 128;  // head_dim <= 256 for rope_heads_kernel
constexpr int kPairsPerLane = kMaxHalf / 32;

// One block per token (b, l); each warp takes whole heads. x [B, L, H, D] -> out [B, H, L, D],
// with an optional RMSNorm over each head (weight norm_w [D]) before the rotation. cos and
// sin of the token's angles are computed once per block, not once per head.
template <class T, class W, bool kGemmaNorm>
__global__ void rope_heads_kernel(const T* x, const float* inv_freq, const int32_t* offsets, const W* norm_w,
                                  float eps, T* out, int64_t nl, int64_t nh, int64_t half) {
  __shared__ float cs[kMaxHalf], sn[kMaxHalf];
  const int64_t token = blockIdx.x, b = token / nl, l = token % nl, d = 2 * half;
  for (int64_t j = threadIdx.x; j < half; j += blockDim.x) {
    const float f = float(int64_t(offsets[b]) + l) * inv_freq[j];
    cs[j] = round_to<T>(float(::cos(double(f))));  // as rope_kernel
    sn[j] = round_to<T>(float(::sin(double(f))));
  }
  __syncthreads();
  const int lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int64_t h = threadIdx.x / 32; h < nh; h += warps) {
    const T* xr = x + (token * nh + h) * d;
    float x1[kPairsPerLane], x2[kPairsPerLane];
    float ss = 0;
    for (int p = 0; p < kPairsPerLane; ++p) {
      const int64_t j = lane + 32 * p;
      x1[p] = j < half ? to_float(xr[j]) : 0.0f;
      x2[p] = j < half ? to_float(xr[j + half]) : 0.0f;
      ss += x1[p] * x1[p] + x2[p] * x2[p];
    }
    if (norm_w) {
      const float r = 1.0f / ::sqrtf(warp_reduce(ss, Sum{}) / float(d) + eps);
      for (int p = 0; p < kPairsPerLane; ++p) {
        const int64_t j = lane + 32 * p;
        if (j >= half) continue;
        const float w1 = to_float(norm_w[j]), w2 = to_float(norm_w[j + half]);
        if constexpr (kGemmaNorm) {
          x1[p] = round_to<T>(x1[p] * r * (1.0f + w1)), x2[p] = round_to<T>(x2[p] * r * (1.0f + w2));
        } else {  // rounded before the weight multiply, as the Llama-style norm
          x1[p] = round_to<T>(round_to<T>(x1[p] * r) * w1), x2[p] = round_to<T>(round_to<T>(x2[p] * r) * w2);
        }
      }
    }
    T* o = out + ((b * nh + h) * nl + l) * d;
    for (int p = 0; p < kPairsPerLane; ++p) {
      const int64_t j = lane + 32 * p;
      if (j >= half) continue;
      o[j] = from_float<T>(round_to<T>(x1[p] * cs[j]) + round_to<T>(-x2[p] * sn[j]));
      o[j + half] = from_float<T>(round_to<T>(x2[p] * cs[j]) + round_to<T>(x1[p] * sn[j]));
    }
  }
}

}  // namespace

bool rope_heads(const Context& ctx, const Array& x, const Array& inv_freq, const Array& offsets, const Array* norm_w,
                float eps, fast::RmsNormStyle style, const Array& out) {
  const int64_t nb = x.shape(0), nl = x.shape(1), nh = x.shape(2), half = x.shape(3) / 2;
  if (half > kMaxHalf || nb * nl > int64_t(INT32_MAX)) return false;
  if (x.size() == 0) return true;
  bool ran = false;
  visit_device_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    visit_device_dtype(norm_w ? norm_w->dtype() : x.dtype(), [&](auto wtag) {
      using W = decltype(wtag);
      if constexpr (kIsFloat<T> && kIsFloat<W>) {
        const W* w = norm_w ? static_cast<const W*>(norm_w->raw()) : nullptr;
        const int threads = int(std::min<int64_t>(4, nh)) * 32;
        auto* kernel = style == fast::RmsNormStyle::gemma ? rope_heads_kernel<T, W, true> : rope_heads_kernel<T, W, false>;
        kernel<<<unsigned(nb * nl), threads, 0, ctx.stream>>>(static_cast<const T*>(x.raw()), inv_freq.data<float>(),
                                                             offsets.data<int32_t>(), w, eps,
                                                             static_cast<T*>(out.raw()), nl, nh, half);
        check_launch("rope_heads_kernel");
        ran = true;
      }
    });
  });
  return ran;
}

void rope(const Context& ctx, const Array& x, const Array& inv_freq, const Array& offsets,
          const Array& out) {
  if (x.size() == 0) return;
  const int64_t nh = x.shape(1), nl = x.shape(2), half = x.shape(3) / 2;
  const int64_t n = x.size() / 2;
  visit_device_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (kIsFloat<T>) {
      rope_kernel<<<grid_for(n), kBlock, 0, ctx.stream>>>(
          static_cast<const T*>(x.raw()), inv_freq.data<float>(), offsets.data<int32_t>(),
          static_cast<T*>(out.raw()), nh, nl, half, n);
      check_launch("rope_kernel");
    } else {
      fail("rope", "unsupported dtype ", dtype_name(x.dtype()));
    }
  });
}

}  // namespace lmx::cuda
