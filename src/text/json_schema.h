// JSON Schema turned into what a reply held to it may write (OpenAI's response_format
// "json_schema", vLLM's guided JSON): a graph of nodes that text::JsonPrefix follows byte
// by byte. The reply is always a valid instance; it need not be able to be every valid
// instance. So the properties come in the schema's order, each at most once (as OpenAI's
// strict mode writes them), and no key the schema does not list is written where it lists
// any. Keywords that would let a reply be invalid if left unenforced (pattern, format,
// minimum, ...) are refused by name, never ignored.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

namespace lmx::text {

struct SchemaNode {
  enum class Kind : uint8_t {
    any,       // any JSON value
    object,
    array,
    string,
    number,
    literals,  // one of a few texts written exactly: enum, const, true/false, null
    any_of,    // one of `branches` (anyOf, oneOf, a list of types, a $ref)
  };
  struct Property {
    std::string key;  // its JSON text, quotes included
    int32_t node;
    bool required;
  };
  static constexpr uint32_t kUnbounded = std::numeric_limits<uint32_t>::max();

  Kind kind = Kind::any;
  bool integer = false;    // number: no fraction or exponent
  bool free_keys = false;  // object: any keys (each value `items`'s node); else `properties` alone
  uint32_t min = 0, max = kUnbounded;  // string: characters (code points); array: items
  int32_t items = 0;                   // array: each item's node; object with free keys: each value's
  std::vector<Property> properties;    // object: written in this order, each at most once
  std::vector<std::string> texts;      // literals: compact JSON texts, sorted
  std::vector<int32_t> branches;       // any_of
};

class JsonSchema {
 public:
  static constexpr int32_t kAny = 0;         // any value
  static constexpr int32_t kAnyLiteral = 1;  // false, null or true: the literals of an `any` value

  static const JsonSchema& any_value();   // any JSON text
  static const JsonSchema& any_object();  // one object with any content (response_format "json_object")
  // Reads a schema from its JSON text. Throws lmx::Error ("json_schema") naming the keyword
  // and where it stands (a JSON pointer) for what is malformed or not supported. The root
  // must be an object or an array: a reply ends when its value closes.
  static JsonSchema compile(std::string_view text);

  const SchemaNode& node(int32_t i) const { return nodes_[size_t(i)]; }
  int32_t root() const { return root_; }
  size_t size() const { return nodes_.size(); }

 private:
  friend class SchemaCompiler;
  JsonSchema();  // nodes kAny and kAnyLiteral
  std::vector<SchemaNode> nodes_;
  int32_t root_ = kAny;
};

}  // namespace lmx::text
