// The persistent step's LM head phase (fused_persistent.cu): its outputs, and the filtered
// head's passes (head_filter.cuh says what the filter is and why its result is exact).
//
// Greedy decoding reads only the argmax (GemvOutput::top = 1): each block recomputes its
// rows whose bound above reaches the largest bound below among them. A sampled step whose
// draw keeps at most `top` tokens (top-k, with no edits to the logits before it) needs
// every row that may be among the `top` largest: a row whose bound above lies below the
// top-th largest bound below of all rows cannot be. That needs one exchange between the
// blocks (top_threshold). The rows below it keep their bound above, which lies below the
// top-th largest logit, so the draw's top-k keeps the same tokens with the same logits.
// (Written as -inf, they made the sampled step 0.95-1.00x as fast as with the exact head,
// most likely because they all fall in one bin of the draw's histograms.)
#pragma once

#include "backend/cuda/fused_gemv.cuh"
#include "backend/cuda/fused_persistent_plan.cuh"
#include "backend/cuda/head_filter.cuh"

namespace lmx::cuda::fused {

using namespace step_plan;

// Output o of a plain or logits GEMV; for logits, also this lane's argmax so far.
__device__ __forceinline__ void store_row(Epilogue e, float* y, float softcap, int o, float v, float& best,
                                          int& best_idx) {
  if (e == Epilogue::logits) {
    if (softcap > 0) v = softcap * tanhf(v / softcap);
    if (better(v, o, best, best_idx)) best = v, best_idx = o;
  }
  y[o] = v;
}

// The argmax head's filter (head_filter.cuh): the vector's two int8 levels into v1 and
// v2 (k each), and their scales and norms, the same in every thread.
__device__ inline head_filter::VectorCodes vector_codes(const bf16* xb, int k, int8_t* v1, int8_t* v2) {
  float largest = 0, ss = 0;
  for (int i = threadIdx.x; i < k; i += kWorkers) {
    const float x = __bfloat162float(xb[i]);
    largest = fmaxf(largest, fabsf(x));
    ss = __fmaf_rn(x, x, ss);
  }
  head_filter::VectorCodes c;
  largest = workers_reduce<true>(largest, Max{});
  c.norm_v = sqrtf(workers_reduce<true>(ss, Sum{}));
  // (A NaN in the vector passes fmaxf by, but makes every margin NaN: every row a candidate.)
  c.valid = largest == 0 || (largest >= 0x1p-100f && largest <= 0x1p100f);
  int e = 0;
  frexpf(largest, &e);  // largest < 2^e
  c.s1 = ldexpf(1.0f, e - 6), c.s2 = ldexpf(1.0f, e - 13);  // |v / s1| < 64, |rest / s2| <= 64
  float rr = 0;
  for (int i = threadIdx.x; i < k; i += kWorkers) {
    const float x = __bfloat162float(xb[i]);
    const float a = rintf(x / c.s1), rest = x - c.s1 * a;
    const float b = rintf(rest / c.s2), left = rest - c.s2 * b;
    v1[i] = int8_t(a), v2[i] = int8_t(b);
    rr = __fmaf_rn(left, left, rr);
  }
  c.norm_rem = sqrtf(workers_reduce<true>(rr, Sum{}));  // also orders the codes' stores before the rows
  return c;
}

// A filtered row: its integer products d1 and d2 scaled by the row's constants, which
// precede its codes in the slot. y takes the bound above the row's product; `lower`, the
// largest bound below of the warp's rows; `low`, where set, the row's own bound below.
__device__ __forceinline__ void filtered_row(const int8_t* row, int d1, int d2, const head_filter::VectorCodes& v,
                                             float* y, float& lower, float* low) {
  const head_filter::RowConstants c = *reinterpret_cast<const head_filter::RowConstants*>(row);
  const float s_hat = c.scale * (v.s1 * float(d1) + v.s2 * float(d2)), m = head_filter::margin(c, v, d1, d2, s_hat);
  *y = s_hat + m;
  lower = fmaxf(lower, s_hat - m);
  if (low) *low = s_hat - m;
}

// The argmax head's second pass, over this block's rows (the Cursor's share,
// share_start): each row whose bound above (in y) reaches the largest bound below of them
// all (`lower` of each warp), or with `top`, the grid's threshold `lower`
// (top_threshold), is recomputed from W exactly as the logits epilogue computes it, into
// y and the lane's argmax. A warp takes 32 rows at a time. Where that bound is not
// finite, or the vector's levels are not `valid`, every row is recomputed.
__device__ inline void filtered_candidates(const GemvOutput& out, const bf16* xb, int k, float lower, bool valid,
                                           bool top, float& best, int& best_idx) {
  // (The reduction, or top_threshold's syncs, also order the warps' stores to y before
  // the loads below.)
  float l = top ? lower : workers_reduce<true>(lower, Max{});
  if (!isfinite(l) || !valid) l = -INFINITY;
  const int rows = out.rows[0], lane = threadIdx.x % 32;
  const int first = share_start(int(blockIdx.x), rows, int(gridDim.x));
  const int end = share_start(int(blockIdx.x) + 1, rows, int(gridDim.x));
  for (int base = first + int(threadIdx.x / 32) * 32; base < end; base += kWorkers) {
    const int r = base + lane;
    const bool in = r < end && !(out.y[r] < l);
    for (unsigned doubt = __ballot_sync(0xffffffffu, in); doubt; doubt &= doubt - 1) {
      const int o = base + __ffs(int(doubt)) - 1;
      const float v = warp_dots<false>(out.w[0] + size_t(o) * k, nullptr, xb, k).x;
      if (lane == 0) store_row(Epilogue::logits, out.y, 0.0f, o, v, best, best_idx);
    }
  }
}


// Order-preserving keys of floats: of two floats, the larger has the larger key (a NaN
// with its sign bit clear, above every number). key_float inverts it.
__device__ __forceinline__ unsigned order_key(float f) {
  const unsigned u = __float_as_uint(f);
  return u & 0x80000000u ? ~u : u | 0x80000000u;
}
__device__ __forceinline__ float key_float(unsigned key) {
  return __uint_as_float(key & 0x80000000u ? key & 0x7fffffffu : ~key);
}

// The sampled head's threshold (GemvOutput::top > 1): a value at or below the top-th
// largest exact logit, so that a row whose bound above lies below it is not among the
// `top` largest. Each block takes the top-th largest of its own rows' bounds below
// (`lows`, n of them) to the first 16 bits of its key: two 8-bit digits of a radix select
// over a histogram (`hist`, [2][256] in shared memory), a value at most 2^-7 of itself
// below the exact one. At least `top` rows lie at or above it, so at least `top` exact
// logits do too. The grid takes the largest of the blocks' values: one exchange, a count
// of the blocks on `exchange` ([2]: count, key; zero at the start of the step). -inf
// where no block has `top` rows. The value returned is lowered by 2^-20 of itself (and
// 2^-100) so that no row left out (its bound above below that) can tie with a kept one
// once the draw divides the logits by its temperature.
__device__ inline float top_threshold(unsigned* exchange, const float* lows, int n, int top, unsigned* hist) {
  __shared__ unsigned picked[2], grid_key;  // a digit and the rows still needed below it; the grid's key
  static_assert(kWorkers == 256, "a thread a histogram bin");
  unsigned prefix = 0;
  unsigned need = unsigned(top);
  if (n >= top) {  // the same in every thread of the block
    for (int pass = 0; pass < 2; ++pass) {
      const int shift = 24 - 8 * pass;
      unsigned* h = hist + 256 * pass;
      h[threadIdx.x] = 0;
      sync_workers<true>();
      for (int i = threadIdx.x; i < n; i += kWorkers) {
        const unsigned key = order_key(lows[i]);
        if (pass == 0 || key >> 24 == prefix >> 24) atomicAdd(&h[(key >> shift) & 255u], 1u);
      }
      sync_workers<true>();
      if (threadIdx.x < 32) {  // lane j: digits 255 - 8j down to 248 - 8j; counts summed from the top
        const int lane = int(threadIdx.x);
        unsigned c[8], sum = 0;
#pragma unroll
        for (int u = 0; u < 8; ++u) sum += c[u] = h[255 - 8 * lane - u];
        unsigned above = sum;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
          const unsigned t = __shfl_up_sync(0xffffffffu, above, o);
          if (lane >= o) above += t;
        }
        // The rows in the running number at least `need`, so some lane's count reaches it.
        const int owner = __ffs(int(__ballot_sync(0xffffffffu, above >= need))) - 1;
        if (lane == owner) {
          unsigned before = above - sum;
          int u = 0;
          while (before + c[u] < need) before += c[u++];
          picked[0] = unsigned(255 - 8 * lane - u), picked[1] = need - before;
        }
      }
      sync_workers<true>();
      prefix |= picked[0] << shift;
      need = picked[1];
    }
  }
  if (threadIdx.x == 0) {
    if (n >= top) atomicMax(exchange + 1, prefix);
    release_add(exchange, 1);  // after the maximum: the count says it is in
    wait_until_count(exchange, gridDim.x);
    grid_key = __ldcg(exchange + 1);
  }
  sync_workers<true>();
  if (grid_key == 0) return -INFINITY;
  const float t = key_float(grid_key);
  return t - fabsf(t) * 0x1p-20f - 0x1p-100f;
}

}  // namespace lmx::cuda::fused
