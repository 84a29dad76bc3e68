// The TextModel that every built-in backend serves: a CausalLM on one device, its
// tokenizer and chat template, a prompt cache, and the last call's metrics and error.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>

#include "io/config.h"
#include "lmx/lmx.h"
#include "models/transformer.h"
#include "runtime/generator.h"
#include "runtime/kv_cache.h"
#include "text/tokenizer.h"

namespace lmx::runtime {

// A stream that its model must end before it serves another request, or goes away.
class OpenStream {
 public:
  virtual void end_for_model() = 0;  // ends it (as cancelled); it never touches the model again

 protected:
  ~OpenStream() = default;
};

class LocalTextModel final : public TextModel {
 public:
  LocalTextModel(const std::filesystem::path& dir, const LoadOptions& options, Device device, std::string backend);
  ~LocalTextModel() override;  // ends the open stream

  Stream generate(std::string_view prompt, const GenerateOptions& o, std::stop_token stop) override;
  Stream generate_ids(std::vector<int32_t> prompt, const GenerateOptions& o, std::stop_token stop) override;
  Stream chat(std::span<const Message> messages, const GenerateOptions& o, std::stop_token stop) override;
  std::vector<ClassifyResult> classify(std::span<const std::string> prompts, const GenerateOptions& o) override;
  std::vector<BatchResult> batch_generate(std::span<const std::string> prompts, const GenerateOptions& o) override;
  std::vector<BatchResult> generate_rows(std::span<const std::vector<int32_t>> prompts,
                                         std::span<const GenerateOptions> options,
                                         const RowCallback& on_token, const RowFeed* feed) override;
  std::vector<Token> score_ids(std::span<const int32_t> ids, int top_logprobs) override;
  std::vector<std::vector<Token>> score_batch(std::span<const std::vector<int32_t>> texts, int top_logprobs) override;
  std::vector<int32_t> tokenize(std::string_view text, bool add_special_tokens) const override;
  std::vector<int32_t> chat_ids(std::span<const Message> messages, const GenerateOptions& o) const override;
  std::string detokenize(std::span<const int32_t> ids, bool skip_special_tokens) const override;
  ModelInfo info() const override;
  GenerateMetrics metrics() const override { return metrics_; }
  std::error_code err() const override { return err_; }
  std::string err_message() const override { return err_message_; }

  // For the stream and batch code in this layer.
  const models::CausalLM& model() const { return *model_; }
  const Tokenizer& tokenizer() const;
  bool has_tokenizer() const { return tokenizer_.has_value(); }
  // Each id's text alone ("" for a special token or an id past the tokenizer's), for
  // replies held to JSON (TokenGenerator::hold_to_json); made at the first call.
  const text::JsonTokens& json_tokens();
  void set_cached_prompt_tokens(int n) { metrics_.cached_prompt_tokens = n; }
  // Renders the chat template for `messages` (HF apply_chat_template, tokenize=False).
  std::string render_chat(std::span<const Message> messages, const GenerateOptions& o) const;
  GenerationLimits limits(const GenerateOptions& o) const;
  void record(const GenerationTimings& t, FinishReason r, std::error_code err, std::string message);
  KVCache& prompt_cache() { return cache_; }
  std::vector<int32_t>& cached_tokens() { return cached_; }
  // One request at a time: a new one (and the model's end) first ends the stream still
  // open, which shares the prompt cache; two streams would overwrite each other's keys.
  void set_open_stream(OpenStream* s) { open_ = s; }
  void end_open_stream();

 private:
  Stream start(std::vector<int32_t> prompt, const GenerateOptions& o, std::stop_token stop);
  // Runs `checks` of a call's input; an lmx::Error they throw is the caller's: err() says
  // invalid_input, err_message() why, and the error goes on to the caller.
  template <class Checks>
  void check_input(Checks&& checks) {
    err_ = {};
    try {
      checks();
    } catch (const Error& e) {
      err_ = make_error_code(Errc::invalid_input);
      err_message_ = e.what();
      throw;
    }
  }
  // generate_rows' batch (row_batch.cpp): `first`, numbered `ids`, and with a feed the
  // rows that join, decoded together; each row's result into out[row] (rows past out's
  // size only to the feed).
  void decode_rows(std::vector<RowRequest> first, std::vector<size_t> ids, const RowCallback& on_token,
                   const RowFeed* feed, std::vector<BatchResult>& out);

  std::filesystem::path dir_;
  io::ModelConfig config_;
  std::unique_ptr<models::CausalLM> model_;
  std::optional<Tokenizer> tokenizer_;
  std::string backend_;
  Device device_;
  int64_t context_len_;
  int64_t parameters_ = 0, weight_bytes_ = 0;  // ModelInfo's, counted at load
  std::vector<int32_t> eos_;
  KVCache cache_;                // holds the KV of `cached_` (prompt-cache reuse)
  std::vector<int32_t> cached_;
  std::optional<text::JsonTokens> json_tokens_;  // json_tokens()
  GenerateMetrics metrics_;
  std::error_code err_;
  std::string err_message_;
  OpenStream* open_ = nullptr;
};

// The sampler settings of the public options.
SamplingOptions sampling_options(const GenerateOptions& o);

// HF apply_chat_template(messages, tokenize=False) with the tokenizer's template; errors
// name `where` (the model folder) when there is no template.
std::string render_chat(const Tokenizer& tok, std::span<const Message> messages, const GenerateOptions& o,
                        const std::string& where);
// The same for messages already in the template's JSON form (a list of {"role", "content",
// ...} objects, passed on as they are, as HF passes its dicts): training data's lines.
std::string render_chat(const Tokenizer& tok, const nlohmann::ordered_json& messages, const GenerateOptions& o,
                        const std::string& where);

// Each token of `ids` after the first, scored by `model` given the tokens before it
// (TextModel::score_ids, which checks the ids first), the positions in passes of `budget`.
std::vector<Token> score_tokens(const models::CausalLM& model, std::span<const int32_t> ids, int top_logprobs,
                                Device device, int64_t budget);

// score_tokens for each of `texts`, those that fit a pass of `budget` tokens together
// (right-padded rows, as classify runs them); out[i] scores texts[i].
std::vector<std::vector<Token>> score_texts(const models::CausalLM& model,
                                            const std::vector<std::vector<int32_t>>& texts, int top_logprobs,
                                            Device device, int64_t budget);

// Fills TextModel metrics from a finished generation.
GenerateMetrics make_metrics(const GenerationTimings& t, FinishReason r, Device device);

}  // namespace lmx::runtime
