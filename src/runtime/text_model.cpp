#include "runtime/text_model.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <utility>

#include "core/allocator.h"
#include "core/error.h"
#include "models/loader.h"
#include "models/lora.h"
#include "ops/kernels.h"
#include "runtime/token_text.h"
#include "text/jinja/jinja.h"
#include "text/jinja/strings.h"
#include "text/tool_calls.h"

namespace lmx::runtime {
namespace {

// One streamed generation: token ids from the TokenGenerator, text from the streaming
// detokenizer, stop strings held back, errors turned into err() codes. It shares the
// model's prompt cache, so the model ends it (end_for_model) before another request, and
// before the model itself goes: after that the stream gives no more tokens and never
// touches the model again.
class GenerationSource final : public Stream::Source, public OpenStream {
 public:
  GenerationSource(LocalTextModel& m, std::vector<int32_t> prompt, const GenerateOptions& o, std::stop_token stop,
                   int64_t cached)
      : m_(&m), stop_(std::move(stop)),
        text_(m.has_tokenizer() ? &m.tokenizer() : nullptr, o.skip_special_tokens, o.stop_strings) {
    // The schema is read first, so that one refused leaves the model as it was.
    std::shared_ptr<const text::JsonSchema> schema;
    if (!o.json_schema.empty())
      schema = std::make_shared<const text::JsonSchema>(text::JsonSchema::compile(o.json_schema));
    gen_.emplace(m.model(), std::move(prompt), sampling_options(o), m.limits(o), m.prompt_cache());
    gen_->set_logprobs(o.logprobs);
    if (schema || o.json_object) gen_->hold_to_json(&m.json_tokens(), std::move(schema));
    logprobs_ = o.logprobs >= 0;
    cached_ = int(cached);
    gen_->set_stop(stop_);  // a long prompt's prefill stops between its passes
    m.set_open_stream(this);
  }
  ~GenerationSource() override {
    finish();
    if (m_) m_->set_open_stream(nullptr);
  }

  void end_for_model() override {
    cancel();
    gen_.reset();  // its decoder goes back to the model, which is still whole
    m_ = nullptr;
  }

  std::optional<Token> next() override {
    if (finished_) return std::nullopt;
    if (stop_.stop_requested()) gen_->cancel();
    std::optional<int32_t> id;
    try {
      id = gen_->next();
    } catch (const OutOfMemory& e) {
      fail_with(Errc::out_of_memory, e.what());
      return std::nullopt;
    } catch (const Error& e) {
      fail_with(Errc::failed, e.what());
      return std::nullopt;
    }
    if (!id) {
      finish();
      return std::nullopt;
    }
    const FinishReason why = gen_->finish_reason();
    const bool control = why == FinishReason::eos || why == FinishReason::stop_token;
    TokenText::Piece piece = text_.push(*id, control, why != FinishReason::none);
    if (piece.stopped) {
      if (why == FinishReason::none) gen_->cancel();
      stopped_by_string_ = true;
    }
    if (gen_->finish_reason() != FinishReason::none || stopped_by_string_) finish();
    Token token;
    token.id = *id;
    token.text = std::move(piece.text);
    if (logprobs_) {
      token.logprob = gen_->logprobs().chosen;
      token.top_logprobs = gen_->logprobs().top;
    }
    return token;
  }

  void cancel() override {
    if (finished_) return;
    gen_->cancel();
    finish();
  }

 private:
  void fail_with(Errc e, const std::string& msg) {
    failed_ = true;
    err_ = make_error_code(e);
    msg_ = msg;
    finish();
  }

  void finish() {
    if (finished_) return;
    finished_ = true;
    FinishReason r = gen_->finish_reason();
    if (stopped_by_string_) r = FinishReason::stop_string;
    if (failed_) r = FinishReason::error;
    std::error_code err = err_;
    if (!failed_ && r == FinishReason::cancelled) err = make_error_code(Errc::cancelled);
    // The cache holds every token fed to the model: all but the last one sampled. After
    // a failure its contents are unknown, so it is dropped.
    std::vector<int32_t>& cached = m_->cached_tokens();
    if (failed_) {
      m_->prompt_cache().truncate(0);
      cached.clear();
    } else {
      const auto& t = gen_->tokens();
      cached.assign(t.begin(), t.begin() + m_->prompt_cache().length());
    }
    GenerationTimings tm = gen_->timings();
    m_->record(tm, r, err, msg_);
    m_->set_cached_prompt_tokens(cached_);
  }

  LocalTextModel* m_;  // null once the model has ended this stream
  std::stop_token stop_;
  std::optional<TokenGenerator> gen_;  // empty once the model has ended this stream
  TokenText text_;
  bool finished_ = false, failed_ = false, stopped_by_string_ = false;
  bool logprobs_ = false;  // GenerateOptions::logprobs asked for
  int cached_ = 0;
  std::error_code err_;
  std::string msg_;
};

}  // namespace

SamplingOptions sampling_options(const GenerateOptions& o) {
  SamplingOptions s;
  s.temperature = o.temperature;
  s.top_k = o.top_k;
  s.top_p = o.top_p;
  s.min_p = o.min_p;
  s.repetition_penalty = o.repeat_penalty;
  s.presence_penalty = o.presence_penalty;
  s.frequency_penalty = o.frequency_penalty;
  s.logit_bias = o.logit_bias;
  s.seed = o.seed;
  return s;
}

GenerateMetrics make_metrics(const GenerationTimings& t, FinishReason r, Device device) {
  GenerateMetrics m;
  m.prompt_tokens = t.prompt_tokens;
  m.generated_tokens = t.generated_tokens;
  m.prefill_s = t.prefill_s;
  m.decode_s = t.decode_s;
  m.time_to_first_token_s = t.time_to_first_token_s;
  m.prefill_tok_per_s = t.prefill_s > 0 ? t.prompt_tokens / t.prefill_s : 0;
  m.decode_tok_per_s = t.decode_s > 0 ? (t.generated_tokens - 1) / t.decode_s : 0;
  const MemoryStats s = allocator_for(device).stats();
  m.peak_memory = s.peak;
  m.active_memory = s.active;
  m.finish_reason = finish_reason_name(r);
  m.decode_path = t.decode_path;
  if (device.type == Device::Type::cuda) m.gpu_utilization = detail::kernels_for(device).utilization();
  return m;
}

LocalTextModel::LocalTextModel(const std::filesystem::path& dir, const LoadOptions& options, Device device,
                               std::string backend)
    : dir_(dir),
      config_(io::load_model_config(dir)),
      backend_(std::move(backend)),
      device_(device),
      cache_(0) {
  models::ModelLoadOptions mo;
  mo.device = device;
  mo.dtype = models::compute_dtype(options.dtype, "load");
  mo.deterministic = options.deterministic;
  model_ = models::load_causal_lm(dir, mo);
  if (!options.adapter_path.empty()) models::load_lora(*model_, options.adapter_path);
  if (std::filesystem::exists(dir / "tokenizer.json")) tokenizer_.emplace(Tokenizer::from_dir(dir));
  context_len_ = options.context_len > 0 ? options.context_len : model_->spec().max_position_embeddings;
  eos_ = model_->spec().eos_token_ids;
  if (tokenizer_) {
    if (auto e = tokenizer_->config().eos_token_id) eos_.push_back(*e);
  }
  cache_ = KVCache(*model_, /*rotate_sliding=*/true);
  // Counted once: visiting the weights lets the model's kept fused decoders go (a visitor
  // may replace weights), which info() between two generations must not cost them.
  model_->visit("", [&](const std::string&, Array& p, const Shape&, fast::QuantizedMatrix* q) {
    if (q && q->packed.valid()) {  // kept packed: the matrix's elements, the codes' and groups' bytes
      parameters_ += q->rows() * q->cols();
      weight_bytes_ += int64_t(q->packed.nbytes() + q->scales.nbytes() + q->biases.nbytes());
      return;
    }
    parameters_ += p.size();
    weight_bytes_ += int64_t(p.nbytes());
  });
}

const Tokenizer& LocalTextModel::tokenizer() const {
  LMX_CHECK(tokenizer_.has_value(), "tokenizer", dir_.string(),
            " has no tokenizer.json; pass token ids (generate_ids) or add the tokenizer files");
  return *tokenizer_;
}

const text::JsonTokens& LocalTextModel::json_tokens() {
  if (json_tokens_) return *json_tokens_;
  const Tokenizer& tok = tokenizer();
  std::vector<std::string> pieces(size_t(model_->spec().vocab_size));
  for (int32_t id = 0; id < int32_t(pieces.size()); ++id)
    if (size_t(id) < tok.vocab_size() && !tok.is_special(id)) pieces[size_t(id)] = tok.decode({&id, 1}, false);
  return json_tokens_.emplace(std::move(pieces));
}

GenerationLimits LocalTextModel::limits(const GenerateOptions& o) const {
  GenerationLimits l;
  l.max_tokens = o.max_tokens;
  l.eos_tokens = eos_;
  l.stop_tokens = o.stop_tokens;
  l.ignore_eos = o.ignore_eos;
  l.context_length = context_len_;
  return l;
}

void LocalTextModel::record(const GenerationTimings& t, FinishReason r, std::error_code err, std::string message) {
  metrics_ = make_metrics(t, r, device_);
  err_ = err;
  err_message_ = err ? (message.empty() ? err.message() : std::move(message)) : std::string();
}

LocalTextModel::~LocalTextModel() { end_open_stream(); }

void LocalTextModel::end_open_stream() {
  if (OpenStream* s = std::exchange(open_, nullptr)) s->end_for_model();
}

Stream LocalTextModel::start(std::vector<int32_t> prompt, const GenerateOptions& o, std::stop_token stop) {
  end_open_stream();  // before the prompt cache is looked at: that stream was using it
  // Prompt-cache reuse: keep the KV of the longest common prefix, but always leave at
  // least one prompt token to run, since its logits pick the first new token.
  size_t common = 0;
  while (common < cached_.size() && common + 1 < prompt.size() && cached_[common] == prompt[common]) ++common;
  if (!cache_.truncate(int64_t(common))) common = 0;
  cached_.resize(common);
  std::unique_ptr<GenerationSource> source;
  check_input(
      [&] { source = std::make_unique<GenerationSource>(*this, std::move(prompt), o, std::move(stop), common); });
  return Stream(std::move(source));
}

Stream LocalTextModel::generate(std::string_view prompt, const GenerateOptions& o, std::stop_token stop) {
  return start(tokenizer().encode(prompt, true), o, std::move(stop));
}

Stream LocalTextModel::generate_ids(std::vector<int32_t> prompt, const GenerateOptions& o, std::stop_token stop) {
  return start(std::move(prompt), o, std::move(stop));
}

std::string LocalTextModel::render_chat(std::span<const Message> messages, const GenerateOptions& o) const {
  return runtime::render_chat(tokenizer(), messages, o, dir_.string());
}

std::string render_chat(const Tokenizer& tok, std::span<const Message> messages, const GenerateOptions& o,
                        const std::string& where) {
  using Json = nlohmann::ordered_json;
  Json list = Json::array();
  for (size_t i = 0; i < messages.size(); ++i) {
    const Message& m = messages[i];
    Json message = {{"role", m.role}, {"content", m.content}};
    // Calls in OpenAI's form, their arguments as objects (as HF's templates expect them: Llama's
    // write them with tojson), as vLLM passes them on.
    for (size_t c = 0; c < m.tool_calls.size(); ++c) {
      const ToolCall& call = m.tool_calls[c];
      const Json args = Json::parse(call.arguments, nullptr, false);
      LMX_CHECK(args.is_object(), "chat", "message ", i, "'s tool call ", c, " (", call.name,
                "): arguments must be a JSON object, got '", call.arguments, "'");
      Json entry = {{"type", "function"}, {"function", {{"name", call.name}, {"arguments", args}}}};
      if (!call.id.empty()) entry["id"] = call.id;
      message["tool_calls"].push_back(std::move(entry));
    }
    if (!m.tool_call_id.empty()) message["tool_call_id"] = m.tool_call_id;
    list.push_back(std::move(message));
  }
  return render_chat(tok, list, o, where);
}

namespace {

// A rendered chat cut right after its last message's text, as HF's continue_final_message
// cuts it: where the template kept the text's own trailing space, after that; where it
// trimmed it, after the trimmed text. Whitespace is Python's (str.strip), as HF strips it.
std::string open_final_message(const std::string& text, const nlohmann::ordered_json& messages) {
  const nlohmann::ordered_json* content = messages.empty() ? nullptr : &messages.back()["content"];
  std::string final;
  if (content && content->is_string()) {
    final = content->get<std::string>();
  } else if (content && content->is_array()) {  // content parts: the last that holds text
    for (auto it = content->rbegin(); it != content->rend() && final.empty(); ++it)
      if (it->is_object() && it->contains("text") && (*it)["text"].is_string()) final = (*it)["text"];
  }
  const std::string stripped = jinja::strings::strip(final, std::nullopt, true, true);
  const std::string leading = jinja::strings::strip(final, std::nullopt, true, false);
  const size_t at = text.rfind(stripped);  // an empty text "appears" at the end: nothing is cut, as in HF
  LMX_CHECK(at != std::string::npos, "chat",
            "continue_final_message: the last message's text does not appear in the rendered chat (the "
            "template rewrites it); the reply cannot go on from it");
  const bool kept = text.compare(at, leading.size(), leading) == 0;  // its trailing spacing kept
  return text.substr(0, at + (kept ? leading.size() : stripped.size()));
}

}  // namespace

std::string render_chat(const Tokenizer& tok, const nlohmann::ordered_json& messages, const GenerateOptions& o,
                        const std::string& where) {
  using Json = nlohmann::ordered_json;
  const std::string& tmpl = tok.config().chat_template;
  LMX_CHECK(!(o.continue_final_message && o.add_generation_prompt), "chat",
            "continue_final_message goes on from the last message, so add_generation_prompt must be false");
  LMX_CHECK(!tmpl.empty(), "chat", where, " has no chat template (tokenizer_config.json or chat_template.jinja)");
  Json ctx;
  ctx["messages"] = messages;
  if (!o.tools.empty()) {
    // A template that never names them would drop the tools without a word.
    LMX_CHECK(tmpl.find("tools") != std::string::npos, "chat", where,
              "'s chat template does not list tools; leave GenerateOptions::tools empty for this model");
    ctx["tools"] = Json::parse(o.tools, nullptr, false);
    LMX_CHECK(ctx["tools"].is_array() && std::all_of(ctx["tools"].begin(), ctx["tools"].end(),
                                                     [](const Json& t) { return t.is_object(); }),
              "chat", "tools must be a JSON list of objects ([{\"type\": \"function\", \"function\": {...}}]), got '",
              o.tools, "'");
  }
  ctx["add_generation_prompt"] = o.add_generation_prompt;
  for (const auto& [name, value] : tok.config().special_token_strings()) ctx[name] = value;
  for (const auto& [key, json] : o.template_vars) {
    try {
      ctx[key] = Json::parse(json);
    } catch (const std::exception&) {
      fail("chat", "template variable '", key, "' is not valid JSON: ", json);
    }
  }
  const std::string text = jinja::Template(tmpl).render(ctx);
  return o.continue_final_message ? open_final_message(text, messages) : text;
}

Stream LocalTextModel::chat(std::span<const Message> messages, const GenerateOptions& o, std::stop_token stop) {
  return start(chat_ids(messages, o), o, std::move(stop));
}

std::vector<int32_t> LocalTextModel::chat_ids(std::span<const Message> messages, const GenerateOptions& o) const {
  // The template writes BOS itself, so the text is encoded without special tokens (as HF does).
  return tokenizer().encode(render_chat(messages, o), false);
}

std::vector<int32_t> LocalTextModel::tokenize(std::string_view text, bool add_special_tokens) const {
  return tokenizer().encode(text, add_special_tokens);
}

std::string LocalTextModel::detokenize(std::span<const int32_t> ids, bool skip_special_tokens) const {
  return tokenizer().decode(ids, skip_special_tokens);
}

ModelInfo LocalTextModel::info() const {
  const models::DecoderSpec& s = model_->spec();
  ModelInfo i;
  i.path = dir_;
  i.model_type = s.model_type;
  i.architecture = config_.architectures.empty() ? "" : config_.architectures[0];
  i.backend = backend_;
  i.device = device_.str();
  i.dtype = std::string(dtype_name(model_->dtype()));
  i.vocab_size = s.vocab_size;
  i.hidden_size = s.hidden_size;
  i.intermediate_size = s.intermediate_size;
  i.num_layers = model_->num_layers();
  i.num_heads = config_.num_attention_heads;
  i.num_kv_heads = config_.num_key_value_heads;
  i.head_dim = config_.head_dim;
  i.context_length = context_len_;
  i.parameters = parameters_;
  i.weight_bytes = weight_bytes_;
  if (config_.quantization) {
    i.quant_bits = int(config_.quantization->base.bits);
    i.quant_group_size = int(config_.quantization->base.group_size);
  }
  i.has_tokenizer = tokenizer_.has_value();
  i.has_chat_template = tokenizer_ && !tokenizer_->config().chat_template.empty();
  if (i.has_chat_template) i.tool_call_format = text::tool_call_format(tokenizer_->config().chat_template);
  return i;
}

}  // namespace lmx::runtime
