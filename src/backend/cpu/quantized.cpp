// MLX affine-quantized matrices on the CPU (spec §2): dequantization, and the product of
// rows of x with a quantized weight.
//
// bf16 rows times 4- or 8-bit codes take quantized_bf16.cpp's VDPBF16PS kernel, at every
// row count, where the CPU has AVX512_BF16. Otherwise (f32 or f16 rows, other widths, other
// CPUs, LMX_CPU_BF16_GEMM=0), up to 32 rows (decode steps, short prompts) read the packed
// codes straight into the dot products: at 4 bits a quarter of a bf16 weight's bytes, plus
// a scale and an offset per group. With y = Σ_g s_g·Σ_{k∈g} q_k·x_k + b_g·Σ_{k∈g} x_k, the
// offsets cost one product per group against x's group sums. For 2, 4 and 8 bits a vector
// of V words holds V·(32/bits) codes; shifting it by bits·j and masking gives the codes j,
// j + 32/bits, ... of those words, which meet x permuted to that order once per call; the
// codes decoded once serve up to eight rows. Longer prompts dequantize the weight a tile of
// rows at a time into f32 (in the same permuted order, x permuted alike) and multiply with
// sgemm, so the weight is unpacked once per call whatever the rows. 3, 5 and 6 bits take a
// scalar bitstream reader and sgemm. Highway compiles the SIMD kernels for each x86 target;
// the best one is chosen at run time.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backend/cpu/quantized.cpp"
#include <hwy/foreach_target.h>  // must come before highway.h
#include <hwy/highway.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "backend/cpu/cpu_fast.h"
#include "backend/cpu/quantized_rows.h"
#include "core/dtype.h"

HWY_BEFORE_NAMESPACE();
namespace lmx::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// x [M, K] in the order the shifted words give their codes: for the V words from w0 on,
// code j of word w0 + i (column (w0 + i)·kPer + j) sits at w0·kPer + j·V + i; and each
// row's group sums [M, groups] where xsum is given.
template <int kPer>
void permute_rows(const float* x, int64_t m, int64_t k, int64_t v, int64_t group, float* xp, float* xsum) {
  const int64_t words = k / kPer, groups = k / group;
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * k;
    for (int64_t w0 = 0; w0 < words; w0 += v)
      for (int j = 0; j < kPer; ++j)
        for (int64_t i = 0; i < v; ++i) xp[r * k + w0 * kPer + j * v + i] = xr[(w0 + i) * kPer + j];
    for (int64_t g = 0; xsum && g < groups; ++g) {
      float sum = 0;
      for (int64_t c = g * group; c < (g + 1) * group; ++c) sum += xr[c];
      xsum[r * groups + g] = sum;
    }
  }
}

// Codes j, j + 32/kBits, ... of the words in `words` (one a lane), as f32 lanes: exact,
// since a code has at most 8 bits.
template <int kBits, class DF, class VU>
HWY_INLINE hn::Vec<DF> codes_at(DF df, VU words, int j) {
  const hn::RebindToUnsigned<DF> du;
  const hn::RebindToSigned<DF> di;
  return hn::ConvertTo(df, hn::BitCast(di, hn::And(hn::ShiftRightSame(words, j * kBits),
                                                   hn::Set(du, (1u << kBits) - 1))));
}

// out[r·N + n] = x[r] · W row n for kRows rows of x (xp and xsum as permute_rows makes
// them, row stride K and groups) and n in [n0, n1). kBits in {2, 4, 8}; kCap lanes divide
// the words of a group, so a vector never spans two groups. The codes are decoded once
// for the kRows rows, whose accumulators stay in registers. Each output is summed the
// same way whatever the rows beside it: a row gets the bits it gets alone.
template <int kBits, size_t kCap, int kRows>
void dot_rows(const quant::Rows& w, const float* xp, const float* xsum, int64_t n0, int64_t n1, float* out,
              int64_t n_all) {
  const hn::CappedTag<float, kCap> df;
  const hn::RebindToUnsigned<decltype(df)> du;
  using V = decltype(hn::Zero(df));
  constexpr int kPer = 32 / kBits;  // codes a word
  const int64_t v = int64_t(hn::Lanes(df)), k = w.words * kPer, group_words = w.group_size / kPer;
  for (int64_t n = n0; n < n1; ++n) {
    const uint32_t* row = w.packed + n * w.words;
    V acc[kRows];
    float offsets[kRows] = {};
    for (int r = 0; r < kRows; ++r) acc[r] = hn::Zero(df);
    for (int64_t g = 0; g < w.groups; ++g) {
      V dot[kRows];
      for (int r = 0; r < kRows; ++r) dot[r] = hn::Zero(df);
      for (int64_t w0 = g * group_words; w0 < (g + 1) * group_words; w0 += v) {
        const auto words = hn::LoadU(du, row + w0);
        const float* xb = xp + w0 * kPer;
        for (int j = 0; j < kPer; ++j) {
          const V q = codes_at<kBits>(df, words, j);
          for (int r = 0; r < kRows; ++r) dot[r] = hn::MulAdd(q, hn::LoadU(df, xb + r * k + j * v), dot[r]);
        }
      }
      const int64_t at = n * w.groups + g;
      const V scale = hn::Set(df, quant::scale_at(w.scales, w.scale_dtype, at));
      const float bias = quant::scale_at(w.biases, w.scale_dtype, at);
      for (int r = 0; r < kRows; ++r) {
        acc[r] = hn::MulAdd(scale, dot[r], acc[r]);
        offsets[r] += bias * xsum[r * w.groups + g];
      }
    }
    for (int r = 0; r < kRows; ++r) out[r * n_all + n] = hn::GetLane(hn::SumOfLanes(df, acc[r])) + offsets[r];
  }
}

// All m rows: eight at a time, then four, two and one.
template <int kBits, size_t kCap>
void dot_all_rows(const quant::Rows& w, const float* x, int64_t m, int64_t n0, int64_t n1, float* out,
                  int64_t n_all) {
  constexpr int kPer = 32 / kBits;
  const int64_t k = w.words * kPer, v = int64_t(hn::Lanes(hn::CappedTag<float, kCap>()));
  thread_local std::vector<float> xp, xsum;  // per thread, made once per range
  xp.resize(size_t(m * k));
  xsum.resize(size_t(m * w.groups));
  permute_rows<kPer>(x, m, k, v, w.group_size, xp.data(), xsum.data());
  for (int64_t r = 0; r < m;) {
    const float* p = xp.data() + r * k;
    const float* s = xsum.data() + r * w.groups;
    float* o = out + r * n_all;
    if (m - r >= 8) {
      dot_rows<kBits, kCap, 8>(w, p, s, n0, n1, o, n_all), r += 8;
    } else if (m - r >= 4) {
      dot_rows<kBits, kCap, 4>(w, p, s, n0, n1, o, n_all), r += 4;
    } else if (m - r >= 2) {
      dot_rows<kBits, kCap, 2>(w, p, s, n0, n1, o, n_all), r += 2;
    } else {
      dot_rows<kBits, kCap, 1>(w, p, s, n0, n1, o, n_all), r += 1;
    }
  }
}

// Rows [n0, n1) of W dequantized into out [n1 - n0, K] f32, columns in permute_rows'
// order: scale · q + bias, the values dequantize_row gives (scale · q is exact).
template <int kBits, size_t kCap>
void dequantize_permuted(const quant::Rows& w, int64_t n0, int64_t n1, float* out) {
  const hn::CappedTag<float, kCap> df;
  const hn::RebindToUnsigned<decltype(df)> du;
  constexpr int kPer = 32 / kBits;
  const int64_t v = int64_t(hn::Lanes(df)), k = w.words * kPer, group_words = w.group_size / kPer;
  for (int64_t n = n0; n < n1; ++n) {
    const uint32_t* row = w.packed + n * w.words;
    float* o = out + (n - n0) * k;
    for (int64_t g = 0; g < w.groups; ++g) {
      const auto scale = hn::Set(df, quant::scale_at(w.scales, w.scale_dtype, n * w.groups + g));
      const auto bias = hn::Set(df, quant::scale_at(w.biases, w.scale_dtype, n * w.groups + g));
      for (int64_t w0 = g * group_words; w0 < (g + 1) * group_words; w0 += v) {
        const auto words = hn::LoadU(du, row + w0);
        for (int j = 0; j < kPer; ++j) {
          hn::StoreU(hn::MulAdd(codes_at<kBits>(df, words, j), scale, bias), df, o + w0 * kPer + j * v);
        }
      }
    }
  }
}

// Calls fn.template operator()<kBits, kCap>() for the matrix's width, with vectors of up
// to eight lanes within one group's words (16 lanes would serve only groups of 16 words).
template <class Fn>
void dispatch(const quant::Rows& w, Fn&& fn) {
  auto lanes = [&]<int kBits>() {
    const int64_t group_words = w.group_size * kBits / 32;
    if (group_words >= 8) return fn.template operator()<kBits, 8>();
    if (group_words >= 4) return fn.template operator()<kBits, 4>();
    return fn.template operator()<kBits, 2>();
  };
  if (w.bits == 2) return lanes.template operator()<2>();
  if (w.bits == 4) return lanes.template operator()<4>();
  return lanes.template operator()<8>();
}

void quantized_dot_rows(const quant::Rows& w, const float* x, int64_t m, int64_t n0, int64_t n1, float* out,
                        int64_t n_all) {
  dispatch(w, [&]<int kBits, size_t kCap>() { dot_all_rows<kBits, kCap>(w, x, m, n0, n1, out, n_all); });
}

void quantized_tile(const quant::Rows& w, int64_t n0, int64_t n1, float* out) {
  dispatch(w, [&]<int kBits, size_t kCap>() { dequantize_permuted<kBits, kCap>(w, n0, n1, out); });
}

// x [M, K] into the column order of quantized_tile's rows (xp [M, K]).
void quantized_permute(const quant::Rows& w, const float* x, int64_t m, float* xp) {
  dispatch(w, [&]<int kBits, size_t kCap>() {
    constexpr int kPer = 32 / kBits;
    permute_rows<kPer>(x, m, w.words * kPer, int64_t(hn::Lanes(hn::CappedTag<float, kCap>())), w.group_size, xp,
                       nullptr);
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace lmx::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <cblas.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "core/thread_pool.h"

namespace lmx::cpu {

HWY_EXPORT(quantized_dot_rows);
HWY_EXPORT(quantized_tile);
HWY_EXPORT(quantized_permute);

namespace {

// Up to this many rows multiply by the codes directly; more dequantize tiles for sgemm,
// whose cost per row falls as rows are added where the codes' decoding does not.
constexpr int64_t kCodeRowsMax = 32;

quant::Rows rows_of(const fast::QuantizedMatrix& w) {
  return {w.packed.data<uint32_t>(), w.scales.raw(), w.biases.raw(), w.scales.dtype(), w.bits, w.group_size,
          w.packed.shape(1), w.scales.shape(1)};
}

}  // namespace

void dequantize(const fast::QuantizedMatrix& w, const Array& out) {
  const quant::Rows r = rows_of(w);
  const int64_t k = w.cols();
  const bool f32 = out.dtype() == Dtype::f32;
  parallel_for(w.rows(), std::max<int64_t>(1, 16384 / k), [&](int64_t n0, int64_t n1) {
    std::vector<float> row(f32 ? 0 : static_cast<size_t>(k));  // f32 output: written in place
    for (int64_t n = n0; n < n1; ++n) {
      quant::dequantize_row(r, n, f32 ? out.data<float>() + n * k : row.data());
      if (!f32) copy(Array::borrow(row.data(), {k}, Dtype::f32, nullptr), out.view({k}, {1}, out.offset() + n * k));
    }
  });
}

namespace {

// y [M, N] = x [M, K] times W's codes on the f32 kernels: x's rows converted to f32, up to
// kCodeRowsMax of them against the codes directly, more against dequantized tiles by sgemm.
void f32_product(const quant::Rows& r, const Array& x, int64_t m, int64_t n, int64_t k, float* y) {
  // Left uninitialised: every element is written.
  std::unique_ptr<float[]> x_scratch;
  if (x.dtype() != Dtype::f32) {
    x_scratch = std::make_unique_for_overwrite<float[]>(size_t(m * k));
    copy(x, Array::borrow(x_scratch.get(), {m, k}, Dtype::f32, nullptr));
  }
  const float* xf = x_scratch ? x_scratch.get() : x.data<float>();
  const bool simd = r.bits == 2 || r.bits == 4 || r.bits == 8;
  if (m <= kCodeRowsMax && simd) {
    // About 32 KiB of codes per chunk, as the dense GEMV takes 64 KiB of bf16.
    const int64_t grain = std::max<int64_t>(16, (int64_t(1) << 15) / std::max<int64_t>(1, r.words * 4));
    parallel_for(n, grain, [&](int64_t n0, int64_t n1) {
      HWY_DYNAMIC_DISPATCH(quantized_dot_rows)(r, xf, m, n0, n1, y, n);
    });
  } else {
    // Tiles of up to 16 MiB of f32 rows (a whole layer matrix of a 1B model in one or a
    // few), dequantized by the pool, then sgemm: each switch between the pool and the BLAS
    // threads costs their wake-ups. The tile is kept per thread, so that prompts do not map
    // and fault in fresh pages for every matrix. For 2, 4 and 8 bits the tile's columns
    // (and x's) take the SIMD kernels' order.
    std::vector<float> xp;
    if (simd) {
      xp.resize(size_t(m * k));
      parallel_for(m, std::max<int64_t>(1, 16384 / k), [&](int64_t r0, int64_t r1) {
        HWY_DYNAMIC_DISPATCH(quantized_permute)(r, xf + r0 * k, r1 - r0, xp.data() + r0 * k);
      });
    }
    const int64_t tile = std::clamp<int64_t>((int64_t(1) << 22) / k, 16, n);
    thread_local std::vector<float> scratch;
    scratch.resize(std::max(scratch.size(), size_t(tile * k)));
    float* const wt = scratch.data();  // the caller's: the pool's threads have their own `scratch`
    for (int64_t t0 = 0; t0 < n; t0 += tile) {
      const int64_t rows = std::min(tile, n - t0);
      parallel_for(rows, std::max<int64_t>(1, 16384 / k), [&](int64_t i0, int64_t i1) {
        if (simd) return HWY_DYNAMIC_DISPATCH(quantized_tile)(r, t0 + i0, t0 + i1, wt + i0 * k);
        for (int64_t i = i0; i < i1; ++i) quant::dequantize_row(r, t0 + i, wt + i * k);
      });
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(m), int(rows), int(k), 1.0f,
                  simd ? xp.data() : xf, int(k), wt, int(k), 0.0f, y + t0, int(n));
    }
  }
}

}  // namespace

bool quantized_matmul(const Array& x, const fast::QuantizedMatrix& w, const Array& out) {
  const quant::Rows r = rows_of(w);
  const int64_t m = x.shape(0), n = w.rows(), k = w.cols();
  // y [M, N] in f32: the output itself where it is f32. Left uninitialised: every element
  // is written (sgemm with beta 0 reads none).
  std::unique_ptr<float[]> y_scratch;
  if (out.dtype() != Dtype::f32) y_scratch = std::make_unique_for_overwrite<float[]>(size_t(m * n));
  float* y = y_scratch ? y_scratch.get() : out.data<float>();
  // bf16 rows times 4- or 8-bit codes: VDPBF16PS at every row count, where the CPU has it.
  if (x.dtype() != Dtype::bf16 || !quantized_bf16(r, static_cast<const uint16_t*>(x.raw()), m, n, y))
    f32_product(r, x, m, n, k, y);
  if (y_scratch) copy(Array::borrow(y, {m, n}, Dtype::f32, nullptr), out);
  return true;
}

}  // namespace lmx::cpu
#endif  // HWY_ONCE
