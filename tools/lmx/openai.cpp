#include "openai.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>

#include "text/unicode.h"

namespace lmx::cli::openai {
namespace {

using nlohmann::json;

[[noreturn]] void refuse(const std::string& param, const std::string& message) {
  throw ApiError{400, message, "invalid_request_error", param};
}

// A number field in [lo, hi], or nothing where it is absent or null.
std::optional<double> number(const json& body, const char* key, double lo, double hi) {
  const auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) refuse(key, std::string("'") + key + "' must be a number, got " + it->dump());
  const double v = it->get<double>();
  if (!(v >= lo && v <= hi))
    refuse(key, std::string("'") + key + "' must be in [" + json(lo).dump() + ", " + json(hi).dump() + "], got " +
                    it->dump());
  return v;
}

std::optional<int64_t> integer(const json& body, const char* key, int64_t lo, int64_t hi) {
  const auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer()) refuse(key, std::string("'") + key + "' must be an integer, got " + it->dump());
  const int64_t v = it->get<int64_t>();
  if (v < lo || v > hi)
    refuse(key, std::string("'") + key + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                    "], got " + it->dump());
  return v;
}

bool flag(const json& body, const char* key, bool otherwise) {
  const auto it = body.find(key);
  if (it == body.end() || it->is_null()) return otherwise;
  if (!it->is_boolean()) refuse(key, std::string("'") + key + "' must be true or false, got " + it->dump());
  return it->get<bool>();
}

// A message's content: a string, or a list of {"type": "text", "text": ...} parts joined.
std::string content_text(const json& content, const std::string& param) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) refuse(param, "'" + param + "' must be a string or a list of text parts");
  std::string text;
  for (const json& part : content) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
      refuse(param, "'" + param + "': only text parts ({\"type\": \"text\", \"text\": ...}) are supported, got " +
                        part.dump());
    text += part["text"].get<std::string>();
  }
  return text;
}

bool all_ids(const json& v) {
  return std::all_of(v.begin(), v.end(),
                     [](const json& id) { return id.is_number_integer() && id.get<int64_t>() >= 0; });
}

struct Prompt {
  std::string text;
  std::vector<int32_t> ids;  // where not empty, in place of the text
};

// One completions prompt: a text, or a list of token ids (as vLLM reads one).
Prompt prompt_of(const json& p) {
  Prompt out;
  if (p.is_string()) {
    out.text = p.get<std::string>();
  } else if (p.is_array() && !p.empty() && all_ids(p)) {
    for (const json& id : p) out.ids.push_back(int32_t(std::min<int64_t>(id.get<int64_t>(), INT32_MAX)));
  } else {
    refuse("prompt", "'prompt' must be a text, a list of token ids, or a list of either (one choice each)");
  }
  return out;
}

std::vector<Message> messages_of(const json& body) {
  const auto it = body.find("messages");
  if (it == body.end() || !it->is_array() || it->empty())
    refuse("messages", "'messages' must be a non-empty list of {\"role\": ..., \"content\": ...}");
  std::vector<Message> out;
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    const std::string at = "messages[" + std::to_string(i) + "]";
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      refuse(at, "'" + at + "' must be an object with a string 'role'");
    if (m.contains("tool_calls") && !m["tool_calls"].is_null())
      refuse(at + ".tool_calls", "tool calls are not supported by lmx serve yet");
    std::string role = m["role"].get<std::string>();
    if (role == "developer") role = "system";  // OpenAI's newer name for the system message
    if (role != "system" && role != "user" && role != "assistant" && role != "tool")
      refuse(at + ".role", "'" + at + ".role' must be system, developer, user, assistant or tool, got '" + role + "'");
    if (!m.contains("content") || m["content"].is_null())
      refuse(at + ".content", "'" + at + ".content' is missing");
    out.push_back({role, content_text(m["content"], at + ".content")});
  }
  return out;
}

void read_stop(const json& body, GenerateOptions& o) {
  const auto it = body.find("stop");
  if (it == body.end() || it->is_null()) return;
  o.stop_strings.clear();
  if (it->is_string()) {
    o.stop_strings.push_back(it->get<std::string>());
    return;
  }
  if (!it->is_array()) refuse("stop", "'stop' must be a string or a list of strings");
  for (const json& s : *it) {
    if (!s.is_string() || s.get<std::string>().empty())
      refuse("stop", "'stop' must hold non-empty strings, got " + s.dump());
    o.stop_strings.push_back(s.get<std::string>());
  }
}

void read_logit_bias(const json& body, GenerateOptions& o) {
  const auto it = body.find("logit_bias");
  if (it == body.end() || it->is_null()) return;
  if (!it->is_object()) refuse("logit_bias", "'logit_bias' must map token ids (as strings) to biases");
  for (const auto& [key, value] : it->items()) {
    size_t used = 0;
    long id = -1;
    try {
      id = std::stol(key, &used);
    } catch (const std::exception&) {
    }
    if (used != key.size() || id < 0 || id > std::numeric_limits<int32_t>::max())
      refuse("logit_bias", "'logit_bias' keys must be token ids, got '" + key + "'");
    if (!value.is_number() || std::fabs(value.get<double>()) > 100)
      refuse("logit_bias", "'logit_bias' values must be numbers in [-100, 100], got " + value.dump());
    o.logit_bias.emplace_back(int32_t(id), value.get<float>());
  }
}

// Chat: "logprobs": true, with "top_logprobs": 0-20 alternatives. Completions: "logprobs":
// 0-20 alternatives (OpenAI's cap is 5; vLLM's, 20).
void read_logprobs(const json& body, bool chat, GenerateOptions& o) {
  const int most = kMaxTopLogprobs;
  if (chat) {
    const std::optional<int64_t> top = integer(body, "top_logprobs", 0, most);
    if (!flag(body, "logprobs", false)) {
      if (top) refuse("top_logprobs", "'top_logprobs' needs \"logprobs\": true");
      return;
    }
    o.logprobs = int(top.value_or(0));
  } else if (const std::optional<int64_t> top = integer(body, "logprobs", 0, most)) {
    o.logprobs = int(*top);
  }
}

// Code points of valid UTF-8 text: its bytes but continuation bytes.
int64_t code_points(const std::string& s) {
  return std::count_if(s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; });
}

json byte_list(const std::string& s) {
  json out = json::array();
  for (char c : s) out.push_back(static_cast<unsigned char>(c));
  return out;
}

// A token's text and bytes: a token may hold part of a character, whose bytes then stand
// for it and its text has U+FFFD (Python's errors="replace", as vLLM shows it).
json scored_token(const std::string& bytes, float logprob) {
  return {{"token", detail::to_valid_utf8(bytes)}, {"logprob", logprob}, {"bytes", byte_list(bytes)}};
}

}  // namespace

json logprobs(bool chat, std::span<const Token> tokens, const std::function<std::string(int32_t)>& piece,
              int64_t& offset) {
  if (chat) {
    json content = json::array();
    for (const Token& t : tokens) {
      json entry = scored_token(piece(t.id), t.logprob);
      entry["top_logprobs"] = json::array();
      for (const auto& [id, lp] : t.top_logprobs) entry["top_logprobs"].push_back(scored_token(piece(id), lp));
      content.push_back(entry);
    }
    return {{"content", content}, {"refusal", nullptr}};
  }
  json out = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
  for (const Token& t : tokens) {
    const std::string text = detail::to_valid_utf8(piece(t.id));
    json top = json::object();
    // Keyed by text, as OpenAI's: where two ids read the same (parts of characters, as
    // U+FFFD), the more likely one stands.
    for (const auto& [id, lp] : t.top_logprobs) top.emplace(detail::to_valid_utf8(piece(id)), lp);
    const bool unscored = std::isnan(t.logprob);  // an echoed prompt's first token
    out["tokens"].push_back(text);
    out["token_logprobs"].push_back(unscored ? json(nullptr) : json(t.logprob));
    out["top_logprobs"].push_back(unscored ? json(nullptr) : top);
    out["text_offset"].push_back(offset);
    offset += code_points(text);
  }
  return out;
}

json error_body(const ApiError& e) {
  return {{"error",
           {{"message", e.message},
            {"type", e.type},
            {"param", e.param.empty() ? json(nullptr) : json(e.param)},
            {"code", nullptr}}}};
}

std::vector<Request> parse_request(const std::string& text, bool chat, const GenerateOptions& defaults) {
  json body;
  try {
    body = json::parse(text);
  } catch (const json::parse_error& e) {
    refuse("", std::string("the request body is not valid JSON: ") + e.what());
  }
  if (!body.is_object()) refuse("", "the request body must be a JSON object");
  for (const char* unsupported : {"tools", "tool_choice", "functions", "function_call"})
    if (body.contains(unsupported) && !body[unsupported].is_null())
      refuse(unsupported, std::string("'") + unsupported + "' is not supported by lmx serve yet");
  if (body.contains("response_format") && !body["response_format"].is_null() &&
      body["response_format"].value("type", "text") != "text")
    refuse("response_format", "only {\"type\": \"text\"} responses are supported");
  if (integer(body, "n", 1, 1000).value_or(1) != 1) refuse("n", "'n' must be 1: one choice a request");
  if (integer(body, "best_of", 1, 1000).value_or(1) != 1) refuse("best_of", "'best_of' must be 1");
  if (chat && flag(body, "echo", false)) refuse("echo", "'echo' is a completions field (/v1/completions)");
  if (body.contains("suffix") && !body["suffix"].is_null() && body["suffix"] != "")
    refuse("suffix", "'suffix' (insertion) is not supported");

  Request r;
  r.chat = chat;
  // Completions' prompts: a text, a list of ids, or (OpenAI's batch form) a list of either,
  // each its own choice.
  std::vector<Prompt> prompts;
  if (chat) {
    r.messages = messages_of(body);
  } else {
    const auto it = body.find("prompt");
    if (it != body.end() && it->is_array() && !it->empty() && !all_ids(*it)) {
      for (const json& p : *it) prompts.push_back(prompt_of(p));
    } else {
      prompts.push_back(prompt_of(it == body.end() ? json(nullptr) : *it));
    }
  }
  GenerateOptions& o = r.options;
  o = defaults;
  const int64_t most = std::numeric_limits<int32_t>::max();
  r.echo = !chat && flag(body, "echo", false);
  r.stream = flag(body, "stream", false);
  if (r.echo && r.stream) refuse("echo", "'echo' is served in whole replies only, not with \"stream\": true");
  // 0 new tokens only with echo: the prompt scored, nothing generated (as OpenAI's API allowed).
  if (auto v = integer(body, "max_tokens", r.echo ? 0 : 1, most)) o.max_tokens = int(*v);
  if (auto v = integer(body, "max_completion_tokens", 1, most)) o.max_tokens = int(*v);
  if (auto v = number(body, "temperature", 0, 100)) o.temperature = float(*v);
  if (auto v = number(body, "top_p", 0, 1)) o.top_p = float(*v);
  if (auto v = integer(body, "top_k", -1, most)) o.top_k = int(std::max<int64_t>(*v, 0));  // -1: off, as vLLM
  if (auto v = number(body, "min_p", 0, 1)) o.min_p = float(*v);
  if (auto v = number(body, "presence_penalty", -2, 2)) o.presence_penalty = float(*v);
  if (auto v = number(body, "frequency_penalty", -2, 2)) o.frequency_penalty = float(*v);
  if (auto v = number(body, "repetition_penalty", 1e-6, 100)) o.repeat_penalty = float(*v);
  if (auto v = integer(body, "seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()))
    o.seed = uint64_t(*v);
  read_logprobs(body, chat, o);
  o.ignore_eos = flag(body, "ignore_eos", o.ignore_eos);
  read_stop(body, o);
  read_logit_bias(body, o);
  if (const auto it = body.find("chat_template_kwargs"); it != body.end() && !it->is_null()) {
    if (!it->is_object()) refuse("chat_template_kwargs", "'chat_template_kwargs' must be an object");
    for (const auto& [key, value] : it->items()) o.template_vars.emplace_back(key, value.dump());
  }
  if (const auto it = body.find("stream_options"); it != body.end() && !it->is_null()) {
    if (!it->is_object()) refuse("stream_options", "'stream_options' must be an object");
    r.include_usage = flag(*it, "include_usage", false);
  }
  if (chat) return {r};
  if (r.stream && prompts.size() > 1)
    refuse("prompt", "a streamed request takes one prompt; send a list of prompts without \"stream\": true");
  std::vector<Request> out(prompts.size(), r);
  for (size_t i = 0; i < prompts.size(); ++i) {
    out[i].prompt = std::move(prompts[i].text);
    out[i].prompt_ids = std::move(prompts[i].ids);
  }
  return out;
}

std::string finish_reason(const std::string& lmx_reason) {
  return lmx_reason == "length" || lmx_reason == "context_length" ? "length" : "stop";
}

json usage(const GenerateMetrics& m) {
  return {{"prompt_tokens", m.prompt_tokens},
          {"completion_tokens", m.generated_tokens},
          {"total_tokens", m.prompt_tokens + m.generated_tokens}};
}

json completion(const Envelope& env, bool chat, std::span<const Choice> choices) {
  json listed = json::array();
  GenerateMetrics total;
  for (size_t i = 0; i < choices.size(); ++i) {
    const Choice& c = choices[i];
    json choice = {{"index", i}, {"logprobs", c.scores}, {"finish_reason", finish_reason(c.metrics.finish_reason)}};
    if (chat)
      choice["message"] = {{"role", "assistant"}, {"content", c.text}};
    else
      choice["text"] = c.text;
    listed.push_back(std::move(choice));
    total.prompt_tokens += c.metrics.prompt_tokens;
    total.generated_tokens += c.metrics.generated_tokens;
  }
  return {{"id", env.id},
          {"object", chat ? "chat.completion" : "text_completion"},
          {"created", env.created},
          {"model", env.model},
          {"choices", std::move(listed)},
          {"usage", usage(total)}};
}

json chunk(const Envelope& env, bool chat, const json& delta, const std::string& reason, const json& scores) {
  json choice = {{"index", 0}, {"logprobs", scores}, {"finish_reason", reason.empty() ? json(nullptr) : json(reason)}};
  if (chat)
    choice["delta"] = delta;
  else
    choice["text"] = delta.is_string() ? delta : json("");
  return {{"id", env.id},
          {"object", chat ? "chat.completion.chunk" : "text_completion"},
          {"created", env.created},
          {"model", env.model},
          {"choices", json::array({choice})}};
}

}  // namespace lmx::cli::openai
