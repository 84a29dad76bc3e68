// Tool calls in a model's reply, in the form its chat template asks for them. The template
// lists the tools and shows the model how to call one; the reply then holds the call as
// text, which these functions find and read, as an OpenAI-compatible server must.
//
//   hermes       <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>, one or more,
//                after any text (Qwen2.5, Qwen3, Hermes and the templates that copy them)
//   llama3-json  {"name": ..., "parameters": {...}} as the whole reply, several joined by
//                ";" (Llama 3.1-3.3's templates; "<|python_tag|>" may lead it)
#pragma once

#include <string>
#include <string_view>

#include "lmx/lmx.h"

namespace lmx::text {

// The tool-call form a chat template asks for: "hermes", "llama3-json", or "" where it
// names neither (the template lists no tools, or in a form not read here).
std::string tool_call_format(std::string_view chat_template);

// lmx::parse_tool_calls and lmx::tool_call_free_prefix (lmx.h) read the calls.

}  // namespace lmx::text
