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
#include "backend/cuda/radix_select.cuh"

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
// y and the lane's argmax, and with `top` listed in `ex` for the draw. A warp takes 32
// rows at a time. Where that bound is not finite, or the vector's levels are not `valid`,
// every row is recomputed.
__device__ inline void filtered_candidates(const GemvOutput& out, const bf16* xb, int k, float lower, bool valid,
                                           bool top, HeadExchange ex, float& best, int& best_idx) {
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
    const unsigned all = __ballot_sync(0xffffffffu, in);
    if (top && all) {  // the rows listed from a common count, a warp's in one atomic
      unsigned at = 0;
      if (lane == 0) at = atomicAdd(ex.counts + 1, unsigned(__popc(all)));
      at = __shfl_sync(0xffffffffu, at, 0) + unsigned(__popc(all & ((1u << lane) - 1)));
      if (in && at < unsigned(kHeadListed)) ex.listed[at] = r;
    }
    for (unsigned doubt = all; doubt; doubt &= doubt - 1) {
      const int o = base + __ffs(int(doubt)) - 1;
      const float v = warp_dots<false>(out.w[0] + size_t(o) * k, nullptr, xb, k).x;
      if (lane == 0) store_row(Epilogue::logits, out.y, 0.0f, o, v, best, best_idx);
    }
  }
}

// The sampled head's threshold (GemvOutput::top > 1): a value at or below the top-th
// largest exact logit, so that a row whose bound above lies below it is not among the
// `top` largest. Any `top` rows' bounds below give one: the top-th largest of them. The
// tightest would be the top-th largest of all rows' (a grid-wide select); this takes it
// among each block's m = min(top, kHeadOffer) largest, which is the same value unless a
// block holds more than m of the top largest bounds:
// - each block selects its own m largest bounds below (`lows`, n of them: two 8-bit digits
//   of a radix select, then the rows above that bucket and enough of the bucket's) and
//   offers them to the grid (HeadExchange::offers; -inf fills a block's unused places);
// - one exchange, a count of the blocks (HeadExchange::counts[0], zero at the start of
//   the step);
// - every block takes the top-th largest of the offers alike, to 24 bits of its key: a
//   value at most 2^-15 of itself below the exact one.
// (The first version took only the largest of the blocks' own top-th bounds: with top 20
// of Llama's 972 rows a block, that lies far down the grid's order, by estimate about
// 1,500 rows; this one leaves 40-80 on the 1B models, bench/NOTES.md p38.)
// The value returned is lowered by 2^-20 of itself (and 2^-100) so that no row left out
// (its bound above below that) can tie with a kept one once the draw divides the logits
// by its temperature. -inf where the offers are fewer than `top` (or more than `room`,
// the keys that fit in `keys`, which may overlap `lows`).
__device__ inline float top_threshold(HeadExchange ex, const float* lows, int n, int top, unsigned* hist,
                                     unsigned* keys, int room) {
  __shared__ unsigned offered;
  const int m = top < kHeadOffer ? top : kHeadOffer;
  float* const mine = ex.offers + size_t(blockIdx.x) * m;
  if (threadIdx.x == 0) offered = 0;
  if (n > m) {
    unsigned in_bucket = 0;
    const unsigned p = select_prefix<kWorkers, 2>([&](int i) { return order_key(lows[i]); }, n, unsigned(m), hist,
                                                  SyncWorkers<true>{}, &in_bucket);
    // Every row above the bucket (m - in_bucket of them), then the bucket's first comers.
    for (int i = threadIdx.x; i < n; i += kWorkers) {
      const unsigned k = order_key(lows[i]);
      if (k >> 16 > p >> 16) mine[atomicAdd(&offered, 1u)] = lows[i];
    }
    sync_workers<true>();
    for (int i = threadIdx.x; i < n; i += kWorkers)
      if (order_key(lows[i]) >> 16 == p >> 16) {
        const unsigned at = atomicAdd(&offered, 1u);
        if (at < unsigned(m)) mine[at] = lows[i];
      }
  } else {
    for (int i = threadIdx.x; i < m; i += kWorkers) mine[i] = i < n ? lows[i] : -INFINITY;
  }
  sync_workers<true>();  // the offers are stored
  if (threadIdx.x == 0) {
    release_add(ex.counts, 1);
    wait_until_count(ex.counts, gridDim.x);
  }
  sync_workers<true>();
  const int all = int(gridDim.x) * m;
  if (all < top || all > room) return -INFINITY;
  // The offers' keys into shared memory, every load issued before any is used (a select
  // that read them from L2 took a trip a key, several in a row for each thread).
#pragma unroll 4
  for (int i = threadIdx.x; i < all; i += kWorkers) keys[i] = order_key(__ldcg(ex.offers + i));
  sync_workers<true>();
  const unsigned key =
      select_prefix<kWorkers, 3>([&](int i) { return keys[i]; }, all, unsigned(top), hist, SyncWorkers<true>{});
  const float t = key_value(key);
  if (!(t > -INFINITY)) return -INFINITY;  // -inf among the top-th largest offers, or NaN
  return t - fabsf(t) * 0x1p-20f - 0x1p-100f;
}

}  // namespace lmx::cuda::fused
