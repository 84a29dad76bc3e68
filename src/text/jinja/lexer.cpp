#include "text/jinja/lexer.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "text/jinja/strings.h"

namespace lmx::jinja {
namespace {

bool is_ws(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_name_char(char c) { return is_name_start(c) || is_digit(c); }
int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Jinja joins the lines of the source with "\n" and drops one trailing newline
// (keep_trailing_newline=False), so "\r\n" and "\r" become "\n" everywhere.
std::string normalize(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\r') {
      out += '\n';
      if (i + 1 < s.size() && s[i + 1] == '\n') ++i;
    } else {
      out += s[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string_view source) : src_(normalize(source)) {
    line_starts_.push_back(0);
    for (size_t i = 0; i < src_.size(); ++i)
      if (src_[i] == '\n') line_starts_.push_back(i + 1);
  }

  std::vector<Token> run() {
    size_t pos = 0;
    while (true) {
      const size_t tag = find_tag(pos);
      if (tag == std::string::npos) {
        emit_text(pos, src_.size());
        break;
      }
      const char kind = src_[tag + 1];
      const char marker = tag + 2 < src_.size() ? src_[tag + 2] : '\0';
      size_t text_end = tag;
      if (marker == '-') {
        while (text_end > pos && is_ws(src_[text_end - 1])) --text_end;
      } else if ((kind == '%' || kind == '#') && marker != '+') {
        // lstrip_blocks: only spaces and tabs between the start of the line and the tag.
        size_t p = tag;
        while (p > pos && (src_[p - 1] == ' ' || src_[p - 1] == '\t')) --p;
        if (p == 0 || src_[p - 1] == '\n') text_end = p;
      }
      emit_text(pos, text_end);
      pos = tag + 2 + ((marker == '-' || marker == '+') ? 1 : 0);
      if (kind == '#') {
        pos = lex_comment(tag, pos);
      } else if (kind == '%' && is_raw_begin(pos)) {
        pos = lex_raw(tag, pos);
      } else {
        pos = lex_tag(tag, pos, kind == '%');
      }
    }
    Token eof;
    eof.type = TokenType::kEof;
    locate(src_.size(), eof.line, eof.column);
    out_.push_back(eof);
    return std::move(out_);
  }

 private:
  void locate(size_t pos, int& line, int& column) const {
    auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), pos);
    const size_t index = static_cast<size_t>(it - line_starts_.begin()) - 1;
    line = static_cast<int>(index + 1);
    column = static_cast<int>(pos - line_starts_[index] + 1);
  }

  [[noreturn]] void error_at(size_t pos, const std::string& message) const {
    int line = 0, column = 0;
    locate(pos, line, column);
    syntax_error(line, column, message);
  }

  size_t find_tag(size_t pos) const {
    while (true) {
      pos = src_.find('{', pos);
      if (pos == std::string::npos || pos + 1 >= src_.size()) return std::string::npos;
      const char c = src_[pos + 1];
      if (c == '{' || c == '%' || c == '#') return pos;
      ++pos;
    }
  }

  Token make(TokenType type, size_t pos, std::string text = {}) const {
    Token t;
    t.type = type;
    t.text = std::move(text);
    locate(pos, t.line, t.column);
    return t;
  }

  void emit_text(size_t begin, size_t end) {
    if (end > begin) out_.push_back(make(TokenType::kText, begin, src_.substr(begin, end - begin)));
  }

  // Where text resumes after a tag's closing marker: "-" strips all following whitespace,
  // trim_blocks removes one newline, "+" keeps everything.
  size_t after_close(size_t pos, char modifier, bool trim_blocks) const {
    if (modifier == '-') {
      while (pos < src_.size() && is_ws(src_[pos])) ++pos;
    } else if (modifier != '+' && trim_blocks && pos < src_.size() && src_[pos] == '\n') {
      ++pos;
    }
    return pos;
  }

  size_t lex_comment(size_t tag, size_t pos) {
    const size_t end = src_.find("#}", pos);
    if (end == std::string::npos) error_at(tag, "missing end of comment tag");
    const char modifier = end > pos ? src_[end - 1] : '\0';
    return after_close(end + 2, modifier, true);
  }

  // Matches "\s*raw\s*[-+]?%}" at pos, the rest of a {% raw %} tag.
  bool is_raw_begin(size_t pos) const {
    while (pos < src_.size() && is_ws(src_[pos])) ++pos;
    if (src_.compare(pos, 3, "raw") != 0) return false;
    pos += 3;
    if (pos < src_.size() && is_name_char(src_[pos])) return false;
    while (pos < src_.size() && is_ws(src_[pos])) ++pos;
    if (pos < src_.size() && (src_[pos] == '-' || src_[pos] == '+')) ++pos;
    return src_.compare(pos, 2, "%}") == 0;
  }

  size_t lex_raw(size_t tag, size_t pos) {
    const size_t close = src_.find("%}", pos);
    const char open_modifier = src_[close - 1];
    size_t body = after_close(close + 2, open_modifier == '-' ? '-' : '+', false);
    for (size_t at = src_.find("{%", body); at != std::string::npos; at = src_.find("{%", at + 2)) {
      size_t p = at + 2;
      const char left = p < src_.size() ? src_[p] : '\0';
      if (left == '-' || left == '+') ++p;
      while (p < src_.size() && is_ws(src_[p])) ++p;
      if (src_.compare(p, 6, "endraw") != 0) continue;
      p += 6;
      while (p < src_.size() && is_ws(src_[p])) ++p;
      char right = '\0';
      if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) right = src_[p++];
      if (src_.compare(p, 2, "%}") != 0) continue;
      size_t text_end = at;
      if (left == '-')
        while (text_end > body && is_ws(src_[text_end - 1])) --text_end;
      emit_text(body, text_end);
      return after_close(p + 2, right, true);
    }
    error_at(tag, "missing {% endraw %} for this {% raw %}");
  }

  size_t lex_tag(size_t tag, size_t pos, bool block) {
    out_.push_back(make(block ? TokenType::kBlockBegin : TokenType::kVarBegin, tag));
    int depth = 0;
    while (true) {
      while (pos < src_.size() && is_ws(src_[pos])) ++pos;
      if (pos >= src_.size())
        error_at(tag, block ? "unexpected end of template, expected '%}'"
                            : "unexpected end of template, expected '}}'");
      if (depth == 0) {
        const char* close = block ? "%}" : "}}";
        char modifier = '\0';
        size_t at = pos;
        if (src_[pos] == '-' || (block && src_[pos] == '+')) modifier = src_[at++];
        if (src_.compare(at, 2, close) == 0) {
          out_.push_back(make(block ? TokenType::kBlockEnd : TokenType::kVarEnd, pos));
          return after_close(at + 2, modifier, block);
        }
      }
      pos = lex_token(pos, depth);
    }
  }

  size_t lex_token(size_t pos, int& depth) {
    const char c = src_[pos];
    if (is_name_start(c)) {
      size_t end = pos;
      while (end < src_.size() && is_name_char(src_[end])) ++end;
      out_.push_back(make(TokenType::kName, pos, src_.substr(pos, end - pos)));
      return end;
    }
    if (is_digit(c)) return lex_number(pos);
    if (c == '\'' || c == '"') return lex_string(pos);
    static const char* const kTwoCharOps[] = {"//", "**", "==", "!=", "<=", ">="};
    for (const char* op : kTwoCharOps) {
      if (src_.compare(pos, 2, op) == 0) {
        out_.push_back(make(TokenType::kOp, pos, op));
        return pos + 2;
      }
    }
    static const std::string_view kOneCharOps = "+-*/%~<>=()[]{},.:|;";
    if (kOneCharOps.find(c) == std::string_view::npos) {
      error_at(pos, "unexpected character '" + std::string(1, c) + "'");
    }
    if (c == '(' || c == '[' || c == '{') ++depth;
    if ((c == ')' || c == ']' || c == '}') && depth > 0) --depth;
    out_.push_back(make(TokenType::kOp, pos, std::string(1, c)));
    return pos + 1;
  }

  // Digits with optional "_" separators, as Python and Jinja allow.
  size_t scan_digits(size_t pos, std::string& digits) const {
    while (pos < src_.size() &&
           (is_digit(src_[pos]) || (src_[pos] == '_' && pos + 1 < src_.size() &&
                                    is_digit(src_[pos + 1]) && !digits.empty()))) {
      if (src_[pos] != '_') digits += src_[pos];
      ++pos;
    }
    return pos;
  }

  size_t lex_number(size_t start) {
    std::string digits;
    size_t pos = scan_digits(start, digits);
    bool is_float = false;
    if (pos + 1 < src_.size() && src_[pos] == '.' && is_digit(src_[pos + 1])) {
      is_float = true;
      digits += '.';
      std::string frac;
      pos = scan_digits(pos + 1, frac);
      digits += frac;
    }
    if (pos < src_.size() && (src_[pos] == 'e' || src_[pos] == 'E')) {
      size_t p = pos + 1;
      std::string exp = "e";
      if (p < src_.size() && (src_[p] == '+' || src_[p] == '-')) exp += src_[p++];
      if (p < src_.size() && is_digit(src_[p])) {
        std::string exp_digits;
        pos = scan_digits(p, exp_digits);
        digits += exp + exp_digits;
        is_float = true;
      }
    }
    Token t = make(is_float ? TokenType::kFloat : TokenType::kInt, start, digits);
    if (is_float) {
      t.float_value = std::strtod(digits.c_str(), nullptr);
    } else {
      int64_t v = 0;
      for (char d : digits) {
        if (v > (INT64_MAX - (d - '0')) / 10) error_at(start, "integer literal too large");
        v = v * 10 + (d - '0');
      }
      t.int_value = v;
    }
    out_.push_back(std::move(t));
    return pos;
  }

  // Python string literal escapes, as Jinja decodes them with "unicode-escape".
  size_t lex_string(size_t start) {
    const char quote = src_[start];
    std::string value;
    size_t pos = start + 1;
    while (true) {
      if (pos >= src_.size()) error_at(start, "unterminated string literal");
      const char c = src_[pos];
      if (c == quote) break;
      if (c != '\\') {
        value += c;
        ++pos;
        continue;
      }
      if (pos + 1 >= src_.size()) error_at(start, "unterminated string literal");
      const char e = src_[pos + 1];
      pos += 2;
      switch (e) {
        case '\n': break;  // line continuation
        case '\\': value += '\\'; break;
        case '\'': value += '\''; break;
        case '"': value += '"'; break;
        case 'a': value += '\a'; break;
        case 'b': value += '\b'; break;
        case 'f': value += '\f'; break;
        case 'n': value += '\n'; break;
        case 'r': value += '\r'; break;
        case 't': value += '\t'; break;
        case 'v': value += '\v'; break;
        case 'x':
        case 'u':
        case 'U': {
          const int width = e == 'x' ? 2 : (e == 'u' ? 4 : 8);
          uint32_t cp = 0;
          for (int k = 0; k < width; ++k) {
            const int h = pos + k < src_.size() ? hex_value(src_[pos + k]) : -1;
            if (h < 0) error_at(pos - 2, std::string("truncated \\") + e + " escape");
            cp = cp * 16 + static_cast<uint32_t>(h);
          }
          if (cp > 0x10FFFF) error_at(pos - 2, "escape outside the Unicode range");
          pos += width;
          strings::append_utf8(value, static_cast<char32_t>(cp));
          break;
        }
        default:
          if (e >= '0' && e <= '7') {
            uint32_t cp = static_cast<uint32_t>(e - '0');
            for (int k = 0; k < 2 && pos < src_.size() && src_[pos] >= '0' && src_[pos] <= '7'; ++k)
              cp = cp * 8 + static_cast<uint32_t>(src_[pos++] - '0');
            strings::append_utf8(value, static_cast<char32_t>(cp));
          } else {
            value += '\\';  // unknown escapes stay as written, as in Python
            value += e;
          }
      }
    }
    out_.push_back(make(TokenType::kString, start, std::move(value)));
    return pos + 1;
  }

  std::string src_;
  std::vector<size_t> line_starts_;
  std::vector<Token> out_;
};

}  // namespace

void syntax_error(int line, int column, const std::string& message) {
  fail("jinja", "line ", line, ", column ", column, ": ", message);
}

std::vector<Token> tokenize(std::string_view source) { return Lexer(source).run(); }

}  // namespace lmx::jinja
