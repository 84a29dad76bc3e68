// The OpenAI-compatible HTTP API of `lmx serve`: requests read into the public API's
// messages and options, and replies written in OpenAI's shapes. No HTTP here (cmd_serve.cpp).
//
// Read, as OpenAI documents them: model, messages (text content, as a string or text parts),
// prompt (text, a list of token ids, or a list of either: one choice each), max_tokens /
// max_completion_tokens, temperature, top_p, seed, stop, presence_penalty,
// frequency_penalty, logit_bias, logprobs (chat: with top_logprobs), n (1 only), echo
// (completions, whole replies; with max_tokens 0 it scores the prompt alone), stream and
// stream_options.include_usage, tools with tool_choice ("auto", "none", "required" or a named
// function) and parallel_tool_calls (messages may carry tool_calls and tool_call_id). Also,
// as vLLM and llama.cpp's server read them: top_k, min_p, repetition_penalty, ignore_eos,
// chat_template_kwargs (the chat template's variables, e.g. {"enable_thinking": false}),
// add_generation_prompt and continue_final_message; response_format "json_object" (the reply
// held to a JSON object). Anything the server cannot honour (n > 1, a streamed echo, a
// streamed list of prompts, a JSON schema) is refused with a 400 that says so, rather than
// ignored.
#pragma once

#include <nlohmann/json.hpp>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "lmx/lmx.h"

namespace lmx::cli::openai {

// A request the server refuses: the HTTP status and OpenAI's error object.
struct ApiError {
  int status = 400;
  std::string message = {};
  std::string type = "invalid_request_error";
  std::string param = {};  // the request field at fault, if one is
};
nlohmann::json error_body(const ApiError& e);

struct Request {
  bool chat = true;               // /v1/chat/completions (else /v1/completions)
  std::vector<Message> messages;  // chat
  std::string prompt;             // completions: text,
  std::vector<int32_t> prompt_ids;  // or token ids (where not empty), as vLLM reads a list of ints
  GenerateOptions options;
  bool stream = false, include_usage = false;
  bool echo = false;  // completions: the prompt leads the text, and its tokens the scores
  // Chat with "tools" (options.tools holds them): the reply is read for calls, and with
  // "parallel_tool_calls": false only its first call is kept.
  bool tools = false, parallel_tool_calls = true;
  // tool_choice "required" (""), or the function it names: begin_call holds the reply to a
  // call to it (or any of the tools), or, where their parameters' schemas use keywords
  // text::JsonSchema does not read, begins the reply with the call for the model to complete.
  std::optional<std::string> forced_tool;
  // The text the reply was begun with (begin_call's), which the reply's calls are read after.
  std::string reply_start;
};

// The request's JSON body, over the server's defaults (its command line's flags): one
// Request a prompt. A chat request has one; a completions request one a prompt of its list
// (OpenAI's batch form: "prompt" a list of texts or of id lists, each its own choice), alike
// but for the prompt. Throws ApiError for malformed JSON, wrong types, out-of-range values
// and unsupported fields.
std::vector<Request> parse_request(const std::string& body, bool chat, const GenerateOptions& defaults);

// OpenAI's finish_reason for the generator's: "stop" (an end-of-sequence token, a stop token
// or a stop string) or "length" (max_tokens or the context's end).
std::string finish_reason(const std::string& lmx_reason);

// The reply's envelope: id, object, created, model.
struct Envelope {
  std::string id, model;
  int64_t created = 0;
};
nlohmann::json usage(const GenerateMetrics& m);
// Tokens' scores (Token::logprob, top_logprobs) as a choice's "logprobs": chat's {"content":
// [{token, logprob, bytes, top_logprobs}], or completions' {tokens, token_logprobs,
// top_logprobs, text_offset}, where a token whose logprob is NaN (an echoed prompt's first,
// which nothing before it scores) has null ones. `piece` gives a token's own text (its bytes; JSON output
// replaces what is not UTF-8); `offset`, the reply's length in code points before the first
// token, advances past them (completions' text_offset).
nlohmann::json logprobs(bool chat, std::span<const Token> tokens, const std::function<std::string(int32_t)>& piece,
                        int64_t& offset);
// One choice of a whole reply: its text, its usage and finish reason, and its "logprobs"
// (null: not asked).
struct Choice {
  std::string text;
  GenerateMetrics metrics;
  nlohmann::json scores = nullptr;
  // Chat: the calls read from the reply (text then holds what lies outside them). Any call
  // makes the finish reason "tool_calls", and empty text a null content.
  std::vector<ToolCall> calls = {};
};
// A whole reply: chat.completion or text_completion, the choices in order (index 0 on),
// their usage summed.
nlohmann::json completion(const Envelope& env, bool chat, std::span<const Choice> choices);
// A required or named tool_choice, in the template's `format` (ModelInfo::tool_call_format).
// The call's JSON is held to a schema (options.json_schema, call_schema's): {"name": the
// function's, "arguments" (hermes; "parameters" for llama3-json): its parameters}; hermes'
// "<tool_call>" begins the reply, as the last message that the model continues
// (continue_final_message). Where a tool's parameters use keywords JsonSchema refuses, the
// model is steered instead: the call is begun, its name written where one is named, and a
// reply whose call does not read as JSON comes back as text.
void begin_call(Request& r, const std::string& format);
// The schema of a call to the tool `name` among `tools` (OpenAI's list, as JSON text), or to
// any of them where `name` is empty; "" where JsonSchema cannot hold it.
std::string call_schema(const std::string& tools, const std::string& name, bool hermes);
// A message's "tool_calls" list; streamed, each call with its "index" (the whole call in one delta).
nlohmann::json tool_calls(std::span<const ToolCall> calls, bool streamed);
// A new call id, "call_" and 24 random letters and digits.
std::string call_id();
// One streamed event: chat.completion.chunk or text_completion. `delta` is the new text
// (chat: the first chunk carries the role); `reason` is empty until the last; `scores`, the
// logprobs of the tokens that made the delta.
nlohmann::json chunk(const Envelope& env, bool chat, const nlohmann::json& delta, const std::string& reason,
                     const nlohmann::json& scores = nullptr);

}  // namespace lmx::cli::openai
