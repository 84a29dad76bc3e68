#include "train/dataset.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_file.h"
#include "runtime/text_model.h"
#include "train/loss.h"

namespace lmx::train {
namespace {

using Json = nlohmann::ordered_json;  // a line's tools and call arguments reach the template in their order

std::string text_field(const Json& j, const char* key, const std::string& at) {
  LMX_CHECK(j.contains(key) && j[key].is_string(), "dataset", at, ": \"", key,
            "\" must be a string");
  return j[key].get<std::string>();
}

// The line's messages, checked and passed on as they are (as mlx-lm passes them to HF's
// apply_chat_template): an assistant's "tool_calls" and a tool's "tool_call_id" included.
const Json& messages_of(const Json& list, const std::string& at) {
  LMX_CHECK(list.is_array() && !list.empty(), "dataset", at,
            ": \"messages\" must be a non-empty list");
  for (const Json& m : list) {
    LMX_CHECK(m.is_object(), "dataset", at,
              ": each message must be an object with \"role\" and \"content\"");
    text_field(m, "role", at);
    const bool calls = m.contains("tool_calls") && !m["tool_calls"].is_null();
    LMX_CHECK(!calls || m["tool_calls"].is_array(), "dataset", at, ": \"tool_calls\" must be a list");
    // A message that only calls tools may have no content.
    if (!calls || (m.contains("content") && !m["content"].is_null())) text_field(m, "content", at);
  }
  return list;
}

// The example's tokens, and how many of them lead up to its last message. `tools`: the
// line's, as GenerateOptions::tools takes them ("" for none).
Example from_messages(const Json& messages, const std::string& tools, const Tokenizer& tok,
                      const std::string& model_dir, bool mask_prompt) {
  GenerateOptions whole;
  whole.add_generation_prompt = false;
  whole.tools = tools;
  // The template writes BOS itself, so the text is encoded without special tokens (as HF does).
  Example e{tok.encode(runtime::render_chat(tok, messages, whole, model_dir), false), 1};
  if (mask_prompt && messages.size() > 1) {
    GenerateOptions open;  // the conversation up to the last message's header
    open.tools = tools;
    const Json before(messages.begin(), messages.end() - 1);
    e.first_target =
        int32_t(tok.encode(runtime::render_chat(tok, before, open, model_dir), false).size());
  }
  return e;
}

// A chat line's "tools" (OpenAI's list, as its fine-tuning data holds them), as JSON text.
std::string tools_of(const Json& line, const std::string& at) {
  if (!line.contains("tools") || line["tools"].is_null()) return "";
  LMX_CHECK(line["tools"].is_array(), "dataset", at, ": \"tools\" must be a list of {\"type\": \"function\", ...}");
  return line["tools"].empty() ? "" : line["tools"].dump();
}

}  // namespace

Dataset read_jsonl(const std::filesystem::path& path, const Tokenizer& tok, const DatasetOptions& o,
                   const std::string& model_dir) {
  LMX_CHECK(o.max_seq_len >= 2, "dataset", "max_seq_len must be at least 2, got ", o.max_seq_len);
  std::ifstream in(path);
  LMX_CHECK(in.good(), "dataset", path.string(), ": cannot be read (does it exist?)");
  const bool has_template = !tok.config().chat_template.empty();
  Dataset d;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string at = path.string() + ":" + std::to_string(number);
    const Json j = io::parse_json_text<Json>(line, at, "dataset");
    LMX_CHECK(j.is_object(), "dataset", at, ": each line must be a JSON object");
    Example e;
    if (j.contains("text")) {
      e = {tok.encode(text_field(j, "text", at), true), 1};
    } else if (j.contains("messages")) {
      LMX_CHECK(has_template, "dataset", at, ": chat examples need the model's chat template, and ",
                model_dir, " has none; use {\"text\": ...} lines");
      e = from_messages(messages_of(j["messages"], at), tools_of(j, at), tok, model_dir, o.mask_prompt);
    } else if (j.contains("prompt") && j.contains("completion")) {
      const std::string prompt = text_field(j, "prompt", at),
                        completion = text_field(j, "completion", at);
      if (has_template) {
        const Json messages = {{{"role", "user"}, {"content", prompt}},
                               {{"role", "assistant"}, {"content", completion}}};
        e = from_messages(messages, "", tok, model_dir, o.mask_prompt);
      } else {
        e.tokens = tok.encode(prompt, true);
        const std::vector<int32_t> rest = tok.encode(completion, false);
        e.first_target = o.mask_prompt ? int32_t(e.tokens.size()) : 1;
        e.tokens.insert(e.tokens.end(), rest.begin(), rest.end());
      }
    } else {
      fail("dataset", at,
           ": expected {\"text\": ...}, {\"messages\": [...]} or {\"prompt\": ..., \"completion\": "
           "...}");
    }
    if (int64_t(e.tokens.size()) > o.max_seq_len) {
      e.tokens.resize(size_t(o.max_seq_len));
      ++d.truncated;
    }
    e.first_target = std::max<int32_t>(1, e.first_target);
    LMX_CHECK(int64_t(e.tokens.size()) > e.first_target, "dataset", at, ": ", e.tokens.size(),
              " tokens leave nothing to learn",
              o.mask_prompt ? " after the prompt (or max_seq_len cut it)" : "");
    d.tokens += int64_t(e.tokens.size());
    d.examples.push_back(std::move(e));
  }
  LMX_CHECK(!d.examples.empty(), "dataset", path.string(), ": holds no examples");
  return d;
}

Batch make_batch(const std::vector<const Example*>& examples) {
  Batch b;
  b.rows = int64_t(examples.size());
  for (const Example* e : examples)
    b.length = std::max<int64_t>(b.length, int64_t(e->tokens.size()) - 1);
  b.ids.assign(size_t(b.rows * b.length), 0);
  b.targets.assign(size_t(b.rows * b.length), kIgnoreIndex);
  for (int64_t r = 0; r < b.rows; ++r) {
    const std::vector<int32_t>& t = examples[size_t(r)]->tokens;
    for (size_t i = 0; i + 1 < t.size(); ++i) {
      b.ids[size_t(r * b.length) + i] = t[i];
      if (int64_t(i + 1) >= examples[size_t(r)]->first_target) {
        b.targets[size_t(r * b.length) + i] = t[i + 1];
        ++b.counted;
      }
    }
  }
  return b;
}

}  // namespace lmx::train
