// UTF-8 and code-point helpers shared by the tokenizer stages.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace lmx::detail {

inline constexpr char32_t kReplacementChar = 0xFFFD;
inline constexpr std::string_view kReplacementUtf8 = "\xEF\xBF\xBD";

void append_utf8(std::string& out, char32_t cp);

// Decodes the code point starting at s[i] (which must be valid UTF-8) and advances i.
char32_t next_code_point(std::string_view s, size_t& i);

// Byte length of the UTF-8 sequence that starts with `lead` (1 for a stray byte).
inline size_t utf8_length(unsigned char lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

bool is_valid_utf8(std::string_view s);

// Replaces every maximal invalid subsequence by one U+FFFD, the policy of Python's
// bytes.decode(errors="replace") and Rust's String::from_utf8_lossy.
std::string to_valid_utf8(std::string_view s);

// Rust's char::is_whitespace (the White_Space property).
bool is_whitespace(char32_t c);
// Regex \w as the Rust regex crate defines it: letters, marks, decimal and letter numbers,
// connector punctuation and the joiners.
bool is_word_char(char32_t c);
// Rust's char::is_numeric: general categories Nd, Nl, No.
bool is_numeric(char32_t c);
// HF's is_punc: ASCII punctuation or any Unicode P* category.
bool is_punctuation(char32_t c);

// GPT-2 byte-level alphabet: each byte maps to one printable code point (spec 4.2).
const std::array<std::string, 256>& byte_to_unicode();
// The inverse: -1 for code points outside the alphabet.
int unicode_to_byte(char32_t c);

}  // namespace lmx::detail
