#include "text/tool_calls.h"

#include <nlohmann/json.hpp>
#include <optional>

#include "text/json_prefix.h"

namespace lmx {
namespace {

using json = nlohmann::ordered_json;  // arguments keep the order the model wrote
constexpr std::string_view kOpen = "<tool_call>", kClose = "</tool_call>";  // hermes
constexpr std::string_view kPythonTag = "<|python_tag|>";                    // llama3-json, when special tokens show
constexpr std::string_view kThinkStart = "<think>", kThinkEnd = "</think>";

using text::json_space;
bool blank(std::string_view s) {
  for (char c : s)
    if (!json_space(c)) return false;
  return true;
}
size_t skip_space(std::string_view s, size_t at) {
  while (at < s.size() && json_space(s[at])) ++at;
  return at;
}
std::string_view trim_end(std::string_view s) {
  while (!s.empty() && json_space(s.back())) s.remove_suffix(1);
  return s;
}

// One call's JSON: {"name": "...", "arguments" or "parameters": {...}} (or the arguments as
// a JSON text holding an object, as some models write them). None where it is not that.
std::optional<ToolCall> call_of(std::string_view text) {
  const json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("name") || !j["name"].is_string()) return std::nullopt;
  json args = json::object();
  for (const char* key : {"arguments", "parameters"}) {
    if (!j.contains(key)) continue;
    args = j[key];
    if (args.is_string()) args = json::parse(args.get<std::string>(), nullptr, false);
    break;
  }
  if (!args.is_object()) return std::nullopt;
  return ToolCall{"", j["name"].get<std::string>(), args.dump(-1, ' ', false, json::error_handler_t::replace)};
}

// Where the JSON object that opens at s[at] ('{') ends (one past its '}'); npos where the
// text ends first. Braces inside strings do not count.
size_t object_end(std::string_view s, size_t at) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = at; i < s.size(); ++i) {
    const char c = s[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{') {
      ++depth;
    } else if (c == '}' && --depth == 0) {
      return i + 1;
    }
  }
  return std::string_view::npos;
}

// Where hermes calls may begin: after the reasoning ("<think> ... </think>", Qwen3's), whose
// text may speak of a call without making one; npos while reasoning is still open (a
// "<think>" with no "</think>" after it), which makes no call.
size_t calls_from(std::string_view reply) {
  const size_t start = reply.rfind(kThinkStart), end = reply.rfind(kThinkEnd);
  if (start != std::string_view::npos && (end == std::string_view::npos || end < start)) return std::string_view::npos;
  return end == std::string_view::npos ? 0 : end + kThinkEnd.size();
}

ToolCallReply hermes(std::string_view reply) {
  const ToolCallReply all_text{std::string(reply), {}};
  const size_t from = calls_from(reply);
  const size_t first = from == std::string_view::npos ? from : reply.find(kOpen, from);
  if (first == std::string_view::npos) return all_text;
  ToolCallReply out{std::string(trim_end(reply.substr(0, first))), {}};
  for (size_t at = first; at != std::string_view::npos;) {
    const size_t body = at + kOpen.size(), close = reply.find(kClose, body);
    // A last call without its closing tag (the reply ended inside it) still counts if it reads.
    const std::optional<ToolCall> call =
        call_of(reply.substr(body, close == std::string_view::npos ? std::string_view::npos : close - body));
    if (!call) return all_text;
    out.calls.push_back(*call);
    if (close == std::string_view::npos) break;
    const size_t next = close + kClose.size();
    at = reply.find(kOpen, next);
    // Text between or after the calls is content too.
    const std::string_view between = reply.substr(next, at == std::string_view::npos ? at : at - next);
    if (!blank(between)) out.content += std::string(between);
  }
  return out;
}

// A llama3-json reply's first call, past "<|python_tag|>" and whitespace; npos where the
// reply is not a call.
size_t llama_call_start(std::string_view reply) {
  size_t at = skip_space(reply, 0);
  if (reply.substr(at).starts_with(kPythonTag)) at = skip_space(reply, at + kPythonTag.size());
  return at < reply.size() && reply[at] == '{' ? at : std::string_view::npos;
}

ToolCallReply llama3_json(std::string_view reply) {
  const ToolCallReply all_text{std::string(reply), {}};
  size_t at = llama_call_start(reply);
  if (at == std::string_view::npos) return all_text;
  ToolCallReply out;
  while (at < reply.size()) {  // objects, joined by ";"
    const size_t end = object_end(reply, at);
    if (end == std::string_view::npos) return all_text;
    const std::optional<ToolCall> call = call_of(reply.substr(at, end - at));
    if (!call) return all_text;
    out.calls.push_back(*call);
    at = skip_space(reply, end);
    if (at < reply.size() && reply[at] == ';') at = skip_space(reply, at + 1);
    if (at < reply.size() && reply[at] != '{') return all_text;
  }
  return out;
}

// The longest k < pattern.size() such that s ends with pattern's first k bytes.
size_t partial_suffix(std::string_view s, std::string_view pattern) {
  for (size_t k = std::min(s.size(), pattern.size() - 1); k > 0; --k)
    if (s.ends_with(pattern.substr(0, k))) return k;
  return 0;
}

}  // namespace

ToolCallReply parse_tool_calls(std::string_view reply, std::string_view format) {
  if (format == "hermes") return hermes(reply);
  if (format == "llama3-json") return llama3_json(reply);
  return {std::string(reply), {}};
}

size_t tool_call_free_prefix(std::string_view reply, std::string_view format) {
  if (format == "hermes") {
    const size_t from = calls_from(reply);
    if (from == std::string_view::npos) return reply.size();  // reasoning still open: nothing in it is a call
    const size_t tag = reply.find(kOpen, from);
    size_t free = tag != std::string_view::npos ? tag : reply.size() - partial_suffix(reply.substr(from), kOpen);
    while (free > from && json_space(reply[free - 1])) --free;  // the whitespace a call's tag may follow
    return free;
  }
  if (format == "llama3-json") {
    size_t at = skip_space(reply, 0);
    std::string_view rest = reply.substr(at);
    if (rest.size() < kPythonTag.size() && kPythonTag.starts_with(rest)) return 0;  // the tag not yet whole
    if (rest.starts_with(kPythonTag)) rest = reply.substr(at = skip_space(reply, at + kPythonTag.size()));
    // Only whitespace so far, or a call's brace: the reply may yet be (or is) a call.
    return rest.empty() || rest[0] == '{' ? 0 : reply.size();
  }
  return reply.size();
}

namespace text {

std::string tool_call_format(std::string_view chat_template) {
  if (chat_template.find(kOpen) != std::string_view::npos) return "hermes";
  // Llama 3.1's template names the python tag (for its built-in tools); 3.2's only asks for
  // the JSON, in these words.
  if (chat_template.find(kPythonTag) != std::string_view::npos ||
      chat_template.find("\"parameters\": dictionary of argument name") != std::string_view::npos)
    return "llama3-json";
  return "";
}

}  // namespace text
}  // namespace lmx
