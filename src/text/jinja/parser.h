// Builds the statement tree of a template from its tokens.
#pragma once

#include <string_view>

#include "text/jinja/ast.h"

namespace lmx::jinja {

// Limits that keep parsing and rendering of hostile input on a bounded stack.
inline constexpr int kMaxNesting = 100;    // nested blocks, brackets and unary operators
inline constexpr int kMaxExprDepth = 400;  // height of one expression tree

// Throws lmx::Error("[jinja] line L, column C: ...") on syntax errors.
Body parse(std::string_view source);

}  // namespace lmx::jinja
