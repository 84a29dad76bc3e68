// libFuzzer entry point: arbitrary bytes as a JSON Schema, and as a reply held to one of a
// few schemas. A schema either compiles or is refused with lmx::Error (nothing else may be
// thrown); a reply is taken whole exactly as it is taken byte by byte, and one that is
// complete parses as JSON of the root's kind. A broken promise traps.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "text/json_prefix.h"
#include "text/unicode.h"

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

const char* const kSchemas[] = {
    R"({"type": "object", "properties": {"city": {"type": "string", "maxLength": 4}, "days": {"type": "integer"},
        "unit": {"enum": ["c", "f", 1, 12, null]}, "tags": {"type": "array", "items": {"type": "string"},
        "minItems": 1, "maxItems": 2}}, "required": ["city", "unit"]})",
    R"({"$defs": {"n": {"type": "object", "properties": {"v": {"type": ["number", "null"]},
        "kids": {"type": "array", "items": {"$ref": "#/$defs/n"}}}, "required": ["v"]}}, "$ref": "#/$defs/n"})",
    R"({"type": "array", "items": {"anyOf": [{"const": {"a": [1, "b"]}}, {"type": "object",
        "additionalProperties": {"type": "boolean"}}, {"type": "string", "minLength": 2}]}})",
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  try {
    lmx::text::JsonSchema::compile(input);
  } catch (const lmx::Error&) {
  }
  if (input.empty()) return 0;
  const auto schema = std::make_shared<const lmx::text::JsonSchema>(
      lmx::text::JsonSchema::compile(kSchemas[static_cast<unsigned char>(input[0]) % 3]));
  const std::string reply = input.substr(1);
  lmx::text::JsonPrefix whole(schema), bytes(schema);
  const bool taken = whole.feed(reply);
  size_t at = 0;
  while (at < reply.size() && bytes.feed(reply.substr(at, 1))) ++at;
  check(taken == (at == reply.size()));
  if (!taken) return 0;
  check(whole.complete() == bytes.complete());
  if (!whole.complete()) return 0;
  // A complete reply parses. The parser also asks that a number fit a double, and that the
  // text be valid UTF-8, which the recognizer leaves to the tokenizer (a token's text is).
  if (reply.find_first_of("eE") != std::string::npos || !lmx::detail::is_valid_utf8(reply)) return 0;
  const nlohmann::json v = nlohmann::json::parse(reply, nullptr, false);
  check(!v.is_discarded() && (v.is_object() || v.is_array()));
  return 0;
}
