// bf16 products of many rows (prompts, batches past the GEMV's rows) on x86 CPUs with
// AVX512_BF16. VDPBF16PS multiplies 32 bf16 pairs into 16 f32 sums in one instruction, twice
// the products of f32 FMAs, and W is read as it is stored, where the sgemm path converts
// every weight to f32 first (2 bytes read, 4 written and read again, on every call).
//
// The form is inner products: a tile of 4 rows of `a` by 4 rows of W keeps 16 vectors of
// partial sums over a stretch of K, then sums each vector's lanes. No operand is packed, a
// last stretch shorter than 32 columns is a masked load of zeros, and each output's sum
// depends only on its two rows and K: a row's outputs have the same bits whatever rows
// share its product.
#include <cstdlib>
#include <cstring>

#include "backend/cpu/cpu_fast.h"
#include "core/thread_pool.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LMX_GEMM_BF16 1
// GCC 12's shuffle intrinsics start from _mm512_undefined_ps(), a self-initialised
// variable that -Wuninitialized reports at every use.
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace lmx::cpu {

#ifdef LMX_GEMM_BF16
namespace {

#define LMX_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

constexpr int64_t kTile = 4;  // rows of `a` and of W in a tile: 16 vectors of sums
// Columns per stretch: a tile's 8 rows of it (16 KiB) stay in L1 while the rows of `a` pass
// one tile after another beside the same 4 W rows.
constexpr int64_t kDepth = 1024;
// Rows of `a` per pass over W: their stretch (up to 512 KiB) stays in L2 for every W tile.
constexpr int64_t kChunkRows = 256;

// Lane 4q + r of the result is the sum of v[4r + q]'s lanes: sixteen horizontal sums in 15
// additions of whole vectors, halving the lanes that carry each v at every level.
LMX_BF16_TARGET inline __m512 sum_lanes(const __m512 v[16]) {
  __m512 u[8], x[4], y[2];
  for (int i = 0; i < 8; ++i)  // 256-bit halves: blocks [a0+a2, a1+a3, b0+b2, b1+b3]
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  for (int j = 0; j < 4; ++j)  // 128-bit blocks: block q holds v[4j + q]'s 4 partial sums
    x[j] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * j], u[2 * j + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(u[2 * j], u[2 * j + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  for (int k = 0; k < 2; ++k)  // pairs of lanes: [a(0+2), b(0+2), a(1+3), b(1+3)] a block
    y[k] = _mm512_add_ps(_mm512_unpacklo_ps(x[2 * k], x[2 * k + 1]), _mm512_unpackhi_ps(x[2 * k], x[2 * k + 1]));
  return _mm512_add_ps(_mm512_shuffle_ps(y[0], y[1], _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm512_shuffle_ps(y[0], y[1], _MM_SHUFFLE(3, 2, 3, 2)));
}

// acc[4i + j] += the pairs' products of av[i] and wv[j].
LMX_BF16_TARGET inline void dot_step(__m512 acc[16], const __m512bh av[kTile], const __m512bh wv[kTile]) {
  for (int j = 0; j < kTile; ++j)
    for (int i = 0; i < kTile; ++i) acc[4 * i + j] = _mm512_dpbf16_ps(acc[4 * i + j], av[i], wv[j]);
}

// sums[i * 4 + j] += a[i][0, len) · w[j][0, len), for 4 rows of `a` and 4 of W (bf16 bits).
LMX_BF16_TARGET void tile(const uint16_t* const a[kTile], const uint16_t* const w[kTile], int64_t len, float* sums) {
  __m512 acc[16];  // acc[4i + j]: 16 lanes of row i of `a` times row j of W
  for (__m512& v : acc) v = _mm512_setzero_ps();
  __m512bh av[kTile], wv[kTile];
  int64_t t = 0;
  for (; t + 32 <= len; t += 32) {
    for (int i = 0; i < kTile; ++i) av[i] = (__m512bh)_mm512_loadu_si512(a[i] + t);
    for (int j = 0; j < kTile; ++j) wv[j] = (__m512bh)_mm512_loadu_si512(w[j] + t);
    dot_step(acc, av, wv);
  }
  if (t < len) {  // the last columns: zeros past them in both operands add nothing
    const __mmask32 mask = _cvtu32_mask32(uint32_t((uint64_t(1) << (len - t)) - 1));
    for (int i = 0; i < kTile; ++i) av[i] = (__m512bh)_mm512_maskz_loadu_epi16(mask, a[i] + t);
    for (int j = 0; j < kTile; ++j) wv[j] = (__m512bh)_mm512_maskz_loadu_epi16(mask, w[j] + t);
    dot_step(acc, av, wv);
  }
  alignas(64) float s[16];
  _mm512_store_ps(s, sum_lanes(acc));
  for (int i = 0; i < kTile; ++i)
    for (int j = 0; j < kTile; ++j) sums[i * kTile + j] += s[4 * j + i];
}

// out[r, c] for every row r < m of `a` and W's rows c in [c_begin, c_end): a pass over
// those W rows per chunk of `a`'s rows, each W tile beside all of the chunk's rows.
void product(const uint16_t* a, int64_t a_row, int64_t m, const uint16_t* w, int64_t k, uint16_t* out, int64_t n,
             int64_t c_begin, int64_t c_end) {
  alignas(64) float sums[(kChunkRows + kTile) * kTile];  // [row of the chunk][W row of the tile]
  for (int64_t r0 = 0; r0 < m; r0 += kChunkRows) {
    const int64_t rows = std::min(kChunkRows, m - r0);
    for (int64_t c0 = c_begin; c0 < c_end; c0 += kTile) {
      // A tile past the last row (of `a` or W) repeats that row; its sums are not stored.
      const uint16_t* wr[kTile];
      for (int j = 0; j < kTile; ++j) wr[j] = w + std::min(c0 + j, n - 1) * k;
      std::memset(sums, 0, sizeof(float) * size_t(rows + kTile) * kTile);
      for (int64_t t0 = 0; t0 < k; t0 += kDepth) {
        const int64_t len = std::min(kDepth, k - t0);
        const uint16_t* wt[kTile];
        for (int j = 0; j < kTile; ++j) wt[j] = wr[j] + t0;
        for (int64_t i0 = 0; i0 < rows; i0 += kTile) {
          const uint16_t* at[kTile];
          for (int i = 0; i < kTile; ++i) at[i] = a + std::min(r0 + i0 + i, m - 1) * a_row + t0;
          tile(at, wt, len, sums + i0 * kTile);
        }
      }
      const int64_t cols = std::min(kTile, c_end - c0);
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j)
          out[(r0 + i) * n + c0 + j] = f32_to_bf16(sums[i * kTile + j]).bits;
    }
  }
}

}  // namespace

bool gemm_bf16_available() {
  static const bool has = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
  return has;
}

bool gemm_bf16(const Array& a, const Array& b, const Array& out) {
  if (a.dtype() != Dtype::bf16 || b.dtype() != Dtype::bf16 || out.dtype() != Dtype::bf16) return false;
  if (!gemm_bf16_available()) return false;
  if (const char* s = std::getenv("LMX_CPU_BF16_GEMM"); s && std::strcmp(s, "0") == 0) return false;
  const auto p = weight_product(a, b, out, std::numeric_limits<int64_t>::max());
  if (!p) return false;
  const int64_t m = p->rows, k = p->k, n = p->n;
  const auto* a0 = static_cast<const uint16_t*>(a.raw());
  const auto* w0 = static_cast<const uint16_t*>(b.raw());
  auto* o0 = static_cast<uint16_t*>(out.raw());
  // Tiles of W per chunk of work: about 4 M multiply-adds, enough to amortise scheduling.
  const int64_t tiles = (n + kTile - 1) / kTile;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 22) / std::max<int64_t>(1, m * k * kTile));
  for (int64_t i = 0; i < p->batches; ++i) {
    const uint16_t* ai = a0 + i * a.strides()[0];
    const uint16_t* wi = w0 + i * b.strides()[0];
    uint16_t* oi = o0 + i * m * n;
    parallel_for(tiles, grain, [&](int64_t t_begin, int64_t t_end) {
      product(ai, p->a_row, m, wi, k, oi, n, t_begin * kTile, std::min(n, t_end * kTile));
    });
  }
  return true;
}

#else  // no AVX512_BF16 kernel on this architecture or compiler: sgemm takes these products

bool gemm_bf16_available() { return false; }
bool gemm_bf16(const Array&, const Array&, const Array&) { return false; }

#endif

}  // namespace lmx::cpu
