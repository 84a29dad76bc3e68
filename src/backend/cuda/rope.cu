// Rotate-half RoPE with HF's roundings, as the CPU backend (backend/cpu/rope.cpp):
// cos/sin of an f32 product position * inv_freq, cast to x's dtype; x*cos and
// rotate_half(x)*sin each rounded to the dtype before their (rounded) sum.
#include <algorithm>

#include "backend/cuda/rope.cuh"

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
    float cs, sn;
    rope_angle<T>(int64_t(offsets[b]) + l, inv_freq[j], cs, sn);
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
  __shared__ __align__(16) float cs[kMaxHalf];
  __shared__ __align__(16) float sn[kMaxHalf];
  const int64_t token = blockIdx.x, b = token / nl, l = token % nl, d = 2 * half;
  const int64_t j0 = int64_t(threadIdx.x % lanes) * kE;  // this lane's columns [j0, j0 + kE) of each half
  const int heads_per_pass = int(blockDim.x) / lanes;
  uint4 lo, hi;  // x[j0, j0 + kE) and x[half + j0, half + j0 + kE) of this lane's head
  auto load_head = [&](int64_t h) {
    const bool live = h < nh && j0 < half;
    const T* xr = x + (token * nh + h) * d;
    lo = live ? *reinterpret_cast<const uint4*>(xr + j0) : make_uint4(0, 0, 0, 0);
    hi = live ? *reinterpret_cast<const uint4*>(xr + half + j0) : make_uint4(0, 0, 0, 0);
    return live;
  };
  // The first pass's loads are in flight while the angles are worked out.
  bool live = load_head(threadIdx.x / lanes);
  for (int64_t j = threadIdx.x; j < half; j += blockDim.x) rope_angle<T>(int64_t(offsets[b]) + l, inv_freq[j], cs[j], sn[j]);
  __syncthreads();
  // Every lane runs every trip: the norm's shuffles need the whole warp.
  for (int64_t h0 = 0; h0 < nh; h0 += heads_per_pass) {
    const int64_t h = h0 + threadIdx.x / lanes;
    if (h0 > 0) live = load_head(h);
    norm_rotate<T, W, kGemmaNorm>(lo, hi, live, j0, half, lanes, norm_w, eps, cs, sn);
    if (!live) continue;
    T* o = out + ((b * nh + h) * nl + l) * d;
    *reinterpret_cast<uint4*>(o + j0) = lo;
    *reinterpret_cast<uint4*>(o + half + j0) = hi;
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
  const int lanes = rope_lanes(half, vec);
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
