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

// One block per token (b, l): x [B, L, H, D] -> out [B, H, L, D], with an optional RMSNorm
// over each head (weight norm_w [D]) before the rotation. Each head takes `lanes` lanes
// (a power of two); a lane holds one 16-byte vector of the head's first half and the
// matching one of its second half, the pair that the rotation mixes. cos and sin of the
// token's angles are computed once per block, not once per head.
template <class T, class W, bool kGemmaNorm>
__global__ void rope_heads_kernel(const T* x, const float* inv_freq, const int32_t* offsets, const W* norm_w,
                                  float eps, T* out, int64_t nl, int64_t nh, int64_t half, int lanes) {
  constexpr int kE = kVecElems<T>;
  __shared__ float cs[kMaxHalf], sn[kMaxHalf];
  const int64_t token = blockIdx.x, b = token / nl, l = token % nl, d = 2 * half;
  const int64_t j0 = int64_t(threadIdx.x % lanes) * kE;  // this lane's columns [j0, j0 + kE) of each half
  const int heads_per_pass = int(blockDim.x) / lanes;
  float lo[kE], hi[kE];  // x[j0 + i] and x[half + j0 + i] of this lane's head
  auto load_head = [&](int64_t h) {
    const bool live = h < nh && j0 < half;
    const T* xr = x + (token * nh + h) * d;
    if (live) {
      load_vec(xr + j0, lo), load_vec(xr + half + j0, hi);
    } else {
      for (int i = 0; i < kE; ++i) lo[i] = hi[i] = 0;
    }
    return live;
  };
  // The first pass's loads are in flight while the angles are worked out.
  bool live = load_head(threadIdx.x / lanes);
  for (int64_t j = threadIdx.x; j < half; j += blockDim.x) {
    const float f = float(int64_t(offsets[b]) + l) * inv_freq[j];
    double sd, cd;
    ::sincos(double(f), &sd, &cd);  // as rope_kernel: the correctly rounded f32 values
    cs[j] = round_to<T>(float(cd));
    sn[j] = round_to<T>(float(sd));
  }
  __syncthreads();
  // Every lane runs every trip: the norm's shuffles need the whole warp.
  for (int64_t h0 = 0; h0 < nh; h0 += heads_per_pass) {
    const int64_t h = h0 + threadIdx.x / lanes;
    if (h0 > 0) live = load_head(h);
    if (norm_w) {
      float ss = 0;
      for (int i = 0; i < kE; ++i) ss += lo[i] * lo[i] + hi[i] * hi[i];
      for (int o = lanes / 2; o > 0; o /= 2) ss += __shfl_xor_sync(0xffffffffu, ss, o);
      const float r = 1.0f / ::sqrtf(ss / float(d) + eps);
      for (int i = 0; live && i < kE; ++i) {
        const float w1 = to_float(norm_w[j0 + i]), w2 = to_float(norm_w[half + j0 + i]);
        if constexpr (kGemmaNorm) {
          lo[i] = round_to<T>(lo[i] * r * (1.0f + w1)), hi[i] = round_to<T>(hi[i] * r * (1.0f + w2));
        } else {  // rounded before the weight multiply, as the Llama-style norm
          lo[i] = round_to<T>(round_to<T>(lo[i] * r) * w1), hi[i] = round_to<T>(round_to<T>(hi[i] * r) * w2);
        }
      }
    }
    if (!live) continue;
    float y1[kE], y2[kE];
    for (int i = 0; i < kE; ++i) {
      const float c = cs[j0 + i], s = sn[j0 + i];
      y1[i] = round_to<T>(lo[i] * c) + round_to<T>(-hi[i] * s);  // x1*cos - x2*sin (negation is exact)
      y2[i] = round_to<T>(hi[i] * c) + round_to<T>(lo[i] * s);   // x2*cos + x1*sin
    }
    T* o = out + ((b * nh + h) * nl + l) * d;
    store_vec(o + j0, y1);
    store_vec(o + half + j0, y2);
  }
}

}  // namespace

bool rope_heads(const Context& ctx, const Array& x, const Array& inv_freq, const Array& offsets, const Array* norm_w,
                float eps, fast::RmsNormStyle style, const Array& out) {
  const int64_t nb = x.shape(0), nl = x.shape(1), nh = x.shape(2), half = x.shape(3) / 2;
  if (x.size() == 0) return true;
  const int64_t vec = 16 / int64_t(itemsize(x.dtype()));
  if (!is_float(x.dtype()) || half > kMaxHalf || half % vec != 0 || !aligned16(x) || !aligned16(out) ||
      nb * nl > int64_t(INT32_MAX))
    return false;
  int lanes = 1;
  while (lanes < half / vec) lanes *= 2;
  const int threads = int(std::min<int64_t>(kBlock, (nh * lanes + 31) / 32 * 32));
  bool ran = false;
  visit_device_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    visit_device_dtype(norm_w ? norm_w->dtype() : x.dtype(), [&](auto wtag) {
      using W = decltype(wtag);
      if constexpr (kIsFloat<T> && kIsFloat<W>) {
        const W* w = norm_w ? static_cast<const W*>(norm_w->raw()) : nullptr;
        auto* kernel = style == fast::RmsNormStyle::gemma ? rope_heads_kernel<T, W, true> : rope_heads_kernel<T, W, false>;
        kernel<<<unsigned(nb * nl), threads, 0, ctx.stream>>>(static_cast<const T*>(x.raw()), inv_freq.data<float>(),
                                                             offsets.data<int32_t>(), w, eps,
                                                             static_cast<T*>(out.raw()), nl, nh, half, lanes);
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
