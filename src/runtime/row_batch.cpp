// generate_rows' decoding: rows that share each decode step, and with a RowFeed rows that
// join and leave between steps (continuous batching).
//
// The layout is one cache of [rows, Hkv, slots, D] per layer, every row's next token in the
// same slot `slot_`, each row left-padded by pads_[r] (its slots before that are never
// attended to, and its RoPE positions are slots minus pads). So one step serves every row,
// on the plain ops as on the fused step. A joining prompt is prefilled alone (with the
// others that join at that step) into a cache of its own. Where it fits before the slot, it
// takes the place of a row that has ended, and only its slots are copied: the cache, and a
// fused step's plan for it, stay. Else the batch is regrouped: the rows still decoding and
// the new ones in a new cache, shifted so that their next tokens share a slot again, and
// the padding that every row has dropped. Half the rows ended regroups it too.
#include <algorithm>
#include <chrono>
#include <limits>
#include <numeric>

#include "core/error.h"
#include "ops/fast.h"
#include "runtime/prefill.h"
#include "runtime/text_model.h"
#include "runtime/token_text.h"
#include "text/json_schema.h"

namespace lmx::runtime {
namespace {

// The rows of the batch as they decode, each vector indexed by the row's place in the
// cache: the caller's row number, its prompt, draws (sampler, history), text, limits and
// result.
struct Rows {
  std::vector<size_t> id;                     // the caller's row number
  std::vector<std::vector<int32_t>> history;  // its prompt and tokens so far
  std::vector<Sampler> samplers;
  std::vector<bool> done;
  std::vector<BatchResult> out;
  std::vector<GenerateOptions> options;
  std::vector<TokenText> texts;
  std::vector<GenerationLimits> limits;
  std::vector<int> budget;  // the most new tokens: its max_tokens, or the room its context leaves
  std::vector<int64_t> pads;
  std::vector<std::optional<text::JsonPrefix>> json;  // a reply held to JSON: the text so far, read

  size_t size() const { return id.size(); }
  size_t live() const { return size_t(std::count(done.begin(), done.end(), false)); }
  int remaining(size_t r) const { return done[r] ? 0 : budget[r] - int(out[r].ids.size()); }
  int most_remaining() const {
    int most = 0;
    for (size_t r = 0; r < size(); ++r) most = std::max(most, remaining(r));
    return most;
  }
  int top() const {  // the most alternatives a live row asks for; -1: none wants logprobs
    int most = -1;
    for (size_t r = 0; r < size(); ++r)
      if (!done[r]) most = std::max(most, options[r].logprobs);
    return most;
  }
  // Keeps the rows `order`, in that order.
  void reorder(const std::vector<size_t>& order) {
    auto pick = [&](auto& v) {
      std::remove_reference_t<decltype(v)> kept;
      for (size_t i : order) kept.push_back(std::move(v[i]));
      v = std::move(kept);
    };
    pick(id), pick(history), pick(samplers), pick(done), pick(out), pick(options), pick(texts), pick(limits);
    pick(budget), pick(pads), pick(json);
  }
};

// Why a row cannot decode in a batch whose first row has options `lead` (empty: it can).
std::string refusal(const GenerateOptions& o, const GenerateOptions& lead) {
  if (o.logprobs < -1 || o.logprobs > kMaxTopLogprobs)
    return detail::cat("logprobs must be -1 (off) or 0 to ", kMaxTopLogprobs, " alternatives, got ", o.logprobs);
  if (o.max_tokens < 0) return detail::cat("max_tokens must be at least 0, got ", o.max_tokens);
  if (!draws_alike(o, lead))
    return "draws otherwise than row 0 (temperature, top-k, top-p, min-p, penalties and logit bias must agree)";
  return {};
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

class RowBatch {
 public:
  RowBatch(LocalTextModel& model, Device device, int64_t context, const TextModel::RowCallback& on_token,
           const RowFeed* feed, std::vector<BatchResult>& results, size_t max_rows,
           std::optional<GenerateOptions> lead)
      : m_(model), model_(model.model()), device_(device), context_(context), on_token_(on_token), feed_(feed),
        results_(results), max_rows_(max_rows), lead_(std::move(lead)), next_id_(results.size()),
        cache_(model_.num_layers(), 0) {}
  ~RowBatch() { model_.recycle_fused_decoder(std::move(fused_)); }  // for the next batch of as many rows

  // Decodes `first` (their numbers given) and whatever joins, until no row is left.
  void run(std::vector<RowRequest> first, std::vector<size_t> first_ids) {
    std::vector<RowRequest> joining = std::move(first);
    std::vector<size_t> ids = std::move(first_ids);
    for (;;) {
      if (!joining.empty()) join(std::move(joining), std::move(ids));
      else if (rows_.size() > 1 && rows_.live() * 2 <= rows_.size() && rows_.size() != unshrunk_) shrink();
      joining.clear(), ids.clear();
      if (rows_.live() == 0) {
        joining = ask(ids);
        if (joining.empty()) break;
        continue;
      }
      joining = fused() ? fused_steps(ids) : plain_step(ids);
    }
    timings_.decode_s = seconds_since(t0_);
    if (fused_steps_ > 0) timings_.decode_path = std::string("fused-") + fused_->path();
    else if (plain_steps_ > 0) timings_.decode_path = "plain";
    m_.record(timings_, FinishReason::max_tokens, {}, "");
  }

 private:
  // The requests that join now (none without a feed, or with no room), numbered in `ids`.
  std::vector<RowRequest> ask(std::vector<size_t>& ids) {
    const size_t live = rows_.live();
    if (!feed_ || !feed_->join || live >= max_rows_) return {};
    std::vector<RowRequest> joining = feed_->join(max_rows_ - live);
    ids.clear();
    for (size_t i = 0; i < joining.size(); ++i) ids.push_back(next_id_++);
    return joining;
  }

  // Row r has ended: its result goes to the caller.
  void deliver(size_t id, BatchResult result) {
    timings_.generated_tokens += int(result.ids.size());
    if (feed_ && feed_->done) {
      if (id < results_.size()) results_[id] = result;
      feed_->done(id, std::move(result));
    } else if (id < results_.size()) {
      results_[id] = std::move(result);
    }
  }

  // Row r's next token and, where the step took scores, theirs: kept unless the row has
  // ended (ended rows keep decoding until the batch is regrouped; their tokens are ignored).
  void accept(size_t r, int32_t token, const TokenLogprobs* scored) {
    Rows& b = rows_;
    if (b.done[r]) return;
    const GenerationLimits& lim = b.limits[r];
    b.history[r].push_back(token);
    BatchResult& out = b.out[r];
    out.ids.push_back(token);
    const bool eos = !lim.ignore_eos && std::count(lim.eos_tokens.begin(), lim.eos_tokens.end(), token);
    const bool stop = std::count(lim.stop_tokens.begin(), lim.stop_tokens.end(), token) > 0;
    const bool full = int(out.ids.size()) >= b.budget[r];
    FinishReason why = eos ? FinishReason::eos : stop ? FinishReason::stop_token : FinishReason::none;
    if (b.json[r]) {  // its draws are among the tokens that continue it
      LMX_CHECK(b.json[r]->feed(json_tokens_->piece(token)), "generate_rows", "internal error: token ", token,
                " was drawn but does not continue row ", b.id[r], "'s JSON reply");
      if (b.json[r]->complete()) why = FinishReason::complete;
    }
    if (why == FinishReason::none && full)
      why = b.budget[r] < b.options[r].max_tokens ? FinishReason::context_length : FinishReason::max_tokens;
    TokenText::Piece piece = b.texts[r].push(token, eos || stop, why != FinishReason::none);
    if (piece.stopped) why = FinishReason::stop_string;
    out.text += piece.text;
    if (on_token_) {
      Token t;
      const int want = b.options[r].logprobs;
      if (scored && want >= 0) {  // the step's scores, cut to the row's own count
        t.logprob = scored->chosen;
        const size_t keep = std::min(scored->top.size(), size_t(want));
        t.top_logprobs.assign(scored->top.begin(), scored->top.begin() + long(keep));
      }
      t.id = token;
      t.text = std::move(piece.text);
      if (!on_token_(b.id[r], t) && why == FinishReason::none) why = FinishReason::cancelled;
    }
    if (why != FinishReason::none) {
      b.done[r] = true;
      out.finish_reason = finish_reason_name(why);
      deliver(b.id[r], out);
    }
  }

  // The recognizer of the reply that `o` holds to JSON (none: not held). Throws lmx::Error
  // for a schema the reader refuses, or a model without a tokenizer.
  std::optional<text::JsonPrefix> held_to_json(const GenerateOptions& o) {
    if (!o.json_object && o.json_schema.empty()) return std::nullopt;
    std::optional<text::JsonPrefix> json;
    if (o.json_schema.empty())
      json.emplace(true);
    else
      json.emplace(std::make_shared<const text::JsonSchema>(text::JsonSchema::compile(o.json_schema)));
    json_tokens_ = &m_.json_tokens();
    return json;
  }
  // Row r's draw among the tokens that continue its JSON, from row `at` of `logits` [R, V];
  // -1 where none does (all masked or NaN): the row has then failed alone.
  int32_t draw_json(size_t r, const Array& logits, int64_t at) {
    Rows& b = rows_;
    try {
      return lmx::json_draw(b.samplers[r], to_floats(slice_axis(logits, 0, at, at + 1)), *json_tokens_, *b.json[r],
                            b.history[r]);
    } catch (const Error& e) {
      b.done[r] = true;
      b.out[r].finish_reason = finish_reason_name(FinishReason::error);
      b.out[r].error = e.what();
      deliver(b.id[r], b.out[r]);
      return -1;
    }
  }
  bool any_json() const {
    for (size_t r = 0; r < rows_.size(); ++r)
      if (!rows_.done[r] && rows_.json[r]) return true;
    return false;
  }

  // Every row's draw from the step's `logits` [R, V] (rows from `first` on), scored where a
  // row wants logprobs, and accepted.
  void draw(const Array& logits, size_t first) {
    Rows& b = rows_;
    const size_t n = b.size() - first;
    std::span<Sampler> samplers(b.samplers.data() + first, n);
    std::span<const std::vector<int32_t>> histories(b.history.data() + first, n);
    std::vector<bool> skip;  // rows that ended, and those held to JSON, drawn below
    for (size_t r = first; r < b.size(); ++r) skip.push_back(b.done[r] || b.json[r]);
    std::vector<int32_t> next = sample_rows(samplers, logits, histories, skip);
    for (size_t r = first; r < b.size(); ++r)
      if (!b.done[r] && b.json[r]) next[r - first] = draw_json(r, logits, int64_t(r - first));  // -1: failed
    int top = -1;
    for (size_t r = first; r < b.size(); ++r) {
      if (b.done[r]) next[r - first] = b.history[r].back();
      else top = std::max(top, b.options[r].logprobs);
    }
    // With logprobs: each row's draw scored under the model's own logits.
    const std::vector<TokenLogprobs> scored =
        top >= 0 ? log_probabilities_rows(logits, next, top) : std::vector<TokenLogprobs>();
    for (size_t i = 0; i < n; ++i) accept(first + i, next[i], scored.empty() ? nullptr : &scored[i]);
  }

  // The rows `joining` (numbered `ids`): each that can run is prefilled with the others,
  // takes its first token, and joins the batch.
  void join(std::vector<RowRequest> joining, std::vector<size_t> ids) {
    Rows& b = rows_;
    const size_t first = b.size();
    std::vector<std::vector<int32_t>> prompts;
    for (size_t j = 0; j < joining.size(); ++j) {
      RowRequest& q = joining[j];
      if (!lead_) lead_ = q.options;
      std::string why = refusal(q.options, *lead_);
      std::optional<text::JsonPrefix> json;
      if (why.empty()) {
        try {
          check_prompt(q.prompt, model_.spec().vocab_size, context_, "generate_rows",
                       detail::cat("prompt ", ids[j]));
          json = held_to_json(q.options);
        } catch (const Error& e) {  // the prompt, or a schema the reader refuses
          why = e.what();
        }
      }
      if (!why.empty()) {  // fails alone
        BatchResult failed;
        failed.finish_reason = finish_reason_name(FinishReason::error);
        failed.error = why.front() == '[' ? why : detail::cat("[generate_rows] row ", ids[j], ": ", why);
        deliver(ids[j], std::move(failed));
        continue;
      }
      const GenerateOptions& o = q.options;
      const int budget = int(std::min<int64_t>(o.max_tokens, context_ - int64_t(q.prompt.size())));
      timings_.prompt_tokens += int(q.prompt.size());
      if (budget == 0) {  // no room or no tokens to take: it ends before it begins
        BatchResult none;
        none.finish_reason = o.max_tokens == 0 ? "length" : "context_length";
        deliver(ids[j], std::move(none));
        continue;
      }
      b.id.push_back(ids[j]);
      b.samplers.emplace_back(sampling_options(o));
      b.done.push_back(false);
      b.out.emplace_back();
      b.texts.emplace_back(m_.has_tokenizer() ? &m_.tokenizer() : nullptr, o.skip_special_tokens, o.stop_strings);
      b.limits.push_back(m_.limits(o));
      b.budget.push_back(budget);
      b.options.push_back(o);
      b.json.push_back(std::move(json));
      prompts.push_back(std::move(q.prompt));
    }
    if (prompts.empty()) return;
    try {
      start(first, prompts);
    } catch (const OutOfMemory& e) {
      // The joining rows fail alone, and the batch goes on as it was (a regroup changes
      // nothing where memory runs out).
      for (size_t r = first; r < b.size(); ++r) {
        if (b.done[r]) continue;
        b.done[r] = true;
        b.out[r].finish_reason = finish_reason_name(FinishReason::error);
        b.out[r].error = e.what();
        deliver(b.id[r], b.out[r]);
      }
      std::vector<size_t> order(first);
      std::iota(order.begin(), order.end(), size_t(0));
      b.reorder(order);
    }
  }

  // The rows from `first` on (their prompts `prompts`) prefilled together, their first
  // tokens drawn, and their keys in the batch's cache.
  void start(size_t first, const std::vector<std::vector<int32_t>>& prompts) {
    Rows& b = rows_;
    // Left padding among themselves: their last prompt tokens share a slot.
    const int64_t rows = int64_t(prompts.size());
    int64_t len = 0;
    for (const auto& p : prompts) len = std::max(len, int64_t(p.size()));
    std::vector<int32_t> flat(size_t(rows * len), 0);
    std::vector<int64_t> pads;
    for (int64_t r = 0; r < rows; ++r) {
      const std::vector<int32_t>& p = prompts[size_t(r)];
      pads.push_back(len - int64_t(p.size()));
      std::copy(p.begin(), p.end(), flat.begin() + r * len + pads.back());
      b.history.push_back(p);
    }
    b.pads.insert(b.pads.end(), pads.begin(), pads.end());
    // With no other row live, the joining cache becomes the batch's: room for every row's
    // tokens from the start (the rows that have ended go).
    const bool alone = b.live() == size_t(rows);
    KVCache joined(model_.num_layers(), alone ? len + b.most_remaining() : len);
    const Array h = prefill_rows(model_, flat, rows, len, joined.layers(), pads, device_);  // [J, H]
    draw(model_.logits(h), first);
    if (alone) {
      std::vector<size_t> order;
      for (size_t r = first; r < b.size(); ++r) order.push_back(r);
      b.reorder(order);
      cache_ = std::move(joined);
      slot_ = len;
      return;
    }
    // In the places of rows that have ended, where their prompts fit before the batch's
    // slot: only their slots are copied, and the cache (and a fused step's plan) stays. Else
    // the batch is regrouped. Rows that ended at their first token go.
    std::vector<size_t> order(first), ended;
    std::iota(order.begin(), order.end(), size_t(0));
    for (size_t r = 0; r < first; ++r)
      if (b.done[r]) ended.push_back(r);
    std::vector<size_t> live;
    for (size_t r = first; r < b.size(); ++r)
      if (!b.done[r]) live.push_back(r);
    if (live.size() <= ended.size() && len <= slot_) {
      for (size_t i = 0; i < live.size(); ++i) {
        cache_.place(int64_t(ended[i]), joined, int64_t(live[i] - first));
        b.pads[live[i]] += slot_ - len;
        order[ended[i]] = live[i];
      }
      b.reorder(order);
      return;
    }
    regroup(&joined, first, len);
  }

  // The batch becomes its rows before `first` that have not ended, then those from `first`
  // on that have not (their keys in `joined`, `len` slots; none without it), in one cache
  // whose rows take their next tokens in one slot again, and no slot that every row pads.
  void regroup(KVCache* joined, size_t first, int64_t len) {
    Rows& b = rows_;
    std::vector<size_t> order;
    std::vector<int64_t> keep, from;
    int64_t least = slot_;  // the padding every kept row has
    for (size_t r = 0; r < first; ++r)
      if (!b.done[r]) order.push_back(r), keep.push_back(int64_t(r)), least = std::min(least, b.pads[r]);
    for (size_t r = first; r < b.size(); ++r)
      if (!b.done[r]) order.push_back(r), from.push_back(int64_t(r - first));
    if (order.empty()) {  // no row left
      b.reorder({});
      cache_ = KVCache(model_.num_layers(), 0);
      slot_ = 0;
      return;
    }
    const int64_t slots = std::max(slot_ - least, from.empty() ? 0 : len);
    std::vector<int64_t> pads;
    int most = 0;
    for (size_t r : order) {
      pads.push_back(b.pads[r] + (r < first ? slots - slot_ : slots - len));
      most = std::max(most, b.remaining(r));
    }
    cache_.regroup(keep, joined, from, slots, slots + most + 1);  // where it throws, nothing has changed
    b.reorder(order);
    b.pads = std::move(pads);
    slot_ = slots;
  }

  // Half the rows have ended: the batch drops them, unless memory runs out for the new
  // cache (then it goes on as it is, until its size changes).
  void shrink() {
    try {
      regroup(nullptr, rows_.size(), 0);
    } catch (const OutOfMemory&) {
      unshrunk_ = rows_.size();
    }
  }

  // One step of the plain ops for every row; then the requests that join.
  std::vector<RowRequest> plain_step(std::vector<size_t>& ids) {
    Rows& b = rows_;
    const int64_t rows = int64_t(b.size());
    std::vector<int32_t> last;
    for (const auto& h : b.history) last.push_back(h.back());
    const Array x = to_device(from_vector(last, {rows, 1}), device_);
    const nn::SequenceBatch batch = padded_rows(b.pads, slot_, slot_ + 1, device_);
    const Array h = model_.last_hidden_states(x, cache_.layers(), &batch);  // [R, H]
    // On a GPU the draws are made there and [R] ids come back, where the logits were
    // [R, V] (at 64 rows and a 152K vocabulary, 39 MB a step).
    draw(model_.logits(h), 0);
    ++slot_;
    ++plain_steps_;
    return ask(ids);
  }

  // Whether the steps run fused: the device's batched step for this many rows, made once
  // the batch has more than one step to go.
  bool fused() {
    if (fused_ && fused_->rows() == int(rows_.size())) return true;
    if (no_fused_ || rows_.most_remaining() < 2) return false;
    drop_fused();
    fused_ = fused_decoder_or_none(model_, int(rows_.size()));
    if (!fused_) no_fused_ = true;
    return fused_ != nullptr;
  }
  void drop_fused() { model_.recycle_fused_decoder(std::move(fused_)); }

  // Fused steps until every row has ended, requests join (returned, numbered in `ids`), or
  // half the rows have ended. Every step's tokens are drawn and fed back on the device,
  // and the host reads them while the next step runs, unless rows want scores: those read
  // each step's logits on the device, which the next step would overwrite.
  std::vector<RowRequest> fused_steps(std::vector<size_t>& ids) {
    Rows& b = rows_;
    fast::FusedDecoder& fused = *fused_;
    const int steps = b.most_remaining(), top = b.top();
    const size_t rows = b.size();
    // Rows held to JSON draw on the host from each step's logits, one step at a time; their
    // device draws go unused (and take no random word), and where theirs differ the next
    // step's inputs are set again.
    const bool json = any_json();
    std::vector<bool> held;
    for (size_t r = 0; r < rows; ++r) held.push_back(b.json[r].has_value());
    // As a stream's (TokenGenerator::take_fused_decoder): greedy draws with no edits read no
    // logit, top-k draws only the k largest; scores and JSON holds read every one.
    const std::optional<fast::SampleFilter> filter = b.samplers[0].filter();
    fused.set_logits_needed(top >= 0 || json || b.samplers[0].needs_edits() ? 0 : !filter ? 1 : filter->top_k);
    cache_.reserve(slot_ + steps);  // no reallocation, so the step's graph is recorded once
    std::vector<int32_t> next;
    for (const auto& h : b.history) next.push_back(h.back());
    fused.set_inputs(next, std::vector<int64_t>(rows, slot_), b.pads);
    set_fused_edits(fused, b.samplers, b.history);  // every draw is made on the device
    const int ahead = top >= 0 || json ? 1 : 2;  // steps in flight
    int queued = 0, read = 0;
    bool last = false;  // queue no more steps
    std::vector<RowRequest> joining;
    while (read < queued || (!last && queued < steps)) {
      while (!last && queued - read < ahead && queued < steps) {
        fused.step(cache_.fused_views());
        cache_.commit_one();
        fused_draw(fused, b.samplers, held);  // ended rows draw too: their tokens are ignored
        fused.queue_token();
        ++queued;
      }
      std::vector<int32_t> tokens = fused.wait_tokens();
      ++read;
      bool redraw = false;
      for (size_t r = 0; json && r < rows; ++r) {
        if (b.done[r] || !b.json[r]) continue;
        const int32_t own = draw_json(r, fused.logits(), int64_t(r));
        redraw |= own != tokens[r];
        tokens[r] = own >= 0 ? own : b.history[r].back();  // -1: the row failed, and is done
      }
      // The step's logits as it made them: the draws' edits go to a buffer of their own.
      const std::vector<TokenLogprobs> scored =
          top >= 0 ? log_probabilities_rows(fused.logits(), tokens, top) : std::vector<TokenLogprobs>();
      for (size_t r = 0; r < rows; ++r) accept(r, tokens[r], scored.empty() ? nullptr : &scored[r]);
      if (redraw) {  // one step in flight at most, read: the next takes the host's tokens
        std::vector<int32_t> inputs;
        for (const auto& h : b.history) inputs.push_back(h.back());
        fused.set_inputs(inputs, std::vector<int64_t>(rows, slot_ + queued), b.pads);
        set_fused_edits(fused, b.samplers, b.history);
      }
      if (last) continue;  // the steps still queued are read, their tokens kept by rows still live
      const size_t live = b.live();
      if (live == 0 || (rows > 1 && live * 2 <= rows)) last = true;
      else if (joining = ask(ids); !joining.empty()) last = true;
    }
    fused_steps_ += read;
    slot_ += queued;
    return joining;
  }

  LocalTextModel& m_;
  const models::CausalLM& model_;
  const Device device_;
  const int64_t context_;
  const TextModel::RowCallback& on_token_;
  const RowFeed* const feed_;
  std::vector<BatchResult>& results_;
  const size_t max_rows_;
  std::optional<GenerateOptions> lead_;  // the first row's options: every row draws alike
  const text::JsonTokens* json_tokens_ = nullptr;  // each id's text, once a row is held to JSON
  size_t next_id_;                       // the number of the next row to join
  Rows rows_;
  KVCache cache_;
  int64_t slot_ = 0;  // where every row's next token goes
  std::unique_ptr<fast::FusedDecoder> fused_;
  bool no_fused_ = false;  // the device has no fused step (or no memory for one)
  size_t unshrunk_ = 0;    // a batch size that memory did not let shrink
  int fused_steps_ = 0, plain_steps_ = 0;
  GenerationTimings timings_;
  const std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

}  // namespace

void LocalTextModel::decode_rows(std::vector<RowRequest> first, std::vector<size_t> ids,
                                 const RowCallback& on_token, const RowFeed* feed, std::vector<BatchResult>& out) {
  const size_t max_rows = std::max(first.size(), feed ? feed->max_rows : size_t(0));
  std::optional<GenerateOptions> lead;
  if (!first.empty()) lead = first[0].options;
  RowBatch batch(*this, device_, context_len_, on_token, feed, out, std::max<size_t>(1, max_rows), lead);
  batch.run(std::move(first), std::move(ids));
}

std::vector<BatchResult> LocalTextModel::generate_rows(std::span<const std::vector<int32_t>> prompts,
                                                       std::span<const GenerateOptions> options,
                                                       const RowCallback& on_token, const RowFeed* feed) {
  end_open_stream();
  // The options must let the rows share one batch: a mistake of the caller's, which fails
  // the call. A prompt that cannot run fails its own row (finish_reason "error").
  check_input([&] {
    LMX_CHECK(options.size() == prompts.size(), "generate_rows", prompts.size(), " prompts need as many options, got ",
              options.size());
    for (size_t r = 0; r < options.size(); ++r) {
      const std::string why = refusal(options[r], options[0]);
      LMX_CHECK(why.empty(), "generate_rows", "row ", r, ": ", why);
    }
  });
  std::vector<BatchResult> out(prompts.size());
  std::vector<RowRequest> first;
  for (size_t r = 0; r < prompts.size(); ++r) first.push_back({prompts[r], options[r]});
  std::vector<size_t> ids(prompts.size());
  for (size_t r = 0; r < ids.size(); ++r) ids[r] = r;
  decode_rows(std::move(first), std::move(ids), on_token, feed, out);
  return out;
}

}  // namespace lmx::runtime
