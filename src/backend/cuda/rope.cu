// Rotate-half RoPE with HF's roundings, as the CPU backend (backend/cpu/rope.cpp):
// cos/sin of an f32 product position * inv_freq, cast to x's dtype; x*cos and
// rotate_half(x)*sin each rounded to the dtype before their (rounded) sum.
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

}  // namespace

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
