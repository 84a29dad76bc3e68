#include "text/json_prefix.h"

#include <algorithm>
#include <cstring>
#include <limits>

namespace lmx::text {
namespace {

bool space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }
bool digit(char c) { return c >= '0' && c <= '9'; }
bool hex_digit(char c) { return digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

}  // namespace

bool JsonPrefix::feed(std::string_view bytes) {
  JsonPrefix next = *this;
  for (char c : bytes)
    if (!next.step(c)) return false;
  *this = std::move(next);
  return true;
}

bool JsonPrefix::accepts(std::string_view bytes) const {
  JsonPrefix next = *this;
  for (char c : bytes)
    if (!next.step(c)) return false;
  return true;
}

bool JsonPrefix::step(char c) {
  switch (state_) {
    case State::value:
      return space(c) || start_value(c);
    case State::first_key:
    case State::key:
      if (space(c)) return true;
      if (c == '"') {
        key_ = true;
        state_ = State::string;
        return true;
      }
      return state_ == State::first_key && c == '}' && close(c);
    case State::colon:
      if (c == ':') state_ = State::value;
      return space(c) || c == ':';
    case State::after:
      if (space(c)) return true;
      if (c == ',') {
        state_ = stack_.back() == '{' ? State::key : State::value;
        return true;
      }
      return (c == '}' || c == ']') && close(c);
    case State::first_item:
      if (space(c)) return true;
      return c == ']' ? close(c) : start_value(c);
    case State::string:
      if (c == '"') {
        if (!key_) return end_value();
        key_ = false;
        state_ = State::colon;
        return true;
      }
      if (c == '\\') state_ = State::escape;
      return static_cast<unsigned char>(c) >= 0x20;  // control characters must be escaped
    case State::escape:
      if (c == 'u') {
        hex_left_ = 4;
        state_ = State::hex;
        return true;
      }
      if (c == '\0' || !std::strchr("\"\\/bfnrt", c)) return false;
      state_ = State::string;
      return true;
    case State::hex:
      if (!hex_digit(c)) return false;
      if (--hex_left_ == 0) state_ = State::string;
      return true;
    case State::minus:
      if (!digit(c)) return false;
      state_ = c == '0' ? State::zero : State::digits;
      return true;
    case State::zero:
    case State::digits:
      if (digit(c) && state_ == State::digits) return true;
      if (c == '.') state_ = State::point;
      else if (c == 'e' || c == 'E') state_ = State::exp;
      else return end_number(c);
      return true;
    case State::point:
      if (digit(c)) state_ = State::fraction;
      return digit(c);
    case State::fraction:
      if (digit(c)) return true;
      if (c == 'e' || c == 'E') {
        state_ = State::exp;
        return true;
      }
      return end_number(c);
    case State::exp:
      if (c == '+' || c == '-') state_ = State::exp_sign;
      else if (digit(c)) state_ = State::exp_digits;
      return c == '+' || c == '-' || digit(c);
    case State::exp_sign:
      if (digit(c)) state_ = State::exp_digits;
      return digit(c);
    case State::exp_digits:
      return digit(c) || end_number(c);
    case State::literal:
      if (c != literal_[literal_at_]) return false;
      if (++literal_at_ == literal_.size()) return end_value();
      return true;
    case State::done:
      return space(c);
  }
  return false;
}

bool JsonPrefix::start_value(char c) {
  if (stack_.empty() && object_only_ && c != '{') return false;
  switch (c) {
    case '{':
    case '[':
      stack_ += c;
      state_ = c == '{' ? State::first_key : State::first_item;
      return true;
    case '"':
      key_ = false;
      state_ = State::string;
      return true;
    case '-':
      state_ = State::minus;
      return true;
    case 't':
    case 'f':
    case 'n':
      literal_ = c == 't' ? "true" : c == 'f' ? "false" : "null";
      literal_at_ = 1;
      state_ = State::literal;
      return true;
    default:
      if (!digit(c)) return false;
      state_ = c == '0' ? State::zero : State::digits;
      return true;
  }
}

bool JsonPrefix::end_value() {
  state_ = stack_.empty() ? State::done : State::after;
  return true;
}

bool JsonPrefix::close(char c) {
  if (stack_.empty() || stack_.back() != (c == '}' ? '{' : '[')) return false;
  stack_.pop_back();
  return end_value();
}

// A number has no end mark: the byte after it ends it, and is then read in its own right.
bool JsonPrefix::end_number(char c) {
  end_value();
  return step(c);
}

JsonTokens::JsonTokens(std::vector<std::string> pieces) : pieces_(std::move(pieces)), plain_(pieces_.size()) {
  for (size_t id = 0; id < pieces_.size(); ++id) {
    const std::string& p = pieces_[id];
    plain_[id] = !p.empty() && std::none_of(p.begin(), p.end(), [](char c) {
      return c == '"' || c == '\\' || static_cast<unsigned char>(c) < 0x20;
    });
  }
}

void JsonTokens::mask(const JsonPrefix& json, std::span<float> logits) const {
  constexpr float kOut = -std::numeric_limits<float>::infinity();
  bool first[256];  // whether a text may start with each byte
  for (int b = 0; b < 256; ++b) {
    const char c = char(b);
    first[b] = json.accepts(std::string_view(&c, 1));
  }
  const bool in_string = json.in_string();
  for (size_t id = 0; id < logits.size(); ++id) {
    if (id >= pieces_.size() || pieces_[id].empty() || !first[static_cast<unsigned char>(pieces_[id][0])]) {
      logits[id] = kOut;
    } else if (!(in_string && plain_[id]) && pieces_[id].size() > 1 && !json.accepts(pieces_[id])) {
      logits[id] = kOut;
    }
  }
}

}  // namespace lmx::text
