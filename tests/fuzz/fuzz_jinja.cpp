// libFuzzer entry point: parses and renders arbitrary template bytes with a small fixed
// chat context. Any failure must be an lmx::Error; crashes, hangs and leaks are bugs.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "text/jinja/jinja.h"

namespace {

const nlohmann::ordered_json& fuzz_context() {
  static const nlohmann::ordered_json context = nlohmann::ordered_json::parse(R"({
    "messages": [
      {"role": "system", "content": "You are helpful."},
      {"role": "user", "content": "Hi <b>\u00e9\ud83d\ude00</b>"},
      {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nHello",
       "tool_calls": [{"function": {"name": "f", "arguments": {"x": [1, 2.5, null]}}}]},
      {"role": "tool", "content": "{\"ok\": true}"}
    ],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    "add_generation_prompt": true,
    "enable_thinking": false,
    "bos_token": "<s>",
    "eos_token": "</s>",
    "n": 3
  })");
  return context;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string source(reinterpret_cast<const char*>(data), size);
  try {
    const lmx::jinja::Template tmpl(source);
    (void)tmpl.render(fuzz_context());
  } catch (const lmx::Error&) {
    // Syntax and runtime errors are expected for random input.
  }
  return 0;
}
