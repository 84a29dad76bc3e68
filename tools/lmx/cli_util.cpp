#include "cli_util.h"

#include "core/error.h"
#include "io/json_file.h"
#include "text/json_schema.h"
#include "text/unicode.h"

namespace lmx::cli {

void warn_if_not_utf8(std::string_view text, const char* what) {
  if (!detail::is_valid_utf8(text))
    std::fprintf(stderr,
                 "lmx: warning: %s is not valid UTF-8; each invalid byte sequence is read as U+FFFD, as HF "
                 "tokenizers reads bytes decoded with errors=\"replace\"\n",
                 what);
}

void ModelArgs::add(CLI::App* cmd) {
  cmd->add_option("MODEL", dir, "Model folder (config.json, *.safetensors, tokenizer.json)")->required();
  cmd->add_option("--device", device, "cpu, cuda or cuda:N (default: the best available)");
  cmd->add_option("--backend", backend, "cpu or cuda (default: the best available)");
  cmd->add_option("--dtype", dtype, "Compute dtype: f32, bf16 or f16 (default: the weights' dtype)");
  cmd->add_option("--context", context, "Context length (default: the model's max_position_embeddings)");
  cmd->add_option("--adapter", adapter, "A LoRA adapter folder (PEFT's layout, as `lmx lora` writes it)");
  cmd->add_flag("--deterministic", deterministic,
                "The same tokens on every run: CUDA's decode step leaves out its f32 atomics (a few percent slower)");
}

std::unique_ptr<TextModel> ModelArgs::load() const {
  LoadOptions o;
  o.device = device;
  o.backend = backend;
  if (backend.empty() && device.rfind("cpu", 0) == 0) o.backend = "cpu";
  if (backend.empty() && device.rfind("cuda", 0) == 0) o.backend = "cuda";
  o.dtype = dtype;
  o.context_len = context;
  o.deterministic = deterministic;
  o.adapter_path = adapter;
  return load_model(dir, o);
}

void GenerateArgs::add(CLI::App* cmd, bool chat) {
  cmd->add_option("--max-tokens", max_tokens, "Most tokens to generate")->capture_default_str();
  cmd->add_option("--temperature", temperature, "0 = greedy; 0.7 is a common choice")->capture_default_str();
  cmd->add_option("--top-k", top_k, "Keep only the k most likely tokens (0 = off)");
  cmd->add_option("--top-p", top_p, "Keep the smallest set of tokens with this probability mass (1 = off)");
  cmd->add_option("--min-p", min_p, "Drop tokens below min_p x the top token's probability (0 = off)");
  cmd->add_option("--repeat-penalty", repeat_penalty, "HF repetition penalty, e.g. 1.1 (1 = off)");
  cmd->add_option("--presence-penalty", presence_penalty, "Subtract this from every token seen so far");
  cmd->add_option("--frequency-penalty", frequency_penalty, "Subtract this times each token's count so far");
  cmd->add_option(
      "--seed", seed,
      "Seed for reproducible sampling. On a GPU every draw (penalties and bias included) is made "
      "on the device, so that only the token comes back each step");
  cmd->add_option("--stop-token", stop_tokens, "Also stop after this token id (repeatable)");
  cmd->add_option("--stop", stop_strings, "Stop before this text (repeatable); it is not printed");
  cmd->add_flag("--ignore-eos", ignore_eos, "Keep generating past end-of-sequence tokens");
  cmd->add_flag("--show-special", show_special, "Print control tokens such as <|im_end|>");
  cmd->add_flag("--json-object", json_object,
                "Hold the reply to one JSON object: each token is drawn among those that continue it, and "
                "the reply ends when the object closes (the steps run one at a time)");
  cmd->add_option("--json-schema", json_schema,
                  "Hold the reply to this JSON Schema: a file, or the schema's text (starting with '{'). Its "
                  "properties come in the schema's order; keywords it cannot enforce (pattern, format, minimum, "
                  "...) are refused by name. E.g. --json-schema '{\"type\": \"object\", \"properties\": "
                  "{\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}'");
  if (chat)
    cmd->add_option("--set", template_vars, "Chat-template variable as KEY=JSON, e.g. enable_thinking=false");
}

GenerateOptions GenerateArgs::options() const {
  GenerateOptions o;
  o.max_tokens = max_tokens;
  o.temperature = temperature;
  o.top_k = top_k;
  o.top_p = top_p;
  o.min_p = min_p;
  o.repeat_penalty = repeat_penalty;
  o.presence_penalty = presence_penalty;
  o.frequency_penalty = frequency_penalty;
  if (seed >= 0) o.seed = uint64_t(seed);
  o.stop_tokens = stop_tokens;
  o.stop_strings = stop_strings;
  o.ignore_eos = ignore_eos;
  o.skip_special_tokens = !show_special;
  o.json_object = json_object;
  if (!json_schema.empty()) {
    o.json_schema = json_schema.front() == '{' ? json_schema : io::read_text_file(json_schema, "--json-schema");
    text::JsonSchema::compile(o.json_schema);  // refused here, before the model loads
  }
  for (const std::string& kv : template_vars) {
    const size_t eq = kv.find('=');
    LMX_CHECK(eq != std::string::npos && eq > 0, "cli", "--set expects KEY=JSON, got '", kv, "'");
    o.template_vars.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
  }
  return o;
}

void print_metrics(const GenerateMetrics& m, std::FILE* out) {
  std::fprintf(out,
               "[%d prompt tokens (%d cached) in %.3f s, %.1f tok/s | %d tokens in %.3f s, %.1f tok/s | first "
               "token %.0f ms | peak memory %.1f MiB%s%s | %s]\n",
               m.prompt_tokens, m.cached_prompt_tokens, m.prefill_s, m.prefill_tok_per_s, m.generated_tokens,
               m.decode_s, m.decode_tok_per_s, m.time_to_first_token_s * 1000, double(m.peak_memory) / 1048576.0,
               m.gpu_utilization >= 0 ? (" | GPU " + std::to_string(int(m.gpu_utilization)) + "% busy").c_str() : "",
               m.decode_path.empty() ? "" : (" | decode " + m.decode_path).c_str(), m.finish_reason.c_str());
}

}  // namespace lmx::cli
