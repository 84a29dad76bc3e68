// A batch's prompts into its cache, in passes of a bounded number of tokens.
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <span>
#include <vector>

#include "models/transformer.h"
#include "nn/layers.h"

namespace lmx::runtime {

// Tokens per pass of a prefill. One pass over 64 prompts of 128 tokens held Llama-3.2-1B's
// peak decode memory about 620 MB above its weights and cache (its MLP's activations for
// 8,192 tokens), past the 512 MiB that decoding may add to them; over one prompt of 16,384
// tokens, 869 MB more than passes of 4,096 did, which took 4% longer to the first token
// (H200, bench/NOTES.md). Passes of 2,048 saved 59-151 MB more at 3-26% more.
constexpr int64_t kPrefillTokens = 4096;
// kPrefillTokens, or LMX_PREFILL_TOKENS where set (at least 1): fewer take less memory and
// more time to the first token.
int64_t prefill_tokens();

// A left-padded batch's slots [begin, end) as SequenceBatch describes them: row r's first
// new token at RoPE position begin - pads[r], and each of its slots up to `end` a key from
// its first real token (slot pads[r]) on.
nn::SequenceBatch padded_rows(std::span<const int64_t> pads, int64_t begin, int64_t end, Device device);

// The final hidden states at each row's last prompt position, [rows, H]: `ids` [rows, len]
// (row-major, on the host) run through `model` into `caches` (one a layer) in passes of
// whole positions, each at most `budget` tokens (rows x positions; at least one
// position). The passes continue what the caches hold. `pads` (empty: none; only with
// empty caches) gives each row's left padding: those slots are never attended to, and
// RoPE positions skip them, as SequenceBatch says. The hidden states and the caches are
// one pass's up to rounding (the products' shapes differ). `stop`, where given, is asked
// before every pass but the first: true ends the prefill there, with the caches holding
// the positions before that pass, and an invalid Array returned. A prefill of more than
// budget / 4 tokens lets the model's kept fused decoders go first (CausalLM::
// drop_fused_decoders), so callers take theirs after it.
Array prefill_rows(const models::CausalLM& model, std::span<const int32_t> ids, int64_t rows, int64_t len,
                   std::span<nn::LayerCache* const> caches, std::span<const int64_t> pads, Device device,
                   int64_t budget = prefill_tokens(), const std::function<bool()>& stop = {});

// Prompts of a batch in an order that puts similar lengths together (they waste little on
// padding): the indices of `ids`, shortest first, ties in their order.
std::vector<size_t> by_length(const std::vector<std::vector<int32_t>>& ids);
// The prompts `order` (by_length's) cut into forward passes, each [begin, end) of `order`,
// whose padded size (rows x the longest) stays within `budget` tokens so that activations
// stay small. A prompt longer than the budget has a pass of its own.
std::vector<std::pair<size_t, size_t>> chunks_by_tokens(const std::vector<std::vector<int32_t>>& ids,
                                                        const std::vector<size_t>& order, size_t budget);

}  // namespace lmx::runtime
