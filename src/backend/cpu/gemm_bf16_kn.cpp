// bf16 products a·b with b a row-major [K, N] matrix, on x86 CPUs with AVX512_BF16: what a
// gradient's product with a frozen weight needs (g [M, out]·W [out, in], the tape's rule for
// x·Wᵀ). gemm_bf16 takes b only as a weight seen transposed ([N, K] rows along K), and the
// sgemm path converted W to f32 a panel at a time, several times the bf16 products' cost.
//
// The form is outer products: VDPBF16PS wants the two bf16 of a pair along K in one 32-bit
// lane, so a panel of b (kPanelK rows by kCols columns) is interleaved by pairs of rows into
// a buffer, and each pair of a's elements (adjacent in its row) is broadcast against it. A
// task owns kCols columns of kRows rows of the output, keeps their f32 sums in a buffer
// across the panels, and rounds them once at the end. Sums run over K in order, a pair at a
// time; the instruction treats subnormal inputs as zeros.
#include <algorithm>
#include <cstring>
#include <vector>

#include "backend/cpu/cpu_fast.h"
#include "core/thread_pool.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LMX_GEMM_BF16_KN 1
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace lmx::cpu {

#ifdef LMX_GEMM_BF16_KN
namespace {

#define LMX_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

constexpr int64_t kCols = 64;     // output columns a task: 4 vectors of 16 sums
constexpr int64_t kRows = 128;    // output rows a task
constexpr int64_t kPanelK = 512;  // rows of b interleaved at a time (64 KiB of pairs)
constexpr int kTile = 4;          // rows of a against the panel at once: 16 vectors of sums

// pairs[p·kCols + j] = b[k0 + 2p, n0 + j] in the low half and b[k0 + 2p + 1, n0 + j] in the
// high half; zeros past K and past N.
void interleave(const uint16_t* b, int64_t ldb, int64_t k0, int64_t k1, int64_t n0, int64_t n, uint32_t* pairs) {
  const int64_t cols = std::min(kCols, n - n0);
  for (int64_t k = k0; k < k1; k += 2) {
    uint32_t* row = pairs + (k - k0) / 2 * kCols;
    const uint16_t* lo = b + k * ldb + n0;
    const uint16_t* hi = k + 1 < k1 ? lo + ldb : nullptr;
    for (int64_t j = 0; j < cols; ++j) row[j] = uint32_t(lo[j]) | (hi ? uint32_t(hi[j]) << 16 : 0u);
    std::fill(row + cols, row + kCols, 0u);
  }
}

// sums[r·kCols + j] += Σ_k a[r, k]·b[k, j] over the panel [k0, k1) for `rows` rows of a.
LMX_BF16_TARGET void panel_product(const uint16_t* a, int64_t lda, int64_t rows, int64_t k0, int64_t k1,
                                   const uint32_t* pairs, float* sums) {
  const int64_t full = (k1 - k0) / 2 * 2;  // whole pairs of a's elements
  for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
    const int tile = int(std::min<int64_t>(kTile, rows - r0));
    __m512 acc[kTile][4];
    for (int r = 0; r < kTile; ++r)
      for (int c = 0; c < 4; ++c)
        acc[r][c] = r < tile ? _mm512_loadu_ps(sums + (r0 + r) * kCols + 16 * c) : _mm512_setzero_ps();
    for (int64_t k = k0; k < k1; k += 2) {
      const uint32_t* p = pairs + (k - k0) / 2 * kCols;
      const __m512bh b0 = (__m512bh)_mm512_loadu_si512(p), b1 = (__m512bh)_mm512_loadu_si512(p + 16);
      const __m512bh b2 = (__m512bh)_mm512_loadu_si512(p + 32), b3 = (__m512bh)_mm512_loadu_si512(p + 48);
#pragma GCC unroll 4
      for (int r = 0; r < kTile; ++r) {
        if (r >= tile) break;
        const uint16_t* x = a + (r0 + r) * lda + k;
        uint32_t pair;
        if (k - k0 < full) {
          std::memcpy(&pair, x, 4);
        } else {
          pair = x[0];  // K odd: the last element alone, against a zero
        }
        const __m512bh v = (__m512bh)_mm512_set1_epi32(int(pair));
        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], b0, v);
        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], b1, v);
        acc[r][2] = _mm512_dpbf16_ps(acc[r][2], b2, v);
        acc[r][3] = _mm512_dpbf16_ps(acc[r][3], b3, v);
      }
    }
    for (int r = 0; r < tile; ++r)
      for (int c = 0; c < 4; ++c) _mm512_storeu_ps(sums + (r0 + r) * kCols + 16 * c, acc[r][c]);
  }
}

}  // namespace

bool gemm_bf16_kn(const Array& a, const Array& b, const Array& out) {
  if (a.dtype() != Dtype::bf16 || b.dtype() != Dtype::bf16 || out.dtype() != Dtype::bf16) return false;
  if (!bf16_kernels_on() || a.ndim() != 3 || b.ndim() != 3 || !out.is_contiguous()) return false;
  const int64_t nb = a.shape(0), m = a.shape(1), k = a.shape(2), n = b.shape(2);
  // b row-major [K, N] (rows ldb apart), a's rows dense along K.
  if (k < 2 || b.strides()[2] != 1 || b.strides()[1] < n || a.strides()[2] != 1) return false;
  const int64_t lda = a.strides()[1], ldb = b.strides()[1];
  const int64_t col_blocks = (n + kCols - 1) / kCols, row_blocks = (m + kRows - 1) / kRows;
  for (int64_t i = 0; i < nb; ++i) {
    const auto* ai = static_cast<const uint16_t*>(a.raw()) + i * a.strides()[0];
    const auto* bi = static_cast<const uint16_t*>(b.raw()) + i * b.strides()[0];
    auto* oi = static_cast<uint16_t*>(out.raw()) + i * m * n;
    parallel_for(col_blocks * row_blocks, 1, [&](int64_t t0, int64_t t1) {
      std::vector<uint32_t> pairs(size_t(kPanelK / 2 * kCols));
      std::vector<float> sums(size_t(kRows * kCols));
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n0 = t % col_blocks * kCols, m0 = t / col_blocks * kRows, rows = std::min(kRows, m - m0);
        std::fill(sums.begin(), sums.end(), 0.0f);
        for (int64_t k0 = 0; k0 < k; k0 += kPanelK) {
          const int64_t k1 = std::min(k, k0 + kPanelK);
          interleave(bi, ldb, k0, k1, n0, n, pairs.data());
          panel_product(ai + m0 * lda, lda, rows, k0, k1, pairs.data(), sums.data());
        }
        const int64_t cols = std::min(kCols, n - n0);
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t j = 0; j < cols; ++j)
            oi[(m0 + r) * n + n0 + j] = from_f32<bf16_t>(sums[size_t(r * kCols + j)]).bits;
      }
    });
  }
  return true;
}

#else

bool gemm_bf16_kn(const Array&, const Array&, const Array&) { return false; }

#endif

}  // namespace lmx::cpu
