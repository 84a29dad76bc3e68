// Normalizers (spec 4.3): Unicode forms, Replace, Prepend, Lowercase, Strip, Sequence.
#include <utf8proc.h>

#include <cstdlib>

#include "core/error.h"
#include "text/components.h"
#include "text/regex.h"
#include "text/unicode.h"

namespace lmx::detail {

PatternSpec read_pattern(const nlohmann::json& json, std::string_view where) {
  if (json.is_object() && json.contains("String")) return {json["String"].get<std::string>(), false};
  if (json.is_object() && json.contains("Regex")) return {json["Regex"].get<std::string>(), true};
  fail("tokenizer", where, ": a pattern must be {\"String\": ...} or {\"Regex\": ...}, got ", json.dump());
}

namespace {

class UnicodeForm final : public Normalizer {
 public:
  explicit UnicodeForm(int options) : options_(options) {}
  void normalize(std::string& text) const override {
    if (text.empty()) return;
    // ASCII text is invariant under every normalization form.
    bool ascii = true;
    for (char c : text) ascii &= static_cast<unsigned char>(c) < 0x80;
    if (ascii) return;
    utf8proc_uint8_t* out = nullptr;
    const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()), utf8proc_ssize_t(text.size()),
                                &out, utf8proc_option_t(options_));
    if (n < 0) return;  // cannot happen on valid UTF-8; leave the text as it is
    text.assign(reinterpret_cast<char*>(out), size_t(n));
    std::free(out);
  }

 private:
  int options_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(const nlohmann::json& j, std::string_view where)
      : pattern_(read_pattern(j.at("pattern"), where)), content_(j.at("content").get<std::string>()) {
    if (pattern_.is_regex) regex_ = std::make_unique<Regex>(pattern_.text, where);
  }
  void normalize(std::string& text) const override {
    if (!regex_) {
      if (pattern_.text.empty() || text.find(pattern_.text) == std::string::npos) return;
      std::string out;
      out.reserve(text.size() + text.size() / 4);
      size_t pos = 0;
      for (size_t hit; (hit = text.find(pattern_.text, pos)) != std::string::npos; pos = hit + pattern_.text.size()) {
        out.append(text, pos, hit - pos);
        out += content_;
      }
      out.append(text, pos);
      text = std::move(out);
      return;
    }
    std::vector<Span> spans;
    regex_->find_all(text, spans);
    if (spans.empty()) return;
    std::string out;
    size_t pos = 0;
    for (auto [b, e] : spans) {
      out.append(text, pos, b - pos);
      out += content_;
      pos = e;
    }
    out.append(text, pos);
    text = std::move(out);
  }

 private:
  PatternSpec pattern_;
  std::string content_;
  std::unique_ptr<Regex> regex_;
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text.insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

class LowercaseNormalizer final : public Normalizer {
 public:
  void normalize(std::string& text) const override {
    std::string out;
    out.reserve(text.size());
    for (size_t i = 0; i < text.size();) {
      const char32_t c = next_code_point(text, i);
      // U+0130 is the one code point whose full lowercase mapping (Rust's to_lowercase)
      // has two characters; utf8proc gives the simple mapping.
      if (c == 0x130) {
        out += "i\xCC\x87";
        continue;
      }
      append_utf8(out, char32_t(utf8proc_tolower(utf8proc_int32_t(c))));
    }
    text = std::move(out);
  }
};

class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& text) const override {
    size_t b = 0, e = text.size();
    if (left_) {
      while (b < e) {
        size_t i = b;
        if (!is_whitespace(next_code_point(text, i))) break;
        b = i;
      }
    }
    if (right_) {
      while (e > b) {
        size_t start = e - 1;
        while (start > b && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
        size_t i = start;
        if (!is_whitespace(next_code_point(text, i))) break;
        e = start;
      }
    }
    text = text.substr(b, e - b);
  }

 private:
  bool left_, right_;
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts) : parts_(std::move(parts)) {}
  void normalize(std::string& text) const override {
    for (const auto& p : parts_) p->normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j, std::string_view where) {
  if (j.is_null()) return nullptr;
  const std::string type = j.value("type", "");
  if (type == "NFC") return std::make_unique<UnicodeForm>(UTF8PROC_STABLE | UTF8PROC_COMPOSE);
  if (type == "NFD") return std::make_unique<UnicodeForm>(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE);
  if (type == "NFKC") return std::make_unique<UnicodeForm>(UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
  if (type == "NFKD") return std::make_unique<UnicodeForm>(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
  if (type == "Replace") return std::make_unique<ReplaceNormalizer>(j, where);
  if (type == "Prepend") return std::make_unique<PrependNormalizer>(j.at("prepend").get<std::string>());
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "Strip") return std::make_unique<StripNormalizer>(j.value("strip_left", true), j.value("strip_right", true));
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (const auto& n : j.at("normalizers"))
      if (auto p = make_normalizer(n, where)) parts.push_back(std::move(p));
    return std::make_unique<SequenceNormalizer>(std::move(parts));
  }
  fail("tokenizer", where, ": unknown normalizer type '", type,
       "' (supported: NFC, NFD, NFKC, NFKD, Replace, Prepend, Lowercase, Strip, Sequence)");
}

}  // namespace lmx::detail
