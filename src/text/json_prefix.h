// A byte-level recognizer of JSON text as it is written: it takes bytes one at a time and
// refuses the first that no valid text could continue with, so that a generation can be
// held to JSON token by token (a token is allowed when all its bytes are). RFC 8259's
// grammar, held to a JsonSchema: any value, one object (OpenAI's "json_object" mode), or
// a compiled schema ("json_schema"). Bytes from 0x80 up are taken as string content (UTF-8
// is the tokenizer's to keep whole). Whitespace between tokens is taken up to kMaxBlank
// bytes in a row, so that a model cannot stall the reply in it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "text/json_schema.h"

namespace lmx::text {

// JSON's whitespace: the four bytes RFC 8259 allows between tokens.
inline bool json_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

class JsonPrefix {
 public:
  // Any value (object_only false) or one object with any content.
  explicit JsonPrefix(bool object_only = true);
  explicit JsonPrefix(std::shared_ptr<const JsonSchema> schema);
  // Takes `bytes` if every one continues the text; otherwise returns false and is unchanged.
  bool feed(std::string_view bytes);
  // Whether `bytes` would be taken, without taking them.
  bool accepts(std::string_view bytes) const;
  // The top-level value is whole: only whitespace may follow.
  bool complete() const;
  // Inside a string, outside an escape: text of any byte from 0x20 up but '"' and '\\' is
  // taken as it stands if it has at most this many characters (code points); nullopt
  // elsewhere.
  std::optional<uint32_t> string_room() const;
  // Appends bytes that are equal for two prefixes exactly when the same texts may follow
  // both (JsonTokens keeps a vocabulary's mask by them).
  void state_key(std::string& out) const;

 private:
  enum class State : uint8_t {
    // Between tokens, where whitespace may stand:
    value,         // a value (or, first, the top-level one) may start
    first_key,     // after '{': a key or '}'
    key,           // after ',' in an object: a key
    colon,         // after a key
    after,         // after a value in a container: ',' or its closing bracket
    first_item,    // after '[': a value or ']'
    // Inside one:
    key_text,      // inside a key the schema names (matched against its properties)
    string,        // inside a string (`key` tells which kind)
    escape,        // after '\' in a string
    hex,           // inside \uXXXX (hex_left more digits)
    minus,         // a number's '-'
    zero,          // a number's leading 0
    digits,        // its integer digits
    point,         // after '.'
    fraction,      // its fraction digits
    exp,           // after 'e' or 'E'
    exp_sign,      // after the exponent's sign
    exp_digits,    // the exponent's digits
    literal,       // inside one of a node's texts (true, false, null, an enum's value)
    done,          // the top-level value is whole (whitespace may follow)
  };
  // Whitespace bytes in a row between two tokens of the text. A model can write whitespace
  // without end where it is always allowed; this many leaves room for indented text.
  static constexpr uint8_t kMaxBlank = 24;
  static constexpr int kMaxDepth = 64;  // open containers; deeper text is refused
  struct Open {                         // an open container
    int32_t node;                       // its schema node
    uint32_t count : 31;                // array: items written; object with properties: the next one allowed
    uint32_t array : 1;
  };
  struct Head {
    State state = State::value;
    bool key = false;       // the string being read is a key
    bool pair = false;      // after a \u escape of a high surrogate: its low half comes next
    uint8_t hex_left = 0;
    uint8_t depth = 0;
    uint8_t blank = 0;      // whitespace bytes in a row
    uint16_t hex = 0;       // the \u escape's value so far
    int32_t node = 0;       // the node of the value being started or read
    uint32_t len = 0;       // string: characters read; literal, key_text: bytes matched
    uint32_t at = 0, end = 0;  // literal: the texts still matching; key_text: `at` is the property
  };
  // One way of reading the text so far: anyOf's branches are read side by side, each a
  // path, until the text tells them apart. A copy takes only the open containers.
  struct Path {
    Head h;
    Open open[kMaxDepth];
    Path() = default;
    Path(const Path& o) : h(o.h) { std::copy_n(o.open, o.h.depth, open); }
    Path& operator=(const Path& o) {
      h = o.h;
      std::copy_n(o.open, o.h.depth, open);
      return *this;
    }
    Open& top() { return open[h.depth - 1]; }
  };

  const SchemaNode& node(int32_t i) const { return schema_->node(i); }
  // Steps every path by c into `out`; false (out empty) if none takes it.
  bool step_all(const std::vector<Path>& in, char c, std::vector<Path>& out) const;
  bool accepts_from(const std::vector<Path>& paths, std::string_view bytes) const;
  // Steps one path; anyOf's branches that take c go to `forks` (p itself is then dropped).
  bool step(Path& p, char c, std::vector<Path>& forks) const;
  bool start_value(Path& p, char c, std::vector<Path>& forks) const;
  bool begin_key(Path& p) const;
  bool key_text(Path& p, char c) const;
  bool literal(Path& p, char c, std::vector<Path>& forks) const;
  bool string(Path& p, char c) const;
  bool end_value(Path& p) const;      // a value ended: what may come next
  bool close(Path& p, char c) const;  // '}' or ']'
  bool end_number(Path& p, char c, std::vector<Path>& forks) const;  // a byte after a number's last possible digit

  std::shared_ptr<const JsonSchema> owned_;  // a compiled schema; null for the built-in ones
  const JsonSchema* schema_;
  std::vector<Path> paths_;
};

// A vocabulary's texts read for a JsonPrefix: which tokens may come next. Each id's text
// alone; "" for one never allowed (a special token).
class JsonTokens {
 public:
  explicit JsonTokens(std::vector<std::string> pieces);
  size_t size() const { return pieces_.size(); }
  const std::string& piece(int32_t id) const { return pieces_[size_t(id)]; }
  bool allowed(const JsonPrefix& json, int32_t id) const {
    return size_t(id) < pieces_.size() && !pieces_[size_t(id)].empty() && json.accepts(pieces_[size_t(id)]);
  }
  // Sets logits[id] to -inf for every token that cannot come next, in one pass over the
  // vocabulary where most tokens are settled without reading them through: by their first
  // byte, or inside a string as text with no quote, backslash or control byte that fits the
  // string's room (JsonPrefix::string_room).
  // The mask is made once a state (JsonPrefix::state_key) and kept, up to kCachedStates of
  // them: a reply passes through the same few states again and again (inside a string, after
  // a value, before a key).
  void mask(const JsonPrefix& json, std::span<float> logits) const;

 private:
  static constexpr size_t kCachedStates = 512;
  std::vector<uint64_t> allowed_ids(const JsonPrefix& json) const;  // a bit an id
  struct Cache {
    std::mutex mutex;  // a model's generations may run on several threads, one at a time
    std::unordered_map<std::string, std::vector<uint64_t>> allowed;
  };
  std::vector<std::string> pieces_;
  // Text that a string takes as it stands (no '"', '\\' or byte below 0x20): its characters; else 0.
  std::vector<uint32_t> plain_;
  std::unique_ptr<Cache> cache_;
};

}  // namespace lmx::text
