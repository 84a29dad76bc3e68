// MLX affine-quantized matrices on the CPU (spec §2): dequantization, and the product of
// a few rows with a quantized weight.
//
// One row (a decode step) reads the packed codes straight into the dot product: at 4 bits
// that is a quarter of a bf16 weight's bytes, plus a scale and an offset per group. With
// y = Σ_g s_g·Σ_{k∈g} q_k·x_k + b_g·Σ_{k∈g} x_k, the offsets cost one product per group
// against x's group sums. For 2, 4 and 8 bits a vector of V words holds V·(32/bits) codes;
// shifting it by bits·j and masking gives the codes j, j + 32/bits, ... of those words,
// which meet x permuted to that order once per call. Several rows (a prompt, a batch's
// step) dequantize the weight a tile of rows at a time into f32 and multiply with sgemm,
// so the weight is unpacked once per call whatever the rows. Highway compiles the one-row
// kernel for each x86 target; the best one is chosen at run time.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backend/cpu/quantized.cpp"
#include <hwy/foreach_target.h>  // must come before highway.h
#include <hwy/highway.h>

#include <cstdint>

#include "backend/cpu/cpu_fast.h"
#include "core/dtype.h"

#ifndef LMX_CPU_QUANTIZED_SHARED
#define LMX_CPU_QUANTIZED_SHARED
namespace lmx::cpu::quant {

// The pieces of a quantized product that every target shares: raw pointers and sizes.
struct Rows {
  const uint32_t* packed;  // [N, words]
  const void* scales;      // [N, groups]
  const void* biases;
  Dtype scale_dtype;
  int bits, group_size;
  int64_t words, groups;  // per row
};

inline float scale_at(const void* p, Dtype t, int64_t i) {
  switch (t) {
    case Dtype::bf16: return bf16_to_f32(static_cast<const bf16_t*>(p)[i]);
    case Dtype::f16: return f16_to_f32(static_cast<const f16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

// Code c of a row's bitstream; 3, 5 and 6 bits may straddle two words.
inline uint32_t code_at(const uint32_t* row, int64_t c, int bits) {
  const int64_t bit = c * bits;
  const uint32_t* p = row + (bit >> 5);
  const int shift = int(bit & 31);
  uint64_t v = uint64_t(p[0]) >> shift;
  if (shift + bits > 32) v |= uint64_t(p[1]) << (32 - shift);
  return uint32_t(v) & ((1u << bits) - 1);
}

// Row n dequantized into out[0, K) in f32: scale · q + bias, where scale · q is exact
// (a 16-bit scale times a code of at most 8 bits), so the add is the one rounding.
inline void dequantize_row(const Rows& w, int64_t n, float* out) {
  const uint32_t* row = w.packed + n * w.words;
  for (int64_t g = 0; g < w.groups; ++g) {
    const float s = scale_at(w.scales, w.scale_dtype, n * w.groups + g);
    const float b = scale_at(w.biases, w.scale_dtype, n * w.groups + g);
    const int64_t c0 = g * w.group_size;
    for (int64_t c = c0; c < c0 + w.group_size; ++c) out[c] = s * float(code_at(row, c, w.bits)) + b;
  }
}

}  // namespace lmx::cpu::quant
#endif

HWY_BEFORE_NAMESPACE();
namespace lmx::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// out[n - n0] = x · row n for n in [n0, n1), x [K] f32. kBits in {2, 4, 8}; kCap lanes
// divide the words of a group, so a vector never spans two groups.
template <int kBits, size_t kCap>
void dot_rows(const quant::Rows& w, const float* x, int64_t n0, int64_t n1, float* out) {
  const hn::CappedTag<float, kCap> df;
  const hn::RebindToUnsigned<decltype(df)> du;
  const hn::RebindToSigned<decltype(df)> di;
  constexpr int kPer = 32 / kBits;  // codes a word
  const int64_t v = int64_t(hn::Lanes(df)), k = w.words * kPer, group_words = w.group_size / kPer;
  // x in the order the shifted words give their codes: for the V words from w0 on, code
  // j of word w0 + i (column (w0 + i)·kPer + j) sits at (w0·kPer) + j·V + i. Per thread,
  // made once per range.
  thread_local std::vector<float> xp, xsum;
  xp.resize(size_t(k));
  xsum.resize(size_t(w.groups));
  for (int64_t w0 = 0; w0 < w.words; w0 += v)
    for (int j = 0; j < kPer; ++j)
      for (int64_t i = 0; i < v; ++i) xp[size_t(w0 * kPer + j * v + i)] = x[(w0 + i) * kPer + j];
  for (int64_t g = 0; g < w.groups; ++g) {
    float s = 0;
    for (int64_t c = g * w.group_size; c < (g + 1) * w.group_size; ++c) s += x[c];
    xsum[size_t(g)] = s;
  }
  const auto mask = hn::Set(du, (1u << kBits) - 1);
  for (int64_t n = n0; n < n1; ++n) {
    const uint32_t* row = w.packed + n * w.words;
    auto acc = hn::Zero(df);
    float offsets = 0;
    for (int64_t g = 0; g < w.groups; ++g) {
      auto dot = hn::Zero(df);
      for (int64_t w0 = g * group_words; w0 < (g + 1) * group_words; w0 += v) {
        const auto words = hn::LoadU(du, row + w0);
        const float* xb = xp.data() + w0 * kPer;
        for (int j = 0; j < kPer; ++j) {
          const auto q = hn::ConvertTo(df, hn::BitCast(di, hn::And(hn::ShiftRightSame(words, j * kBits), mask)));
          dot = hn::MulAdd(q, hn::LoadU(df, xb + j * v), dot);
        }
      }
      const int64_t at = n * w.groups + g;
      acc = hn::MulAdd(hn::Set(df, quant::scale_at(w.scales, w.scale_dtype, at)), dot, acc);
      offsets += quant::scale_at(w.biases, w.scale_dtype, at) * xsum[size_t(g)];
    }
    out[n - n0] = hn::GetLane(hn::SumOfLanes(df, acc)) + offsets;
  }
}

template <int kBits>
void dot_rows_bits(const quant::Rows& w, const float* x, int64_t n0, int64_t n1, float* out) {
  const int64_t group_words = w.group_size * kBits / 32;
  if (group_words >= 16) return dot_rows<kBits, 16>(w, x, n0, n1, out);
  if (group_words >= 8) return dot_rows<kBits, 8>(w, x, n0, n1, out);
  if (group_words >= 4) return dot_rows<kBits, 4>(w, x, n0, n1, out);
  return dot_rows<kBits, 2>(w, x, n0, n1, out);
}

void quantized_dot_rows(const quant::Rows& w, const float* x, int64_t n0, int64_t n1, float* out) {
  switch (w.bits) {
    case 2: return dot_rows_bits<2>(w, x, n0, n1, out);
    case 4: return dot_rows_bits<4>(w, x, n0, n1, out);
    default: return dot_rows_bits<8>(w, x, n0, n1, out);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace lmx::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <cblas.h>

#include <algorithm>
#include <vector>

#include "backend/cpu/strided.h"
#include "core/thread_pool.h"

namespace lmx::cpu {

HWY_EXPORT(quantized_dot_rows);

namespace {

quant::Rows rows_of(const fast::QuantizedMatrix& w) {
  return {w.packed.data<uint32_t>(), w.scales.raw(), w.biases.raw(), w.scales.dtype(), w.bits, w.group_size,
          w.packed.shape(1), w.scales.shape(1)};
}

// f32 values of `src` (contiguous, any float dtype).
std::vector<float> floats_of(const Array& src) {
  std::vector<float> f(size_t(src.size()));
  visit_dtype(src.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<compute_t<T>, float>) {
      const T* p = src.data<T>();
      for (int64_t i = 0; i < src.size(); ++i) f[size_t(i)] = to_f32(p[i]);
    }
  });
  return f;
}

// count f32 values rounded into dst, of float dtype t.
void store_floats(const float* f, int64_t count, Dtype t, void* dst) {
  visit_dtype(t, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<compute_t<T>, float>) {
      T* p = static_cast<T*>(dst);
      for (int64_t i = 0; i < count; ++i) p[i] = from_f32<T>(f[i]);
    }
  });
}

}  // namespace

void dequantize(const fast::QuantizedMatrix& w, const Array& out) {
  const quant::Rows r = rows_of(w);
  const int64_t k = w.cols();
  parallel_for(w.rows(), std::max<int64_t>(1, 16384 / k), [&](int64_t n0, int64_t n1) {
    std::vector<float> row(static_cast<size_t>(k));
    for (int64_t n = n0; n < n1; ++n) {
      quant::dequantize_row(r, n, row.data());
      store_floats(row.data(), k, out.dtype(), static_cast<char*>(out.raw()) + size_t(n * k) * itemsize(out.dtype()));
    }
  });
}

bool quantized_matmul(const Array& x, const fast::QuantizedMatrix& w, const Array& out) {
  const quant::Rows r = rows_of(w);
  const int64_t m = x.shape(0), n = w.rows(), k = w.cols();
  const std::vector<float> xf = floats_of(x);  // [M, K]
  std::vector<float> y(size_t(m * n));          // [M, N]
  if (m == 1 && (w.bits == 2 || w.bits == 4 || w.bits == 8)) {
    // About 32 KiB of codes per chunk, as the dense GEMV takes 64 KiB of bf16.
    const int64_t grain = std::max<int64_t>(16, (int64_t(1) << 15) / std::max<int64_t>(1, r.words * 4));
    parallel_for(n, grain, [&](int64_t n0, int64_t n1) {
      HWY_DYNAMIC_DISPATCH(quantized_dot_rows)(r, xf.data(), n0, n1, y.data() + n0);
    });
  } else {
    // A tile of about 4 MiB of f32 rows at a time, dequantized by the pool, then sgemm.
    const int64_t tile = std::clamp<int64_t>((int64_t(1) << 20) / k, 16, n);
    std::vector<float> wt(size_t(tile * k));
    for (int64_t t0 = 0; t0 < n; t0 += tile) {
      const int64_t rows = std::min(tile, n - t0);
      parallel_for(rows, std::max<int64_t>(1, 16384 / k), [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) quant::dequantize_row(r, t0 + i, wt.data() + i * k);
      });
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(m), int(rows), int(k), 1.0f, xf.data(), int(k),
                  wt.data(), int(k), 0.0f, y.data() + t0, int(n));
    }
  }
  store_floats(y.data(), m * n, out.dtype(), out.raw());
  return true;
}

}  // namespace lmx::cpu
#endif  // HWY_ONCE
