#include "text/jinja/strings.h"

#include <utf8proc.h>

#include <algorithm>
#include <limits>

namespace lmx::jinja::strings {
namespace {

constexpr char32_t kEscapeBase = 0xDC00;  // surrogateescape: byte b <-> U+DC00 + b

bool is_line_break(char32_t c) {
  return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E ||
         c == 0x85 || c == 0x2028 || c == 0x2029;
}

bool is_cased(char32_t c) {
  if (c >= 0xD800 && c <= 0xDFFF) return false;
  auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT;
}

char32_t map_case(char32_t c, utf8proc_int32_t (*fn)(utf8proc_int32_t)) {
  if (c >= 0xD800 && c <= 0xDFFF) return c;
  return static_cast<char32_t>(fn(static_cast<utf8proc_int32_t>(c)));
}

std::string map_all(std::string_view s, utf8proc_int32_t (*fn)(utf8proc_int32_t)) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : decode(s)) append_utf8(out, map_case(c, fn));
  return out;
}

int64_t limit_of(int64_t maxsplit) {
  return maxsplit < 0 ? std::numeric_limits<int64_t>::max() : maxsplit;
}

}  // namespace

std::u32string decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    if (b0 < 0x80) {
      out.push_back(b0);
      ++i;
      continue;
    }
    int len = 0;
    char32_t cp = 0;
    char32_t min = 0;
    if ((b0 & 0xE0) == 0xC0) {
      len = 2, cp = b0 & 0x1F, min = 0x80;
    } else if ((b0 & 0xF0) == 0xE0) {
      len = 3, cp = b0 & 0x0F, min = 0x800;
    } else if ((b0 & 0xF8) == 0xF0) {
      len = 4, cp = b0 & 0x07, min = 0x10000;
    }
    bool ok = len > 0 && i + len <= n;
    for (int k = 1; ok && k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) ok = false;
      cp = (cp << 6) | (b & 0x3F);
    }
    if (ok && (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))) ok = false;
    if (ok) {
      out.push_back(cp);
      i += len;
    } else {
      out.push_back(kEscapeBase + b0);
      ++i;
    }
  }
  return out;
}

void append_utf8(std::string& out, char32_t c) {
  if (c >= kEscapeBase + 0x80 && c <= kEscapeBase + 0xFF) {
    out.push_back(static_cast<char>(c - kEscapeBase));
  } else if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

int64_t code_point_count(std::string_view s) {
  // Fast path for ASCII, which is nearly all template text.
  if (std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; }))
    return static_cast<int64_t>(s.size());
  return static_cast<int64_t>(decode(s).size());
}

bool is_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

std::string upper(std::string_view s) { return map_all(s, utf8proc_toupper); }
std::string lower(std::string_view s) { return map_all(s, utf8proc_tolower); }

std::string title(std::string_view s) {
  std::string out;
  bool previous_cased = false;
  for (char32_t c : decode(s)) {
    const bool cased = is_cased(c);
    append_utf8(out, map_case(c, previous_cased ? utf8proc_tolower : utf8proc_totitle));
    previous_cased = cased;
  }
  return out;
}

std::string capitalize(std::string_view s) {
  std::string out;
  bool first = true;
  for (char32_t c : decode(s)) {
    append_utf8(out, map_case(c, first ? utf8proc_totitle : utf8proc_tolower));
    first = false;
  }
  return out;
}

std::string strip(std::string_view s, const std::optional<std::string>& chars, bool left,
                  bool right) {
  const std::u32string cps = decode(s);
  const std::u32string set = chars ? decode(*chars) : std::u32string();
  auto strippable = [&](char32_t c) {
    return chars ? set.find(c) != std::u32string::npos : is_space(c);
  };
  size_t begin = 0, end = cps.size();
  if (left)
    while (begin < end && strippable(cps[begin])) ++begin;
  if (right)
    while (end > begin && strippable(cps[end - 1])) --end;
  return encode(std::u32string_view(cps).substr(begin, end - begin));
}

std::vector<std::string> split(std::string_view s, const std::optional<std::string>& sep,
                               int64_t maxsplit) {
  std::vector<std::string> out;
  int64_t remaining = limit_of(maxsplit);
  if (sep) {
    if (sep->empty()) return {std::string(s)};  // the caller reports "empty separator"
    size_t start = 0;
    while (remaining-- > 0) {
      const size_t at = s.find(*sep, start);
      if (at == std::string_view::npos) break;
      out.emplace_back(s.substr(start, at - start));
      start = at + sep->size();
    }
    out.emplace_back(s.substr(start));
    return out;
  }
  const std::u32string cps = decode(s);
  const size_t n = cps.size();
  size_t i = 0;
  while (remaining-- > 0) {
    while (i < n && is_space(cps[i])) ++i;
    if (i == n) break;
    const size_t j = i;
    while (i < n && !is_space(cps[i])) ++i;
    out.push_back(encode(std::u32string_view(cps).substr(j, i - j)));
  }
  while (i < n && is_space(cps[i])) ++i;
  if (i < n) out.push_back(encode(std::u32string_view(cps).substr(i)));
  return out;
}

std::vector<std::string> rsplit(std::string_view s, const std::optional<std::string>& sep,
                                int64_t maxsplit) {
  std::vector<std::string> out;
  int64_t remaining = limit_of(maxsplit);
  if (sep) {
    if (sep->empty()) return {std::string(s)};
    size_t end = s.size();
    while (remaining-- > 0 && end >= sep->size()) {
      const size_t at = s.rfind(*sep, end - sep->size());
      if (at == std::string_view::npos) break;
      out.emplace_back(s.substr(at + sep->size(), end - at - sep->size()));
      end = at;
    }
    out.emplace_back(s.substr(0, end));
    std::reverse(out.begin(), out.end());
    return out;
  }
  const std::u32string cps = decode(s);
  int64_t i = static_cast<int64_t>(cps.size()) - 1;
  while (remaining-- > 0) {
    while (i >= 0 && is_space(cps[i])) --i;
    if (i < 0) break;
    const int64_t j = i;
    while (i >= 0 && !is_space(cps[i])) --i;
    out.push_back(encode(std::u32string_view(cps).substr(i + 1, j - i)));
  }
  while (i >= 0 && is_space(cps[i])) --i;
  if (i >= 0) out.push_back(encode(std::u32string_view(cps).substr(0, i + 1)));
  std::reverse(out.begin(), out.end());
  return out;
}

std::vector<std::string> splitlines(std::string_view s, bool keepends) {
  std::vector<std::string> out;
  const std::u32string cps = decode(s);
  const size_t n = cps.size();
  size_t start = 0, i = 0;
  while (i < n) {
    if (!is_line_break(cps[i])) {
      ++i;
      continue;
    }
    size_t eol = i + 1;
    if (cps[i] == '\r' && eol < n && cps[eol] == '\n') ++eol;
    out.push_back(encode(std::u32string_view(cps).substr(start, (keepends ? eol : i) - start)));
    start = i = eol;
  }
  if (start < n) out.push_back(encode(std::u32string_view(cps).substr(start)));
  return out;
}

std::string replace(std::string_view s, std::string_view old, std::string_view repl,
                    int64_t count) {
  int64_t remaining = limit_of(count);
  std::string out;
  if (old.empty()) {
    // Python inserts the replacement before every character and at the end.
    const std::u32string cps = decode(s);
    for (char32_t c : cps) {
      if (remaining-- > 0) out += repl;
      append_utf8(out, c);
    }
    if (remaining > 0) out += repl;
    return out;
  }
  size_t start = 0;
  while (remaining-- > 0) {
    const size_t at = s.find(old, start);
    if (at == std::string_view::npos) break;
    out.append(s.substr(start, at - start));
    out.append(repl);
    start = at + old.size();
  }
  out.append(s.substr(start));
  return out;
}

int64_t find(std::string_view s, std::string_view sub) {
  const size_t at = s.find(sub);
  return at == std::string_view::npos ? -1 : code_point_count(s.substr(0, at));
}

int64_t rfind(std::string_view s, std::string_view sub) {
  const size_t at = s.rfind(sub);
  return at == std::string_view::npos ? -1 : code_point_count(s.substr(0, at));
}

int64_t count(std::string_view s, std::string_view sub) {
  if (sub.empty()) return code_point_count(s) + 1;
  int64_t n = 0;
  for (size_t at = s.find(sub); at != std::string_view::npos; at = s.find(sub, at + sub.size()))
    ++n;
  return n;
}

}  // namespace lmx::jinja::strings
