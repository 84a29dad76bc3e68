#include "openai.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>

#include "text/json_schema.h"
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

// An object's string field, or "" where it is absent or not a string.
std::string string_field(const json& j, const char* key) {
  const auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

// An assistant message's "tool_calls": [{"id", "type": "function", "function": {"name",
// "arguments"}}], the arguments a JSON object as text (or, as some clients send them, as an object).
std::vector<ToolCall> tool_calls_of(const json& calls, const std::string& at) {
  if (!calls.is_array()) refuse(at, "'" + at + "' must be a list of calls");
  std::vector<ToolCall> out;
  for (size_t c = 0; c < calls.size(); ++c) {
    const json& call = calls[c];
    const std::string here = at + "[" + std::to_string(c) + "]";
    const json* fn = call.is_object() && call.contains("function") ? &call["function"] : nullptr;
    if (!fn || !fn->is_object() || !fn->contains("name") || !(*fn)["name"].is_string())
      refuse(here,
             "'" + here + "' must be {\"type\": \"function\", \"function\": {\"name\": ..., \"arguments\": ...}}");
    ToolCall t{string_field(call, "id"), (*fn)["name"].get<std::string>(), "{}"};
    if (const auto args = fn->find("arguments"); args != fn->end() && !args->is_null()) {
      // In the order written (nlohmann::json would sort the keys).
      using Ordered = nlohmann::ordered_json;
      const Ordered value = args->is_string() ? Ordered::parse(args->get<std::string>(), nullptr, false)
                                              : Ordered::parse(args->dump());
      if (!value.is_object())
        refuse(here + ".function.arguments", "'" + here + ".function.arguments' must be a JSON object (as text)");
      t.arguments = value.dump();
    }
    out.push_back(std::move(t));
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
    std::string role = m["role"].get<std::string>();
    if (role == "developer") role = "system";  // OpenAI's newer name for the system message
    if (role != "system" && role != "user" && role != "assistant" && role != "tool")
      refuse(at + ".role", "'" + at + ".role' must be system, developer, user, assistant or tool, got '" + role + "'");
    Message message{role, ""};
    if (m.contains("tool_calls") && !m["tool_calls"].is_null()) {
      if (role != "assistant") refuse(at + ".tool_calls", "only an assistant message makes tool calls");
      message.tool_calls = tool_calls_of(m["tool_calls"], at + ".tool_calls");
    }
    if (m.contains("tool_call_id") && !m["tool_call_id"].is_null()) {
      if (!m["tool_call_id"].is_string()) refuse(at + ".tool_call_id", "'" + at + ".tool_call_id' must be a string");
      message.tool_call_id = m["tool_call_id"].get<std::string>();
    }
    // An assistant's message that only calls tools has no content (null, as OpenAI sends it).
    if (!m.contains("content") || m["content"].is_null()) {
      if (message.tool_calls.empty()) refuse(at + ".content", "'" + at + ".content' is missing");
    } else {
      message.content = content_text(m["content"], at + ".content");
    }
    out.push_back(std::move(message));
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

// "tools" (chat): OpenAI's list of functions, which the template lists; "tool_choice": "auto"
// (the default), "none" (the tools left out of the prompt), "required" or a named function
// (Request::forced_tool: begin_call starts the reply with the call); "parallel_tool_calls".
void read_tools(const json& body, const std::string& text, bool chat, Request& r) {
  const auto it = body.find("tools");
  const bool listed = it != body.end() && !it->is_null();
  if (!chat) {
    for (const char* key : {"tools", "tool_choice"})
      if (body.contains(key) && !body[key].is_null())
        refuse(key, std::string("'") + key + "' is a chat field (/v1/chat/completions)");
    return;
  }
  // "auto", "none", "required", or the function's name for {"type": "function", "function": {"name"}}.
  std::string choice = "auto";
  bool named = false;
  if (const auto c = body.find("tool_choice"); c != body.end() && !c->is_null()) {
    const auto fn = c->is_object() && string_field(*c, "type") == "function" ? c->find("function") : c->end();
    if (fn != c->end() && fn->is_object() && !string_field(*fn, "name").empty()) {
      choice = string_field(*fn, "name");
      named = true;
    } else if (c->is_string() && (*c == "auto" || *c == "none" || *c == "required")) {
      choice = c->get<std::string>();
    } else {
      refuse("tool_choice", "'tool_choice' must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", "
                            "\"function\": {\"name\": ...}}, got " + c->dump());
    }
    if ((named || choice == "required") && (!listed || (it->is_array() && it->empty())))
      refuse("tool_choice", "'tool_choice' " + c->dump() + " needs \"tools\"");
  }
  r.parallel_tool_calls = flag(body, "parallel_tool_calls", true);
  if (!listed) return;
  if (!it->is_array()) refuse("tools", "'tools' must be a list of {\"type\": \"function\", \"function\": {...}}");
  for (size_t i = 0; i < it->size(); ++i) {
    const json& t = (*it)[i];
    const std::string at = "tools[" + std::to_string(i) + "]";
    const json* fn =
        t.is_object() && string_field(t, "type") == "function" && t.contains("function") ? &t["function"] : nullptr;
    if (!fn || !fn->is_object() || !fn->contains("name") || !(*fn)["name"].is_string() ||
        (*fn)["name"].get<std::string>().empty())
      refuse(at, "'" + at + "' must be {\"type\": \"function\", \"function\": {\"name\": ..., \"parameters\": ...}}");
    if (fn->contains("parameters") && !(*fn)["parameters"].is_object())
      refuse(at + ".function.parameters", "'" + at + ".function.parameters' must be a JSON schema object");
  }
  if (named && std::none_of(it->begin(), it->end(), [&](const json& t) { return t["function"]["name"] == choice; }))
    refuse("tool_choice", "'tool_choice' names '" + choice + "', which is not among the tools");
  if (choice == "none" || it->empty()) return;  // "none": the model is not told of them
  // From the request's text again, keeping the order of its keys: the template writes the
  // tools out as they came, as transformers and vLLM do.
  r.options.tools = nlohmann::ordered_json::parse(text)["tools"].dump();
  r.tools = true;
  if (named || choice == "required") r.forced_tool = named ? choice : "";
}

// "add_generation_prompt" and "continue_final_message" (chat), as vLLM reads them.
void read_continuation(const json& body, bool chat, Request& r) {
  GenerateOptions& o = r.options;
  o.add_generation_prompt = flag(body, "add_generation_prompt", o.add_generation_prompt);
  o.continue_final_message = flag(body, "continue_final_message", o.continue_final_message);
  if (!chat && (body.contains("add_generation_prompt") || body.contains("continue_final_message")))
    refuse("continue_final_message", "'add_generation_prompt' and 'continue_final_message' are chat fields");
  if (o.continue_final_message && o.add_generation_prompt)
    refuse("continue_final_message", "'continue_final_message' goes on from the last message: send "
                                     "\"add_generation_prompt\": false with it");
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

// response_format json_schema's schema, as JSON text, read here so that a schema the
// server cannot hold a reply to gets a 400 naming what in it is refused. From the request's
// text again, keeping the order of its keys: the reply writes the properties in that order.
std::string schema_of(const std::string& request) {
  const nlohmann::ordered_json body = nlohmann::ordered_json::parse(request);
  const nlohmann::ordered_json& format = body["response_format"];
  const auto spec = format.find("json_schema");
  if (spec == format.end() || !spec->is_object())
    refuse("response_format", "'json_schema' must be an object with the schema under \"schema\"");
  const auto schema = spec->find("schema");
  if (schema == spec->end() || schema->is_null())
    refuse("response_format", "'json_schema' has no \"schema\"");
  std::string text = schema->dump();
  try {
    text::JsonSchema::compile(text);
  } catch (const Error& e) {
    refuse("response_format", e.what());
  }
  return text;
}

std::vector<Request> parse_request(const std::string& text, bool chat, const GenerateOptions& defaults) {
  json body;
  try {
    body = json::parse(text);
  } catch (const json::exception& e) {  // malformed, or a number past a double's range
    refuse("", std::string("the request body is not valid JSON: ") + e.what());
  }
  if (!body.is_object()) refuse("", "the request body must be a JSON object");
  for (const char* old : {"functions", "function_call"})
    if (body.contains(old) && !body[old].is_null())
      refuse(old, std::string("'") + old + "' is OpenAI's older form; send \"tools\" (and \"tool_choice\")");
  std::optional<bool> json_object;  // response_format {"type": "json_object"}, or "text"; else the server's default
  std::string json_schema;          // response_format {"type": "json_schema", "json_schema": {"schema": ...}}
  if (const auto it = body.find("response_format"); it != body.end() && !it->is_null()) {
    const std::string type = it->is_object() ? string_field(*it, "type") : "";
    if (type != "text" && type != "json_object" && type != "json_schema")
      refuse("response_format", "'response_format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
                                "{\"type\": \"json_schema\", \"json_schema\": {\"name\", \"schema\"}}");
    json_object = type == "json_object";
    if (type == "json_schema") json_schema = schema_of(text);
  }
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
  if (json_object) o.json_object = *json_object;
  if (!json_schema.empty()) o.json_schema = json_schema;
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
  read_tools(body, text, chat, r);
  read_continuation(body, chat, r);
  if (r.tools && (o.json_object || !o.json_schema.empty()))
    refuse("response_format", "a reply held to JSON leaves no room for a tool call: send \"tools\" or a JSON "
                              "response_format, not both");
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
    json choice = {{"index", i},
                   {"logprobs", c.scores},
                   {"finish_reason", c.calls.empty() ? finish_reason(c.metrics.finish_reason) : "tool_calls"}};
    if (chat && !c.calls.empty())  // the text outside the calls, or null where there is none
      choice["message"] = {{"role", "assistant"},
                           {"content", c.text.empty() ? json(nullptr) : json(c.text)},
                           {"tool_calls", tool_calls(c.calls, false)}};
    else if (chat)
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

std::string call_schema(const std::string& tools, const std::string& name, bool hermes) {
  using ordered = nlohmann::ordered_json;
  const char* args = hermes ? "arguments" : "parameters";
  ordered branches = ordered::array();
  for (const ordered& t : ordered::parse(tools)) {
    const ordered& fn = t["function"];
    if (!name.empty() && fn["name"] != name) continue;
    ordered call = {{"type", "object"}, {"properties", ordered::object()}, {"required", {"name", args}},
                    {"additionalProperties", false}};
    call["properties"]["name"] = {{"const", fn["name"]}};
    call["properties"][args] = fn.contains("parameters") ? fn["parameters"] : ordered{{"type", "object"}};
    branches.push_back(std::move(call));
  }
  const std::string schema = (branches.size() == 1 ? branches[0] : ordered{{"anyOf", branches}}).dump();
  try {
    text::JsonSchema::compile(schema);
  } catch (const Error&) {
    return "";
  }
  return schema;
}

void begin_call(Request& r, const std::string& format) {
  if (!r.forced_tool || format.empty()) return;
  if (r.options.continue_final_message)
    throw ApiError{400, "a required or named tool_choice begins the reply itself; leave continue_final_message off",
                   "invalid_request_error", "tool_choice"};
  const bool hermes = format == "hermes";
  std::string start;
  r.options.json_schema = call_schema(r.options.tools, *r.forced_tool, hermes);
  if (!r.options.json_schema.empty()) {
    start = hermes ? "<tool_call>\n" : "";  // the call's JSON is held to its schema
  } else {
    start = hermes ? "<tool_call>\n{\"name\": " : "{\"name\": ";
    if (r.forced_tool->empty())
      start += "\"";  // any tool: the model writes the name
    else
      start += json(*r.forced_tool).dump() + (hermes ? ", \"arguments\": " : ", \"parameters\": ");
  }
  if (start.empty()) return;
  r.messages.push_back({"assistant", start});
  r.options.continue_final_message = true;
  r.options.add_generation_prompt = false;
  r.reply_start = std::move(start);
}

json tool_calls(std::span<const ToolCall> calls, bool streamed) {
  json out = json::array();
  for (size_t i = 0; i < calls.size(); ++i) {
    json call = {{"id", calls[i].id},
                 {"type", "function"},
                 {"function", {{"name", calls[i].name}, {"arguments", calls[i].arguments}}}};
    if (streamed) call["index"] = i;
    out.push_back(std::move(call));
  }
  return out;
}

std::string call_id() {
  static constexpr char kDigits[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
  thread_local std::mt19937_64 draw{std::random_device{}()};
  std::string id = "call_";
  for (int i = 0; i < 24; ++i) id += kDigits[draw() % (sizeof(kDigits) - 1)];
  return id;
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
