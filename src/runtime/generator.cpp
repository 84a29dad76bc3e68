#include "runtime/generator.h"

#include <algorithm>
#include <limits>

#include "core/error.h"
#include "core/thread_pool.h"
#include "lmx/lmx.h"
#include "runtime/prefill.h"

namespace lmx {

const char* finish_reason_name(FinishReason r) {
  static constexpr const char* kNames[] = {"none",           "eos",       "stop_token", "stop_string", "length",
                                           "context_length", "cancelled", "error",      "complete"};
  return kNames[int(r)];
}

TokenGenerator::TokenGenerator(const models::CausalLM& model, std::vector<int32_t> prompt, SamplingOptions sampling,
                               GenerationLimits limits, KVCache& cache)
    : model_(model), cache_(cache), sampler_(std::move(sampling)), limits_(std::move(limits)),
      tokens_(std::move(prompt)), prompt_len_(tokens_.size()) {
  if (limits_.context_length <= 0) limits_.context_length = model.spec().max_position_embeddings;
  check_prompt(tokens_, model.spec().vocab_size, limits_.context_length, "generate", "the prompt");
  LMX_CHECK(cache_.length() < int64_t(tokens_.size()), "generate", "the cache holds ", cache_.length(),
            " tokens, not a strict prefix of the ", tokens_.size(), "-token prompt");
  timings_.prompt_tokens = int(tokens_.size());
  cache_.reserve(std::min<int64_t>(limits_.context_length, int64_t(tokens_.size()) + limits_.max_tokens));
}

// Taken after the prompt's prefill, not before: the decoder's scratch and copies (on the
// CUDA backend the LM head's int8 copy and a tiled down projection, 0.15-0.35 GB on the
// 1B models) serve only the decode steps, and the prefill's activations need the memory.
void TokenGenerator::take_fused_decoder() {
  fused_ = fused_decoder_or_none(model_, 1);
  // A greedy draw with no edits reads no logit: the decoder's argmax is the token. A
  // top-k draw with no edits reads only the k largest. Scores and a JSON hold read every one.
  if (!fused_ || sampler_.needs_edits() || top_logprobs_ >= 0 || json_tokens_) return;
  const std::optional<fast::SampleFilter> filter = sampler_.filter();
  fused_->set_logits_needed(!filter ? 1 : filter->top_k);
}

std::unique_ptr<fast::FusedDecoder> fused_decoder_or_none(const models::CausalLM& model, int rows) {
  try {
    return model.fused_decoder(rows);
  } catch (const OutOfMemory&) {
    return nullptr;  // the device may be full: the plain ops still work, within what is left
  }
}

void check_prompt(std::span<const int32_t> ids, int64_t vocab, int64_t context, std::string_view op,
                  std::string_view what) {
  LMX_CHECK(!ids.empty(), op, what, " is empty");
  for (int32_t t : ids)
    LMX_CHECK(t >= 0 && t < vocab, op, what, ": token ", t, " is outside the vocabulary of ", vocab);
  LMX_CHECK(int64_t(ids.size()) <= context, op, what, " has ", ids.size(), " tokens, more than the context length of ",
            context, "; shorten it or raise the context length");
}

void TokenGenerator::set_logprobs(int top) {
  LMX_CHECK(top >= -1 && top <= kMaxTopLogprobs, "generate", "logprobs must be -1 (off) or 0 to ", kMaxTopLogprobs,
            " alternatives, got ", top);
  top_logprobs_ = top;
}

void TokenGenerator::hold_to_json(const text::JsonTokens* tokens, std::shared_ptr<const text::JsonSchema> schema) {
  json_tokens_ = tokens;
  json_ = schema ? text::JsonPrefix(std::move(schema)) : text::JsonPrefix(true);
}

TokenGenerator::~TokenGenerator() { model_.recycle_fused_decoder(std::move(fused_)); }

std::optional<int32_t> TokenGenerator::fused_step() {
  // Every draw is made on the device (fast::sample_tokens, or the argmax) and becomes the
  // next step's input there, as the step's own argmax does. A logit bias and penalties
  // edit the logits first, there too: the decoder keeps the history's token counts
  // (set_edits), so these draws need nothing from the host either.
  // Queues one step; with `feed`, its input is the last token on the host, else the
  // previous step's token, still on the device.
  auto launch = [&](bool feed) {
    const std::vector<fast::FusedCacheView> views = cache_.fused_views();
    if (views.empty()) return false;
    if (feed) {
      fused_->set_input(tokens_.back(), cache_.length());
      set_fused_edits(*fused_, {&sampler_, 1}, {&tokens_, 1});  // every token so far, the input too
    }
    fused_->step(views);
    cache_.commit_one();
    fused_draw(*fused_, {&sampler_, 1});
    return true;
  };
  if (json_tokens_) {
    // Held to JSON, one step at a time: the draw is made on the host, among the tokens that
    // continue the JSON, from the step's logits (its own argmax is left unused).
    const std::vector<fast::FusedCacheView> views = cache_.fused_views();
    if (views.empty()) return std::nullopt;
    fused_->set_input(tokens_.back(), cache_.length());
    fused_->step(views);
    cache_.commit_one();
    const int32_t tok = sample_json(fused_->logits());  // [1, V]
    if (top_logprobs_ >= 0) logprobs_ = log_probabilities_rows(fused_->logits(), {&tok, 1}, top_logprobs_)[0];
    return tok;
  }
  if (top_logprobs_ >= 0) {
    // With scores, one step at a time: they read the step's logits on the device (the
    // draw's edits do not touch them), and the next step would overwrite them.
    if (!launch(true)) return std::nullopt;  // the draw's edits go to a buffer of their own
    fused_->queue_token();
    const int32_t tok = fused_->wait_token();
    logprobs_ = log_probabilities_rows(fused_->logits(), {&tok, 1}, top_logprobs_)[0];  // [1, V], raw
    return tok;
  }
  // Only the token comes back, and the step for the token after it is queued before it
  // is read, so the device never waits for the host. When that token turns out to be the
  // last, the extra step has only stored its keys and values (and taken a random word):
  // the cache then holds every token, which is still a prefix of the sequence.
  if (!inflight_) {
    if (!launch(true)) return std::nullopt;
    fused_->queue_token();
  }
  const int generated = int(tokens_.size() - prompt_len_);
  const bool more = generated + 1 < limits_.max_tokens && int64_t(tokens_.size()) + 1 < limits_.context_length;
  inflight_ = more && launch(false);
  if (inflight_) fused_->queue_token();
  return fused_->wait_token();
}

Array TokenGenerator::step(const std::vector<int32_t>& ids) {
  const std::vector<nn::LayerCache*> layers = cache_.layers();
  // A long prompt in passes (runtime::prefill_tokens() tokens each, unless the limits say):
  // its activations stay bounded, and a stop is seen between two of them.
  const int64_t budget = limits_.prefill_tokens > 0 ? limits_.prefill_tokens : runtime::prefill_tokens();
  const Array h = runtime::prefill_rows(model_, ids, 1, int64_t(ids.size()), layers, {}, model_.device(), budget,
                                        [this] { return stop_.stop_requested(); });  // [1, H]
  return h.valid() ? model_.logits(h) : Array();  // [1, V]
}

int32_t TokenGenerator::sample(const Array& logits) {
  return sample_rows({&sampler_, 1}, reshape(logits, {1, -1}), {&tokens_, 1}, {false})[0];
}

int32_t TokenGenerator::sample_json(const Array& logits) {
  return json_draw(sampler_, to_floats(logits), *json_tokens_, json_, tokens_);
}

int32_t json_draw(Sampler& sampler, std::vector<float> x, const text::JsonTokens& tokens, const text::JsonPrefix& json,
                  std::span<const int32_t> history) {
  if (sampler.greedy()) {
    // The best tokens in turn until one continues the JSON: nearly always the first for a
    // model that writes JSON. The 64 best, in order, from one pass.
    constexpr size_t kTries = 64;
    std::vector<std::pair<float, int32_t>> best;  // a min-heap of the best so far
    for (int32_t id = 0; id < int32_t(x.size()); ++id) {
      if (!(x[size_t(id)] > -std::numeric_limits<float>::infinity())) continue;  // NaN, -inf
      if (best.size() < kTries || x[size_t(id)] > best.front().first) {
        best.emplace_back(x[size_t(id)], -id);  // ties: the lower id first, as argmax
        std::push_heap(best.begin(), best.end(), std::greater<>());
        if (best.size() > kTries) {
          std::pop_heap(best.begin(), best.end(), std::greater<>());
          best.pop_back();
        }
      }
    }
    std::sort_heap(best.begin(), best.end(), std::greater<>());  // best first
    for (const auto& [logit, negative_id] : best)
      if (tokens.allowed(json, -negative_id)) return -negative_id;
  }
  // Every token that cannot come next masked, and the sampler's draw among the rest.
  tokens.mask(json, x);
  // A greedy draw over logits all -inf (every token that continues it biased away) is the
  // first of them, not -1: the draw is checked against the JSON too.
  const int32_t tok = sampler.sample(x, history);
  LMX_CHECK(tok >= 0 && tokens.allowed(json, tok), "generate",
            "no token of the vocabulary continues the JSON reply (all are masked, NaN or biased to -inf)");
  return tok;
}

RowEdits row_edits(std::span<const Sampler> samplers,
                   std::span<const std::vector<int32_t>> histories, int64_t vocab,
                   const std::vector<bool>& skip) {
  RowEdits out;
  for (size_t r = 0; r < samplers.size(); ++r) {
    if (skip.empty() || !skip[r]) samplers[r].edits(histories[r], vocab, out.edits);
    out.starts.push_back(int64_t(out.edits.size()));
  }
  return out;
}

void set_fused_edits(fast::FusedDecoder& fused, std::span<const Sampler> samplers,
                     std::span<const std::vector<int32_t>> histories) {
  if (!samplers[0].needs_edits()) return;
  const RowEdits e = row_edits(samplers, histories, fused.logits().size() / fused.rows());
  fused.set_edits(e.starts, e.edits, samplers[0].penalties());
}

void fused_draw(fast::FusedDecoder& fused, std::span<Sampler> samplers, const std::vector<bool>& skip) {
  const std::optional<fast::SampleFilter> filter = samplers[0].filter();
  if (!filter && !samplers[0].needs_edits()) return;
  std::vector<uint64_t> words;
  if (filter)
    for (size_t r = 0; r < samplers.size(); ++r)
      words.push_back(r < skip.size() && skip[r] ? 0 : samplers[r].take_word());
  fused.draw(filter, words);
}

std::vector<int32_t> sample_rows(std::span<Sampler> samplers, const Array& logits,
                                 std::span<const std::vector<int32_t>> histories,
                                 const std::vector<bool>& skip) {
  LMX_CHECK(logits.ndim() == 2, "sample", "logits must be [rows, V], got ",
            shape_str(logits.shape()));
  const int64_t rows = logits.shape(0), v = logits.shape(1);
  LMX_CHECK(int64_t(samplers.size()) == rows && int64_t(histories.size()) == rows &&
                int64_t(skip.size()) == rows,
            "sample", "logits [", rows, ", V] need a sampler, a history and a skip flag per row");
  std::vector<int32_t> out(static_cast<size_t>(rows), -1);
  std::vector<bool> pending(skip.size());
  for (size_t r = 0; r < skip.size(); ++r) pending[r] = !skip[r];
  // A draw of -1 (no token: the row's logits were NaN) stops the generation with an error.
  auto checked = [&] {
    std::vector<int32_t> drawn;
    for (size_t r = 0; r < out.size(); ++r)
      if (pending[r]) drawn.push_back(out[r]);
    fast::check_chosen(drawn, v, "generate");
    return out;
  };
  if (rows > 0 && (logits.device().type != Device::Type::cpu || samplers[0].greedy())) {
    // The draws where the logits are (Sampler: "a draw where the logits are"): one id a
    // row comes back (on the CPU, greedy rows take the argmax op and copy nothing). A row
    // that takes no draw takes no edits and no random word.
    Array x = logits;
    const Sampler& first = samplers[0];
    if (first.needs_edits()) {
      const RowEdits e = row_edits(samplers, histories, v, skip);
      x = fast::edit_logits(logits, e.starts, e.edits, first.penalties());
    }
    std::vector<int32_t> ids;
    if (const std::optional<fast::SampleFilter> filter = first.filter()) {
      std::vector<uint64_t> words(static_cast<size_t>(rows), 0);
      for (size_t r = 0; r < size_t(rows); ++r)
        if (pending[r]) words[r] = samplers[r].take_word();
      ids = to_vector<int32_t>(fast::sample_tokens(x, words, *filter));
    } else {
      ids = to_vector<int32_t>(argmax(x, -1));  // the first of ties, as the host's
    }
    for (size_t r = 0; r < size_t(rows); ++r)
      if (pending[r]) out[r] = ids[r];
    return checked();
  }
  if (std::find(pending.begin(), pending.end(), true) == pending.end()) return out;
  const std::vector<float> all = to_floats(logits);  // [R, V]
  // Rows on the host's threads: each row's sampler draws on its own.
  parallel_for(rows, 1, [&](int64_t lo, int64_t hi) {
    for (size_t r = size_t(lo); r < size_t(hi); ++r)
      if (pending[r])
        out[r] = samplers[r].sample({all.data() + r * size_t(v), size_t(v)}, histories[r]);
  });
  return checked();
}

std::optional<int32_t> TokenGenerator::next() {
  if (reason_ != FinishReason::none) return std::nullopt;
  const int generated = int(tokens_.size() - prompt_len_);
  if (generated >= limits_.max_tokens) {
    reason_ = FinishReason::max_tokens;
    return std::nullopt;
  }
  if (int64_t(tokens_.size()) >= limits_.context_length) {
    reason_ = FinishReason::context_length;
    return std::nullopt;
  }
  const auto t0 = std::chrono::steady_clock::now();
  std::optional<int32_t> fused;
  if (generated == 0) {
    start_ = t0;
  } else {
    if (generated == 1 && !fused_) take_fused_decoder();  // the first decode step
    if (fused_) fused = fused_step();
  }
  int32_t tok;
  if (fused) {
    tok = *fused;
  } else {
    const std::vector<int32_t> rest(tokens_.begin() + cache_.length(), tokens_.end());
    const Array logits = step(rest);
    if (!logits.valid()) {  // stopped between two passes of the prompt
      reason_ = FinishReason::cancelled;
      return std::nullopt;
    }
    tok = json_tokens_ ? sample_json(logits) : sample(logits);
    if (top_logprobs_ >= 0) logprobs_ = log_probabilities_rows(logits, {&tok, 1}, top_logprobs_)[0];
  }
  if (json_tokens_ && !json_.feed(json_tokens_->piece(tok))) {
    fail("generate", "internal error: token ", tok, " was drawn but does not continue the JSON reply");
  }
  const auto t1 = std::chrono::steady_clock::now();
  const double dt = std::chrono::duration<double>(t1 - t0).count();
  if (generated == 0) {
    timings_.prefill_s = dt;
    timings_.time_to_first_token_s = std::chrono::duration<double>(t1 - start_).count();
  } else {
    timings_.decode_s += dt;
    timings_.decode_path = decode_path();
  }
  tokens_.push_back(tok);
  timings_.generated_tokens = generated + 1;
  // The reason is known as soon as the last token is: callers can then flush their text
  // with it instead of after it.
  auto contains = [](const std::vector<int32_t>& v, int32_t t) { return std::find(v.begin(), v.end(), t) != v.end(); };
  if (json_tokens_ && json_.complete()) reason_ = FinishReason::complete;
  else if (!limits_.ignore_eos && contains(limits_.eos_tokens, tok)) reason_ = FinishReason::eos;
  else if (contains(limits_.stop_tokens, tok)) reason_ = FinishReason::stop_token;
  else if (generated + 1 >= limits_.max_tokens) reason_ = FinishReason::max_tokens;
  else if (int64_t(tokens_.size()) >= limits_.context_length) reason_ = FinishReason::context_length;
  return tok;
}

}  // namespace lmx
