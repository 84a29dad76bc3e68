// A byte-level recognizer of JSON text as it is written: it takes bytes one at a time and
// refuses the first that no JSON text could continue with, so that a generation can be
// held to JSON token by token (a token is allowed when all its bytes are). RFC 8259's
// grammar, with the top-level value an object where asked (OpenAI's "json_object" mode).
// Bytes from 0x80 up are taken as string content (UTF-8 is the tokenizer's to keep whole).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lmx::text {

class JsonPrefix {
 public:
  explicit JsonPrefix(bool object_only = true) : object_only_(object_only) {}
  // Takes `bytes` if every one continues the text; otherwise returns false and is unchanged.
  bool feed(std::string_view bytes);
  // Whether `bytes` would be taken, without taking them.
  bool accepts(std::string_view bytes) const;
  // The top-level value is whole: only whitespace may follow.
  bool complete() const { return state_ == State::done; }
  // Inside a string, outside an escape: any byte from 0x20 up but '"' and '\\' is taken as it is.
  bool in_string() const { return state_ == State::string; }

 private:
  enum class State : uint8_t {
    value,         // a value (or, first, the top-level one) may start
    first_key,     // after '{': a key or '}'
    key,           // after ',' in an object: a key
    colon,         // after a key
    after,         // after a value in a container: ',' or its closing bracket
    first_item,    // after '[': a value or ']'
    string,        // inside a string (key_ tells which kind)
    escape,        // after '\' in a string
    hex,           // inside \uXXXX (hex_left_ more digits)
    minus,         // a number's '-'
    zero,          // a number's leading 0
    digits,        // its integer digits
    point,         // after '.'
    fraction,      // its fraction digits
    exp,           // after 'e' or 'E'
    exp_sign,      // after the exponent's sign
    exp_digits,    // the exponent's digits
    literal,       // inside true, false or null
    done,          // the top-level value is whole
  };
  bool step(char c);
  bool start_value(char c);
  bool end_value();  // a value ended: what may come next
  bool close(char c);  // '}' or ']'
  bool end_number(char c);  // a byte after a number's last possible digit

  bool object_only_;
  State state_ = State::value;
  std::string stack_;           // the open containers, '{' or '['
  bool key_ = false;            // the string being read is an object's key
  uint8_t hex_left_ = 0;
  std::string_view literal_;    // the literal being matched, and how much of it is read
  uint8_t literal_at_ = 0;
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
  // byte, or inside a string as text with no quote, backslash or control byte.
  void mask(const JsonPrefix& json, std::span<float> logits) const;

 private:
  std::vector<std::string> pieces_;
  std::vector<uint8_t> plain_;  // 1: string text as it stands (no '"', '\\' or byte below 0x20)
};

}  // namespace lmx::text
