// Token-by-token generation for one sequence: prefill on the first pull, then one
// decode step per token, with stop conditions and timing.
#pragma once

#include <chrono>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <vector>

#include "models/transformer.h"
#include "runtime/kv_cache.h"
#include "runtime/sampler.h"
#include "text/json_prefix.h"

namespace lmx {

// complete: a reply held to JSON (TokenGenerator::hold_to_json) closed its object.
enum class FinishReason { none, eos, stop_token, stop_string, max_tokens, context_length, cancelled, error, complete };
const char* finish_reason_name(FinishReason r);

struct GenerationLimits {
  int max_tokens = 256;
  std::vector<int32_t> eos_tokens;   // from generation_config.json / tokenizer_config.json
  std::vector<int32_t> stop_tokens;  // extra ids from the caller
  bool ignore_eos = false;
  int64_t context_length = 0;        // 0 = the model's max_position_embeddings
  int64_t prefill_tokens = 0;        // tokens a prefill pass; 0 = runtime::prefill_tokens()
};

struct GenerationTimings {
  int prompt_tokens = 0, generated_tokens = 0;
  double prefill_s = 0, decode_s = 0, time_to_first_token_s = 0;
  std::string decode_path;  // GenerateMetrics::decode_path; "" before any decode step
};

// One draw per row of `logits` [R, V] (on any device), by samplers[r] with histories[r];
// rows where skip[r] get -1 and take no draw. The rows share their options but the seed.
// Where the logits are on a GPU, the draws are made there (penalties and bias included)
// and only the ids come back, not [R, V] logits (152K a row for Qwen3: the copy and a
// draw over all of them on the host cost several times the decode step).
std::vector<int32_t> sample_rows(std::span<Sampler> samplers, const Array& logits,
                                 std::span<const std::vector<int32_t>> histories,
                                 const std::vector<bool>& skip);

// Each row's Sampler::edits for histories[r] over `vocab` tokens, rows in order, as
// fast::edit_logits and FusedDecoder::set_edits take them; a row where skip[r] (when skip
// is given) takes none.
struct RowEdits {
  std::vector<int64_t> starts{0};
  std::vector<fast::LogitEdit> edits;
};
RowEdits row_edits(std::span<const Sampler> samplers,
                   std::span<const std::vector<int32_t>> histories, int64_t vocab,
                   const std::vector<bool>& skip = {});

// A fused decode's draws, one sampler a sequence (they share their options but the seed).
// set_fused_edits, after set_inputs: the edits for the histories so far, where the
// samplers have a logit bias or penalties. fused_draw, after each step: every sequence's
// draw, unless the samplers are greedy (the step's own argmax stands).
void set_fused_edits(fast::FusedDecoder& fused, std::span<const Sampler> samplers,
                     std::span<const std::vector<int32_t>> histories);
// Rows where skip[r] (skip may be empty) take no random word: their draws go unused.
void fused_draw(fast::FusedDecoder& fused, std::span<Sampler> samplers, const std::vector<bool>& skip = {});
// A draw among the tokens that continue `json` (a reply held to JSON) from one row's
// `logits` [V]: greedy, the first of the 64 most likely that does (nearly always the most
// likely, for a model that writes JSON), else every other token masked; sampled, the
// sampler's draw over the masked logits. Throws lmx::Error where no token continues it.
int32_t json_draw(Sampler& sampler, std::vector<float> logits, const text::JsonTokens& tokens,
                  const text::JsonPrefix& json, std::span<const int32_t> history);
// model.fused_decoder(rows), or nullptr where the device has no memory left for one.
std::unique_ptr<fast::FusedDecoder> fused_decoder_or_none(const models::CausalLM& model, int rows);

// Throws lmx::Error (from `op`) where `ids` cannot be a prompt: no ids, an id outside a
// vocabulary of `vocab`, or more ids than the context length `context`. `what` names the
// prompt in the message ("the prompt", "prompt 3"). A prompt that fills the context is
// allowed: it generates nothing and ends with "context_length", in streams and batches.
void check_prompt(std::span<const int32_t> ids, int64_t vocab, int64_t context, std::string_view op,
                  std::string_view what);

// Not thread-safe. The model is shared read-only; the cache belongs to this sequence.
class TokenGenerator {
 public:
  // `cache` may hold a prefix of `prompt` already (prompt-cache reuse): only the rest is
  // prefilled. It must outlive the generator.
  TokenGenerator(const models::CausalLM& model, std::vector<int32_t> prompt, SamplingOptions sampling,
                 GenerationLimits limits, KVCache& cache);
  TokenGenerator(TokenGenerator&&) = default;
  ~TokenGenerator();  // hands the fused decoder back to the model, for the next generation
  // The next token, or nullopt once generation has finished. finish_reason() is set as
  // soon as the returned token is the last one (EOS, stop id, length or context).
  std::optional<int32_t> next();
  FinishReason finish_reason() const { return reason_; }
  void cancel() { reason_ = FinishReason::cancelled; }
  // A stop asked for here (from any thread) ends the prefill between two of its passes:
  // next() returns nullopt with FinishReason::cancelled, and the cache keeps the prompt's
  // positions prefilled so far (a prefix, which prompt-cache reuse can continue).
  void set_stop(std::stop_token stop) { stop_ = std::move(stop); }
  // Each token's log-probabilities, with `top` alternatives (0 to kMaxTopLogprobs; -1 =
  // off, the default). Set before the first next(): every step then reads its logits on
  // the host, so the fused decoder is not taken.
  void set_logprobs(int top);
  const TokenLogprobs& logprobs() const { return logprobs_; }  // of the token next() returned last
  // Holds the reply to one JSON object (GenerateOptions::json_object): each draw is among
  // the tokens whose text continues it (`tokens`: each id's text alone; "" for one never
  // allowed, such as a special token), and the generation ends ("complete") once the object
  // closes. Greedy: the most likely such token; sampled: the sampler's draw over them alone.
  // Set before the first next(); the steps then run one at a time, each step's logits read
  // on the host (on a GPU, the fused step's, whose own draw goes unused).
  // `schema`: the JSON Schema the reply is held to (GenerateOptions::json_schema); null: one
  // object with any content.
  void hold_to_json(const text::JsonTokens* tokens, std::shared_ptr<const text::JsonSchema> schema = nullptr);
  const GenerationTimings& timings() const { return timings_; }
  const std::vector<int32_t>& tokens() const { return tokens_; }  // prompt + generated
  // How decode steps ran: "plain" (the ops one by one), or the fused step's path
  // (FusedDecoder::path(), e.g. "persistent").
  std::string decode_path() const {
    const char* p = fused_ ? fused_->path() : "";
    return *p ? std::string("fused-") + p : "plain";
  }

 private:
  Array step(const std::vector<int32_t>& ids);  // -> last-position logits [1, V]; invalid once stopped
  int32_t sample(const Array& logits);          // sampler_'s draw from logits [1, V] or [V]
  int32_t sample_json(const Array& logits);     // the same, among the tokens that continue the JSON
  // One decode step of the last token through the fused decoder; nullopt where the cache
  // cannot serve it (then step() runs instead).
  std::optional<int32_t> fused_step();
  void take_fused_decoder();  // fused_ from the model, once the prompt is prefilled
  const models::CausalLM& model_;
  KVCache& cache_;
  std::unique_ptr<fast::FusedDecoder> fused_;  // null where the device has no fused path
  bool inflight_ = false;  // a greedy fused step for the next token is queued already
  Sampler sampler_;
  int top_logprobs_ = -1;
  TokenLogprobs logprobs_;
  const text::JsonTokens* json_tokens_ = nullptr;  // set: the reply is held to JSON
  text::JsonPrefix json_;
  GenerationLimits limits_;
  std::vector<int32_t> tokens_;
  size_t prompt_len_;
  FinishReason reason_ = FinishReason::none;
  GenerationTimings timings_;
  std::chrono::steady_clock::time_point start_;
  std::stop_token stop_;
};

}  // namespace lmx
