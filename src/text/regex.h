// A compiled PCRE2 pattern (UTF + UCP, JIT when available) with the find-all that HF's
// Split and Replace use. PCRE2 stands in for Oniguruma: for the \p{..}, \s, (?i:..) and
// (?!..) constructs of tokenizer patterns the two agree.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lmx::detail {

using Span = std::pair<size_t, size_t>;  // [begin, end) byte offsets

class Regex {
 public:
  // Throws lmx::Error("[tokenizer] <where>: ...") when the pattern does not compile.
  Regex(std::string_view pattern, std::string_view where);
  static Regex literal(std::string_view text, std::string_view where);

  // Non-overlapping matches, left to right; empty matches are skipped (HF drops the empty
  // splits they would make). Safe to call from several threads at once.
  void find_all(std::string_view subject, std::vector<Span>& out) const;

 private:
  struct Code;
  std::shared_ptr<const Code> code_;
};

}  // namespace lmx::detail
