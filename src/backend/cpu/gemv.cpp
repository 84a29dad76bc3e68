// Matrix-vector product for decode: out[b, r, n] = sum_k a[b, r, k] * W[n, k] for one row
// r of `a`, or a few (a batch's decode step, a short prompt), with W the row-major [N, K]
// storage of a transposed weight view. Decode is bound by reading W once, so the kernel
// streams W (row by row for one `a` row, four rows at a time against each of several),
// widens 16-bit values to f32 in registers and keeps independent accumulators per row.
// Highway compiles it for each x86 target; the best one is chosen at run time.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backend/cpu/gemv.cpp"
#include <hwy/cache_control.h>
#include <hwy/foreach_target.h>  // must come before highway.h
#include <hwy/highway.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "backend/cpu/cpu_fast.h"
#include "core/dtype.h"

HWY_BEFORE_NAMESPACE();
namespace lmx::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// How many W rows ahead to prefetch.
constexpr int64_t kPrefetchRows = 4;

// Loads 2 * Lanes(df) consecutive elements of p as two f32 vectors. The lane order is
// only the same for `a` and `W` (which is all a dot product needs): bf16 pairs are split
// into even and odd elements, which avoids lane-crossing shuffles.
template <class T>
HWY_INLINE void load_widened(DF df, const T* p, VF& lo, VF& hi) {
  if constexpr (std::is_same_v<T, float>) {
    lo = hn::LoadU(df, p);
    hi = hn::LoadU(df, p + hn::Lanes(df));
  } else if constexpr (std::is_same_v<T, bf16_t>) {
    const hn::RebindToUnsigned<DF> du;
    const auto pairs =
        hn::LoadU(du, reinterpret_cast<const uint32_t*>(p));  // [u32: (odd << 16) | even]
    lo = hn::BitCast(df, hn::ShiftLeft<16>(pairs));
    hi = hn::BitCast(df, hn::And(pairs, hn::Set(du, 0xFFFF0000u)));
  } else {
    const hn::Rebind<hwy::float16_t, DF> dh;
    const auto* h = reinterpret_cast<const hwy::float16_t*>(p);
    lo = hn::PromoteTo(df, hn::LoadU(dh, h));
    hi = hn::PromoteTo(df, hn::LoadU(dh, h + hn::Lanes(df)));
  }
}

// out[r] = dot(a, w + r * k) for r < kRows, in f32. `aw` holds `a` widened to f32 in
// load_widened's lane order for the vectorised part (a is read once per block, W rows
// are the stream); the tail uses `a` itself. Two accumulators per row so that each
// row's FMA chain is not one long dependency.
template <int kRows, class T>
HWY_INLINE void dot_rows(const float* HWY_RESTRICT aw, const T* HWY_RESTRICT a,
                         const T* HWY_RESTRICT w, int64_t k, float* out) {
  const DF df;
  const int64_t lanes = int64_t(hn::Lanes(df)), step = 2 * lanes;
  VF acc0[kRows], acc1[kRows];
  for (int r = 0; r < kRows; ++r) acc0[r] = acc1[r] = hn::Zero(df);
  int64_t i = 0;
  for (; i + step <= k; i += step) {
    const VF a0 = hn::LoadU(df, aw + i), a1 = hn::LoadU(df, aw + i + lanes);
    for (int r = 0; r < kRows; ++r) {
      VF w0, w1;
      // The hardware prefetcher alone leaves bandwidth unused. The hint asks for the same
      // columns kPrefetchRows rows on, a distance that grows with the rows' length; a
      // fixed 1 KiB ahead of each stream was too short for rows of a few KiB
      // (bench/NOTES.md, CPU section). Prefetching never faults, also past the end.
      hwy::Prefetch(w + (r + kPrefetchRows) * k + i);
      load_widened(df, w + r * k + i, w0, w1);
      acc0[r] = hn::MulAdd(w0, a0, acc0[r]);
      acc1[r] = hn::MulAdd(w1, a1, acc1[r]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    float tail = 0;
    for (int64_t j = i; j < k; ++j) tail += to_f32(a[j]) * to_f32(w[r * k + j]);
    out[r] = hn::GetLane(hn::SumOfLanes(df, hn::Add(acc0[r], acc1[r]))) + tail;
  }
}

// out[r, n] for the m rows of `a` (a row every a_stride elements; out's every out_stride)
// and n in [n0, n1). For several rows, four W rows at a time (each `a` vector loaded once
// for four products), then the leftover rows one by one, each W block against every row
// of `a` while it is in cache, so that W is read from memory once for all rows. For one
// row, W row by row: a single stream through memory, which the prefetchers follow best
// (1.3-1.45x the four interleaved streams' bandwidth in BM_gemv_streamed). Each output is
// dot_rows' sum of its own row and W row, whatever m and the block are: a sequence decoded
// in a batch gets the bits it gets alone. Rounded once to T.
template <class T>
void gemv_range(const T* a, int64_t a_stride, int64_t m, const T* w, T* out, int64_t out_stride, int64_t n0,
                int64_t n1, int64_t k) {
  const DF df;
  const int64_t lanes = int64_t(hn::Lanes(df)), step = 2 * lanes, kw = k / step * step;
  // a widened once per range, so the inner loop only widens W. [m, K rounded down to step]
  // Kept per thread: at 64 rows it is hundreds of KiB, which a fresh vector would map and
  // fault in for every range.
  thread_local std::vector<float> aw;
  aw.resize(static_cast<size_t>(m * kw));
  for (int64_t r = 0; r < m; ++r)
    for (int64_t i = 0; i + step <= k; i += step) {
      VF lo, hi;
      load_widened(df, a + r * a_stride + i, lo, hi);
      hn::StoreU(lo, df, aw.data() + r * kw + i);
      hn::StoreU(hi, df, aw.data() + r * kw + i + lanes);
    }
  constexpr int kBlock = 4;
  float sums[kBlock];
  int64_t n = n0;
  for (; m > 1 && n + kBlock <= n1; n += kBlock)
    for (int64_t r = 0; r < m; ++r) {
      dot_rows<kBlock>(aw.data() + r * kw, a + r * a_stride, w + n * k, k, sums);
      for (int j = 0; j < kBlock; ++j) out[r * out_stride + n + j] = from_f32<T>(sums[j]);
    }
  for (; n < n1; ++n)
    for (int64_t r = 0; r < m; ++r) {
      dot_rows<1>(aw.data() + r * kw, a + r * a_stride, w + n * k, k, sums);
      out[r * out_stride + n] = from_f32<T>(sums[0]);
    }
}

void gemv_rows(Dtype dtype, const void* a, int64_t a_stride, int64_t m, const void* w, void* out,
               int64_t out_stride, int64_t n0, int64_t n1, int64_t k) {
  switch (dtype) {
    case Dtype::f32:
      return gemv_range(static_cast<const float*>(a), a_stride, m, static_cast<const float*>(w),
                        static_cast<float*>(out), out_stride, n0, n1, k);
    case Dtype::bf16:
      return gemv_range(static_cast<const bf16_t*>(a), a_stride, m, static_cast<const bf16_t*>(w),
                        static_cast<bf16_t*>(out), out_stride, n0, n1, k);
    case Dtype::f16:
      return gemv_range(static_cast<const f16_t*>(a), a_stride, m, static_cast<const f16_t*>(w),
                        static_cast<f16_t*>(out), out_stride, n0, n1, k);
    default: return;
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace lmx::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <algorithm>

#include "core/thread_pool.h"

namespace lmx::cpu {

HWY_EXPORT(gemv_rows);

std::optional<WeightProduct> weight_product(const Array& a, const Array& b, const Array& out, int64_t fold_rows) {
  if (a.ndim() != 3 || b.ndim() != 3 || out.ndim() != 3) return std::nullopt;
  WeightProduct p{a.shape(0), a.shape(1), a.shape(2), b.shape(2), a.strides()[1]};
  const int64_t nb = p.batches, m = p.rows, k = p.k, n = p.n;
  if (m < 1 || b.shape(1) != k || out.shape(0) != nb || out.shape(1) != m || out.shape(2) != n || k == 0)
    return std::nullopt;
  // A batch of rows times one shared W (a decode step of several sequences: [B, 1, K] · Wᵀ)
  // is one product of B·M rows where a's batches follow one another at one stride: W is
  // then read once, not B times.
  if (nb > 1 && b.strides()[0] == 0 && nb * m <= fold_rows && (m == 1 || a.strides()[0] == m * a.strides()[1])) {
    if (m == 1) p.a_row = a.strides()[0];
    p.rows = m * nb;
    p.batches = 1;
  }
  // W must be the row-major [N, K] storage (b = Wᵀ), `a`'s rows dense along K, out contiguous.
  if ((n > 1 && b.strides()[2] != k) || (k > 1 && b.strides()[1] != 1)) return std::nullopt;
  if (k > 1 && a.strides()[2] != 1) return std::nullopt;
  if (!out.is_contiguous()) return std::nullopt;
  return p;
}

bool gemv(const Array& a, const Array& b, const Array& out) {
  const Dtype dt = a.dtype();
  if (dt != b.dtype() || dt != out.dtype() || !(dt == Dtype::f32 || dt == Dtype::bf16 || dt == Dtype::f16))
    return false;
  // f32 does not fold: it takes sgemm from two rows up.
  const auto p = weight_product(a, b, out, dt == Dtype::f32 ? 1 : kGemvMaxRows);
  if (!p || p->rows > kGemvMaxRows) return false;
  const int64_t nb = p->batches, m = p->rows, k = p->k, n = p->n, a_row = p->a_row;
  // 16-bit weights for a few rows: converting W to f32 for sgemm would cost more than the
  // products (three times W's bytes written and read again, every call). f32 from 2 rows
  // goes to sgemm, which reads W once and multiplies faster.
  if (dt == Dtype::f32 && m > 1) return false;

  const size_t es = itemsize(dt);
  const auto* a0 = static_cast<const char*>(a.raw());
  const auto* w0 = static_cast<const char*>(b.raw());
  auto* o0 = static_cast<char*>(out.raw());
  // About 64 KiB of W per chunk: large enough to amortise scheduling, small enough to
  // balance the threads.
  const int64_t grain =
      std::max<int64_t>(16, (int64_t(1) << 16) / std::max<int64_t>(1, k * int64_t(es)));
  for (int64_t i = 0; i < nb; ++i) {
    const void* ai = a0 + size_t(i * a.strides()[0]) * es;
    const void* wi = w0 + size_t(i * b.strides()[0]) * es;
    void* oi = o0 + size_t(i * m * n) * es;
    parallel_for(n, grain, [&](int64_t n_begin, int64_t n_end) {
      HWY_DYNAMIC_DISPATCH(gemv_rows)(dt, ai, a_row, m, wi, oi, n, n_begin, n_end, k);
    });
  }
  return true;
}

}  // namespace lmx::cpu
#endif  // HWY_ONCE
