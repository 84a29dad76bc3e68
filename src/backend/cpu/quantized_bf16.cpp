// MLX affine-quantized products on VDPBF16PS, for bf16 inputs on x86 CPUs with AVX512_BF16:
// a decode step's rows, or a few. A 4- or 8-bit code is a small integer, exact in bf16, so
// one instruction multiplies 32 codes by 32 inputs exactly and adds them in pairs into 16 f32
// sums, where quantized.cpp's f32 kernels spend a conversion and an FMA on every code.
//
// y = Σ_g s_g·Σ_{k∈g} q_k·x_k + b_g·Σ_{k∈g} x_k. The codes are taken 64 at a time (a unit:
// 32 bytes at 4 bits, 64 at 8) as two bf16 vectors, which meet x in a matching order made
// once per call. The unit leaves 16 sums, lanes 0-7 over its first 32 codes and lanes 8-15
// over its last 32, so a group of 32 codes is half a vector and a larger group whole ones:
// each unit's sums are scaled by their groups' scales into one accumulator per row, the
// offsets' products with x's group sums join it lane by lane, and its lanes are summed once.
// Every output depends only on its rows of x and W: a row has the same bits alone or among
// others. The instruction treats subnormal inputs as zeros (below 1.2e-38, far under what a
// bf16 model's activations carry).
#include <algorithm>
#include <bit>
#include <vector>

#include "backend/cpu/cpu_fast.h"
#include "backend/cpu/quantized_rows.h"
#include "core/thread_pool.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LMX_QUANTIZED_BF16 1
// GCC 12's conversion intrinsics start from undefined vectors, which -Wuninitialized reports.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace lmx::cpu {

#ifdef LMX_QUANTIZED_BF16
namespace {

#define LMX_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

constexpr int64_t kUnit = 64;  // codes a unit

// The column of x (within its unit) that meets position j of the unit's two code vectors
// (j < 32 the first, the rest the second), as unit_codes lays the codes out.
// 4 bits: byte b's low code (column 2b) in the first vector's lane b, its high one in the
// second's. 8 bits: the first vector holds columns 0-15 and 32-47, the second 16-31 and 48-63.
int64_t column_at(int bits, int64_t j) {
  if (bits == 4) return j < 32 ? 2 * j : 2 * (j - 32) + 1;
  const int64_t half = j / 32, i = j % 32;
  return (i < 16 ? i : i + 16) + 16 * half;
}

// bf16 bits of the integers 0-15 (exact) in lanes 0-15: the table the 4-bit codes index.
constexpr uint16_t bf16_of(int c) { return uint16_t(std::bit_cast<uint32_t>(float(c)) >> 16); }
LMX_BF16_TARGET inline __m512i code_table() {
  return _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, bf16_of(15), bf16_of(14), bf16_of(13),
                          bf16_of(12), bf16_of(11), bf16_of(10), bf16_of(9), bf16_of(8), bf16_of(7), bf16_of(6),
                          bf16_of(5), bf16_of(4), bf16_of(3), bf16_of(2), bf16_of(1), bf16_of(0));
}

// The unit's codes at p as two bf16 vectors in column_at's order; `bytes` of it lie before
// the row's end (fewer than a unit's only for a last half unit, whose missing codes are zeros).
template <int kBits>
LMX_BF16_TARGET inline void unit_codes(const uint8_t* p, int64_t bytes, __m512i table, __m512bh& first,
                                       __m512bh& second) {
  if constexpr (kBits == 4) {
    const __m256i packed = bytes >= 32 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                                       : _mm256_maskz_loadu_epi8(_cvtu32_mask32((1u << bytes) - 1), p);
    const __m512i codes = _mm512_cvtepu8_epi16(packed);  // byte b in 16-bit lane b
    first = (__m512bh)_mm512_permutexvar_epi16(_mm512_and_si512(codes, _mm512_set1_epi16(15)), table);
    second = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(codes, 4), table);
  } else {
    const __m512i packed = bytes >= 64 ? _mm512_loadu_si512(p)
                                       : _mm512_maskz_loadu_epi8(_cvtu64_mask64((uint64_t(1) << bytes) - 1), p);
    // Columns 16i to 16i + 15 as f32, exact.
    const __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(packed, 0)));
    const __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(packed, 1)));
    const __m512 q2 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(packed, 2)));
    const __m512 q3 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(packed, 3)));
    first = _mm512_cvtne2ps_pbh(q2, q0);  // the second operand fills lanes 0-15
    second = _mm512_cvtne2ps_pbh(q3, q1);
  }
}

// 16 f32 values from a row of scales or offsets of `dtype`, `count` of them (the rest zeros).
LMX_BF16_TARGET inline __m512 load_f32(const void* p, Dtype dtype, int64_t at, int64_t count) {
  const __mmask16 mask = count >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << count) - 1);
  switch (dtype) {
    case Dtype::bf16:
      return _mm512_castsi512_ps(_mm512_slli_epi32(
          _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(p) + at)), 16));
    case Dtype::f16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(p) + at));
    default: return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(p) + at);
  }
}

// What every row of a call shares: the matrix, and x in the units' order.
struct Inputs {
  const quant::Rows& w;
  const uint16_t* xp;  // [M, kp] bf16: x's row in column_at's order, zeros past K
  const float* xsum;   // [M, gp]: the group sums of x's row, zeros past the groups
  int64_t kp, gp;
};

// out[r·n_all + n] for kRows rows of x from `row` on and W's rows n in [n0, n1), kW of them
// at a time, which share the loads of x (n1 - n0 a multiple of kW); `scales` holds kW rows'
// scales in f32, gp apart. Each output's sums are the same whatever kRows and kW.
template <int kBits, int kRows, int kW, bool kHalfGroups>
LMX_BF16_TARGET void rows_product(const Inputs& in, int64_t row, int64_t n0, int64_t n1, float* out, int64_t n_all,
                                  float* scales) {
  const quant::Rows& w = in.w;
  const auto* packed = reinterpret_cast<const uint8_t*>(w.packed);
  const void *scale_rows = w.scales, *offset_rows = w.biases;
  const Dtype dtype = w.scale_dtype;
  const int64_t row_bytes = w.words * 4, units = in.kp / kUnit, groups = w.groups, kp = in.kp, gp = in.gp;
  const int64_t unit_bytes = kUnit * kBits / 8, scale_bytes = groups * int64_t(itemsize(dtype));
  // Groups of 64 or 128 codes: a unit's group is u >> shift.
  const int shift = w.group_size == 128 ? 1 : 0;
  const uint16_t* xp = in.xp + row * kp;
  const float* xsum = in.xsum + row * gp;
  const __m512i table = code_table();
  const int64_t ahead = std::max<int64_t>(kW, 2048 / row_bytes / kW * kW);  // rows ahead for the prefetches
  for (int64_t n = n0; n < n1; n += kW) {
    const bool prefetch = n + ahead + kW <= n1;
    __m512 acc[kW][kRows];  // [W row][x row]
#pragma GCC unroll 2
    for (int j = 0; j < kW; ++j) {
      if (prefetch) {  // the scales and offsets some rows on (the codes are fetched unit by unit)
        __builtin_prefetch(static_cast<const uint8_t*>(scale_rows) + (n + j + ahead) * scale_bytes, 0, 3);
        __builtin_prefetch(static_cast<const uint8_t*>(offset_rows) + (n + j + ahead) * scale_bytes, 0, 3);
      }
      // The row's scales in f32, and the offsets' products with x's group sums (lane by lane).
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) acc[j][r] = _mm512_setzero_ps();
      for (int64_t g = 0; g < groups; g += 16) {
        const int64_t count = std::min<int64_t>(16, groups - g), at = (n + j) * groups + g;
        _mm512_storeu_ps(scales + j * gp + g, load_f32(scale_rows, dtype, at, count));
        const __m512 offsets = load_f32(offset_rows, dtype, at, count);
#pragma GCC unroll 8
        for (int r = 0; r < kRows; ++r)
          acc[j][r] = _mm512_fmadd_ps(offsets, _mm512_loadu_ps(xsum + r * gp + g), acc[j][r]);
      }
    }
    for (int64_t u = 0; u < units; ++u) {
      __m512bh first[kW], second[kW];
      __m512 scale[kW];
#pragma GCC unroll 2
      for (int j = 0; j < kW; ++j) {
        const uint8_t* codes = packed + (n + j) * row_bytes + u * unit_bytes;
        if (prefetch) __builtin_prefetch(codes + ahead * row_bytes, 0, 3);
        unit_codes<kBits>(codes, row_bytes - u * unit_bytes, table, first[j], second[j]);
        // Lanes 0-7 belong to the group of the unit's first 32 codes, 8-15 to its last 32's.
        const float* s = scales + j * gp;
        scale[j] = kHalfGroups ? _mm512_mask_blend_ps(__mmask16(0xFF00), _mm512_set1_ps(s[2 * u]),
                                                      _mm512_set1_ps(s[std::min(2 * u + 1, groups - 1)]))
                               : _mm512_set1_ps(s[u >> shift]);
      }
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) {
        const uint16_t* x = xp + r * kp + u * kUnit;
        const __m512bh x0 = (__m512bh)_mm512_loadu_si512(x), x1 = (__m512bh)_mm512_loadu_si512(x + 32);
#pragma GCC unroll 2
        for (int j = 0; j < kW; ++j) {
          const __m512 sums = _mm512_dpbf16_ps(_mm512_dpbf16_ps(_mm512_setzero_ps(), first[j], x0), second[j], x1);
          acc[j][r] = _mm512_fmadd_ps(sums, scale[j], acc[j][r]);
        }
      }
    }
#pragma GCC unroll 2
    for (int j = 0; j < kW; ++j)
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) out[(row + r) * n_all + n + j] = _mm512_reduce_add_ps(acc[j][r]);
  }
}

// Every row of x in tiles of 8, 4, 2 and 1, for W's rows [n0, n1): in pairs that share x's
// loads where x has more than one row (batch 8's decode 1.05-1.10×, 128-token prompts
// 1.26-1.31×); a decode step's one row streams W one row at a time (pairs there: 0.86-0.89×).
template <int kBits, bool kHalfGroups>
void all_rows(const Inputs& in, int64_t m, int64_t n0, int64_t n1, float* out, int64_t n_all) {
  thread_local std::vector<float> scales;  // two rows', in f32
  scales.resize(size_t(2 * in.gp));
  float* s = scales.data();
  const int64_t pairs_end = m > 1 ? n0 + (n1 - n0) / 2 * 2 : n0;
  auto tile = [&]<int kRows>(int64_t r) {
    if (pairs_end > n0) rows_product<kBits, kRows, 2, kHalfGroups>(in, r, n0, pairs_end, out, n_all, s);
    if (pairs_end < n1) rows_product<kBits, kRows, 1, kHalfGroups>(in, r, pairs_end, n1, out, n_all, s);
  };
  for (int64_t r = 0; r < m;) {
    if (m - r >= 8) {
      tile.template operator()<8>(r), r += 8;
    } else if (m - r >= 4) {
      tile.template operator()<4>(r), r += 4;
    } else if (m - r >= 2) {
      tile.template operator()<2>(r), r += 2;
    } else {
      tile.template operator()<1>(r), r += 1;
    }
  }
}

}  // namespace

bool quantized_bf16(const quant::Rows& w, const uint16_t* x, int64_t m, int64_t n, float* out) {
  if (w.bits != 4 && w.bits != 8) return false;
  if (!bf16_kernels_on()) return false;
  const int64_t k = w.words * 32 / w.bits, units = (k + kUnit - 1) / kUnit;
  const int64_t kp = units * kUnit, gp = (w.groups + 15) / 16 * 16;
  // x in the units' order, and its group sums (column order, f32), both zero-padded.
  std::vector<uint16_t> xp(size_t(m * kp), 0);
  std::vector<float> xsum(size_t(m * gp), 0.0f);
  for (int64_t r = 0; r < m; ++r) {
    const uint16_t* xr = x + r * k;
    for (int64_t u = 0; u < units; ++u)
      for (int64_t j = 0; j < kUnit; ++j) {
        const int64_t c = u * kUnit + column_at(w.bits, j);
        if (c < k) xp[size_t(r * kp + u * kUnit + j)] = xr[c];
      }
    for (int64_t g = 0; g < w.groups; ++g) {
      float sum = 0;
      for (int64_t c = g * w.group_size; c < (g + 1) * w.group_size; ++c) sum += bf16_to_f32(bf16_t{xr[c]});
      xsum[size_t(r * gp + g)] = sum;
    }
  }
  const Inputs in{w, xp.data(), xsum.data(), kp, gp};
  const bool half = w.group_size == 32;
  // About 32 KiB of codes a chunk of work, as quantized.cpp's kernels take, but no more than
  // leaves every thread four chunks (a 1,024-row W at 4 bits was 16 chunks of 64 rows: one a
  // thread on sixteen, however unevenly they ran), and at least 16 rows.
  const int64_t grain = std::max<int64_t>(
      16, std::min<int64_t>((int64_t(1) << 15) / std::max<int64_t>(1, w.words * 4), n / (4 * num_threads())));
  parallel_for(n, grain, [&](int64_t n0, int64_t n1) {
    if (w.bits == 4) return half ? all_rows<4, true>(in, m, n0, n1, out, n) : all_rows<4, false>(in, m, n0, n1, out, n);
    return half ? all_rows<8, true>(in, m, n0, n1, out, n) : all_rows<8, false>(in, m, n0, n1, out, n);
  });
  return true;
}

#else  // no AVX512_BF16 kernel on this architecture or compiler: quantized.cpp's f32 kernels

bool quantized_bf16(const quant::Rows&, const uint16_t*, int64_t, int64_t, float*) { return false; }

#endif

}  // namespace lmx::cpu
