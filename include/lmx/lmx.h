// lmx: the public inference API.
//
//   auto model = lmx::load_model("/models/Qwen3-0.6B");
//   std::vector<lmx::Message> chat{{"user", "Hello!"}};
//   for (const lmx::Token& t : model->chat(chat)) std::cout << t.text << std::flush;
//   if (model->err()) std::cerr << model->err().message() << "\n";
//
// Thread-safety: one TextModel runs one request at a time; use one TextModel per
// thread, or serialise calls. Streams must be consumed on the thread that made them.
// A new request on a model ends the stream still open on it (that stream then gives no
// more tokens, and finishes as cancelled), and so does the model's end.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "lmx/error.h"

namespace lmx {

struct Token {
  int32_t id = 0;
  std::string text;  // complete UTF-8 only; may be empty while a multi-byte character is pending
  // Where GenerateOptions::logprobs asks: log p(id) under the model (its natural log), and
  // the most likely ids with theirs, most likely first (ties: the lower id). 0 and empty
  // otherwise.
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top_logprobs;
};

// A function call an assistant made (OpenAI's tool_calls[i]).
struct ToolCall {
  std::string id;         // e.g. "call_..."; a "tool" message's tool_call_id names it. May be empty
  std::string name;       // the function's
  std::string arguments;  // a JSON object, as text
};

struct Message {
  std::string role;  // "system", "user", "assistant", "tool"
  std::string content;
  // Initialised, so that {role, content} leaves them out without a warning.
  std::vector<ToolCall> tool_calls = {};  // an assistant's calls (its content may then be empty)
  std::string tool_call_id = {};          // a "tool" message: the call whose result it holds
};

inline constexpr int kMaxTopLogprobs = 20;  // GenerateOptions::logprobs' largest

struct GenerateOptions {
  int max_tokens = 256;
  float temperature = 0;  // 0 = greedy
  float top_p = 1, min_p = 0;
  int top_k = 0;  // 0 = off. On a GPU every draw is made there: only the token comes back
  float repeat_penalty = 1;  // HF repetition_penalty
  float presence_penalty = 0, frequency_penalty = 0;
  std::vector<std::pair<int32_t, float>> logit_bias;
  std::optional<uint64_t> seed;
  std::vector<int32_t> stop_tokens;        // in addition to the model's end-of-sequence ids
  std::vector<std::string> stop_strings;   // text that ends generation (not emitted)
  bool ignore_eos = false;
  bool skip_special_tokens = true;         // leave control tokens out of Token::text
  bool add_generation_prompt = true;       // chat(): end the template with the assistant header
  // chat(): the reply goes on from the last message's text (HF's continue_final_message: the
  // template's end-of-turn after it is cut), e.g. a reply begun for the model. Needs
  // add_generation_prompt false.
  bool continue_final_message = false;
  // Extra chat-template variables as JSON text, e.g. {"enable_thinking", "false"}.
  std::vector<std::pair<std::string, std::string>> template_vars;
  // chat(): the tools the model may call, as JSON text in OpenAI's form, [{"type": "function",
  // "function": {"name", "description", "parameters"}}]; the template lists them, as HF's
  // apply_chat_template(tools=...) does. parse_tool_calls reads the calls in the reply.
  std::string tools;
  bool return_logits = false;              // classify(): keep the full last-position logits
  // The reply held to one JSON object, token by token (OpenAI's response_format
  // "json_object"): each draw is among the tokens whose text continues it, and the reply
  // ends once the object closes (finish_reason "complete"). The steps then run one at a
  // time, each reading its logits on the host (in generate_rows, the held rows' logits,
  // while the others draw as they would).
  bool json_object = false;
  // The reply held to this JSON Schema (its JSON text; OpenAI's response_format
  // "json_schema"), as json_object holds it to an object. The root must be an object or an
  // array. Read: type (or a list of types), properties, required, additionalProperties,
  // items, minItems, maxItems, minLength, maxLength, enum, const, anyOf, oneOf (of branches
  // that start apart), allOf of one schema and $ref inside the schema; annotations (title,
  // description, default, ...) are ignored, and any other keyword (pattern, format, minimum,
  // ...) is refused by name rather than left unenforced. Properties are written in the
  // schema's order, each at most once, and no key it does not list.
  std::string json_schema;
  // Streams and generate_rows: each Token's logprob, and this many top_logprobs (0 to
  // kMaxTopLogprobs); -1 = off. They are the model's own distribution, before penalties,
  // bias, temperature and filters (as vLLM's default), so that they score text whatever the
  // draw. On a GPU the fused decode step's logits are scored on the device, one step at a
  // time (no step queued ahead), for a stream as for a batch.
  int logprobs = -1;
};

struct LoadOptions {
  std::string backend;  // "" = the best available ("cuda" when a GPU is visible, else "cpu")
  std::string device;   // "" = the backend's default, or "cpu", "cuda:N"
  std::string dtype;    // "" = the weights' dtype; "f32", "bf16", "f16"
  int context_len = 0;  // 0 = the model's max_position_embeddings
  // A LoRA adapter folder in PEFT's layout (adapter_config.json, adapter_model.safetensors),
  // e.g. what `lmx lora` writes. Its products run beside the weights (no fused decode step).
  std::string adapter_path;
  // The same bits, and so the same tokens, on every run of a request on the same device
  // and build. Off by default: CUDA's one-sequence decode step then adds its down
  // projections' partial sums with f32 atomics, a few percent faster on the H200, whose
  // order varies from run to run, so that a near tie between two tokens may go either way.
  // This changes only that step.
  bool deterministic = false;
};

struct ModelInfo {
  std::filesystem::path path;
  std::string model_type, architecture, backend, device, dtype;
  int64_t vocab_size = 0, hidden_size = 0, num_layers = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
  int64_t intermediate_size = 0, context_length = 0, parameters = 0, weight_bytes = 0;
  int quant_bits = 0, quant_group_size = 0;  // 0 = not quantized
  bool has_tokenizer = false, has_chat_template = false;
  // The form in which the chat template asks for tool calls: "hermes" (<tool_call>{...}</tool_call>:
  // Qwen2.5, Qwen3), "llama3-json" ({"name", "parameters"}: Llama 3.1-3.3) or "" (none read here).
  std::string tool_call_format;
};

struct GenerateMetrics {
  int prompt_tokens = 0, cached_prompt_tokens = 0, generated_tokens = 0;
  double prefill_s = 0, decode_s = 0, time_to_first_token_s = 0;
  double prefill_tok_per_s = 0, decode_tok_per_s = 0;
  size_t peak_memory = 0, active_memory = 0;
  double gpu_utilization = -1;  // percent, from NVML on CUDA; -1 where unavailable
  // "eos", "stop_token", "stop_string", "length", "context_length", "cancelled", "error", or
  // "complete" (a reply held to JSON whose value closed: json_object, json_schema)
  std::string finish_reason;
  // How the decode steps ran: "plain" (the ops one by one), "fused-persistent" (the
  // device's fused step as one kernel per token: CUDA's default for one sequence) or
  // "fused-graph" (the fused step as a kernel per phase, replayed as a CUDA graph: batch_generate's
  // batched step, or LMX_FUSED_PERSISTENT=0); "" when there was no decode step.
  std::string decode_path;
};

// Why a stream ended early (err() == {} after a normal stop).
enum class Errc { cancelled = 1, out_of_memory, invalid_input, failed };
const std::error_category& error_category();
inline std::error_code make_error_code(Errc e) { return {int(e), error_category()}; }

// A stream of tokens, produced as you pull them. Breaking out of the loop ends the
// generation; so does a std::stop_token that fires (within one decode step).
class Stream {
 public:
  struct Source {  // implemented by backends
    virtual ~Source() = default;
    virtual std::optional<Token> next() = 0;  // nullopt at the end
    virtual void cancel() = 0;
  };
  class iterator {
   public:
    using value_type = Token;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    explicit iterator(Stream* s) : s_(s) { ++*this; }
    const Token& operator*() const { return cur_; }
    const Token* operator->() const { return &cur_; }
    iterator& operator++();
    void operator++(int) { ++*this; }
    bool operator==(std::default_sentinel_t) const { return s_ == nullptr; }

   private:
    Stream* s_ = nullptr;
    Token cur_;
  };
  explicit Stream(std::unique_ptr<Source> src) : src_(std::move(src)) {}
  Stream(Stream&&) noexcept = default;
  Stream& operator=(Stream&&) noexcept = default;
  ~Stream();  // cancels an unfinished generation
  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() { return {}; }
  std::optional<Token> next();
  // Collects the rest of the stream.
  std::string text();

 private:
  std::unique_ptr<Source> src_;
  bool done_ = false;
};

struct ClassifyResult {
  int32_t token = 0;          // argmax of the last-position logits
  std::string text;           // that token's text
  float logit = 0;
  std::vector<float> logits;  // the whole row, when GenerateOptions::return_logits
};

struct BatchResult {
  std::vector<int32_t> ids;
  std::string text;
  std::string finish_reason;
  // Why the row could not run or go on (finish_reason "error"); empty otherwise. "[memory]
  // ..." where the device had no memory for it (a row that joins a batch: the others go on).
  std::string error;
};

// A request that joins a generate_rows batch while it decodes.
struct RowRequest {
  std::vector<int32_t> prompt;
  GenerateOptions options;
};

// Continuous batching (TextModel::generate_rows): requests join the batch between its
// decode steps, each in the place of one that has ended, as a server's requests come.
// A joining prompt is prefilled while the other rows wait, then decodes with them.
struct RowFeed {
  size_t max_rows = 16;  // the most rows that decode at once (at least the first prompts)
  // Asked between decode steps while fewer than max_rows rows decode: up to `room`
  // requests to start now (none: none join). They take the row numbers after the last
  // given, in order (the first prompts are rows 0 to n - 1). A request that cannot run
  // (see generate_rows; its draws must agree with the first row's) fails alone, in `done`.
  std::function<std::vector<RowRequest>(size_t room)> join;
  // Each row's result as soon as it ends, the first prompts' too.
  std::function<void(size_t row, BatchResult result)> done;
};

class TextModel {
 public:
  virtual ~TextModel() = default;
  virtual Stream generate(std::string_view prompt, const GenerateOptions& = {}, std::stop_token = {}) = 0;
  // Token ids in, as `lmx generate --prompt-ids`.
  virtual Stream generate_ids(std::vector<int32_t> prompt, const GenerateOptions& = {}, std::stop_token = {}) = 0;
  virtual Stream chat(std::span<const Message> messages, const GenerateOptions& = {}, std::stop_token = {}) = 0;
  virtual std::vector<ClassifyResult> classify(std::span<const std::string> prompts, const GenerateOptions& = {}) = 0;
  virtual std::vector<BatchResult> batch_generate(std::span<const std::string> prompts,
                                                  const GenerateOptions& = {}) = 0;
  // Token-id prompts decoded together in one batch, as batch_generate's are, but each row
  // with its own options and streamed: on_token(row, token) gets each row's tokens as they
  // come, text as a Stream gives it (stop strings held back), and returning false ends that
  // row ("cancelled"). The rows' draws must agree (temperature, top-k, top-p, min-p,
  // penalties, logit bias); their seeds, lengths, stop conditions and templates' text may
  // differ, and so may their logprobs (each Token then carries its scores) and their holds
  // to JSON (json_object, json_schema). Throws lmx::Error for rows that do not agree. A
  // prompt that cannot run (empty, an id outside the vocabulary, past the context:
  // check_prompt), or a json_schema the reader refuses, fails its row alone: finish_reason
  // "error" and BatchResult::error, and the other rows run. Returns each row's ids, text
  // and finish reason ("eos", "stop_token", "stop_string", "length", "context_length",
  // "complete", "cancelled" or "error").
  // With a RowFeed, rows also join while the batch decodes (continuous batching), and each
  // row's result comes as soon as it ends; the call returns when no row is left.
  using RowCallback = std::function<bool(size_t row, const Token& token)>;
  virtual std::vector<BatchResult> generate_rows(std::span<const std::vector<int32_t>> prompts,
                                                 std::span<const GenerateOptions> options,
                                                 const RowCallback& on_token = {}, const RowFeed* feed = nullptr) = 0;
  // Scores token ids under the model, as evaluation harnesses ask: for each token after the
  // first, its log-probability given the tokens before it (Token::logprob) and the
  // `top_logprobs` (0 to kMaxTopLogprobs) most likely tokens at its place, as
  // GenerateOptions::logprobs gives them. Returns ids.size() - 1 Tokens, in order; their
  // text is empty (a token alone may be part of a character: detokenize gives its bytes).
  // Throws lmx::Error for an id outside the vocabulary or ids past the context length.
  virtual std::vector<Token> score_ids(std::span<const int32_t> ids, int top_logprobs = 0) = 0;
  // score_ids for many texts at once, as a harness's loglikelihood requests come: texts
  // that fit a prefill pass together run as one forward pass, where each would take its
  // own. out[i] is texts[i]'s scores. Throws lmx::Error, naming the text, for
  // an empty text, an id outside the vocabulary or a text past the context length.
  virtual std::vector<std::vector<Token>> score_batch(std::span<const std::vector<int32_t>> texts,
                                                      int top_logprobs = 0) = 0;
  virtual std::vector<int32_t> tokenize(std::string_view text, bool add_special_tokens = true) const = 0;
  // The token ids chat() runs for `messages`: the model's chat template rendered with `o`'s
  // template variables (as HF's apply_chat_template) and encoded. Throws lmx::Error where
  // the model has no template or the template fails.
  virtual std::vector<int32_t> chat_ids(std::span<const Message> messages, const GenerateOptions& o = {}) const = 0;
  virtual std::string detokenize(std::span<const int32_t> ids, bool skip_special_tokens = false) const = 0;
  virtual ModelInfo info() const = 0;
  virtual GenerateMetrics metrics() const = 0;  // of the last call
  virtual std::error_code err() const = 0;      // why the last stream ended early, if it did
  virtual std::string err_message() const = 0;  // the error's full text
};

// Whether two requests draw alike, and so may share generate_rows: the same temperature,
// top-k, top-p, min-p, penalties and logit bias (seeds may differ).
bool draws_alike(const GenerateOptions& a, const GenerateOptions& b);

// Throws lmx::Error where `ids` cannot be a prompt of the model `info` describes: no ids,
// an id outside its vocabulary, or more ids than its context length. Every generation
// checks its prompt so; a server that gathers requests into a batch checks each one as it
// comes, to refuse it at once.
void check_prompt(const ModelInfo& info, std::span<const int32_t> ids);

// A chat reply read for tool calls: the calls it makes, in order (their ids empty, their
// arguments compact JSON), and its text outside them.
struct ToolCallReply {
  std::string content;
  std::vector<ToolCall> calls;
};
// Reads the calls in a reply to a chat that offered tools, in `format`
// (ModelInfo::tool_call_format). A reply whose calls do not read as that format's JSON (a
// name, and an object of arguments) is all content, with no calls: the model's text reaches
// the user, as vLLM's parsers leave it. "" reads no calls.
ToolCallReply parse_tool_calls(std::string_view reply, std::string_view format);
// For a reply still streaming: how many of its leading bytes are content whatever follows.
// What could begin a call (part of "<tool_call>" and the whitespace before it, or a
// llama3-json reply's opening brace) is held back; once the reply ends, parse_tool_calls'
// content past what was sent is the rest.
size_t tool_call_free_prefix(std::string_view reply, std::string_view format);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual bool available() const = 0;
  virtual int priority() const = 0;  // load_model() picks the available backend with the highest
  virtual std::unique_ptr<TextModel> load_model(const std::filesystem::path& dir, const LoadOptions& options) = 0;
};

void register_backend(std::unique_ptr<Backend> backend);
Backend* get_backend(std::string_view name);
std::vector<std::string> list_backends();
// Loads a model folder on the best available backend (or LoadOptions::backend).
std::unique_ptr<TextModel> load_model(const std::filesystem::path& dir, const LoadOptions& options = {});
// The device work goes to when none is named: "cuda:0" where the cuda backend is
// available (a GPU is visible to a CUDA build), else "cpu".
std::string default_device();

struct DiscoveredModel {
  std::filesystem::path path;
  std::string model_type;
  int quant_bits = 0, quant_group_size = 0;
  int num_files = 0;
  uint64_t total_bytes = 0;
  bool has_tokenizer = false;
  std::string error;  // non-empty for a broken folder: why it cannot be loaded
};
// Scans `dir` and two levels below for folders with config.json and *.safetensors.
std::vector<DiscoveredModel> discover(const std::filesystem::path& dir);

// Memory control per device ("cpu", "cuda:0"); "" means the default device of the best
// backend (the first GPU when one is visible, else the CPU). What a loaded model keeps only
// to spare work between calls (its idle fused decoders: on CUDA, with the LM head's int8
// copy) is let go by clear_cache of its device, and before an allocation there would fail.
void set_cache_limit(size_t bytes, std::string_view device = "");
void set_memory_limit(size_t bytes, std::string_view device = "");  // 0 = no limit
size_t active_memory(std::string_view device = "");
size_t peak_memory(std::string_view device = "");
size_t cache_memory(std::string_view device = "");
void reset_peak_memory(std::string_view device = "");
void clear_cache(std::string_view device = "");

}  // namespace lmx

template <>
struct std::is_error_code_enum<lmx::Errc> : std::true_type {};
