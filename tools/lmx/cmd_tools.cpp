// `lmx classify`, `lmx discover` and `lmx info`.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>

#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "commands.h"
#include "core/error.h"

namespace lmx::cli {
namespace {

void run_classify(const ModelArgs& m, const std::string& input, const std::string& output, int batch, bool logits) {
  std::ifstream in(input);
  LMX_CHECK(in.good(), "classify", input, ": cannot open the input file");
  std::vector<std::string> prompts;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    try {
      const auto j = nlohmann::json::parse(line);
      prompts.push_back(j.is_string() ? j.get<std::string>() : j.at("prompt").get<std::string>());
    } catch (const std::exception&) {
      fail("classify", input, ":", n, ": expected a JSON string or {\"prompt\": ...} per line");
    }
  }
  auto model = m.load();
  std::ofstream out(output);
  LMX_CHECK(out.good(), "classify", output, ": cannot create the output file");
  GenerateOptions o;
  o.return_logits = logits;
  const auto t0 = std::chrono::steady_clock::now();
  int64_t tokens = 0;
  for (size_t at = 0; at < prompts.size(); at += size_t(batch)) {
    const size_t n = std::min(prompts.size() - at, size_t(batch));
    const auto results = model->classify(std::span<const std::string>(prompts.data() + at, n), o);
    tokens += model->metrics().prompt_tokens;
    for (const ClassifyResult& r : results) {
      nlohmann::json j{{"token", r.token}, {"text", r.text}, {"logit", r.logit}};
      if (logits) j["logits"] = r.logits;
      out << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const size_t done = at + n;
    const int width = 30, filled = int(width * done / prompts.size());
    std::fprintf(stderr, "\r[%s%s] %zu/%zu prompts, %.1f prompts/s, %.0f tok/s", std::string(size_t(filled), '#').c_str(),
                 std::string(size_t(width - filled), '.').c_str(), done, prompts.size(), double(done) / s,
                 double(tokens) / s);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "\nclassified %zu prompts (%lld tokens) in %.2f s: %.1f prompts/s -> %s\n", prompts.size(),
               (long long)tokens, s, double(prompts.size()) / s, output.c_str());
}

void run_discover(const std::string& dir, bool json) {
  const auto found = discover(dir);
  if (json) {
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& d : found) {
      nlohmann::json j{{"path", d.path.string()}, {"model_type", d.model_type}, {"files", d.num_files},
                       {"bytes", d.total_bytes}, {"has_tokenizer", d.has_tokenizer}};
      if (d.quant_bits) j["quantization"] = {{"bits", d.quant_bits}, {"group_size", d.quant_group_size}};
      if (!d.error.empty()) j["error"] = d.error;
      arr.push_back(j);
    }
    std::printf("%s\n", arr.dump(2).c_str());
    return;
  }
  for (const auto& d : found) {
    std::printf("%-60s %-12s %3d file(s) %8.1f MB %s%s%s\n", d.path.string().c_str(),
                d.model_type.empty() ? "?" : d.model_type.c_str(), d.num_files, double(d.total_bytes) / 1e6,
                d.has_tokenizer ? "tokenizer" : "no tokenizer",
                d.quant_bits ? (" " + std::to_string(d.quant_bits) + "-bit").c_str() : "",
                d.error.empty() ? "" : ("  BROKEN: " + d.error).c_str());
  }
  if (found.empty()) std::printf("no models under %s\n", dir.c_str());
}

void run_info(const ModelArgs& m, bool json) {
  const ModelInfo i = m.load()->info();
  nlohmann::json j{{"path", i.path.string()},     {"model_type", i.model_type},   {"architecture", i.architecture},
                   {"backend", i.backend},        {"device", i.device},           {"dtype", i.dtype},
                   {"vocab_size", i.vocab_size},  {"hidden_size", i.hidden_size}, {"intermediate_size", i.intermediate_size},
                   {"num_layers", i.num_layers},  {"num_heads", i.num_heads},     {"num_kv_heads", i.num_kv_heads},
                   {"head_dim", i.head_dim},      {"context_length", i.context_length},
                   {"parameters", i.parameters},  {"weight_bytes", i.weight_bytes},
                   {"quantization", i.quant_bits ? nlohmann::json{{"bits", i.quant_bits}, {"group_size", i.quant_group_size}}
                                                 : nlohmann::json(nullptr)},
                   {"has_tokenizer", i.has_tokenizer}, {"has_chat_template", i.has_chat_template}};
  if (json) {
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  for (const auto& [k, v] : j.items()) std::printf("%-18s %s\n", k.c_str(), v.is_string() ? v.get<std::string>().c_str() : v.dump().c_str());
}

}  // namespace

void add_tool_commands(CLI::App& app) {
  {
    auto* cmd = app.add_subcommand("classify", "Run many prompts in batches and keep each one's next-token prediction");
    auto m = std::make_shared<ModelArgs>();
    auto input = std::make_shared<std::string>(), output = std::make_shared<std::string>();
    auto batch = std::make_shared<int>(256);
    auto logits = std::make_shared<bool>(false);
    m->add(cmd);
    cmd->add_option("--input", *input, "JSONL: one JSON string (or {\"prompt\": ...}) per line")->required();
    cmd->add_option("--output", *output, "JSONL out: {\"token\", \"text\", \"logit\"} per prompt, in input order")
        ->required();
    cmd->add_option("--batch", *batch, "Prompts per call")->capture_default_str();
    cmd->add_flag("--logits", *logits, "Also write the whole last-position logits row");
    cmd->footer("Example:\n  printf '\"The sky is\"\\n\"2+2=\"\\n' > in.jsonl\n"
                "  lmx classify ~/models/Qwen3-0.6B --input in.jsonl --output out.jsonl");
    cmd->callback([=] { run_classify(*m, *input, *output, std::max(1, *batch), *logits); });
  }
  {
    auto* cmd = app.add_subcommand("discover", "List the models in a folder (two levels deep), broken ones with why");
    auto dir = std::make_shared<std::string>();
    auto json = std::make_shared<bool>(false);
    cmd->add_option("DIR", *dir, "Folder to scan")->required();
    cmd->add_flag("--json", *json, "Print a JSON list of {path, model_type, ...}");
    cmd->footer("Example:\n  lmx discover ~/models\n  lmx discover tests/fixtures/models --json");
    cmd->callback([=] { run_discover(*dir, *json); });
  }
  {
    auto* cmd = app.add_subcommand("info", "Show a model's architecture, sizes and quantization");
    auto m = std::make_shared<ModelArgs>();
    auto json = std::make_shared<bool>(false);
    m->add(cmd);
    cmd->add_flag("--json", *json, "Print JSON");
    cmd->footer("Example:\n  lmx info tests/fixtures/models/gemma3_text-bf16");
    cmd->callback([=] { run_info(*m, *json); });
  }
}

}  // namespace lmx::cli
