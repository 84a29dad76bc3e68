// Creation and copy kernels: fill, arange, random, and strided copy with cast.
#include <cmath>
#include <cstring>
#include <limits>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/strided.h"

namespace lmx::cpu {
namespace {

// Float to integer as a C cast, but saturating and NaN -> 0 instead of undefined behaviour.
template <class T>
T float_to_int(double v) {
  if (std::isnan(v)) return T(0);
  const double lo = double(std::numeric_limits<T>::lowest()), hi = double(std::numeric_limits<T>::max());
  return T(std::trunc(std::clamp(v, lo, hi)));
}

template <class Dst, class Src>
inline Dst convert(Src v) {
  if constexpr (std::is_same_v<Dst, Src>) {
    return v;
  } else if constexpr (std::is_same_v<Dst, bool>) {
    if constexpr (std::is_same_v<compute_t<Src>, float>) return to_f32(v) != 0.0f;
    else return v != 0;
  } else if constexpr (std::is_same_v<compute_t<Dst>, float>) {
    if constexpr (std::is_same_v<compute_t<Src>, float>) return from_f32<Dst>(to_f32(v));
    else return from_f32<Dst>(float(v));
  } else if constexpr (std::is_same_v<compute_t<Src>, float>) {
    return float_to_int<Dst>(to_f32(v));
  } else {
    return Dst(v);
  }
}

}  // namespace

void fill(const Array& out, double value) {
  visit_dtype(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T v;
    if constexpr (std::is_same_v<compute_t<T>, float>) v = from_f32<T>(float(value));
    else if constexpr (std::is_same_v<T, bool>) v = value != 0;
    else v = float_to_int<T>(value);
    T* p = out.data<T>();
    parallel_for(out.size(), 1 << 16, [&](int64_t b, int64_t e) { std::fill(p + b, p + e, v); });
  });
}

void arange(const Array& out, double start, double step) {
  visit_dtype(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* p = out.data<T>();
    for (int64_t i = 0; i < out.size(); ++i) p[i] = convert<T>(start + double(i) * step);
  });
}

void random(const Array& out, uint64_t seed, detail::RandomKind kind, float a, float b) {
  visit_dtype(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<compute_t<T>, float>) {
      T* p = out.data<T>();
      parallel_for(out.size(), 1 << 14, [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i) {
          float v;
          if (kind == detail::RandomKind::uniform) {
            v = a + (b - a) * random_unit(seed, uint64_t(i));
          } else {  // Box-Muller on two independent counters
            const float u1 = random_unit(seed, 2 * uint64_t(i)) + 0x1p-25f;
            const float u2 = random_unit(seed, 2 * uint64_t(i) + 1);
            v = a + b * std::sqrt(-2.0f * std::log(u1)) * std::cos(6.2831853f * u2);
          }
          p[i] = from_f32<T>(v);
        }
      });
    }
  });
}

bool dropout(const Array& x, float p, uint64_t seed, const Array& out) {
  const float scale = float(1.0 / (1.0 - double(p)));  // as the composition's f32 scalar
  bool done = false;
  visit_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<compute_t<T>, float>) {
      const T* in = x.data<T>();
      T* o = out.data<T>();
      parallel_for(x.size(), 1 << 14, [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i)  // x·0 where dropped, as the product gives (NaN stays NaN)
          o[i] = from_f32<T>(to_f32(in[i]) * (random_unit(seed, uint64_t(i)) >= p ? scale : 0.0f));
      });
      done = true;
    }
  });
  return done;
}

void copy(const Array& src, const Array& dst) {
  const Walk<2> w = make_walk<2>(dst.shape(), {&src, &dst});
  visit_dtype(src.dtype(), [&](auto s_tag) {
    visit_dtype(dst.dtype(), [&](auto d_tag) {
      using S = decltype(s_tag);
      using D = decltype(d_tag);
      const S* sp = static_cast<const S*>(src.raw());
      D* dp = static_cast<D*>(dst.raw());
      walk_rows(w, [&](const std::array<int64_t, 2>& off, int64_t n, const std::array<int64_t, 2>& st) {
        const S* s = sp + off[0];
        D* d = dp + off[1];
        if constexpr (std::is_same_v<S, D>) {
          if (st[0] == 1 && st[1] == 1) {
            std::memcpy(d, s, size_t(n) * sizeof(S));
            return;
          }
        }
        for (int64_t i = 0; i < n; ++i) d[i * st[1]] = convert<D>(s[i * st[0]]);
      });
    });
  });
}

}  // namespace lmx::cpu
