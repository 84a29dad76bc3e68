// KV caches on the Gemma 3 fixture (sliding window 8): rotating caches for the sliding
// layers must give the logits of a full recomputation with the sliding mask, over
// sequences much longer than the window, with chunked prefills as well as decoding. (Its
// layers ask for two query offsets in each decode step, which nn::RowValues makes once each.)
// Also the caches' in-place slots.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "models/loader.h"
#include "nn/layers.h"
#include "ops/ops.h"
#include "runtime/generator.h"
#include "runtime/kv_cache.h"
#include "runtime/prefill.h"

namespace lmx {
namespace {

namespace fs = std::filesystem;
const fs::path kGemma = fs::path(LMX_FIXTURES_DIR) / "models" / "gemma3_text-f32";

std::vector<int32_t> tokens(int n) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back(int32_t((i * 37 + 11) % 512));
  return t;
}

// Logits of every position when the sequence is fed in chunks of the given sizes.
std::vector<float> chunked_logits(const models::CausalLM& m, KVCache& cache, const std::vector<int32_t>& t,
                                  const std::vector<int>& chunks) {
  std::vector<float> out;
  size_t at = 0;
  for (int c : chunks) {
    const std::vector<int32_t> part(t.begin() + long(at), t.begin() + long(at) + c);
    const std::vector<float> l = to_floats(m.forward(from_vector(part, {1, int64_t(c)}), cache.layers()));
    out.insert(out.end(), l.begin(), l.end());
    at += size_t(c);
  }
  return out;
}

double max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, double(std::abs(a[i] - b[i])));
    scale = std::max(scale, double(std::abs(b[i])));
  }
  return worst / scale;
}

TEST(RotatingCacheTest, EqualsFullAttentionWithTheSlidingMask) {
  const auto model = models::load_causal_lm(kGemma);
  const int n = 80;  // ten times the window
  const std::vector<int32_t> t = tokens(n);
  const std::vector<float> full = to_floats(model->forward(from_vector(t, {1, n})));
  // Decoding one token at a time after a short prefill.
  KVCache decode(*model, /*rotate_sliding=*/true);
  std::vector<int> steps{5};
  steps.resize(size_t(n - 5 + 1), 1);
  EXPECT_LE(max_rel_diff(chunked_logits(*model, decode, t, steps), full), 1e-5);
  // Prefill chunks longer than the window between decode steps.
  KVCache chunks(*model, true);
  EXPECT_LE(max_rel_diff(chunked_logits(*model, chunks, t, {3, 20, 1, 1, 13, 1, 30, 11}), full), 1e-5);
  // A first prompt of exactly the window, stored in place, then one past it.
  KVCache window(*model, true);
  EXPECT_LE(max_rel_diff(chunked_logits(*model, window, t, {8, 1, 1, 30, 40}), full), 1e-5);
  KVCache past(*model, true);
  EXPECT_LE(max_rel_diff(chunked_logits(*model, past, t, {9, 71}), full), 1e-5);
  // Memory stays bounded: sliding layers hold exactly `window` slots.
  for (nn::LayerCache* l : decode.layers())
    if (auto* r = dynamic_cast<RotatingLayerCache*>(l)) {
      EXPECT_EQ(r->slots(), 8);
    }
}

TEST(RowValuesTest, MakesEachValueOnceAndKeepsIt) {
  nn::RowValues rows(3, Device::cpu());
  const Array a = rows.of(7);
  const Array b = rows.of(-2);
  EXPECT_EQ(a.shape(), (Shape{3}));
  EXPECT_EQ(a.dtype(), Dtype::i32);
  EXPECT_EQ(to_vector<int32_t>(a), (std::vector<int32_t>{7, 7, 7}));
  EXPECT_EQ(to_vector<int32_t>(b), (std::vector<int32_t>{-2, -2, -2}));
  EXPECT_EQ(rows.of(7).raw(), a.raw());  // the same array, not a second fill
  EXPECT_NE(rows.of(-2).raw(), a.raw());
}

TEST(RotatingCacheTest, TruncateKeepsOnlyConsistentCuts) {
  const auto model = models::load_causal_lm(kGemma);
  KVCache cache(*model, true);
  const std::vector<int32_t> t = tokens(20);
  chunked_logits(*model, cache, t, {20});
  EXPECT_TRUE(cache.truncate(20));
  EXPECT_EQ(cache.length(), 20);
  EXPECT_FALSE(cache.truncate(15));  // the ring no longer holds a consistent prefix
  EXPECT_EQ(cache.length(), 0);
}

TEST(ContiguousCacheTest, TruncateThenContinueEqualsFreshRun) {
  const auto model = models::load_causal_lm(fs::path(LMX_FIXTURES_DIR) / "models" / "qwen3-f32");
  const std::vector<int32_t> t = tokens(30);
  KVCache fresh(model->num_layers());
  const std::vector<float> want = chunked_logits(*model, fresh, t, {30});
  KVCache reused(model->num_layers());
  std::vector<int32_t> other = t;
  other[20] = 7;  // diverges at position 20
  chunked_logits(*model, reused, other, {30});
  ASSERT_TRUE(reused.truncate(20));
  const std::vector<int32_t> tail(t.begin() + 20, t.end());
  const std::vector<float> got = to_floats(model->forward(from_vector(tail, {1, 10}), reused.layers()));
  const std::vector<float> want_tail(want.end() - long(got.size()), want.end());
  EXPECT_LE(max_rel_diff(got, want_tail), 1e-5);
}

// The in-place protocol (slots, then stored) that fast::rope_to_cache writes through: the
// slots are the positions update() would fill, room is made as update() makes it, and
// stored() refuses to count what no slots were asked for.
TEST(ContiguousCacheTest, SlotsAreTheNextPositionsAndStoredCountsThem) {
  ContiguousLayerCache cache(4);
  const Array k = full({1, 2, 3, 8}, 1.0), v = full({1, 2, 3, 8}, 2.0);  // [B, Hkv, L, D]
  EXPECT_THROW(cache.stored(1), Error);                                   // nothing asked for yet
  nn::LayerCache::View first = cache.update(k, v);
  EXPECT_EQ(first.k.shape(), Shape({1, 2, 3, 8}));
  const fast::CacheSlots s = cache.slots({1, 2, 2, 8}, Dtype::f32, Device::cpu());  // 3 + 2 > 4: grows
  ASSERT_EQ(s.k.shape(), Shape({1, 2, 2, 8}));
  assign(s.k, full({1, 2, 2, 8}, 3.0));
  assign(s.v, full({1, 2, 2, 8}, 4.0));
  EXPECT_EQ(cache.next_position(), 3);  // not counted until stored()
  const nn::LayerCache::View view = cache.stored(2);
  EXPECT_EQ(view.q_offset, 3);
  EXPECT_EQ(cache.next_position(), 5);
  const std::vector<float> keys = to_floats(view.k), values = to_floats(view.v);  // [1, 2, 5, 8]
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t p = 0; p < 5; ++p) {
      EXPECT_EQ(keys[size_t((h * 5 + p) * 8)], p < 3 ? 1.0f : 3.0f) << "head " << h << ", position " << p;
      EXPECT_EQ(values[size_t((h * 5 + p) * 8)], p < 3 ? 2.0f : 4.0f) << "head " << h << ", position " << p;
    }
  EXPECT_THROW(cache.slots({1, 3, 1, 8}, Dtype::f32, Device::cpu()), Error);   // another kv-head count
  EXPECT_THROW(cache.slots({1, 2, 1, 8}, Dtype::bf16, Device::cpu()), Error);  // another dtype
  EXPECT_EQ(cache.next_position(), 5);
}

// A rotating cache's in-place slots: a first prompt that fits the window goes straight to
// slots 0..L-1 (where update() would write it); a later chunk, or a first prompt past the
// window, takes update(); a decode step its slot p % window.
TEST(RotatingCacheTest, SlotsForAFirstPromptInTheWindowAndForDecodeSteps) {
  RotatingLayerCache cache(4);
  EXPECT_THROW(cache.stored(1), Error);  // nothing asked for yet
  EXPECT_FALSE(cache.slots({1, 2, 5, 8}, Dtype::f32, Device::cpu()).k.valid());  // past the window: update()
  const fast::CacheSlots first = cache.slots({1, 2, 3, 8}, Dtype::f32, Device::cpu());
  ASSERT_TRUE(first.k.valid());
  ASSERT_EQ(first.k.shape(), Shape({1, 2, 3, 8}));
  assign(first.k, full({1, 2, 3, 8}, 5.0));
  assign(first.v, full({1, 2, 3, 8}, 6.0));
  EXPECT_EQ(cache.next_position(), 0);  // not counted until stored()
  const nn::LayerCache::View prompt = cache.stored(3);
  EXPECT_FALSE(prompt.all_visible);  // the causal and window masks apply
  EXPECT_EQ(prompt.q_offset, 0);
  EXPECT_EQ(cache.next_position(), 3);
  EXPECT_EQ(to_floats(prompt.k), std::vector<float>(48, 5.0f));
  EXPECT_EQ(to_floats(prompt.v), std::vector<float>(48, 6.0f));
  EXPECT_EQ(cache.slots(), 4);
  EXPECT_FALSE(cache.slots({1, 2, 2, 8}, Dtype::f32, Device::cpu()).k.valid());  // a later chunk: update()
  cache.update(full({1, 2, 3, 8}, 1.0), full({1, 2, 3, 8}, 1.0));                // positions 3-5
  const fast::CacheSlots s = cache.slots({1, 2, 1, 8}, Dtype::f32, Device::cpu());
  ASSERT_TRUE(s.k.valid());
  assign(s.k, full({1, 2, 1, 8}, 9.0));
  const nn::LayerCache::View view = cache.stored(1);  // position 6 in slot 6 % 4 = 2
  EXPECT_TRUE(view.all_visible);
  EXPECT_EQ(view.q_offset, 3);
  EXPECT_EQ(to_floats(slice_axis(view.k, 2, 2, 3)), std::vector<float>(16, 9.0f));
  EXPECT_THROW(cache.stored(2), Error);
  // update() of a first prompt in the window stores it in place too.
  RotatingLayerCache fresh(4);
  const nn::LayerCache::View whole = fresh.update(full({1, 2, 4, 8}, 2.0), full({1, 2, 4, 8}, 3.0));
  EXPECT_EQ(fresh.next_position(), 4);
  EXPECT_EQ(to_floats(whole.k), std::vector<float>(64, 2.0f));
}

// A batch's prefill in passes of a few positions (runtime::prefill_rows): rows of other
// lengths, left-padded, the padding skipped by the mask and by RoPE. Each row's last hidden
// state, and the logits of one decode step through the caches after it, must be those of
// the row's prompt run alone, with no padding and in one pass.
TEST(PrefillRowsTest, EachRowMatchesItsPromptAloneInAnyPasses) {
  const auto model = models::load_causal_lm(kGemma);
  const int64_t rows = 3, len = 12;  // longer than the sliding window (8)
  const std::vector<int64_t> pads{0, 3, 7};
  const std::vector<int32_t> next{7, 8, 9};
  std::vector<int32_t> ids(size_t(rows * len), 0);
  std::vector<float> alone;  // per row: its last hidden state [H], then the next step's logits [V]
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<int32_t> prompt;
    for (int64_t s = pads[size_t(r)]; s < len; ++s)
      prompt.push_back(ids[size_t(r * len + s)] = int32_t((r * 131 + s * 37 + 5) % 512));
    KVCache cache(model->num_layers(), len + 1);
    const std::vector<float> h =
        to_floats(model->last_hidden_states(from_vector(prompt, {1, int64_t(prompt.size())}), cache.layers()));
    const std::vector<float> l = to_floats(model->forward(from_vector(std::vector<int32_t>{next[size_t(r)]}, {1, 1}),
                                                          cache.layers()));
    alone.insert(alone.end(), h.begin(), h.end());
    alone.insert(alone.end(), l.begin(), l.end());
  }
  auto batched = [&](int64_t budget) {  // the same, rows together: [rows, H] then [rows, 1, V], row by row
    KVCache cache(model->num_layers(), len + 1);
    const std::vector<float> h = to_floats(
        runtime::prefill_rows(*model, ids, rows, len, cache.layers(), pads, Device::cpu(), budget));
    std::vector<int32_t> pos;  // slot len of every row, at RoPE position len - pad
    std::vector<uint8_t> valid;
    for (int64_t r = 0; r < rows; ++r) {
      pos.push_back(int32_t(len - pads[size_t(r)]));
      for (int64_t s = 0; s <= len; ++s) valid.push_back(s >= pads[size_t(r)]);
    }
    const nn::SequenceBatch batch{from_vector(pos, {rows}),
                                  astype(from_vector(valid, {rows, len + 1}), Dtype::boolean)};
    const std::vector<float> l = to_floats(model->forward(from_vector(next, {rows, 1}), cache.layers(), &batch));
    const size_t hidden = h.size() / size_t(rows), vocab = l.size() / size_t(rows);
    std::vector<float> out;
    for (size_t r = 0; r < size_t(rows); ++r) {
      out.insert(out.end(), h.begin() + long(r * hidden), h.begin() + long((r + 1) * hidden));
      out.insert(out.end(), l.begin() + long(r * vocab), l.begin() + long((r + 1) * vocab));
    }
    return out;
  };
  for (int64_t budget : {int64_t(1), rows * 2, rows * 5, rows * len})  // 1, 2, 5 and 12 positions a pass
    EXPECT_LE(max_rel_diff(batched(budget), alone), 1e-5) << budget << " tokens a pass";
}
// Without padding the passes continue what the cache holds (a prompt-cache hit, then the
// rest of the prompt): the last hidden state is the whole sequence's in one pass.
TEST(PrefillRowsTest, PassesContinueTheCache) {
  const auto model = models::load_causal_lm(kGemma);
  const std::vector<int32_t> t = tokens(21);  // past the sliding window (8) twice over
  const std::vector<float> whole = to_floats(model->last_hidden_states(from_vector(t, {1, 21})));
  for (int64_t budget : {1, 3, 64}) {
    KVCache cache(model->num_layers(), 4);  // grows during the passes
    model->last_hidden_states(from_vector(std::vector<int32_t>(t.begin(), t.begin() + 4), {1, 4}), cache.layers());
    const std::vector<int32_t> rest(t.begin() + 4, t.end());
    const std::vector<float> h = to_floats(
        runtime::prefill_rows(*model, rest, 1, int64_t(rest.size()), cache.layers(), {}, Device::cpu(), budget));
    EXPECT_LE(max_rel_diff(h, whole), 1e-5) << budget << " tokens a pass";
  }
}

// A stop asked for during a prompt's prefill ends it between two passes: the generation
// is cancelled with the cache holding whole passes of the prompt, and a generation that
// continues from that cache (prompt-cache reuse) gives the uninterrupted one's tokens.
TEST(PrefillRowsTest, AStopEndsThePrefillBetweenPassesAndTheCacheContinues) {
  const auto model = models::load_causal_lm(kGemma);
  const std::vector<int32_t> prompt = tokens(21);
  GenerationLimits limits;
  limits.max_tokens = 4, limits.ignore_eos = true, limits.prefill_tokens = 5;
  auto run = [&](KVCache& cache) {
    std::vector<int32_t> out;
    TokenGenerator g(*model, prompt, SamplingOptions{}, limits, cache);  // greedy
    while (const std::optional<int32_t> t = g.next()) out.push_back(*t);
    return out;
  };
  KVCache whole(model->num_layers());
  const std::vector<int32_t> want = run(whole);
  ASSERT_EQ(want.size(), 4u);
  KVCache cache(model->num_layers());
  {
    std::stop_source stop;
    stop.request_stop();  // before the first pass: the first pass still runs
    TokenGenerator g(*model, prompt, SamplingOptions{}, limits, cache);
    g.set_stop(stop.get_token());
    EXPECT_FALSE(g.next().has_value());
    EXPECT_EQ(g.finish_reason(), FinishReason::cancelled);
  }
  EXPECT_EQ(cache.length(), 5);  // the first pass's positions
  EXPECT_EQ(run(cache), want);
}

}  // namespace
}  // namespace lmx
