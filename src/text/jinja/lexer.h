// Splits a template into text and tag tokens, applying Jinja's whitespace control the way
// HF configures it: trim_blocks, lstrip_blocks, "-" markers, and no trailing newline.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lmx::jinja {

enum class TokenType {
  kText,        // template data between tags
  kVarBegin,    // {{
  kVarEnd,      // }}
  kBlockBegin,  // {%
  kBlockEnd,    // %}
  kName,
  kString,  // text holds the decoded value
  kInt,
  kFloat,
  kOp,  // text holds the operator, e.g. "//" or "("
  kEof,
};

struct Token {
  TokenType type = TokenType::kEof;
  std::string text;
  int64_t int_value = 0;
  double float_value = 0;
  int line = 1;
  int column = 1;
};

// Throws lmx::Error("[jinja] line L, column C: ...") on malformed input.
std::vector<Token> tokenize(std::string_view source);

// The "[jinja] line L, column C: " error used by the lexer and the parser.
[[noreturn]] void syntax_error(int line, int column, const std::string& message);

}  // namespace lmx::jinja
