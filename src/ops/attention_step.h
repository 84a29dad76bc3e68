// Attention under a gradient tape as one step (fast::scaled_dot_product_attention's and
// fast::self_attention's tracked forms), and the pieces of its composition.
//
// Why: as a composition, a tape's attention was a dozen steps over [B, Hq, Lq, Lk] arrays,
// most in f32 (the scores' product, its conversions, the mask, the softmax, the product by
// the rows-with-a-key indicator, and each one's rule): about 90 of the 221 ms of GPU time
// in a 4 x 512-token LoRA step of Qwen3-0.6B (bench/NOTES.md). As one step, its forward is
// the backend's eager attention (products around one softmax kernel) and its rule makes the
// probabilities again from q and k, so that the tape keeps q, k and v alone.
#pragma once

#include <vector>

#include "ops/fast.h"
#include "ops/tape.h"

namespace lmx::detail {

// q [B, Hq, Lq, D], k and v [B, Hkv, Lk, D] -> [B, Hq, Lq, D], the values of
// fast::reference::scaled_dot_product_attention (arguments checked by the caller), recorded
// as one Step::attention.
Array attention_step(const Array& q, const Array& k, const Array& v, float scale, const fast::AttentionMask& mask);
// Step::attention's rule: the gradients of q, k and v (none for the masks' arrays).
std::vector<Array> attention_vjp(const StepRecord& st, const Array& g);

// The mask's query-row offsets: Lk - Lq for every batch row unless given. [B] i32
Array resolve_q_offsets(const Array& q, const Array& k, const fast::AttentionMask& mask);
// The probabilities of the composition, in f32: softmax over the visible keys of q·kᵀ rounded
// to the dtype, times the f32 scale and rounded again; rows without a visible key are zeros.
// [B, Hq, Lq, Lk]
Array attention_probabilities(const Array& q, const Array& k, float scale, const fast::AttentionMask& mask);
// Each of x's Hkv heads repeated Hq / Hkv times, contiguously (HF's repeat_kv). [B, Hq, L, D]
Array repeat_heads(const Array& x, int64_t hq);

}  // namespace lmx::detail
