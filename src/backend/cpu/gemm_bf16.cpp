// bf16 products by a weight on x86 CPUs with AVX512_BF16, at every row count: prompts,
// batches' decode steps and single decode steps. VDPBF16PS multiplies 32 bf16 pairs into 16
// f32 sums in one instruction, twice the products of f32 FMAs, and W is read as it is stored,
// where the sgemm path converts every weight to f32 first (2 bytes read, 4 written and read
// again, on every call).
//
// The form is inner products: a tile of 4 rows of `a` by 4 rows of W keeps 16 vectors of
// partial sums over a stretch of K (at most 1,536 columns), then sums each vector's lanes.
// No operand is packed, a step of fewer than 32 columns is a masked load of zeros, and each
// output's sum depends only on its two rows and K: a row's outputs have the same bits
// whatever rows share its product (one row alone takes its own form with the same sums).
// The instruction treats subnormal inputs as zeros and flushes subnormal sums (below
// 1.2e-38, far under what a bf16 model's activations and weights carry).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "backend/cpu/cpu_fast.h"
#include "core/thread_pool.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LMX_GEMM_BF16 1
// GCC 12's shuffle intrinsics start from _mm512_undefined_ps(), a self-initialised
// variable that -Wuninitialized reports at every use.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace lmx::cpu {

#ifdef LMX_GEMM_BF16
namespace {

#define LMX_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

// Columns per stretch, a function of K alone (each output's sum may depend on nothing else):
// K in equal stretches of at most kMaxDepth, in whole steps of 32. A tile's 8 rows of one (at
// most 24 KiB) stay in L1 while the rows of `a` pass beside the same W rows, and no short
// last stretch pays a whole stretch's lane sums for a few steps (Gemma 3's K of 1,152 was
// 1,024 and 128).
constexpr int64_t kMaxDepth = 1536;
inline int64_t stretch(int64_t k) {
  const int64_t count = (k + kMaxDepth - 1) / kMaxDepth;
  return ((k + count - 1) / count + 31) / 32 * 32;
}
// Rows of `a` per pass over W: their stretch (at most 768 KiB) stays in L2 for every W tile.
constexpr int64_t kChunkRows = 256;

// Lane 4q + r of the result is the sum of v[4r + q]'s lanes: sixteen horizontal sums in 15
// additions of whole vectors, halving the lanes that carry each v at every level.
LMX_BF16_TARGET inline __m512 sum_lanes(const __m512 v[16]) {
  __m512 u[8], x[4], y[2];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i)  // 256-bit halves: blocks [a0+a2, a1+a3, b0+b2, b1+b3]
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
#pragma GCC unroll 8
  for (int j = 0; j < 4; ++j)  // 128-bit blocks: block q holds v[4j + q]'s 4 partial sums
    x[j] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * j], u[2 * j + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(u[2 * j], u[2 * j + 1], _MM_SHUFFLE(3, 1, 3, 1)));
#pragma GCC unroll 8
  for (int k = 0; k < 2; ++k)  // pairs of lanes: [a(0+2), b(0+2), a(1+3), b(1+3)] a block
    y[k] = _mm512_add_ps(_mm512_unpacklo_ps(x[2 * k], x[2 * k + 1]), _mm512_unpackhi_ps(x[2 * k], x[2 * k + 1]));
  return _mm512_add_ps(_mm512_shuffle_ps(y[0], y[1], _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm512_shuffle_ps(y[0], y[1], _MM_SHUFFLE(3, 2, 3, 2)));
}

// One vector's lanes summed in the pairs sum_lanes takes for each of its sixteen: the
// same bits as that vector's lane there.
LMX_BF16_TARGET inline float sum_lanes(__m512 v) {
  const __m512 u = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(3, 2, 3, 2)));  // blocks 0+2, 1+3
  const __m512 x = _mm512_add_ps(u, _mm512_shuffle_f32x4(u, u, _MM_SHUFFLE(1, 1, 1, 1)));  // block 0: all four
  const __m512 y = _mm512_add_ps(x, _mm512_shuffle_ps(x, x, _MM_SHUFFLE(1, 0, 3, 2)));      // lanes 0+2, 1+3
  return _mm512_cvtss_f32(y) + _mm512_cvtss_f32(_mm512_shuffle_ps(y, y, _MM_SHUFFLE(1, 1, 1, 1)));
}

// The lanes of a step of 32 columns that lie before the end, `left` columns on.
LMX_BF16_TARGET inline __mmask32 step_mask(int64_t left) {
  return left >= 32 ? ~__mmask32(0) : _cvtu32_mask32(uint32_t((uint64_t(1) << left) - 1));
}

// Where the sums of output u = TW·i + j (row i of `a`, row j of W) are kept: sum_lanes puts
// the sums of v[4r + q] in lane 4q + r, so keeping u's in v[4(u % 4) + u / 4] brings lane u
// out as output u.
constexpr int slot(int u) { return 4 * (u % 4) + u / 4; }

// acc[slot(TW·i + j)] += the pairs' products of av[i] and wv[j].
template <int TA, int TW>
LMX_BF16_TARGET inline void dot_step(__m512 acc[16], const __m512bh av[TA], const __m512bh wv[TW]) {
#pragma GCC unroll 8
  for (int j = 0; j < TW; ++j)
#pragma GCC unroll 8
    for (int i = 0; i < TA; ++i) acc[slot(TW * i + j)] = _mm512_dpbf16_ps(acc[slot(TW * i + j)], av[i], wv[j]);
}

// sums[TW·i + j] += a[i][0, len) · w[j][0, len), for TA rows of `a` and TW of W (bf16 bits),
// TA·TW = 16 vectors of sums.
// With `ahead`, each step also prefetches the same columns of TW more W rows (the stretch that
// comes after this one): in step with the stream, where a burst of them at once overflows
// the loads in flight.
template <int TA, int TW>
LMX_BF16_TARGET void tile(const uint16_t* const a[TA], const uint16_t* const w[TW], int64_t len, float* sums,
                          const uint16_t* const* ahead) {
  static_assert(TA * TW == 16);
  __m512 acc[16];  // acc[slot(TW·i + j)]: 16 lanes of row i of `a` times row j of W
#pragma GCC unroll 16
  for (__m512& v : acc) v = _mm512_setzero_ps();
  // One loop for every stretch of 32 columns, the last one masked (zeros past the end add
  // nothing): a second path for it kept the sums in memory around both.
  for (int64_t t = 0; t < len; t += 32) {
    const __mmask32 mask = step_mask(len - t);
    if (ahead) {
#pragma GCC unroll 8
      for (int j = 0; j < TW; ++j) __builtin_prefetch(ahead[j] + t, 0, 3);
    }
    __m512bh av[TA], wv[TW];
#pragma GCC unroll 8
    for (int i = 0; i < TA; ++i) av[i] = (__m512bh)_mm512_maskz_loadu_epi16(mask, a[i] + t);
#pragma GCC unroll 8
    for (int j = 0; j < TW; ++j) wv[j] = (__m512bh)_mm512_maskz_loadu_epi16(mask, w[j] + t);
    dot_step<TA, TW>(acc, av, wv);
  }
  _mm512_storeu_ps(sums, _mm512_add_ps(_mm512_loadu_ps(sums), sum_lanes(acc)));
}

// out[r, c] for every row r < m of `a` and W's rows c in [c_begin, c_end) (w_row elements
// apart): a pass over those W rows per chunk of `a`'s rows, each W tile (TW rows) beside all
// of the chunk's rows.
template <int TA, int TW>
void product(const uint16_t* a, int64_t a_row, int64_t m, const uint16_t* w, int64_t w_row, int64_t k,
             uint16_t* out, int64_t n, int64_t c_begin, int64_t c_end) {
  alignas(64) float sums[(kChunkRows + TA) * TW];  // [row of the chunk][W row of the tile]
  const int64_t depth = stretch(k);
  for (int64_t r0 = 0; r0 < m; r0 += kChunkRows) {
    const int64_t rows = std::min(kChunkRows, m - r0), tiles = (rows + TA - 1) / TA;
    for (int64_t c0 = c_begin; c0 < c_end; c0 += TW) {
      // A tile past the last row (of `a` or W) repeats that row; its sums are not stored.
      const uint16_t* wr[TW];
      for (int j = 0; j < TW; ++j) wr[j] = w + std::min(c0 + j, n - 1) * w_row;
      std::memset(sums, 0, sizeof(float) * size_t(tiles * TA * TW));
      for (int64_t t0 = 0; t0 < k; t0 += depth) {
        const int64_t len = std::min(depth, k - t0);
        const uint16_t* wt[TW];
        for (int j = 0; j < TW; ++j) wt[j] = wr[j] + t0;
        // The W stretch after this one (this tile's next, or the next tile's first), brought
        // in by the first `a` tile while this one is multiplied: from memory it would
        // otherwise stall the first tile that reads it.
        const uint16_t* next[TW];
        bool has_next = true;
        if (t0 + depth < k) {
          for (int j = 0; j < TW; ++j) next[j] = wr[j] + t0 + depth;
        } else if (c0 + TW < c_end) {
          for (int j = 0; j < TW; ++j) next[j] = w + std::min(c0 + TW + j, n - 1) * w_row;
        } else {
          has_next = false;
        }
        for (int64_t i0 = 0; i0 < rows; i0 += TA) {
          const uint16_t* at[TA];
          for (int i = 0; i < TA; ++i) at[i] = a + std::min(r0 + i0 + i, m - 1) * a_row + t0;
          tile<TA, TW>(at, wt, len, sums + i0 * TW, i0 == 0 && has_next ? next : nullptr);
        }
      }
      const int64_t cols = std::min<int64_t>(TW, c_end - c0);
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) out[(r0 + i) * n + c0 + j] = f32_to_bf16(sums[i * TW + j]).bits;
    }
  }
}

// out[c] for one row of `a` (a decode step's) and W's rows c in [c_begin, c_end): W read
// row after row, one stream through memory (a tile's rows side by side made four, which
// read it at about 0.6 of this), with the same sums as a tile's, step for step and lane for
// lane. Each row's sums are one chain of dependent instructions; the next row's overlap it.
LMX_BF16_TARGET void row_product(const uint16_t* a, const uint16_t* w, int64_t w_row, int64_t k, uint16_t* out,
                                 int64_t n, int64_t c_begin, int64_t c_end) {
  const int64_t ahead = 4 * w_row, depth = stretch(k);  // prefetch the same columns four rows on
  for (int64_t c = c_begin; c < c_end; ++c) {
    const uint16_t* wr = w + c * w_row;
    float sum = 0;
    for (int64_t t0 = 0; t0 < k; t0 += depth) {
      const int64_t len = std::min(depth, k - t0);
      __m512 acc = _mm512_setzero_ps();
      for (int64_t t = t0; t < t0 + len; t += 32) {
        const __mmask32 mask = step_mask(t0 + len - t);
        if (c + 4 < n) __builtin_prefetch(wr + ahead + t, 0, 3);
        acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_maskz_loadu_epi16(mask, a + t),
                               (__m512bh)_mm512_maskz_loadu_epi16(mask, wr + t));
      }
      sum += sum_lanes(acc);
    }
    out[c] = f32_to_bf16(sum).bits;
  }
}

}  // namespace

bool gemm_bf16_available() {
  static const bool has = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
  return has;
}

bool bf16_kernels_on() {
  if (const char* s = std::getenv("LMX_CPU_BF16_GEMM"); s && std::strcmp(s, "0") == 0) return false;
  return gemm_bf16_available();
}

bool gemm_bf16(const Array& a, const Array& b, const Array& out) {
  if (a.dtype() != Dtype::bf16 || b.dtype() != Dtype::bf16 || out.dtype() != Dtype::bf16) return false;
  if (!bf16_kernels_on()) return false;
  const auto p = weight_product(a, b, out, std::numeric_limits<int64_t>::max());
  if (!p) return false;
  const int64_t m = p->rows, k = p->k, n = p->n;
  const auto* a0 = static_cast<const uint16_t*>(a.raw());
  const auto* w0 = static_cast<const uint16_t*>(b.raw());
  auto* o0 = static_cast<uint16_t*>(out.raw());
  // W tiles per chunk of work: about 4 M multiply-adds, enough to amortise scheduling, but
  // no more than leaves every thread four chunks, down to 256 K (about a microsecond on a
  // core): a batch's decode step (8 rows by a 1,024 x 1,024 W) was otherwise two chunks, two
  // threads busy of sixteen, while the attention's small products stay on the calling thread.
  // The tile of 4 rows by 4 and the one of 2 `a` rows by 8 W rows measured alike (0.8 of the
  // instruction's peak on one core, W from memory); 8 by 2 about 0.6 of the others.
  constexpr int kRowsA = 4, kRowsW = 4;
  const int64_t tiles = (n + kRowsW - 1) / kRowsW, tile_work = std::max<int64_t>(1, m * k * kRowsW);
  const int64_t grain = std::max(std::max<int64_t>(1, (int64_t(1) << 18) / tile_work),
                                 std::min((int64_t(1) << 22) / tile_work, tiles / (4 * num_threads())));
  for (int64_t i = 0; i < p->batches; ++i) {
    const uint16_t* ai = a0 + i * a.strides()[0];
    const uint16_t* wi = w0 + i * b.strides()[0];
    uint16_t* oi = o0 + i * m * n;
    if (gemm_amx(ai, p->a_row, m, wi, k, oi, n)) continue;  // by K and N alone: the same form at every m
    if (m == 1) {  // about 64 KiB of W a chunk of work, as the GEMV's
      parallel_for(n, std::max<int64_t>(16, (int64_t(1) << 15) / k), [&](int64_t c_begin, int64_t c_end) {
        row_product(ai, wi, k, k, oi, n, c_begin, c_end);
      });
      continue;
    }
    parallel_for(tiles, grain, [&](int64_t t_begin, int64_t t_end) {
      product<kRowsA, kRowsW>(ai, p->a_row, m, wi, k, k, oi, n, t_begin * kRowsW, std::min(n, t_end * kRowsW));
    });
  }
  return true;
}

bool bf16_rows_product(const uint16_t* a, int64_t a_row, int64_t m, const uint16_t* w, int64_t w_row, int64_t k,
                       uint16_t* out, int64_t n) {
  if (!bf16_kernels_on() || m < 1 || n < 1 || k < 1) return false;
  if (m == 1) {
    row_product(a, w, w_row, k, out, n, 0, n);
  } else {
    product<4, 4>(a, a_row, m, w, w_row, k, out, n, 0, n);
  }
  return true;
}

namespace {

// vp [pair][D pairs]: keys 2·pair and 2·pair + 1 of v side by side as VDPBF16PS takes them, 32
// columns a chunk as two vectors: unpacklo's lane 4L + q holds column 8L + q of the chunk,
// unpackhi's column 8L + 4 + q. A key past n, or one `valid` marks false, is zeros: a masked
// key's probability is zero, and its values must not turn that into a NaN.
LMX_BF16_TARGET void interleave_keys(const uint16_t* v, int64_t v_row, const bool* valid, int64_t n, int64_t d,
                                     uint16_t* vp) {
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t pair = 0; 2 * pair < n; ++pair) {
    const int64_t j = 2 * pair;
    const bool has0 = !valid || valid[j], has1 = j + 1 < n && (!valid || valid[j + 1]);
    for (int64_t c = 0; c < d; c += 32) {
      const __m512i a = has0 ? _mm512_loadu_si512(v + j * v_row + c) : zero;
      const __m512i b = has1 ? _mm512_loadu_si512(v + (j + 1) * v_row + c) : zero;
      _mm512_storeu_si512(vp + pair * 2 * d + 2 * c, _mm512_unpacklo_epi16(a, b));
      _mm512_storeu_si512(vp + pair * 2 * d + 2 * c + 32, _mm512_unpackhi_epi16(a, b));
    }
  }
}

// out[r][0, D) = Σ_{j < keys[r]} p[r][j] · v[j] for R rows, D ≤ 256: each output lane adds the
// keys' pairs in order, the pair's second product then its first, whatever rows run beside it.
template <int R>
LMX_BF16_TARGET void weigh_rows(const uint16_t* const pp[R], const int64_t keys[R], const uint16_t* vp, int64_t d,
                                float* const out[R]) {
  __m512 acc[R][16];
  const int64_t vectors = d / 16;
  for (int r = 0; r < R; ++r)
    for (int64_t c = 0; c < vectors; ++c) acc[r][c] = _mm512_setzero_ps();
  const int64_t pairs = (std::max(keys[0], keys[R - 1]) + 1) / 2;
  for (int64_t pair = 0; pair < pairs; ++pair) {
    __m512bh w[R];  // a row past its own keys weighs them by zero, which adds nothing
    for (int r = 0; r < R; ++r) {
      int32_t both;  // the pair's two bf16 probabilities, as one lane of VDPBF16PS takes them
      std::memcpy(&both, pp[r] + 2 * pair, sizeof both);
      w[r] = (__m512bh)_mm512_set1_epi32(both);
    }
    const uint16_t* x = vp + pair * 2 * d;
#pragma GCC unroll 16
    for (int64_t c = 0; c < vectors; ++c) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + 32 * c);
      for (int r = 0; r < R; ++r) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], xv, w[r]);
    }
  }
  alignas(64) float lanes[16];
  for (int r = 0; r < R; ++r)
    for (int64_t c = 0; c < vectors; ++c) {
      _mm512_store_ps(lanes, acc[r][c]);
      const int64_t base = 32 * (c / 2) + (c % 2) * 4;  // c even: unpacklo's columns, odd: unpackhi's
      for (int i = 0; i < 16; ++i) out[r][base + 8 * (i / 4) + i % 4] = lanes[i];
    }
}

}  // namespace

bool bf16_weighted_rows(const float* p, int64_t p_row, int64_t m, const int64_t* keys, const uint16_t* v,
                        int64_t v_row, const bool* valid, int64_t n, int64_t d, float* out) {
  if (!bf16_kernels_on() || d % 32 != 0 || d > 256 || n < 1) return false;
  thread_local std::vector<uint16_t> vp, pairs;
  vp.resize(size_t((n + 1) / 2 * 2 * d));
  interleave_keys(v, v_row, valid, n, d, vp.data());
  const int64_t half = (n + 1) / 2;
  auto own = [&](int64_t r) { return std::clamp<int64_t>(keys[r], 0, n); };  // row r's keys
  pairs.assign(size_t(m * half * 2), 0);  // each row's probabilities as bf16, zeros past its keys
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < own(r); ++j)
      pairs[size_t(r * half * 2 + j)] = f32_to_bf16(p[r * p_row + j]).bits;
  auto row_pairs = [&](int64_t r) { return pairs.data() + r * half * 2; };
  int64_t r = 0;
  for (; r + 2 <= m; r += 2) {
    const uint16_t* pp[2] = {row_pairs(r), row_pairs(r + 1)};
    const int64_t k2[2] = {own(r), own(r + 1)};
    float* o[2] = {out + r * d, out + (r + 1) * d};
    weigh_rows<2>(pp, k2, vp.data(), d, o);
  }
  if (r < m) {
    const uint16_t* pp[1] = {row_pairs(r)};
    const int64_t k1[1] = {own(r)};
    float* o[1] = {out + r * d};
    weigh_rows<1>(pp, k1, vp.data(), d, o);
  }
  // Each thread keeps its buffers for the next block, up to 8 MiB each: a long prompt's span
  // (32 K keys of 256 columns: 16 MiB) would otherwise stay with every worker.
  for (std::vector<uint16_t>* b : {&vp, &pairs})
    if (b->capacity() > (size_t(1) << 22)) std::vector<uint16_t>().swap(*b);
  return true;
}

#else  // no AVX512_BF16 kernel on this architecture or compiler: sgemm takes these products

bool bf16_weighted_rows(const float*, int64_t, int64_t, const int64_t*, const uint16_t*, int64_t, const bool*, int64_t,
                        int64_t, float*) {
  return false;
}

bool bf16_rows_product(const uint16_t*, int64_t, int64_t, const uint16_t*, int64_t, int64_t, uint16_t*, int64_t) {
  return false;
}
bool gemm_bf16_available() { return false; }
bool bf16_kernels_on() { return false; }
bool gemm_bf16(const Array&, const Array&, const Array&) { return false; }

#endif

}  // namespace lmx::cpu
