// Scaled dot-product attention with HF eager numerics. For 16-bit dtypes HF computes
// q·kᵀ in the dtype (rounded), scales it in the dtype (rounded again), adds the mask,
// takes softmax in f32, rounds the probabilities to the dtype and multiplies by v with
// f32 accumulation; this kernel repeats each of those roundings. For f32 they vanish.
//
// Work is split over (batch, kv head, block of query rows). All query heads that share
// a kv head (GQA) are processed together, so each key and value row is widened to f32
// once per block and reused by every query row of the block. Scores are stored for the
// whole visible key range: the probabilities must be rounded after normalisation, which
// rules out a one-pass (online) softmax.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backend/cpu/attention.cpp"
#include <hwy/foreach_target.h>  // must come before highway.h
#include <hwy/highway.h>
// Per-target code: after foreach_target.h.
#include <hwy/contrib/math/math-inl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "backend/cpu/cpu_fast.h"
#include "core/dtype.h"

#ifndef LMX_CPU_ATTENTION_ARGS
#define LMX_CPU_ATTENTION_ARGS
namespace lmx::cpu::detail_attention {

// One work item: query rows [i0, i1) of every query head that uses kv head `g` of batch
// row `b`. Strides are in elements.
struct Block {
  Dtype dtype;
  const void* q;          // q [B, Hq, Lq, D] contiguous
  const void* k;          // k [B, Hkv, Lk, D], strides k_stride
  const void* v;          // v [B, Hkv, Lk, D], strides v_stride
  void* out;              // out [B, Hq, Lq, D] contiguous
  const bool* key_valid;  // key_valid [B, Lk] or null
  int64_t hq, hkv, lq, lk, d;
  int64_t k_stride[3], v_stride[3];  // batch, head, row
  float scale;
  bool causal;
  int64_t window;
  int64_t q_off;  // position of query row 0 in the key sequence
  int64_t b, g, i0, i1;
};

}  // namespace lmx::cpu::detail_attention
#endif

HWY_BEFORE_NAMESPACE();
namespace lmx::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using detail_attention::Block;

using DF = hn::ScalableTag<float>;

// dst[0, n) = float(src[0, n)), in element order.
template <class T>
HWY_INLINE void widen_row(const T* HWY_RESTRICT src, float* HWY_RESTRICT dst, int64_t n) {
  const DF df;
  const int64_t lanes = int64_t(hn::Lanes(df));
  int64_t i = 0;
  if constexpr (std::is_same_v<T, float>) {
    for (; i + lanes <= n; i += lanes) hn::StoreU(hn::LoadU(df, src + i), df, dst + i);
  } else {
    using HT = std::conditional_t<std::is_same_v<T, bf16_t>, hwy::bfloat16_t, hwy::float16_t>;
    const hn::Rebind<HT, DF> dh;
    const auto* h = reinterpret_cast<const HT*>(src);
    for (; i + lanes <= n; i += lanes)
      hn::StoreU(hn::PromoteTo(df, hn::LoadU(dh, h + i)), df, dst + i);
  }
  for (; i < n; ++i) dst[i] = to_f32(src[i]);
}

HWY_INLINE float dot(const float* HWY_RESTRICT a, const float* HWY_RESTRICT b, int64_t n) {
  const DF df;
  const int64_t lanes = int64_t(hn::Lanes(df));
  auto acc0 = hn::Zero(df), acc1 = hn::Zero(df);
  int64_t i = 0;
  for (; i + 2 * lanes <= n; i += 2 * lanes) {
    acc0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), acc0);
    acc1 = hn::MulAdd(hn::LoadU(df, a + i + lanes), hn::LoadU(df, b + i + lanes), acc1);
  }
  for (; i + lanes <= n; i += lanes)
    acc0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), acc0);
  float s = hn::GetLane(hn::SumOfLanes(df, hn::Add(acc0, acc1)));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y[0, n) += p * x[0, n)
HWY_INLINE void axpy(float p, const float* HWY_RESTRICT x, float* HWY_RESTRICT y, int64_t n) {
  const DF df;
  const int64_t lanes = int64_t(hn::Lanes(df));
  const auto vp = hn::Set(df, p);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes)
    hn::StoreU(hn::MulAdd(vp, hn::LoadU(df, x + i), hn::LoadU(df, y + i)), df, y + i);
  for (; i < n; ++i) y[i] += p * x[i];
}

// Rounds each lane to T and back (round to nearest even, NaN kept): the dtype's rounding
// of an f32 result, as HF's 16-bit ops do it. A no-op for f32.
template <class T>
HWY_INLINE hn::Vec<DF> round_to(DF df, hn::Vec<DF> v) {
  if constexpr (std::is_same_v<T, bf16_t>) {
    const hn::RebindToUnsigned<DF> du;
    const auto u = hn::BitCast(du, v);
    const auto bias =
        hn::Add(hn::Set(du, 0x7FFFu), hn::And(hn::ShiftRight<16>(u), hn::Set(du, 1u)));
    const auto r = hn::BitCast(df, hn::And(hn::Add(u, bias), hn::Set(du, 0xFFFF0000u)));
    return hn::IfThenElse(hn::IsNaN(v), v, r);
  } else if constexpr (std::is_same_v<T, f16_t>) {
    const hn::Rebind<hwy::float16_t, DF> dh;
    return hn::PromoteTo(df, hn::DemoteTo(dh, v));
  } else {
    return v;
  }
}

template <class T>
void attend(const Block& a) {
  const int64_t rep = a.hq / a.hkv, rows_per_head = a.i1 - a.i0, nrows = rep * rows_per_head,
                d = a.d;
  // Visible keys of query i: [lo(i), hi(i)), then key_valid.
  auto lo = [&](int64_t i) {
    return a.window > 0 ? std::max<int64_t>(0, i + a.q_off - a.window + 1) : 0;
  };
  auto hi = [&](int64_t i) {
    return a.causal ? std::clamp<int64_t>(i + a.q_off + 1, 0, a.lk) : a.lk;
  };
  const int64_t j0 = std::min(lo(a.i0), a.lk), j1 = std::max(j0, hi(a.i1 - 1));
  const int64_t span = j1 - j0;

  const T* k =
      static_cast<const T*>(a.k) + a.b * a.k_stride[0] + a.g * a.k_stride[1];  // [Lk, D] rows
  const T* v =
      static_cast<const T*>(a.v) + a.b * a.v_stride[0] + a.g * a.v_stride[1];  // [Lk, D] rows
  const bool* valid = a.key_valid ? a.key_valid + a.b * a.lk : nullptr;        // [Lk]
  // Row r of the block is query head g*rep + r / rows_per_head, query i0 + r % rows_per_head.
  auto q_index = [&](int64_t r) {
    return ((a.b * a.hq + a.g * rep + r / rows_per_head) * a.lq + a.i0 + r % rows_per_head) * d;
  };

  const DF df;
  const int64_t lanes = int64_t(hn::Lanes(df));
  // Score rows are padded to whole vectors; the padding holds -inf and so adds nothing.
  const int64_t padded = (span + lanes - 1) / lanes * lanes;
  std::vector<float> kvf(static_cast<size_t>(d));    // one key or value row [D]
  std::vector<float> probs(size_t(nrows * padded));  // scores, then probabilities [R, padded]
  std::vector<float> acc(size_t(nrows * d), 0.0f);   // acc [R, D]

  // bf16 q·kᵀ on VDPBF16PS where the CPU has it, a head's rows by the span's keys at a time:
  // four times fewer instructions a score than widened f32 dots with a lane sum each. Each
  // score is rounded to bf16, as HF's product is, and its sum depends only on its q row, its
  // key row and D, so a query row's scores do not depend on the block it falls in.
  bool scored = false;
  if constexpr (std::is_same_v<T, bf16_t>) {
    std::vector<bf16_t> scores(size_t(rows_per_head * span));  // one head's [rows, span]
    const auto* keys = reinterpret_cast<const uint16_t*>(k + j0 * a.k_stride[2]);
    scored = span > 0;
    for (int64_t h = 0; scored && h < rep; ++h) {
      const auto* qh = reinterpret_cast<const uint16_t*>(static_cast<const T*>(a.q) + q_index(h * rows_per_head));
      scored = bf16_rows_product(qh, d, rows_per_head, keys, a.k_stride[2], d,
                                 reinterpret_cast<uint16_t*>(scores.data()), span);
      for (int64_t i = 0; scored && i < rows_per_head; ++i)
        widen_row(&scores[size_t(i * span)], &probs[size_t((h * rows_per_head + i) * padded)], span);
    }
  }
  if (!scored) {
    std::vector<float> qf(size_t(nrows * d));  // qf [R, D]
    for (int64_t r = 0; r < nrows; ++r)
      widen_row(static_cast<const T*>(a.q) + q_index(r), &qf[size_t(r * d)], d);
    for (int64_t j = j0; j < j1; ++j) {
      widen_row(k + j * a.k_stride[2], kvf.data(), d);
      for (int64_t r = 0; r < nrows; ++r)
        probs[size_t(r * padded + j - j0)] = dot(&qf[size_t(r * d)], kvf.data(), d);
    }
  }

  const float neg_inf = -std::numeric_limits<float>::infinity();
  const auto scale = hn::Set(df, a.scale);
  for (int64_t r = 0; r < nrows; ++r) {
    const int64_t i = a.i0 + r % rows_per_head;
    const int64_t rlo = lo(i), rhi = hi(i);
    float* p = &probs[size_t(r * padded)];  // [padded]
    // The product q·kᵀ and its scaling are each rounded to the dtype (scale stays f32).
    for (int64_t t = 0; t < padded; t += lanes)
      hn::StoreU(round_to<T>(df, hn::Mul(round_to<T>(df, hn::LoadU(df, p + t)), scale)), df, p + t);
    for (int64_t j = j0; j < j0 + padded; ++j) {
      const bool visible = j < j1 && j >= rlo && j < rhi && (!valid || valid[j]);
      if (!visible) p[j - j0] = neg_inf;
    }
    auto vmax = hn::Set(df, neg_inf);
    for (int64_t t = 0; t < padded; t += lanes) vmax = hn::Max(vmax, hn::LoadU(df, p + t));
    const float m = hn::GetLane(hn::MaxOfLanes(df, vmax));
    if (m == neg_inf) {  // no visible key: the row's output is zeros
      std::fill(p, p + padded, 0.0f);
      continue;
    }
    const auto vm = hn::Set(df, m);
    auto vsum = hn::Zero(df);
    for (int64_t t = 0; t < padded; t += lanes) {
      const auto e = hn::Exp(df, hn::Sub(hn::LoadU(df, p + t), vm));
      vsum = hn::Add(vsum, e);
      hn::StoreU(e, df, p + t);
    }
    // Softmax in f32, then the probabilities are rounded to the dtype before p·v.
    const auto inv = hn::Set(df, 1.0f / hn::GetLane(hn::SumOfLanes(df, vsum)));
    for (int64_t t = 0; t < padded; t += lanes)
      hn::StoreU(round_to<T>(df, hn::Mul(hn::LoadU(df, p + t), inv)), df, p + t);
  }

  // bf16 p·v on VDPBF16PS where the CPU has it: each row adds its keys [j0, hi) in pairs, in
  // order, so its bits depend on its own probabilities and keys alone, as the axpys' below do.
  bool weighed = false;
  if constexpr (std::is_same_v<T, bf16_t>) {
    if (span > 0) {
      std::vector<int64_t> keys(static_cast<size_t>(nrows));
      for (int64_t r = 0; r < nrows; ++r)
        keys[size_t(r)] = std::clamp<int64_t>(hi(a.i0 + r % rows_per_head) - j0, 0, span);
      weighed = bf16_weighted_rows(probs.data(), padded, nrows, keys.data(),
                                   reinterpret_cast<const uint16_t*>(v + j0 * a.v_stride[2]), a.v_stride[2],
                                   valid ? valid + j0 : nullptr, span, d, acc.data());
    }
  }
  for (int64_t j = j0; j < j1 && !weighed; ++j) {
    widen_row(v + j * a.v_stride[2], kvf.data(), d);
    for (int64_t r = 0; r < nrows; ++r) {
      const float p = probs[size_t(r * padded + j - j0)];
      if (p != 0.0f) axpy(p, kvf.data(), &acc[size_t(r * d)], d);
    }
  }
  for (int64_t r = 0; r < nrows; ++r) {
    T* o = static_cast<T*>(a.out) + q_index(r);
    for (int64_t t = 0; t < d; ++t) o[t] = from_f32<T>(acc[size_t(r * d + t)]);
  }
}

void attend_block(const Block& a) {
  switch (a.dtype) {
    case Dtype::f32: return attend<float>(a);
    case Dtype::bf16: return attend<bf16_t>(a);
    case Dtype::f16: return attend<f16_t>(a);
    default: return;
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace lmx::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "core/error.h"
#include "core/thread_pool.h"

namespace lmx::cpu {

HWY_EXPORT(attend_block);

void attention(const Array& q, const Array& k, const Array& v, float scale, bool causal,
               int64_t window, const Array& q_offsets, const Array* key_valid, const Array& out) {
  LMX_CHECK(is_float(q.dtype()), "scaled_dot_product_attention", "unsupported dtype ",
            dtype_name(q.dtype()));
  LMX_CHECK(k.strides()[3] == 1 && v.strides()[3] == 1, "scaled_dot_product_attention",
            "k and v must be dense along the head dimension");
  const int64_t nb = q.shape(0), hq = q.shape(1), lq = q.shape(2), d = q.shape(3);
  const int64_t hkv = k.shape(1), lk = k.shape(2);
  if (q.size() == 0) return;
  const int64_t rep = hq / hkv;
  // About 32 query rows per block (all heads of a GQA group count): enough reuse of each
  // widened key row, while keeping the causal triangle's wasted scores small.
  const int64_t block = std::clamp<int64_t>(32 / rep, 1, lq);
  const int64_t nblocks = (lq + block - 1) / block;
  const int32_t* offs = q_offsets.data<int32_t>();  // [B]

  detail_attention::Block base{};
  base.dtype = q.dtype();
  base.q = q.raw();
  base.k = k.raw();
  base.v = v.raw();
  base.out = out.raw();
  base.key_valid = key_valid ? key_valid->data<bool>() : nullptr;
  base.hq = hq;
  base.hkv = hkv;
  base.lq = lq;
  base.lk = lk;
  base.d = d;
  for (int i = 0; i < 3; ++i) {
    base.k_stride[i] = k.strides()[size_t(i)];
    base.v_stride[i] = v.strides()[size_t(i)];
  }
  base.scale = scale;
  base.causal = causal;
  base.window = window;
  parallel_for(nb * hkv * nblocks, 1, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) {
      detail_attention::Block blk = base;
      blk.b = w / (hkv * nblocks);
      blk.g = (w / nblocks) % hkv;
      blk.i0 = (w % nblocks) * block;
      blk.i1 = std::min(lq, blk.i0 + block);
      blk.q_off = offs[blk.b];
      HWY_DYNAMIC_DISPATCH(attend_block)(blk);
    }
  });
}

}  // namespace lmx::cpu
#endif  // HWY_ONCE
