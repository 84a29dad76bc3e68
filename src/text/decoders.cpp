// Decoders (spec 4.2, 4.3): ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace,
// WordPiece and Sequence, each a step of HF's decode_chain over token strings.
#include "core/error.h"
#include "text/components.h"
#include "text/regex.h"
#include "text/unicode.h"

namespace lmx::detail {
namespace {

class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      const size_t mark = bytes.size();
      bool all_mapped = true;
      for (size_t i = 0; i < t.size() && all_mapped;) {
        const int b = unicode_to_byte(next_code_point(t, i));
        if (b < 0) all_mapped = false;
        else bytes.push_back(char(b));
      }
      // A token with a character outside the byte alphabet passes through as its UTF-8.
      if (!all_mapped) bytes.replace(mark, std::string::npos, t);
    }
    tokens.assign(1, to_valid_utf8(bytes));
  }
};

// Parses "<0xHH>"; HF reads the two characters with u8::from_str_radix(.., 16).
int parse_byte_token(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1; };
  if (t[3] == '+') return hex(t[4]);
  const int hi = hex(t[3]), lo = hex(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

class ByteFallbackDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string run;
    auto flush = [&] {
      if (run.empty()) return;
      if (is_valid_utf8(run)) out.push_back(run);
      else
        for (size_t k = 0; k < run.size(); ++k) out.emplace_back(kReplacementUtf8);
      run.clear();
    };
    for (std::string& t : tokens) {
      const int b = parse_byte_token(t);
      if (b >= 0) {
        run.push_back(char(b));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens = std::move(out);
  }
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(const nlohmann::json& j, std::string_view where)
      : content_(j.at("content").get<std::string>()) {
    const PatternSpec p = read_pattern(j.at("pattern"), where);
    regex_ = std::make_unique<Regex>(p.is_regex ? Regex(p.text, where) : Regex::literal(p.text, where));
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<Span> spans;
    for (std::string& t : tokens) {
      regex_->find_all(t, spans);
      if (spans.empty()) continue;
      std::string out;
      size_t pos = 0;
      for (auto [b, e] : spans) {
        out.append(t, pos, b - pos);
        out += content_;
        pos = e;
      }
      out.append(t, pos);
      t = std::move(out);
    }
  }

 private:
  std::string content_;
  std::unique_ptr<Regex> regex_;
};

class StripDecoder final : public Decoder {
 public:
  StripDecoder(const nlohmann::json& j, std::string_view where)
      : start_(j.value("start", size_t(0))), stop_(j.value("stop", size_t(0))) {
    const std::string c = j.at("content").get<std::string>();
    size_t i = 0;
    LMX_CHECK(!c.empty(), "tokenizer", where, ": Strip decoder needs a one-character content");
    content_ = next_code_point(c, i);
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      std::vector<size_t> starts;  // byte offset of each character
      for (size_t i = 0; i < t.size();) {
        starts.push_back(i);
        next_code_point(t, i);
      }
      auto char_at = [&](size_t k) {
        size_t i = starts[k];
        return next_code_point(t, i);
      };
      const size_t n = starts.size();
      size_t cut_start = 0;
      for (size_t k = 0; k < std::min(start_, n) && char_at(k) == content_; ++k) cut_start = k + 1;
      size_t cut_stop = n;
      for (size_t k = 0; k < std::min(stop_, n) && char_at(n - k - 1) == content_; ++k) cut_stop = n - k - 1;
      if (cut_stop <= cut_start) {
        t.clear();
        continue;
      }
      const size_t b = starts[cut_start], e = cut_stop == n ? t.size() : starts[cut_stop];
      t = t.substr(b, e - b);
    }
  }

 private:
  char32_t content_;
  size_t start_, stop_;
};

class MetaspaceDecoder final : public Decoder {
 public:
  explicit MetaspaceDecoder(const nlohmann::json& j)
      : replacement_(j.value("replacement", std::string("\xE2\x96\x81"))) {
    const std::string scheme = j.contains("prepend_scheme") ? j["prepend_scheme"].get<std::string>()
                                                            : (j.value("add_prefix_space", true) ? "always" : "never");
    strip_first_ = scheme != "never";
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t k = 0; k < tokens.size(); ++k) {
      std::string out;
      const std::string& t = tokens[k];
      for (size_t pos = 0; pos < t.size();) {
        if (t.compare(pos, replacement_.size(), replacement_) == 0) {
          out.push_back(' ');
          pos += replacement_.size();
        } else {
          out.push_back(t[pos++]);
        }
      }
      // The space that the pre-tokenizer prepended to the first word goes away again.
      if (k == 0 && strip_first_ && !out.empty() && out[0] == ' ') out.erase(0, 1);
      tokens[k] = std::move(out);
    }
  }

 private:
  std::string replacement_;
  bool strip_first_ = true;
};

class WordPieceDecoder final : public Decoder {
 public:
  explicit WordPieceDecoder(const nlohmann::json& j)
      : prefix_(j.value("prefix", std::string("##"))), cleanup_(j.value("cleanup", true)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t k = 0; k < tokens.size(); ++k) {
      std::string& t = tokens[k];
      if (k != 0) {
        if (t.compare(0, prefix_.size(), prefix_) == 0) t.erase(0, prefix_.size());
        else t.insert(0, 1, ' ');
      }
      if (cleanup_) {
        // WordPiece's own cleanup, as HF tokenizers does it.
        static constexpr std::pair<std::string_view, std::string_view> kCleanups[] = {
            {" .", "."},   {" ?", "?"},           {" !", "!"},   {" ,", ","},     {" ' ", "'"},   {" n't", "n't"},
            {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
        for (const auto& [from, to] : kCleanups)
          for (size_t pos = 0; (pos = t.find(from, pos)) != std::string::npos; pos += to.size())
            t.replace(pos, from.size(), to);
      }
    }
  }

 private:
  std::string prefix_;
  bool cleanup_;
};

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts) : parts_(std::move(parts)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& p : parts_) p->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

}  // namespace

std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j, std::string_view where) {
  if (j.is_null()) return nullptr;
  const std::string type = j.value("type", "");
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Replace") return std::make_unique<ReplaceDecoder>(j, where);
  if (type == "Strip") return std::make_unique<StripDecoder>(j, where);
  if (type == "Metaspace") return std::make_unique<MetaspaceDecoder>(j);
  if (type == "WordPiece") return std::make_unique<WordPieceDecoder>(j);
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Decoder>> parts;
    for (const auto& d : j.at("decoders"))
      if (auto x = make_decoder(d, where)) parts.push_back(std::move(x));
    return std::make_unique<SequenceDecoder>(std::move(parts));
  }
  fail("tokenizer", where, ": unknown decoder type '", type,
       "' (supported: ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace, WordPiece, Sequence)");
}

}  // namespace lmx::detail
