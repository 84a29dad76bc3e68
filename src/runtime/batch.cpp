// classify and batch_generate: many prompts through batched forward passes.
#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "ops/fast.h"
#include "runtime/prefill.h"
#include "runtime/text_model.h"
#include "runtime/token_text.h"

namespace lmx::runtime {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// The batch's steps through the fused decoder, after the prefill: the first input is
// `next` at slot `slots` (every row's), each row's left padding is what its prompt lacks of
// the longest; `history` is each row's tokens so far, `next` included. Up to `steps`
// steps; one is queued ahead of the one being read, unless the rows want scores (`top`
// alternatives; -1: none): those read each step's logits on the device, which the next
// step would overwrite. Returns the steps whose tokens were read.
template <class Accept, class AllDone>
int decode_fused(fast::FusedDecoder& fused, KVCache& cache, const std::vector<int32_t>& next,
                 int64_t slots, const std::vector<std::vector<int32_t>>& ids,
                 const std::vector<std::vector<int32_t>>& history, int steps,
                 std::span<Sampler> samplers, int top, Accept& accept, AllDone& all_done) {
  const size_t rows = ids.size();
  std::vector<int64_t> pads;
  for (const auto& p : ids) pads.push_back(slots - int64_t(p.size()));
  cache.reserve(slots + steps);  // no reallocation, so the step's graph is recorded once
  fused.set_inputs(next, std::vector<int64_t>(rows, slots), pads);
  set_fused_edits(fused, samplers, history);  // every draw is made on the device
  const int ahead = top >= 0 ? 1 : 2;  // steps in flight
  int queued = 0, read = 0;
  while (read < steps) {
    while (queued - read < ahead && queued < steps) {
      fused.step(cache.fused_views());
      cache.commit_one();
      fused_draw(fused, samplers);  // finished rows draw too: their tokens are ignored
      fused.queue_token();
      ++queued;
    }
    const std::vector<int32_t> tokens = fused.wait_tokens();
    ++read;
    // The step's logits as it made them: the draws' edits go to a buffer of their own.
    const std::vector<TokenLogprobs> scored =
        top >= 0 ? log_probabilities_rows(fused.logits(), tokens, top) : std::vector<TokenLogprobs>();
    for (size_t r = 0; r < rows; ++r) accept(r, tokens[r], scored.empty() ? nullptr : &scored[r]);
    if (all_done()) break;
  }
  return read;
}

// The rows of one generate_rows batch as they decode (row i is the caller's row live[i]):
// each row's prompt, draws (sampler, history), text and stop strings, limits and result.
class BatchRows {
 public:
  BatchRows(const LocalTextModel& model, std::span<const size_t> live, std::span<const std::vector<int32_t>> prompts,
            std::span<const GenerateOptions> options, int64_t context, const TextModel::RowCallback& on_token)
      : live_(live), on_token_(on_token) {
    for (size_t r : live) {
      const GenerateOptions& o = options[r];
      ids.push_back(prompts[r]);
      options_.push_back(o);
      samplers.emplace_back(sampling_options(o));
      texts_.emplace_back(model.has_tokenizer() ? &model.tokenizer() : nullptr, o.skip_special_tokens, o.stop_strings);
      limits_.push_back(model.limits(o));
      budget_.push_back(int(std::min<int64_t>(o.max_tokens, context - int64_t(prompts[r].size()))));
      // A row with no room or no tokens to take ends before the batch begins.
      done.push_back(budget_.back() == 0);
      out.emplace_back().finish_reason = !done.back() ? "" : o.max_tokens == 0 ? "length" : "context_length";
    }
    history = ids;
  }

  size_t size() const { return ids.size(); }
  int64_t longest() const {
    size_t n = 0;
    for (const auto& p : ids) n = std::max(n, p.size());
    return int64_t(n);
  }
  int steps() const { return *std::max_element(budget_.begin(), budget_.end()); }  // the most a row may take
  int top() const {  // the most alternatives a row asks for; -1: no row wants logprobs
    int most = -1;
    for (const GenerateOptions& o : options_) most = std::max(most, o.logprobs);
    return most;
  }
  bool all_done() const { return std::all_of(done.begin(), done.end(), [](bool d) { return d; }); }

  // Row r's next token and, where the batch takes scores, theirs: kept unless the row has
  // finished (finished rows keep decoding, as the batch does, and their outputs are ignored).
  void accept(size_t r, int32_t token, const TokenLogprobs* scored = nullptr) {
    if (done[r]) return;
    const GenerationLimits& lim = limits_[r];
    history[r].push_back(token);
    out[r].ids.push_back(token);
    const bool eos = !lim.ignore_eos && std::count(lim.eos_tokens.begin(), lim.eos_tokens.end(), token);
    const bool stop = std::count(lim.stop_tokens.begin(), lim.stop_tokens.end(), token) > 0;
    const bool full = int(out[r].ids.size()) >= budget_[r];
    FinishReason why = eos ? FinishReason::eos : stop ? FinishReason::stop_token : FinishReason::none;
    if (why == FinishReason::none && full)
      why = budget_[r] < options_[r].max_tokens ? FinishReason::context_length : FinishReason::max_tokens;
    TokenText::Piece piece = texts_[r].push(token, eos || stop, why != FinishReason::none);
    if (piece.stopped) why = FinishReason::stop_string;
    out[r].text += piece.text;
    if (on_token_) {
      Token t;
      const int want = options_[r].logprobs;
      if (scored && want >= 0) {  // the batch's scores, cut to the row's own count
        t.logprob = scored->chosen;
        const size_t keep = std::min(scored->top.size(), size_t(want));
        t.top_logprobs.assign(scored->top.begin(), scored->top.begin() + long(keep));
      }
      t.id = token;
      t.text = std::move(piece.text);
      if (!on_token_(live_[r], t) && why == FinishReason::none) why = FinishReason::cancelled;
    }
    if (why != FinishReason::none) {
      done[r] = true;
      out[r].finish_reason = finish_reason_name(why);
    }
  }

  std::vector<std::vector<int32_t>> ids;      // each row's prompt
  std::vector<std::vector<int32_t>> history;  // its prompt and tokens so far
  std::vector<Sampler> samplers;
  std::vector<bool> done;
  std::vector<BatchResult> out;

 private:
  std::span<const size_t> live_;
  const TextModel::RowCallback& on_token_;
  std::vector<GenerateOptions> options_;
  std::vector<TokenText> texts_;
  std::vector<GenerationLimits> limits_;
  std::vector<int> budget_;  // each row's most new tokens: its max_tokens, or the room its context leaves
};

}  // namespace

std::vector<ClassifyResult> LocalTextModel::classify(std::span<const std::string> prompts, const GenerateOptions& o) {
  end_open_stream();
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::vector<int32_t>> ids;
  int total = 0;
  check_input([&] {
    for (const std::string& p : prompts) {
      ids.push_back(tokenizer().encode(p, true));
      check_prompt(ids.back(), model_->spec().vocab_size, context_len_, "classify",
                   detail::cat("prompt ", ids.size() - 1));
      total += int(ids.back().size());
    }
  });
  const std::vector<size_t> order = by_length(ids);
  std::vector<ClassifyResult> out(prompts.size());
  // 32,768 tokens per pass: on the H200, 1,024 prompts of 32 tokens in one pass ran 3-5%
  // faster than four passes of 256 (larger GEMMs fill the GPU better), for activations of
  // about 1 GB on a 1B model.
  for (const auto& [b, e] : chunks_by_tokens(ids, order, 32768)) {
    // Right padding: with a causal mask, real tokens never see the padding after them,
    // so each row's last real position is exactly what a lone prompt would give.
    size_t longest = 0;
    for (size_t i = b; i < e; ++i) longest = std::max(longest, ids[order[i]].size());
    const int64_t rows = int64_t(e - b), l = int64_t(longest);
    std::vector<int32_t> flat(size_t(rows * l), 0), last(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
      const auto& p = ids[order[b + size_t(r)]];
      std::copy(p.begin(), p.end(), flat.begin() + r * l);
      last[size_t(r)] = int32_t(r * l + int64_t(p.size()) - 1);
    }
    const Array picked = model_->hidden_states(to_device(from_vector(flat, {rows, l}), device_), {}, nullptr,
                                               to_device(from_vector(last, {rows}), device_));  // [R, H]
    const Array logits = astype(model_->logits(picked), Dtype::f32);  // [R, V]
    const std::vector<int32_t> best = to_vector<int32_t>(argmax(logits, -1));
    fast::check_chosen(best, model_->spec().vocab_size, "classify");  // -1: a row of NaN logits
    const std::vector<float> all = to_floats(logits);
    const size_t v = size_t(model_->spec().vocab_size);
    for (int64_t r = 0; r < rows; ++r) {
      ClassifyResult& c = out[order[b + size_t(r)]];
      c.token = best[size_t(r)];
      c.logit = all[size_t(r) * v + size_t(c.token)];
      c.text = tokenizer().decode(std::span<const int32_t>(&c.token, 1), false);
      if (o.return_logits) c.logits.assign(all.begin() + long(size_t(r) * v), all.begin() + long(size_t(r + 1) * v));
    }
  }
  GenerationTimings t;
  t.prompt_tokens = total;
  t.prefill_s = seconds_since(t0);
  record(t, FinishReason::max_tokens, {}, "");
  return out;
}

std::vector<BatchResult> LocalTextModel::batch_generate(std::span<const std::string> prompts,
                                                        const GenerateOptions& o) {
  LMX_CHECK(o.temperature == 0 || o.seed, "batch_generate", "sampling with temperature > 0 needs a seed so that "
            "rows are reproducible");
  std::vector<std::vector<int32_t>> ids;
  for (const std::string& p : prompts) ids.push_back(tokenizer().encode(p, true));
  std::vector<GenerateOptions> options(prompts.size(), o);
  for (size_t r = 0; r < options.size(); ++r)
    if (o.seed) options[r].seed = *o.seed + r;  // rows draw independently
  return generate_rows(ids, options, {});
}

std::vector<BatchResult> LocalTextModel::generate_rows(std::span<const std::vector<int32_t>> prompts,
                                                       std::span<const GenerateOptions> options,
                                                       const RowCallback& on_token) {
  end_open_stream();
  // The options must let the rows share one batch: a mistake of the caller's, which fails
  // the call. A prompt that cannot run fails its own row (finish_reason "error").
  check_input([&] {
    LMX_CHECK(options.size() == prompts.size(), "generate_rows", prompts.size(), " prompts need as many options, got ",
              options.size());
    for (size_t r = 0; r < options.size(); ++r) {
      const GenerateOptions& o = options[r];
      LMX_CHECK(o.logprobs >= -1 && o.logprobs <= kMaxTopLogprobs, "generate_rows", "row ", r,
                ": logprobs must be -1 (off) or 0 to ", kMaxTopLogprobs, " alternatives, got ", o.logprobs);
      LMX_CHECK(o.max_tokens >= 0, "generate_rows", "row ", r, ": max_tokens must be at least 0, got ", o.max_tokens);
      LMX_CHECK(!o.json_object && o.json_schema.empty(), "generate_rows", "row ", r,
                ": a reply held to JSON (json_object, json_schema) runs as a stream (generate, chat), not in a batch");
      LMX_CHECK(draws_alike(o, options[0]), "generate_rows", "row ", r,
                " draws otherwise than row 0 (temperature, top-k, top-p, min-p, penalties and logit bias must agree)");
    }
  });
  std::vector<BatchResult> out(prompts.size());
  std::vector<size_t> live;
  for (size_t r = 0; r < prompts.size(); ++r) {
    try {
      check_prompt(prompts[r], model_->spec().vocab_size, context_len_, "generate_rows", detail::cat("prompt ", r));
      live.push_back(r);
    } catch (const Error& e) {
      out[r].finish_reason = finish_reason_name(FinishReason::error);
      out[r].error = e.what();
    }
  }
  if (!live.empty()) decode_rows(live, prompts, options, on_token, out);
  return out;
}

void LocalTextModel::decode_rows(std::span<const size_t> live, std::span<const std::vector<int32_t>> prompts,
                                 std::span<const GenerateOptions> options, const RowCallback& on_token,
                                 std::vector<BatchResult>& results) {
  const auto t0 = std::chrono::steady_clock::now();
  BatchRows b(*this, live, prompts, options, context_len_, on_token);
  const int64_t rows = int64_t(b.size()), l = b.longest();
  const int steps = b.steps(), top = b.top();

  // Left padding: every row's last prompt token sits in the same slot, so one decode
  // step serves all rows. Padding is masked out and RoPE positions skip it.
  std::vector<int32_t> flat(size_t(rows * l), 0);
  std::vector<int64_t> pads(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<int32_t>& p = b.ids[size_t(r)];
    const int64_t pad = pads[size_t(r)] = l - int64_t(p.size());
    std::copy(p.begin(), p.end(), flat.begin() + r * l + pad);
  }
  auto accept = [&](size_t r, int32_t token, const TokenLogprobs* scored) { b.accept(r, token, scored); };
  auto all_done = [&] { return b.all_done(); };
  // The rows take the device's batched fused step where it has one: every step's
  // tokens are drawn and fed back on the device, and the host reads them while the next
  // step runs.
  // (Taken after the prefill, which may let the model's kept decoders go: prefill_rows.)
  KVCache cache(model_->num_layers(), l + steps);
  std::unique_ptr<fast::FusedDecoder> fused;
  Array x;  // the plain steps' input tokens [R, 1]
  int64_t slots = l;
  int generated = 0, fused_steps = 0;
  while (generated < steps && !b.all_done()) {
    Array h;  // [R, H]
    if (generated == 0) {  // the prompts, in passes of at most prefill_tokens()
      h = prefill_rows(*model_, flat, rows, l, cache.layers(), pads, device_);
    } else {  // the token fed last, in slot slots - 1
      const nn::SequenceBatch batch = padded_rows(pads, slots - 1, slots, device_);
      h = model_->last_hidden_states(x, cache.layers(), &batch);
    }
    // On a GPU the argmax or the draw is made there and [R] ids come back, where the
    // logits were [R, V] (at 64 rows and a 152K vocabulary, 39 MB a step, then scanned on
    // the host, which took longer than the step itself).
    const Array logits = model_->logits(h);  // [R, V]
    std::vector<int32_t> next = sample_rows(b.samplers, logits, b.history, b.done);
    for (size_t i = 0; i < size_t(rows); ++i)
      if (b.done[i]) next[i] = b.history[i].back();
    // With logprobs: each row's draw scored under the model's own logits.
    const std::vector<TokenLogprobs> scored = top >= 0 ? log_probabilities_rows(logits, next, top)
                                                       : std::vector<TokenLogprobs>();
    for (size_t i = 0; i < size_t(rows); ++i) b.accept(i, next[i], scored.empty() ? nullptr : &scored[i]);
    ++generated;
    if (b.all_done()) break;
    if (generated == 1 && steps > 1) fused = fused_decoder_or_none(*model_, int(rows));
    if (fused) {
      fused_steps = decode_fused(*fused, cache, next, l, b.ids, b.history, steps - generated, b.samplers, top,
                                 accept, all_done);
      break;
    }
    ++slots;  // the token fed next goes to the next slot
    x = to_device(from_vector(next, {rows, 1}), device_);
  }
  GenerationTimings t;
  for (size_t r = 0; r < size_t(rows); ++r) {
    BatchResult& out = b.out[r];
    if (out.finish_reason.empty()) out.finish_reason = "length";
    t.generated_tokens += int(out.ids.size());
    t.prompt_tokens += int(b.ids[r].size());
    results[live[r]] = std::move(out);
  }
  if (fused_steps > 0)
    t.decode_path = std::string("fused-") + fused->path();
  else if (generated > 1)
    t.decode_path = "plain";
  t.decode_s = seconds_since(t0);
  model_->recycle_fused_decoder(std::move(fused));  // for the next batch of as many rows
  record(t, FinishReason::max_tokens, {}, "");
}

}  // namespace lmx::runtime

namespace lmx {

void check_prompt(const ModelInfo& info, std::span<const int32_t> ids) {
  check_prompt(ids, info.vocab_size, info.context_length, "check_prompt", "the prompt");
}

bool draws_alike(const GenerateOptions& a, const GenerateOptions& b) {
  return a.temperature == b.temperature && a.top_k == b.top_k && a.top_p == b.top_p && a.min_p == b.min_p &&
         a.repeat_penalty == b.repeat_penalty && a.presence_penalty == b.presence_penalty &&
         a.frequency_penalty == b.frequency_penalty && a.logit_bias == b.logit_bias;
}

}  // namespace lmx
