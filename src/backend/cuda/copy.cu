// Creation and copy kernels: fill, arange, random, dropout, and strided copy with cast. Values
// match the CPU backend bit for bit (same conversions, same counter-based generator),
// except normal random, where the CPU's libm rounds log and cos differently at times.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "backend/cuda/common.cuh"

namespace lmx::cuda {
namespace {

template <class W>
__global__ void fill_kernel(W* out, int64_t n, W value) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) out[i] = value;
}

template <class T>
__global__ void arange_kernel(T* out, int64_t n, double start, double step) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const double v = start + double(i) * step;  // the CPU computes in double too
    if constexpr (kIsFloat<T>)
      out[i] = from_float<T>(float(v));
    else if constexpr (std::is_same_v<T, bool>)
      out[i] = v != 0;
    else
      out[i] = T(v);
  }
}

template <class T>
__global__ void random_kernel(T* out, int64_t n, uint64_t seed, bool normal, float a, float b) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    float v;
    if (!normal) {
      v = a + (b - a) * random_unit(seed, uint64_t(i));
    } else {
      const float u1 = random_unit(seed, 2 * uint64_t(i)) + 0x1p-25f;
      const float u2 = random_unit(seed, 2 * uint64_t(i) + 1);
      // log and cos in double, rounded once: the correctly rounded f32 results. glibc's
      // logf and cosf on the CPU are not always correctly rounded, so about 1% of values
      // differ from the CPU's in the last bits (tests/ops/cuda_test.cpp bounds how far).
      const float lg = float(::log(double(u1)));
      const float cs = float(::cos(double(6.2831853f * u2)));
      v = a + b * ::sqrtf(-2.0f * lg) * cs;
    }
    out[i] = from_float<T>(v);
  }
}

// The CPU's dropout (backend/cpu/copy.cpp): x·scale where the element's draw is at least p,
// x·0 where it is not (so NaN stays NaN), the product in f32 rounded once.
template <class T>
__global__ void dropout_kernel(const T* in, T* out, int64_t n, uint64_t seed, float p, float scale) {
  for (int64_t i = global_thread(); i < n; i += grid_threads())
    out[i] = from_float<T>(to_float(in[i]) * (random_unit(seed, uint64_t(i)) >= p ? scale : 0.0f));
}

template <class S, class D>
__global__ void copy_kernel(const S* src, D* dst, int64_t n, Layout<2> l, bool flat) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    if (flat) {
      dst[i] = convert<D>(src[i]);
    } else {
      int64_t off[2];
      l.offsets(i, off);
      dst[off[1]] = convert<D>(src[off[0]]);
    }
  }
}

// The CPU's fill conversion on the host: floats round, integers saturate, NaN gives 0.
template <class T>
T host_value(double v) {
  if constexpr (std::is_same_v<T, bool>) {
    return v != 0;
  } else if constexpr (std::is_floating_point_v<T>) {
    return T(v);
  } else {
    if (std::isnan(v)) return T(0);
    return T(std::trunc(std::clamp(v, double(std::numeric_limits<T>::lowest()),
                                   double(std::numeric_limits<T>::max()))));
  }
}

// The bits of `value` stored as dtype t, in the low bytes (the machines are little-endian).
uint32_t host_bits(Dtype t, double value) {
  uint32_t w = 0;
  ::lmx::visit_dtype(t, [&](auto tag) {
    using T = decltype(tag);
    T v;
    if constexpr (std::is_arithmetic_v<T>)
      v = host_value<T>(value);
    else
      v = from_f32<T>(float(value));
    std::memcpy(&w, &v, sizeof(T));
  });
  return w;
}

template <class W>
void fill_as(const Context& ctx, const Array& out, uint32_t bits) {
  const int64_t n = out.size();
  fill_kernel<<<grid_for(n), kBlock, 0, ctx.stream>>>(static_cast<W*>(out.raw()), n, W(bits));
  check_launch("fill_kernel");
}

}  // namespace

void fill(const Context& ctx, const Array& out, double value) {
  if (out.size() == 0) return;
  const uint32_t bits = host_bits(out.dtype(), value);
  switch (itemsize(out.dtype())) {
    case 4: return fill_as<uint32_t>(ctx, out, bits);
    case 2: return fill_as<uint16_t>(ctx, out, bits);
    default: return fill_as<uint8_t>(ctx, out, bits);
  }
}

void arange(const Context& ctx, const Array& out, double start, double step) {
  const int64_t n = out.size();
  if (n == 0) return;
  visit_device_dtype(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    arange_kernel<<<grid_for(n), kBlock, 0, ctx.stream>>>(static_cast<T*>(out.raw()), n, start,
                                                          step);
    check_launch("arange_kernel");
  });
}

void random(const Context& ctx, const Array& out, uint64_t seed, detail::RandomKind kind, float a,
            float b) {
  const int64_t n = out.size();
  if (n == 0) return;
  visit_device_dtype(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (kIsFloat<T>) {
      random_kernel<<<grid_for(n), kBlock, 0, ctx.stream>>>(
          static_cast<T*>(out.raw()), n, seed, kind == detail::RandomKind::normal, a, b);
      check_launch("random_kernel");
    } else {
      fail("random", "dtype must be floating-point, got ", dtype_name(out.dtype()));
    }
  });
}

bool dropout(const Context& ctx, const Array& x, float p, uint64_t seed, const Array& out) {
  const float scale = float(1.0 / (1.0 - double(p)));  // as the composition's f32 scalar
  bool done = false;
  visit_device_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (kIsFloat<T> && !std::is_same_v<T, double>) {
      if (x.size() > 0) {
        dropout_kernel<<<grid_for(x.size()), kBlock, 0, ctx.stream>>>(
            static_cast<const T*>(x.raw()), static_cast<T*>(out.raw()), x.size(), seed, p, scale);
        check_launch("dropout_kernel");
      }
      done = true;
    }
  });
  return done;
}

void copy(const Context& ctx, const Array& src, const Array& dst) {
  const int64_t n = dst.size();
  if (n == 0) return;
  const Array* arrays[2] = {&src, &dst};
  const Layout<2> l = make_layout(dst.shape(), arrays);
  const bool flat = is_flat(l);
  if (flat && src.dtype() == dst.dtype()) {
    check(cudaMemcpyAsync(dst.raw(), src.raw(), dst.nbytes(), cudaMemcpyDeviceToDevice, ctx.stream),
          "cudaMemcpyAsync");
    return;
  }
  // Same dtype, rows contiguous on both sides (a transpose of [.., L, H, D] to
  // [.., H, L, D], say): move 16 bytes per index computation instead of one element.
  const int64_t vec = 16 / int64_t(itemsize(src.dtype()));
  const int last = l.ndim - 1;
  bool wide = src.dtype() == dst.dtype() && vec > 1 && l.ndim > 0 && l.strides[0][last] == 1 &&
              l.strides[1][last] == 1 && l.shape[last] % vec == 0 &&
              reinterpret_cast<uintptr_t>(src.raw()) % 16 == 0 && reinterpret_cast<uintptr_t>(dst.raw()) % 16 == 0;
  for (int d = 0; d < last && wide; ++d) wide = l.strides[0][d] % vec == 0 && l.strides[1][d] % vec == 0;
  if (wide) {
    Layout<2> w = l;
    w.shape[last] /= vec;
    for (int d = 0; d < last; ++d) w.strides[0][d] /= vec, w.strides[1][d] /= vec;
    copy_kernel<<<grid_for(n / vec), kBlock, 0, ctx.stream>>>(static_cast<const uint4*>(src.raw()),
                                                              static_cast<uint4*>(dst.raw()), n / vec, w, false);
    check_launch("copy_kernel");
    return;
  }
  visit_device_dtype(src.dtype(), [&](auto s_tag) {
    visit_device_dtype(dst.dtype(), [&](auto d_tag) {
      using S = decltype(s_tag);
      using D = decltype(d_tag);
      copy_kernel<<<grid_for(n), kBlock, 0, ctx.stream>>>(static_cast<const S*>(src.raw()),
                                                          static_cast<D*>(dst.raw()), n, l, flat);
      check_launch("copy_kernel");
    });
  });
}

}  // namespace lmx::cuda
