// RMSNorm (Llama and Gemma forms) and LayerNorm over the last axis, one block per row,
// statistics in f32, with the CPU backend's roundings (backend/cpu/norm.cpp). RMSNorm, and
// the residual add fused with it, run a vectorised kernel that holds the row in registers
// wherever the row is whole 16-byte vectors; the generic kernel covers the rest.
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

// The RMSNorm of a value v with inverse RMS r, rounded as the CPU backend rounds it.
template <NormKind kKind, class T>
__device__ __forceinline__ float rms_scaled(float v, float r, float w) {
  if constexpr (kKind == NormKind::rms_llama)
    return round_to<T>(round_to<T>(v * r) * w);  // HF Llama: cast before the weight multiply
  else
    return round_to<T>(v * r * (1.0f + w));  // Gemma: all f32, weight offset from one
}

// The most 16-byte vectors of a row one thread holds; in a row a warp holds, each lane's.
constexpr int kMaxVecsPerThread = 4;
constexpr int kWarpRowVecs = 5;

// Normalises the row held in v (kC vectors per thread, vector index threadIdx.x + c *
// blockDim.x, `nvec` vectors in the row) in place with weight w.
template <NormKind kKind, class T, class W, int kC>
__device__ __forceinline__ void rms_in_registers(float (&v)[kC][kVecElems<T>], const W* w, int64_t nvec,
                                                 int64_t d, float eps) {
  constexpr int kE = kVecElems<T>;
  float ss = 0;
  for (int c = 0; c < kC; ++c)
    if (threadIdx.x + c * blockDim.x < nvec)
      for (int i = 0; i < kE; ++i) ss += v[c][i] * v[c][i];
  const float r = 1.0f / ::sqrtf(block_reduce(ss, Sum{}) / float(d) + eps);
  for (int c = 0; c < kC; ++c) {
    const int64_t at = (threadIdx.x + c * int64_t(blockDim.x)) * kE;
    if (at >= d) continue;
    // The weights as one vector where they share the row's dtype (the usual case): the
    // kernel is bound by instruction issue, and element loads took one each.
    float wv[kE];
    if constexpr (std::is_same_v<W, T>) {
      load_vec(w + at, wv);
    } else {
      for (int i = 0; i < kE; ++i) wv[i] = to_float(w[at + i]);
    }
    for (int i = 0; i < kE; ++i) v[c][i] = rms_scaled<kKind, T>(v[c][i], r, wv[i]);
  }
}

// The 16-bit form of residual_rms_kernel: a row held as pairs of T, the residual add and
// Llama's weight multiply as paired instructions (they round as the f32 forms do: see
// Pair), and two roundings in one conversion. The f32 form took three times the
// instructions, and the kernel was bound by issuing them (bench/NOTES.md, classification).
// A row's threads are the block, or (kWarpRow) one warp, whose sums need no block-wide
// reduction.
template <class T, int kC, bool kWarpRow>
struct PairedRow {
  static constexpr int kP = kVecElems<T> / 2;  // pairs in a 16-byte vector
  Pair<T> v[kC][kP];

  __device__ static int64_t at(int c) {
    const int threads = kWarpRow ? 32 : int(blockDim.x),
              tid = kWarpRow ? int(threadIdx.x) % 32 : int(threadIdx.x);
    return (tid + c * int64_t(threads)) * kVecElems<T>;
  }
  __device__ static float row_sum(float v) {
    if constexpr (kWarpRow)
      return warp_reduce(v, Sum{});
    else
      return block_reduce(v, Sum{});
  }
  __device__ static void load(const T* p, Pair<T> (&out)[kP]) {
    *reinterpret_cast<uint4*>(out) = *reinterpret_cast<const uint4*>(p);
  }
  __device__ void store(T* row, int64_t d) const {
    for (int c = 0; c < kC; ++c)
      if (at(c) < d) *reinterpret_cast<uint4*>(row + at(c)) = *reinterpret_cast<const uint4*>(v[c]);
  }
  // v = rms(v, w), summing the squares in the order the f32 form does.
  template <NormKind kKind, class W>
  __device__ void normalise(const W* w, int64_t d, float eps) {
    float ss = 0;
    for (int c = 0; c < kC; ++c)
      if (at(c) < d)
        for (int k = 0; k < kP; ++k) {
          const float2 f = from_pair<T>(v[c][k]);
          ss += f.x * f.x;
          ss += f.y * f.y;
        }
    const float r = 1.0f / ::sqrtf(row_sum(ss) / float(d) + eps);
    for (int c = 0; c < kC; ++c) {
      if (at(c) >= d) continue;
      if constexpr (kKind == NormKind::rms_llama && std::is_same_v<W, T>) {  // round(round(v r) w)
        Pair<T> wp[kP];
        load(w + at(c), wp);
        for (int k = 0; k < kP; ++k) {
          const float2 f = from_pair<T>(v[c][k]);
          v[c][k] = __hmul2_rn(to_pair<T>(f.x * r, f.y * r), wp[k]);
        }
      } else {
        float wv[kVecElems<T>];
        if constexpr (std::is_same_v<W, T>) {
          load_vec(w + at(c), wv);
        } else {
          for (int i = 0; i < kVecElems<T>; ++i) wv[i] = to_float(w[at(c) + i]);
        }
        for (int k = 0; k < kP; ++k) {
          const float2 f = from_pair<T>(v[c][k]);
          // Gemma: round(v r (1 + w)), the pair's conversion being the one rounding.
          if constexpr (kKind == NormKind::rms_gemma)
            v[c][k] = to_pair<T>(f.x * r * (1.0f + wv[2 * k]), f.y * r * (1.0f + wv[2 * k + 1]));
          else
            v[c][k] = to_pair<T>(rms_scaled<kKind, T>(f.x, r, wv[2 * k]),
                                 rms_scaled<kKind, T>(f.y, r, wv[2 * k + 1]));
        }
      }
    }
  }
};

template <NormKind kKind, class T, class W, int kC, bool kWarpRow>
__device__ __forceinline__ void residual_rms_pairs(const T* x_all, const T* y_all, const W* y_w,
                                                   const W* w, T* sum_all, T* normed_all, int64_t d,
                                                   int64_t rows, float eps) {
  using Row = PairedRow<T, kC, kWarpRow>;
  const int64_t index =
      kWarpRow ? int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32 : blockIdx.x;
  if (index >= rows) return;  // (a whole warp)
  const int64_t row = index * d;
  Row v, x;
  // x is loaded with y, before the reductions, so that no load waits behind one. (For
  // Gemma 3's sandwich norms in blocks this measured no faster; a warp a row brought them
  // from 2.7 TB/s to the copy limit: bench/NOTES.md, classification steps 15 and 16.)
  for (int c = 0; c < kC; ++c)
    if (Row::at(c) < d) {
      Row::load(y_all + row + Row::at(c), v.v[c]);
      if (x_all) Row::load(x_all + row + Row::at(c), x.v[c]);
    }
  if (y_w) v.template normalise<kKind>(y_w, d, eps);
  if (x_all) {
    for (int c = 0; c < kC; ++c)
      if (Row::at(c) < d)
        for (int k = 0; k < Row::kP; ++k)
          v.v[c][k] = __hadd2_rn(x.v[c][k], v.v[c][k]);  // the residual add, rounded
    v.store(sum_all + row, d);
  }
  v.template normalise<kKind>(w, d, eps);
  v.store(normed_all + row, d);
}

// One block per row of D = nvec * kVecElems elements (or, kWarpRow with 16-bit T, one warp):
//   s = x + (y_w ? rms(y, y_w) : y)  (written to sum when x is given), normed = rms(s, w).
// Plain RMSNorm is the case without x and y_w. Each element is loaded and stored once.
template <NormKind kKind, class T, class W, int kC, bool kWarpRow = false>
__global__ void residual_rms_kernel(const T* x_all, const T* y_all, const W* y_w, const W* w,
                                    T* sum_all, T* normed_all, int64_t d, int64_t rows, float eps) {
  if constexpr (sizeof(T) == 2) {
    residual_rms_pairs<kKind, T, W, kC, kWarpRow>(x_all, y_all, y_w, w, sum_all, normed_all, d,
                                                  rows, eps);
    return;
  }
  constexpr int kE = kVecElems<T>;
  const int64_t nvec = d / kE, row = int64_t(blockIdx.x) * d;
  float v[kC][kE];  // this thread's vectors of the row
  for (int c = 0; c < kC; ++c) {
    const int64_t at = (threadIdx.x + c * int64_t(blockDim.x)) * kE;
    if (at < d) load_vec(y_all + row + at, v[c]);
  }
  if (y_w) rms_in_registers<kKind, T>(v, y_w, nvec, d, eps);
  if (x_all) {
    for (int c = 0; c < kC; ++c) {
      const int64_t at = (threadIdx.x + c * int64_t(blockDim.x)) * kE;
      if (at >= d) continue;
      float xv[kE];
      load_vec(x_all + row + at, xv);
      for (int i = 0; i < kE; ++i) v[c][i] = round_to<T>(xv[i] + v[c][i]);  // the residual add, rounded
      store_vec(sum_all + row + at, v[c]);
    }
  }
  rms_in_registers<kKind, T>(v, w, nvec, d, eps);
  for (int c = 0; c < kC; ++c) {
    const int64_t at = (threadIdx.x + c * int64_t(blockDim.x)) * kE;
    if (at < d) store_vec(normed_all + row + at, v[c]);
  }
}

// The vectorised kernel for rows of whole 16-byte vectors, at most kMaxVecsPerThread per
// thread; false where it does not apply.
template <NormKind kKind>
bool run_residual_rms(const Context& ctx, const Array* x, const Array& y, const Array* y_w, const Array& w,
                      float eps, const Array* sum, const Array& normed) {
  const int64_t d = y.ndim() == 0 ? 1 : y.shape(-1);
  if (d == 0 || y.size() == 0) return true;
  const int64_t rows = y.size() / d, vec = 16 / int64_t(itemsize(y.dtype()));
  if (d % vec != 0 || rows > int64_t(INT32_MAX) || !is_float(y.dtype())) return false;
  for (const Array* a : {x, &y, sum, &normed, &w, y_w})  // (the weights are read as vectors too)
    if (a && !aligned16(*a)) return false;
  const int64_t nvec = d / vec;
  const int threads = nvec >= kBlock ? kBlock : int((nvec + 31) / 32 * 32);
  const int64_t per_thread = (nvec + threads - 1) / threads;
  if (per_thread > kMaxVecsPerThread) return false;
  // Two norms a row (Gemma 3's sandwich norms) of 97 to 160 vectors (its 1,152 16-bit
  // values) take a warp a row, 4 or 5 vectors a lane, where a block of 5 warps spent a
  // third of its instructions on the two block-wide reductions and their index arithmetic:
  // ncu, classification, 102 -> 75 us a call, from 2.7 TB/s to the copy limit. A single
  // norm (Qwen3's 1,024 values) was at the copy limit already, and a warp a row measured
  // 3% slower there.
  const bool warp_rows = y_w && vec == 8 && nvec > 3 * 32 && nvec <= kWarpRowVecs * 32;
  bool ran = false;
  visit_device_dtype(y.dtype(), [&](auto yt) {
    using T = decltype(yt);
    visit_device_dtype(w.dtype(), [&](auto wt) {
      using W = decltype(wt);
      if constexpr (kIsFloat<T> && kIsFloat<W>) {
        auto launch = [&](auto c_tag, auto warp_tag) {
          constexpr int kC = decltype(c_tag)::value;
          constexpr bool kWarpRow = decltype(warp_tag)::value;
          constexpr int kRowsPerBlock = 4;
          const unsigned grid =
              kWarpRow ? unsigned((rows + kRowsPerBlock - 1) / kRowsPerBlock) : unsigned(rows);
          residual_rms_kernel<kKind, T, W, kC, kWarpRow>
              <<<grid, kWarpRow ? 32 * kRowsPerBlock : threads, 0, ctx.stream>>>(
                  x ? static_cast<const T*>(x->raw()) : nullptr, static_cast<const T*>(y.raw()),
                  y_w ? static_cast<const W*>(y_w->raw()) : nullptr, static_cast<const W*>(w.raw()),
                  sum ? static_cast<T*>(sum->raw()) : nullptr, static_cast<T*>(normed.raw()), d,
                  rows, eps);
          check_launch("residual_rms_kernel");
          ran = true;
        };
        if constexpr (sizeof(T) == 2) {
          if (warp_rows) {
            launch(std::integral_constant<int, kWarpRowVecs>{}, std::true_type{});
            return;
          }
        }
        auto launch_block_row = [&](auto c_tag) { launch(c_tag, std::false_type{}); };
        if (per_thread == 1)
          launch_block_row(std::integral_constant<int, 1>{});
        else if (per_thread == 2)
          launch_block_row(std::integral_constant<int, 2>{});
        else
          launch_block_row(std::integral_constant<int, kMaxVecsPerThread>{});
      }
    });
  });
  return ran;
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

// The RMSNorm's gradient for x from g [R, D] (the output's gradient), in f32: with r the
// inverse RMS and n = x·r, dn = g·w (Llama) or g·(1 + w) (Gemma), dx = r·(dn − n·mean(dn·n))
// = r·dn − x·r³·Σ(dn·x)/D; the roundings of the forward pass as identities, as the
// composition's rules take them.
template <bool kGemma, class T, class W>
__global__ void rms_norm_grad_kernel(const T* x_all, const W* w, const T* g_all, T* dx_all, int64_t d, float eps) {
  const T* x = x_all + int64_t(blockIdx.x) * d;
  const T* g = g_all + int64_t(blockIdx.x) * d;
  T* dx = dx_all + int64_t(blockIdx.x) * d;
  auto dn = [&](int64_t i) { return to_float(g[i]) * (kGemma ? 1.0f + to_float(w[i]) : to_float(w[i])); };
  float ss = 0, dot = 0;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    const float v = to_float(x[i]);
    ss += v * v, dot += dn(i) * v;
  }
  ss = block_reduce(ss, Sum{});
  dot = block_reduce(dot, Sum{});
  const float r = 1.0f / ::sqrtf(ss / float(d) + eps), c = r * r * dot / float(d);
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) dx[i] = from_float<T>(r * (dn(i) - to_float(x[i]) * c));
}

}  // namespace

void rms_norm_grad(const Context& ctx, const Array& x, const Array& w, const Array& g, float eps,
                   fast::RmsNormStyle style, const Array& dx) {
  const int64_t d = x.shape(-1);
  if (d == 0 || x.size() == 0) return;
  const int64_t rows = x.size() / d;
  LMX_CHECK(rows <= int64_t(INT32_MAX), "rms_norm", rows, " rows are too many for one launch on cuda");
  visit_device_dtype(x.dtype(), [&](auto xt) {
    using T = decltype(xt);
    visit_device_dtype(w.dtype(), [&](auto wt) {
      using W = decltype(wt);
      if constexpr (kIsFloat<T> && kIsFloat<W>) {
        auto launch = [&](auto kernel) {
          kernel<<<unsigned(rows), row_block(d), 0, ctx.stream>>>(static_cast<const T*>(x.raw()),
                                                                 static_cast<const W*>(w.raw()),
                                                                 static_cast<const T*>(g.raw()),
                                                                 static_cast<T*>(dx.raw()), d, eps);
        };
        if (style == fast::RmsNormStyle::gemma)
          launch(rms_norm_grad_kernel<true, T, W>);
        else
          launch(rms_norm_grad_kernel<false, T, W>);
        check_launch("rms_norm_grad_kernel");
      }
    });
  });
}

void rms_norm(const Context& ctx, const Array& x, const Array& w, float eps,
              fast::RmsNormStyle style, const Array& out) {
  if (style == fast::RmsNormStyle::gemma) {
    if (!run_residual_rms<NormKind::rms_gemma>(ctx, nullptr, x, nullptr, w, eps, nullptr, out))
      run_norm<NormKind::rms_gemma>(ctx, x, w, nullptr, eps, out);
  } else if (!run_residual_rms<NormKind::rms_llama>(ctx, nullptr, x, nullptr, w, eps, nullptr, out)) {
    run_norm<NormKind::rms_llama>(ctx, x, w, nullptr, eps, out);
  }
}

bool add_rms_norm(const Context& ctx, const Array& x, const Array& y, const Array* y_w, const Array& w, float eps,
                  fast::RmsNormStyle style, const Array& sum, const Array& normed) {
  if (y_w && y_w->dtype() != w.dtype()) return false;
  if (style == fast::RmsNormStyle::gemma)
    return run_residual_rms<NormKind::rms_gemma>(ctx, &x, y, y_w, w, eps, &sum, normed);
  return run_residual_rms<NormKind::rms_llama>(ctx, &x, y, y_w, w, eps, &sum, normed);
}

void layer_norm(const Context& ctx, const Array& x, const Array& w, const Array* bias, float eps,
                const Array& out) {
  LMX_CHECK(!bias || bias->dtype() == w.dtype(), "layer_norm", "bias dtype ",
            dtype_name(bias->dtype()), " differs from the weight dtype ", dtype_name(w.dtype()));
  run_norm<NormKind::layer>(ctx, x, w, bias, eps, out);
}

}  // namespace lmx::cuda
