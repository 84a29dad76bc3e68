// UTF-8 helpers and the Python str methods that chat templates call.
// Python strings index by code point, so every position here is a code point index.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lmx::jinja::strings {

// Decodes UTF-8. A byte that is not valid UTF-8 becomes U+DC80..U+DCFF (Python's
// surrogateescape), so that encode(decode(s)) == s for any bytes.
std::u32string decode(std::string_view s);
std::string encode(std::u32string_view s);
void append_utf8(std::string& out, char32_t c);
int64_t code_point_count(std::string_view s);

// Python str.isspace() for one code point.
bool is_space(char32_t c);

std::string upper(std::string_view s);
std::string lower(std::string_view s);
std::string title(std::string_view s);       // Python str.title()
std::string capitalize(std::string_view s);  // Python str.capitalize()

// str.strip/lstrip/rstrip; chars == nullopt strips whitespace.
std::string strip(std::string_view s, const std::optional<std::string>& chars, bool left,
                  bool right);
// str.split / str.rsplit; sep == nullopt splits on runs of whitespace. maxsplit < 0: no limit.
std::vector<std::string> split(std::string_view s, const std::optional<std::string>& sep,
                               int64_t maxsplit);
std::vector<std::string> rsplit(std::string_view s, const std::optional<std::string>& sep,
                                int64_t maxsplit);
std::vector<std::string> splitlines(std::string_view s, bool keepends);
// str.replace; count < 0 replaces all.
std::string replace(std::string_view s, std::string_view old, std::string_view repl, int64_t count);
// str.find / str.rfind: code point index, or -1.
int64_t find(std::string_view s, std::string_view sub);
int64_t rfind(std::string_view s, std::string_view sub);
// str.count (non-overlapping).
int64_t count(std::string_view s, std::string_view sub);

}  // namespace lmx::jinja::strings
