// Element-wise kernels. The math of each op is written once, as a scalar lambda in
// the compute type (f32 for floats, int64 for integers); the strided driver does the rest.
#include <cmath>

#include "backend/cpu/cpu_fast.h"
#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/strided.h"

namespace lmx::cpu {
namespace {

// Calls k(f) with the scalar function for `op`.
template <class K>
void with_unary(UnaryOp op, K&& k) {
  switch (op) {
    case UnaryOp::neg: return k([](auto x) { return decltype(x)(-x); });
    case UnaryOp::abs: return k([](auto x) { return x < 0 ? decltype(x)(-x) : x; });
    case UnaryOp::square: return k([](auto x) { return decltype(x)(x * x); });
    case UnaryOp::exp: return k([](auto x) { return std::exp(float(x)); });
    case UnaryOp::log: return k([](auto x) { return std::log(float(x)); });
    case UnaryOp::sqrt: return k([](auto x) { return std::sqrt(float(x)); });
    case UnaryOp::rsqrt: return k([](auto x) { return 1.0f / std::sqrt(float(x)); });
    case UnaryOp::tanh: return k([](auto x) { return std::tanh(float(x)); });
    case UnaryOp::sin: return k([](auto x) { return std::sin(float(x)); });
    case UnaryOp::cos: return k([](auto x) { return std::cos(float(x)); });
    case UnaryOp::sigmoid: return k([](auto x) { return 1.0f / (1.0f + std::exp(-float(x))); });
    case UnaryOp::silu: return k([](auto x) { return float(x) / (1.0f + std::exp(-float(x))); });
    case UnaryOp::gelu_tanh:
      return k([](auto x) {
        const float v = float(x);
        return 0.5f * v * (1.0f + std::tanh(0.7978845608028654f * (v + 0.044715f * v * v * v)));
      });
    case UnaryOp::logical_not: return k([](auto x) { return decltype(x)(!x); });
  }
}

template <class K>
void with_binary(BinaryOp op, K&& k) {
  switch (op) {
    case BinaryOp::add: return k([](auto a, auto b) { return decltype(a)(a + b); });
    case BinaryOp::sub: return k([](auto a, auto b) { return decltype(a)(a - b); });
    case BinaryOp::mul: return k([](auto a, auto b) { return decltype(a)(a * b); });
    case BinaryOp::div:
      return k([](auto a, auto b) {
        if constexpr (std::is_integral_v<decltype(a)>) {  // integer division truncates; x/0 is 0, not UB
          return b == 0 ? decltype(a)(0) : decltype(a)(a / b);
        } else {
          return a / b;
        }
      });
    case BinaryOp::pow: return k([](auto a, auto b) { return std::pow(float(a), float(b)); });
    case BinaryOp::maximum:
      return k([](auto a, auto b) { return (a != a || a > b) ? a : b; });  // NaN propagates
    case BinaryOp::minimum: return k([](auto a, auto b) { return (a != a || a < b) ? a : b; });
    case BinaryOp::eq: return k([](auto a, auto b) { return a == b; });
    case BinaryOp::ne: return k([](auto a, auto b) { return a != b; });
    case BinaryOp::lt: return k([](auto a, auto b) { return a < b; });
    case BinaryOp::le: return k([](auto a, auto b) { return a <= b; });
    case BinaryOp::gt: return k([](auto a, auto b) { return a > b; });
    case BinaryOp::ge: return k([](auto a, auto b) { return a >= b; });
    case BinaryOp::logical_and: return k([](auto a, auto b) { return a && b; });
    case BinaryOp::logical_or: return k([](auto a, auto b) { return a || b; });
  }
}

// out[i] = f(in_0[i], ...) for the N-1 inputs, out last in `arrays`.
template <class T, class Out, size_t N, class F>
void map_elements(const std::array<const Array*, N>& arrays, F f) {
  const Walk<N> w = make_walk<N>(arrays[N - 1]->shape(), arrays);
  std::array<const T*, N - 1> in;
  for (size_t k = 0; k + 1 < N; ++k) in[k] = static_cast<const T*>(arrays[k]->raw());
  Out* out = static_cast<Out*>(arrays[N - 1]->raw());
  walk_rows(w, [&](const std::array<int64_t, N>& off, int64_t n, const std::array<int64_t, N>& st) {
    Out* o = out + off[N - 1];
    for (int64_t i = 0; i < n; ++i) {
      if constexpr (N == 2) {
        o[i * st[1]] = store<Out>(f(load(in[0][off[0] + i * st[0]])));
      } else {
        o[i * st[2]] = store<Out>(f(load(in[0][off[0] + i * st[0]]), load(in[1][off[1] + i * st[1]])));
      }
    }
  });
}

}  // namespace

void unary(UnaryOp op, const Array& in, const Array& out) {
  visit_dtype(in.dtype(), [&](auto tag) {
    using T = decltype(tag);
    with_unary(op, [&](auto f) {
      using R = decltype(f(compute_t<T>{}));
      // Transcendentals exist only for floats; the ops layer has rejected the rest.
      if constexpr (std::is_same_v<compute_t<T>, float> || !std::is_same_v<R, float>)
        map_elements<T, T, 2>({&in, &out}, f);
    });
  });
}

void binary(BinaryOp op, const Array& a, const Array& b, const Array& out) {
  visit_dtype(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    with_binary(op, [&](auto f) {
      using R = decltype(f(compute_t<T>{}, compute_t<T>{}));
      if constexpr (std::is_same_v<R, bool>) {
        map_elements<T, bool, 3>({&a, &b, &out}, f);
      } else if constexpr (std::is_same_v<compute_t<T>, float> || !std::is_same_v<R, float>) {
        map_elements<T, T, 3>({&a, &b, &out}, f);
      }
    });
  });
}

void glu(fast::GluActivation act, const Array& gate, const Array& up, const Array& out) {
  if (glu_contiguous(act, gate, up, out)) return;
  visit_dtype(gate.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<compute_t<T>, float>) {
      with_unary(act == fast::GluActivation::silu ? UnaryOp::silu : UnaryOp::gelu_tanh, [&](auto f) {
        // The activation is rounded to the dtype before the product, as two ops would.
        map_elements<T, T, 3>({&gate, &up, &out}, [f](float g, float u) { return load(store<T>(f(g))) * u; });
      });
    }
  });
}

void where(const Array& cond, const Array& a, const Array& b, const Array& out) {
  const Walk<4> w = make_walk<4>(out.shape(), {&cond, &a, &b, &out});
  const bool* c = cond.data<bool>();
  visit_dtype(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* pa = static_cast<const T*>(a.raw());
    const T* pb = static_cast<const T*>(b.raw());
    T* po = out.data<T>();
    walk_rows(w, [&](const std::array<int64_t, 4>& off, int64_t n, const std::array<int64_t, 4>& st) {
      for (int64_t i = 0; i < n; ++i)
        po[off[3] + i * st[3]] = c[off[0] + i * st[0]] ? pa[off[1] + i * st[1]] : pb[off[2] + i * st[2]];
    });
  });
}

}  // namespace lmx::cpu
