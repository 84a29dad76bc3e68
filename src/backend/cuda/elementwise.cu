// Element-wise kernels. As on the CPU, the math of each op is written once as a scalar
// functor in the compute type (f32 for floats, int64 for integers); one strided kernel
// applies it to arrays of any strides.
//
// Host code must not choose a kernel from the result type of a functor: nvcc's host pass
// replaces the bodies of __device__ functions by stubs, so there `auto operator()` deduces
// void. A kernel chosen that way in the host pass is one the device pass never compiled:
// its launch fails with "invalid device function". The functors state their result kind
// as constants instead, which both passes read alike, and the device pass checks them
// against the bodies (check_traits).
#include <type_traits>

#include "backend/cuda/common.cuh"

namespace lmx::cuda {
namespace {

template <UnaryOp Op>
struct UnaryFn {
  // Computed in f32 whatever the input: defined for float dtypes only.
  static constexpr bool kFloatOnly = !(Op == UnaryOp::neg || Op == UnaryOp::abs ||
                                       Op == UnaryOp::square || Op == UnaryOp::logical_not);
  static constexpr bool kBoolResult = false;

  template <class X>
  __device__ auto operator()(X x) const {
    if constexpr (Op == UnaryOp::neg)
      return X(-x);
    else if constexpr (Op == UnaryOp::abs)
      return x < 0 ? X(-x) : x;
    else if constexpr (Op == UnaryOp::square)
      return X(x * x);
    else if constexpr (Op == UnaryOp::exp)
      return cr_exp(float(x));
    else if constexpr (Op == UnaryOp::log)
      return cr_log(float(x));
    else if constexpr (Op == UnaryOp::sqrt)
      return ::sqrtf(float(x));
    else if constexpr (Op == UnaryOp::rsqrt)
      return 1.0f / ::sqrtf(float(x));
    else if constexpr (Op == UnaryOp::tanh)
      return cr_tanh(float(x));
    else if constexpr (Op == UnaryOp::sin)
      return cr_sin(float(x));
    else if constexpr (Op == UnaryOp::cos)
      return cr_cos(float(x));
    else if constexpr (Op == UnaryOp::sigmoid)
      return 1.0f / (1.0f + cr_exp(-float(x)));
    else if constexpr (Op == UnaryOp::silu)
      return float(x) / (1.0f + cr_exp(-float(x)));
    else if constexpr (Op == UnaryOp::gelu_tanh) {
      const float v = float(x);
      return 0.5f * v * (1.0f + cr_tanh(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    } else {
      static_assert(Op == UnaryOp::logical_not);
      return X(!x);
    }
  }
};

template <BinaryOp Op>
struct BinaryFn {
  static constexpr bool kFloatOnly = Op == BinaryOp::pow;
  // Comparisons and the logical ops write bool arrays.
  static constexpr bool kBoolResult = Op >= BinaryOp::eq;

  template <class X>
  __device__ auto operator()(X a, X b) const {
    if constexpr (Op == BinaryOp::add)
      return X(a + b);
    else if constexpr (Op == BinaryOp::sub)
      return X(a - b);
    else if constexpr (Op == BinaryOp::mul)
      return X(a * b);
    else if constexpr (Op == BinaryOp::div) {
      if constexpr (std::is_integral_v<X>)
        return b == 0 ? X(0) : X(a / b);  // x/0 is 0, not a trap
      else
        return a / b;
    } else if constexpr (Op == BinaryOp::pow)
      return cr_pow(float(a), float(b));
    else if constexpr (Op == BinaryOp::maximum)
      return (a != a || a > b) ? a : b;  // NaN propagates
    else if constexpr (Op == BinaryOp::minimum)
      return (a != a || a < b) ? a : b;
    else if constexpr (Op == BinaryOp::eq)
      return a == b;
    else if constexpr (Op == BinaryOp::ne)
      return a != b;
    else if constexpr (Op == BinaryOp::lt)
      return a < b;
    else if constexpr (Op == BinaryOp::le)
      return a <= b;
    else if constexpr (Op == BinaryOp::gt)
      return a > b;
    else if constexpr (Op == BinaryOp::ge)
      return a >= b;
    else if constexpr (Op == BinaryOp::logical_and)
      return a && b;
    else {
      static_assert(Op == BinaryOp::logical_or);
      return a || b;
    }
  }
};

// Calls f(std::integral_constant<E, e>{}) for the runtime value e of an enum with `Count` values.
template <class E, int Count, int I = 0, class F>
void with_enum(E e, F&& f) {
  if constexpr (I < Count) {
    if (int(e) == I) return f(std::integral_constant<E, E(I)>{});
    return with_enum<E, Count, I + 1>(e, f);
  }
}

// out[i] = f(a[i]) or f(a[i], b[i]); `l` holds the strides of (a, out) or (a, b, out).
template <class T, class Out, int N, class F>
__global__ void map_kernel(const T* a, const T* b, Out* out, int64_t n, Layout<N> l, bool flat,
                           F f) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    int64_t off[N];
    if (flat) {
      for (int k = 0; k < N; ++k) off[k] = i;
    } else {
      l.offsets(i, off);
    }
    if constexpr (N == 2)
      out[off[1]] = store<Out>(f(load(a[off[0]])));
    else
      out[off[2]] = store<Out>(f(load(a[off[0]]), load(b[off[1]])));
  }
}

template <class T>
__global__ void where_kernel(const bool* c, const T* a, const T* b, T* out, int64_t n, Layout<4> l,
                             bool flat) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    int64_t off[4];
    if (flat) {
      for (int k = 0; k < 4; ++k) off[k] = i;
    } else {
      l.offsets(i, off);
    }
    out[off[3]] = c[off[0]] ? a[off[1]] : b[off[2]];
  }
}

template <class T, class Out, int N, class F>
void launch_map(const Context& ctx, const Array* const (&arrays)[N], F f) {
  const Array& out = *arrays[N - 1];
  const int64_t n = out.size();
  if (n == 0) return;
  const Layout<N> l = make_layout(out.shape(), arrays);
  const T* b = N == 3 ? static_cast<const T*>(arrays[1]->raw()) : nullptr;
  map_kernel<T, Out, N>
      <<<grid_for(n), kBlock, 0, ctx.stream>>>(static_cast<const T*>(arrays[0]->raw()), b,
                                               static_cast<Out*>(out.raw()), n, l, is_flat(l), f);
  check_launch("map_kernel");
}

// F's constants must tell R, its result type on arguments of the compute type C. Checked in
// the device pass only, the one where R is real (void in the host pass).
template <class F, class C, class R>
constexpr void check_traits() {
#ifdef __CUDA_ARCH__
  static_assert(F::kBoolResult == std::is_same_v<R, bool>, "kBoolResult disagrees with the body");
  // Integer inputs show which ops go through f32 (float inputs compute in f32 anyway).
  if constexpr (!std::is_same_v<C, float>)
    static_assert(F::kFloatOnly == std::is_same_v<R, float>, "kFloatOnly disagrees with the body");
#endif
}

// round(act(g)) * u. For 16-bit dtypes the activation runs in plain f32 math: its error is
// far below the rounding to the dtype that follows, and the double-precision functions of
// UnaryFn would make the pass compute-bound.
template <class T, UnaryOp Op>
__device__ __forceinline__ float gated(float g, float u) {
  float a;
  if constexpr (std::is_same_v<T, float>) {
    a = UnaryFn<Op>{}(g);
  } else if constexpr (Op == UnaryOp::silu) {
    a = g / (1.0f + __expf(-g));
  } else {
    a = 0.5f * g * (1.0f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g)));
  }
  return round_to<T>(a) * u;
}

// out = gated(gate, up) over contiguous arrays, 16 bytes per load where `vectors` (n a
// whole number of aligned vectors), else one element per trip.
template <class T, UnaryOp Op>
__global__ void glu_kernel(const T* gate, const T* up, T* out, int64_t n, bool vectors) {
  constexpr int kE = kVecElems<T>;
  if (vectors) {
    for (int64_t i = global_thread() * kE; i < n; i += grid_threads() * kE) {
      float g[kE], u[kE];
      load_vec(gate + i, g);
      load_vec(up + i, u);
      for (int e = 0; e < kE; ++e) g[e] = gated<T, Op>(g[e], u[e]);
      store_vec(out + i, g);
    }
    return;
  }
  for (int64_t i = global_thread(); i < n; i += grid_threads())
    out[i] = from_float<T>(gated<T, Op>(to_float(gate[i]), to_float(up[i])));
}

// glu's gradient from the output's gradient d: d_up = d·round(act(g)), d_gate =
// d·u·act'(g), in f32 (the activation's derivative as vjp.cpp's rule for it writes it).
template <class T, UnaryOp Op>
__device__ __forceinline__ void gated_grad(float g, float u, float d, float& dg, float& du) {
  float a, da;
  if constexpr (Op == UnaryOp::silu) {
    const float s = 1.0f / (1.0f + __expf(-g));
    a = g * s, da = s * (1.0f + g * (1.0f - s));
  } else {
    constexpr float c = 0.7978845608028654f, k = 0.044715f;
    const float t = tanhf(c * (g + k * g * g * g));
    a = 0.5f * g * (1.0f + t), da = 0.5f * (1.0f + t) + 0.5f * g * (1.0f - t * t) * c * (1.0f + 3 * k * g * g);
  }
  du = d * round_to<T>(a), dg = d * u * da;
}

// d_gate, d_up = gated_grad over contiguous arrays, 16 bytes per load where `vectors`.
template <class T, UnaryOp Op>
__global__ void glu_grad_kernel(const T* gate, const T* up, const T* d, T* d_gate, T* d_up, int64_t n,
                                bool vectors) {
  constexpr int kE = kVecElems<T>;
  if (vectors) {
    for (int64_t i = global_thread() * kE; i < n; i += grid_threads() * kE) {
      float g[kE], u[kE], dd[kE];
      load_vec(gate + i, g);
      load_vec(up + i, u);
      load_vec(d + i, dd);
      for (int e = 0; e < kE; ++e) gated_grad<T, Op>(g[e], u[e], dd[e], g[e], u[e]);
      store_vec(d_gate + i, g);
      store_vec(d_up + i, u);
    }
    return;
  }
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    float dg, du;
    gated_grad<T, Op>(to_float(gate[i]), to_float(up[i]), to_float(d[i]), dg, du);
    d_gate[i] = from_float<T>(dg), d_up[i] = from_float<T>(du);
  }
}

}  // namespace

void glu_grad(const Context& ctx, fast::GluActivation act, const Array& gate, const Array& up, const Array& d,
              const Array& d_gate, const Array& d_up) {
  const int64_t n = gate.size();
  if (n == 0) return;
  visit_device_dtype(gate.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (kIsFloat<T>) {
      const bool vectors = n % kVecElems<T> == 0 && aligned16(gate) && aligned16(up) && aligned16(d) &&
                           aligned16(d_gate) && aligned16(d_up);
      const unsigned blocks = grid_for(vectors ? n / kVecElems<T> : n);
      auto run = [&](auto kernel) {
        kernel<<<blocks, kBlock, 0, ctx.stream>>>(static_cast<const T*>(gate.raw()), static_cast<const T*>(up.raw()),
                                                  static_cast<const T*>(d.raw()), static_cast<T*>(d_gate.raw()),
                                                  static_cast<T*>(d_up.raw()), n, vectors);
      };
      if (act == fast::GluActivation::silu)
        run(glu_grad_kernel<T, UnaryOp::silu>);
      else
        run(glu_grad_kernel<T, UnaryOp::gelu_tanh>);
      check_launch("glu_grad_kernel");
    }
  });
}

void glu(const Context& ctx, fast::GluActivation act, const Array& gate, const Array& up, const Array& out) {
  const int64_t n = out.size();
  if (n == 0) return;
  visit_device_dtype(gate.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (kIsFloat<T>) {
      auto* o = static_cast<T*>(out.raw());
      const auto* g = static_cast<const T*>(gate.raw());
      const auto* u = static_cast<const T*>(up.raw());
      const bool vectors = n % kVecElems<T> == 0 && aligned16(gate) && aligned16(up) && aligned16(out);
      const unsigned blocks = grid_for(vectors ? n / kVecElems<T> : n);
      if (act == fast::GluActivation::silu)
        glu_kernel<T, UnaryOp::silu><<<blocks, kBlock, 0, ctx.stream>>>(g, u, o, n, vectors);
      else
        glu_kernel<T, UnaryOp::gelu_tanh><<<blocks, kBlock, 0, ctx.stream>>>(g, u, o, n, vectors);
      check_launch("glu_kernel");
    }
  });
}

namespace {

// The composition's f32 operations one by one, rounded each (no contraction into fma), so
// that a step is the composition's to the bit: m ← β1·m + (1−β1)·g, v ← β2·v + (1−β2)·g²,
// master ← master·decay − (m·step_size) / (√(v·inv_bias2) + ε).
template <class G, class P>
__global__ void adamw_kernel(const G* g, float* master, float* m, float* v, P* param, int64_t n,
                             detail::Kernels::AdamWFactors f) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const float gi = to_float(g[i]);
    const float mi = __fadd_rn(__fmul_rn(m[i], f.beta1), __fmul_rn(gi, f.one_minus_beta1));
    const float vi = __fadd_rn(__fmul_rn(v[i], f.beta2), __fmul_rn(__fmul_rn(gi, gi), f.one_minus_beta2));
    const float denom = __fadd_rn(__fsqrt_rn(__fmul_rn(vi, f.inv_bias2)), f.eps);
    const float update = __fdiv_rn(__fmul_rn(mi, f.step_size), denom);
    const float p = __fsub_rn(__fmul_rn(master[i], f.decay), update);
    m[i] = mi, v[i] = vi, master[i] = p;
    if constexpr (!std::is_same_v<P, float>) param[i] = from_float<P>(p);
  }
}

}  // namespace

void adamw(const Context& ctx, const Array& g, const Array& master, const Array& m, const Array& v,
           const Array& param, const detail::Kernels::AdamWFactors& f) {
  const int64_t n = master.size();
  if (n == 0) return;
  visit_device_dtype(g.dtype(), [&](auto g_tag) {
    using G = decltype(g_tag);
    visit_device_dtype(param.dtype(), [&](auto p_tag) {
      using P = decltype(p_tag);
      if constexpr (kIsFloat<G> && kIsFloat<P>) {
        adamw_kernel<G, P><<<grid_for(n), kBlock, 0, ctx.stream>>>(
            static_cast<const G*>(g.raw()), static_cast<float*>(master.raw()), static_cast<float*>(m.raw()),
            static_cast<float*>(v.raw()), static_cast<P*>(param.raw()), n, f);
        check_launch("adamw_kernel");
      }
    });
  });
}

void unary(const Context& ctx, UnaryOp op, const Array& in, const Array& out) {
  visit_device_dtype(in.dtype(), [&](auto tag) {
    using T = decltype(tag);
    with_enum<UnaryOp, int(UnaryOp::cos) + 1>(op, [&](auto op_c) {
      using F = UnaryFn<decltype(op_c)::value>;
      using C = compute_t<T>;
      check_traits<F, C, decltype(F{}(C{}))>();
      // Transcendentals exist only for floats; the ops layer has rejected the rest.
      if constexpr (kIsFloat<T> || !F::kFloatOnly) {
        const Array* arrays[2] = {&in, &out};
        launch_map<T, T>(ctx, arrays, F{});
      } else {
        fail("cuda", "unary op ", int(op), " is not defined for ", dtype_name(in.dtype()));
      }
    });
  });
}

void binary(const Context& ctx, BinaryOp op, const Array& a, const Array& b, const Array& out) {
  visit_device_dtype(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    with_enum<BinaryOp, int(BinaryOp::logical_or) + 1>(op, [&](auto op_c) {
      using F = BinaryFn<decltype(op_c)::value>;
      using C = compute_t<T>;
      check_traits<F, C, decltype(F{}(C{}, C{}))>();
      const Array* arrays[3] = {&a, &b, &out};
      if constexpr (F::kBoolResult) {
        launch_map<T, bool>(ctx, arrays, F{});
      } else if constexpr (kIsFloat<T> || !F::kFloatOnly) {
        launch_map<T, T>(ctx, arrays, F{});
      } else {
        fail("cuda", "binary op ", int(op), " is not defined for ", dtype_name(a.dtype()));
      }
    });
  });
}

void where(const Context& ctx, const Array& cond, const Array& a, const Array& b,
           const Array& out) {
  const int64_t n = out.size();
  if (n == 0) return;
  const Array* arrays[4] = {&cond, &a, &b, &out};
  const Layout<4> l = make_layout(out.shape(), arrays);
  visit_device_dtype(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    where_kernel<<<grid_for(n), kBlock, 0, ctx.stream>>>(
        static_cast<const bool*>(cond.raw()), static_cast<const T*>(a.raw()),
        static_cast<const T*>(b.raw()), static_cast<T*>(out.raw()), n, l, is_flat(l));
    check_launch("where_kernel");
  });
}

}  // namespace lmx::cuda
