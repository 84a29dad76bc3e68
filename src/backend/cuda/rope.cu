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

// One projection's heads for rope_heads_kernel: x [B, L, H, D] contiguous -> out [B, H, L,
// D] at element strides ob, oh, ol (the last axis contiguous, so that it may be a slice of
// a KV cache).
template <class T, class W>
struct HeadSet {
  const T* x = nullptr;
  T* out = nullptr;
  const W* norm_w = nullptr;  // per-head RMSNorm weights [D], or null
  int64_t heads = 0, ob = 0, oh = 0, ol = 0;
  bool rotate = true;  // false: the heads are copied as they are (v into the cache)
};

// rope_heads: one set; rope_to_cache: q, k and v.
template <class T, class W>
struct HeadSets {
  static constexpr int kMax = 3;
  HeadSet<T, W> set[kMax];
  int count = 0;
  int64_t heads = 0;  // over all sets
};

// One block per token (b, l) over the heads of every set, one after another. Each head
// takes `lanes` lanes (a power of two); a lane holds one 16-byte vector of the head's first
// half and the matching one of its second half, the pair that the rotation mixes. Heads of
// rotated sets get the optional RMSNorm (every rotated set has weights, or none has), then
// the rotation. cos and sin of the token's angles are computed once per block, not once
// per head.
template <class T, class W, bool kGemmaNorm>
__global__ void rope_heads_kernel(const HeadSets<T, W> sets, const float* inv_freq, const int32_t* offsets,
                                  float eps, int64_t nl, int64_t half, int lanes) {
  constexpr int kE = kVecElems<T>;
  __shared__ __align__(16) float cs[kMaxHalf];
  __shared__ __align__(16) float sn[kMaxHalf];
  const int64_t token = blockIdx.x, b = token / nl, l = token % nl, d = 2 * half;
  const int64_t j0 = int64_t(threadIdx.x % lanes) * kE;  // this lane's columns [j0, j0 + kE) of each half
  const int heads_per_pass = int(blockDim.x) / lanes;
  uint4 lo, hi;          // x[j0, j0 + kE) and x[half + j0, half + j0 + kE) of this lane's head
  int s = 0;             // the head's set
  int64_t hs = 0;        // and its index there
  auto load_head = [&](int64_t h) {
    s = 0, hs = h;
    while (s + 1 < sets.count && hs >= sets.set[s].heads) hs -= sets.set[s++].heads;
    const bool live = h < sets.heads && j0 < half;
    const T* xr = sets.set[s].x + (token * sets.set[s].heads + hs) * d;
    lo = live ? *reinterpret_cast<const uint4*>(xr + j0) : make_uint4(0, 0, 0, 0);
    hi = live ? *reinterpret_cast<const uint4*>(xr + half + j0) : make_uint4(0, 0, 0, 0);
    return live;
  };
  // The first pass's loads are in flight while the angles are worked out.
  bool live = load_head(threadIdx.x / lanes);
  for (int64_t j = threadIdx.x; j < half; j += blockDim.x) rope_angle<T>(int64_t(offsets[b]) + l, inv_freq[j], cs[j], sn[j]);
  __syncthreads();
  // Every lane runs every trip: the norm's shuffles need the whole warp, so a copied head
  // takes part with live = false (which leaves lo and hi as they are) and set 0's weights.
  for (int64_t h0 = 0; h0 < sets.heads; h0 += heads_per_pass) {
    if (h0 > 0) live = load_head(h0 + threadIdx.x / lanes);
    const HeadSet<T, W>& set = sets.set[s];
    norm_rotate<T, W, kGemmaNorm>(lo, hi, live && set.rotate, j0, half, lanes,
                                  set.rotate ? set.norm_w : sets.set[0].norm_w, eps, cs, sn);
    if (!live) continue;
    T* o = set.out + b * set.ob + hs * set.oh + l * set.ol;
    *reinterpret_cast<uint4*>(o + j0) = lo;
    *reinterpret_cast<uint4*>(o + half + j0) = hi;
  }
}

// The launch of rope_heads_kernel over `sets` of x's dtype, the norm weights of dtype
// `norm_dtype`; false where its limits decline (head_dim > 256, heads not whole 16-byte
// vectors a half, arrays or strides not in 16-byte units).
template <class Fill>
bool launch_rope_heads(const Context& ctx, Dtype dtype, Dtype norm_dtype, int64_t tokens, int64_t nl, int64_t d,
                       const Array& inv_freq, const Array& offsets, float eps, fast::RmsNormStyle style,
                       Fill&& fill) {
  const int64_t half = d / 2, vec = 16 / int64_t(itemsize(dtype));
  if (!is_float(dtype) || half > kMaxHalf || half % vec != 0 || tokens > int64_t(INT32_MAX)) return false;
  bool ran = false;
  visit_device_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    visit_device_dtype(norm_dtype, [&](auto wtag) {
      using W = decltype(wtag);
      if constexpr (kIsFloat<T> && kIsFloat<W>) {
        HeadSets<T, W> sets;
        if (!fill(sets, vec)) return;
        for (int i = 0; i < sets.count; ++i) sets.heads += sets.set[i].heads;
        if (tokens == 0 || sets.heads == 0) {
          ran = true;
          return;
        }
        const int lanes = rope_lanes(half, vec);
        const int threads = int(std::min<int64_t>(kBlock, (sets.heads * lanes + 31) / 32 * 32));
        auto* kernel = style == fast::RmsNormStyle::gemma ? rope_heads_kernel<T, W, true> : rope_heads_kernel<T, W, false>;
        kernel<<<unsigned(tokens), threads, 0, ctx.stream>>>(sets, inv_freq.data<float>(), offsets.data<int32_t>(),
                                                            eps, nl, half, lanes);
        check_launch("rope_heads_kernel");
        ran = true;
      }
    });
  });
  return ran;
}

// One set: x [B, L, H, D] contiguous, out [B, H, L, D] with a contiguous last axis.
template <class T, class W>
bool add_head_set(HeadSets<T, W>& sets, const Array& x, const Array& out, const Array* norm_w, bool rotate,
                  int64_t vec) {
  if (!aligned16(x) || !aligned16(out) || !rows_in_vectors(out, vec) || (norm_w && !aligned16(*norm_w))) return false;
  HeadSet<T, W>& set = sets.set[sets.count++];
  set.x = static_cast<const T*>(x.raw());
  set.out = static_cast<T*>(out.raw());
  set.norm_w = norm_w ? static_cast<const W*>(norm_w->raw()) : nullptr;
  set.heads = x.shape(2);
  set.ob = out.strides()[0], set.oh = out.strides()[1], set.ol = out.strides()[2];
  set.rotate = rotate;
  return true;
}

}  // namespace

bool rope_heads(const Context& ctx, const Array& x, const Array& inv_freq, const Array& offsets, const Array* norm_w,
                float eps, fast::RmsNormStyle style, const Array& out) {
  return launch_rope_heads(ctx, x.dtype(), norm_w ? norm_w->dtype() : x.dtype(), x.shape(0) * x.shape(1), x.shape(1),
                           x.shape(3), inv_freq, offsets, eps, style, [&](auto& sets, int64_t vec) {
                             return add_head_set(sets, x, out, norm_w, true, vec);
                           });
}

bool rope_to_cache(const Context& ctx, const Array& q, const Array& k, const Array& v, const Array& inv_freq,
                   const Array& offsets, const Array* q_norm, const Array* k_norm, float eps,
                   fast::RmsNormStyle style, const Array& q_out, const Array& k_out, const Array& v_out) {
  // One kernel reads both norms' weights as one type.
  if (q_norm && q_norm->dtype() != k_norm->dtype()) return false;
  return launch_rope_heads(ctx, q.dtype(), q_norm ? q_norm->dtype() : q.dtype(), q.shape(0) * q.shape(1), q.shape(1),
                           q.shape(3), inv_freq, offsets, eps, style, [&](auto& sets, int64_t vec) {
                             return add_head_set(sets, q, q_out, q_norm, true, vec) &&
                                    add_head_set(sets, k, k_out, k_norm, true, vec) &&
                                    add_head_set(sets, v, v_out, nullptr, false, vec);
                           });
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
