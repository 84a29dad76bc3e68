// libFuzzer entry point: arbitrary bytes as a model's reply. Tool calls are read in both
// forms, and JSON is recognised as it streams; what a stream shows must be what the whole
// reply gives, and the recognizer must agree with nlohmann's parser. A broken promise traps.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "lmx/lmx.h"
#include "text/json_prefix.h"

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

void check_format(const std::string& reply, const char* format) {
  const lmx::ToolCallReply read = lmx::parse_tool_calls(reply, format);
  for (const lmx::ToolCall& call : read.calls) check(nlohmann::json::parse(call.arguments, nullptr, false).is_object());
  // Streamed: the free prefix never shrinks, never passes the text, and is the content's start.
  size_t free = 0;
  for (size_t n = 0; n <= reply.size(); n += 1 + n / 8) {
    const size_t now = lmx::tool_call_free_prefix(std::string_view(reply).substr(0, n), format);
    check(now >= free && now <= n);
    free = now;
  }
  check(read.content.compare(0, free, reply, 0, free) == 0 && free <= read.content.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string reply(reinterpret_cast<const char*>(data), size);
  check_format(reply, "hermes");
  check_format(reply, "llama3-json");
  lmx::text::JsonPrefix json;
  const bool taken = json.feed(reply);
  const size_t first = reply.find_first_not_of(" \t\n\r");
  const bool object = first != std::string::npos && reply[first] == '{';
  // The parser also checks UTF-8, surrogate pairs and that a number fits a double, which the
  // recognizer (RFC 8259's grammar) leaves alone, and it reads a NUL byte as the input's end:
  // they agree on the rest.
  auto ascii = [](char c) { return c != 0 && static_cast<unsigned char>(c) < 0x80; };
  const bool plain = reply.find("\\u") == std::string::npos && std::all_of(reply.begin(), reply.end(), ascii) &&
                     reply.find_first_of("eE") == std::string::npos;
  if (plain && taken && json.complete()) check(nlohmann::json::accept(reply));
  // The recognizer also bounds whitespace between tokens (JsonPrefix::kMaxBlank bytes in a row).
  const bool blank_run = reply.find(std::string(25, ' ')) != std::string::npos ||
                         std::search_n(reply.begin(), reply.end(), 25, 0, [](char c, int) {
                           return c == ' ' || c == '\t' || c == '\n' || c == '\r';
                         }) != reply.end();
  if (reply.find('\0') == std::string::npos && object && !blank_run && nlohmann::json::accept(reply))
    check(taken && json.complete());
  return 0;
}
