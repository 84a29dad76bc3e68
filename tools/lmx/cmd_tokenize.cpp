// `lmx tokenize`, `lmx detokenize` and `lmx template`: the tokenizer and chat template of a
// model folder, with outputs meant for scripts (JSON in, JSON out).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "commands.h"
#include "core/error.h"
#include "text/jinja/jinja.h"
#include "text/tokenizer.h"

namespace lmx::cli {
namespace {

// DIR may also name tokenizer.json itself; its folder then supplies the config.
Tokenizer load_tokenizer(const std::string& path) {
  const std::filesystem::path p(path);
  return Tokenizer::from_dir(std::filesystem::is_regular_file(p) ? p.parent_path() : p);
}

std::string dump(const nlohmann::json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

void run_tokenize(const std::string& dir, const std::optional<std::string>& text, bool no_special, bool jsonl) {
  const Tokenizer tok = load_tokenizer(dir);
  if (!jsonl) {
    const std::string input =
        text ? *text : std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    warn_if_not_utf8(input, "the text");
    std::printf("%s\n", dump(tok.encode(input, !no_special)).c_str());
    return;
  }
  std::string line;
  for (int n = 1; std::getline(std::cin, line); ++n) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
    }
    LMX_CHECK(j.is_string(), "tokenizer", "stdin:", n, ": expected one JSON string per line, e.g. \"Hello\"");
    std::printf("%s\n", dump(tok.encode(j.get<std::string>(), !no_special)).c_str());
    std::fflush(stdout);
  }
}

void run_detokenize(const std::string& dir, bool skip_special) {
  const Tokenizer tok = load_tokenizer(dir);
  std::string line;
  for (int n = 1; std::getline(std::cin, line); ++n) {
    if (line.empty()) continue;
    std::vector<int32_t> ids;
    try {
      ids = nlohmann::json::parse(line).get<std::vector<int32_t>>();
    } catch (const nlohmann::json::exception&) {
      fail("tokenizer", "stdin:", n, ": expected one JSON array of ids per line, e.g. [9707, 1879]");
    }
    std::printf("%s\n", dump(tok.decode(ids, skip_special)).c_str());
    std::fflush(stdout);
  }
}

void run_template(const std::string& dir, const std::string& messages_file, bool no_generation_prompt,
                  const std::vector<std::string>& sets) {
  const Tokenizer tok = load_tokenizer(dir);
  const TokenizerConfig& cfg = tok.config();
  LMX_CHECK(!cfg.chat_template.empty(), "tokenizer", dir,
            ": no chat template (tokenizer_config.json \"chat_template\" or chat_template.jinja)");
  std::ifstream in(messages_file);
  LMX_CHECK(in.good(), "tokenizer", messages_file, ": cannot open the messages file");
  nlohmann::ordered_json doc;
  try {
    doc = nlohmann::ordered_json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail("tokenizer", messages_file, ": not valid JSON (", e.what(), ")");
  }
  // The file is either the messages array or an object of template variables with "messages".
  nlohmann::ordered_json ctx = nlohmann::ordered_json::object();
  if (doc.is_array()) {
    ctx["messages"] = doc;
  } else {
    LMX_CHECK(doc.is_object() && doc.contains("messages"), "tokenizer", messages_file,
              ": expected [{\"role\": ..., \"content\": ...}, ...] or {\"messages\": [...], ...}");
    ctx = doc;
  }
  ctx["add_generation_prompt"] = !no_generation_prompt;
  for (const auto& [name, value] : cfg.special_token_strings()) ctx[name] = value;
  for (const std::string& s : sets) {
    const size_t eq = s.find('=');
    LMX_CHECK(eq != std::string::npos && eq > 0, "tokenizer", "--set ", s, ": expected KEY=JSON, e.g. enable_thinking=false");
    try {
      ctx[s.substr(0, eq)] = nlohmann::ordered_json::parse(s.substr(eq + 1));
    } catch (const nlohmann::json::exception&) {
      fail("tokenizer", "--set ", s, ": the value is not JSON (quote strings: date_string='\"26 Jul 2024\"')");
    }
  }
  const std::string out = jinja::Template(cfg.chat_template).render(ctx);
  std::fwrite(out.data(), 1, out.size(), stdout);
}

}  // namespace

void add_tokenize_commands(CLI::App& app) {
  {
    auto* cmd = app.add_subcommand("tokenize", "Print the token ids of a text as a JSON array");
    auto dir = std::make_shared<std::string>();
    auto text = std::make_shared<std::string>();
    auto no_special = std::make_shared<bool>(false);
    auto jsonl = std::make_shared<bool>(false);
    cmd->add_option("DIR", *dir, "Model folder (or any folder) with tokenizer.json")->required();
    auto* text_opt = cmd->add_option("TEXT", *text, "Text to encode; read from stdin when left out");
    cmd->add_flag("--no-special", *no_special, "Do not add BOS/EOS (add_special_tokens=False)");
    cmd->add_flag("--jsonl", *jsonl, "Read one JSON string per stdin line, print one JSON array per line");
    cmd->footer(
        "Examples:\n"
        "  lmx tokenize ~/models/Qwen3-0.6B 'Hello world'          # [9707,1879]\n"
        "  lmx tokenize ~/models/gemma-3-1b-it 'Hello' --no-special\n"
        "  printf '\"a\"\\n\"b c\"\\n' | lmx tokenize ~/models/Llama-3.2-1B --jsonl");
    cmd->callback([=] {
      run_tokenize(*dir, text_opt->count() ? std::optional<std::string>(*text) : std::nullopt, *no_special, *jsonl);
    });
  }
  {
    auto* cmd = app.add_subcommand("detokenize", "Turn JSON arrays of ids (one per stdin line) into JSON strings");
    auto dir = std::make_shared<std::string>();
    auto skip = std::make_shared<bool>(false);
    auto jsonl = std::make_shared<bool>(false);
    cmd->add_option("DIR", *dir, "Model folder (or any folder) with tokenizer.json")->required();
    cmd->add_flag("--skip-special", *skip, "Leave out special tokens (skip_special_tokens=True)");
    cmd->add_flag("--jsonl", *jsonl, "Line mode (the default; accepted for symmetry with tokenize)");
    cmd->footer(
        "Examples:\n"
        "  echo '[9707,1879]' | lmx detokenize ~/models/Qwen3-0.6B                # \"Hello world\"\n"
        "  lmx tokenize M 'Hi' | lmx detokenize M --skip-special");
    cmd->callback([=] { run_detokenize(*dir, *skip); });
  }
  {
    auto* cmd = app.add_subcommand("template", "Print a model's chat template rendered for some messages");
    auto dir = std::make_shared<std::string>();
    auto messages = std::make_shared<std::string>();
    auto no_gen = std::make_shared<bool>(false);
    auto sets = std::make_shared<std::vector<std::string>>();
    cmd->add_option("DIR", *dir, "Model folder with tokenizer_config.json or chat_template.jinja")->required();
    cmd->add_option("--messages", *messages,
                    "JSON file: [{\"role\": ..., \"content\": ...}, ...] or {\"messages\": [...], other variables}")
        ->required();
    cmd->add_flag("--no-generation-prompt", *no_gen, "Render with add_generation_prompt=false");
    cmd->add_option("--set", *sets, "Template variable KEY=JSON (wins over everything else); repeatable");
    cmd->footer(
        "Prints exactly what transformers' apply_chat_template(tokenize=False) returns, with no newline added.\n"
        "Examples:\n"
        "  echo '[{\"role\":\"user\",\"content\":\"Hi\"}]' > m.json\n"
        "  lmx template ~/models/Qwen3-0.6B --messages m.json --set enable_thinking=false\n"
        "  lmx template ~/models/Llama-3.2-1B-Instruct --messages m.json --set date_string='\"26 Jul 2024\"'\n"
        "  lmx template M --messages m.json | lmx tokenize M --no-special");
    cmd->callback([=] { run_template(*dir, *messages, *no_gen, *sets); });
  }
}

}  // namespace lmx::cli
