// Pre-tokenizers (spec 4.2, 4.3): Split, ByteLevel, Metaspace, Whitespace, WhitespaceSplit,
// Digits, Punctuation and Sequence, with HF's five split behaviours.
#include "core/error.h"
#include "text/components.h"
#include "text/regex.h"
#include "text/unicode.h"

namespace lmx::detail {
namespace {

enum class Behavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

Behavior parse_behavior(const std::string& s, std::string_view where) {
  if (s == "Removed") return Behavior::removed;
  if (s == "Isolated") return Behavior::isolated;
  if (s == "MergedWithPrevious") return Behavior::merged_with_previous;
  if (s == "MergedWithNext") return Behavior::merged_with_next;
  if (s == "Contiguous") return Behavior::contiguous;
  fail("tokenizer", where, ": unknown split behavior '", s, "'");
}

struct Segment {
  size_t begin, end;
  bool is_match;
};

// Applies `behavior` to the matches of one piece (HF's NormalizedString::split) and
// appends the non-empty results to `out`.
void split_piece(const Piece& piece, const std::vector<Span>& matches, Behavior behavior, bool invert,
                 std::vector<Piece>& out) {
  const std::string& t = piece.text;
  std::vector<Segment> segs;
  segs.reserve(matches.size() * 2 + 1);
  size_t prev = 0;
  for (auto [b, e] : matches) {
    if (prev != b) segs.push_back({prev, b, invert});
    segs.push_back({b, e, !invert});
    prev = e;
  }
  if (prev != t.size()) segs.push_back({prev, t.size(), invert});

  std::vector<Span> kept;
  kept.reserve(segs.size());
  switch (behavior) {
    case Behavior::removed:
      for (const auto& s : segs)
        if (!s.is_match) kept.emplace_back(s.begin, s.end);
      break;
    case Behavior::isolated:
      for (const auto& s : segs) kept.emplace_back(s.begin, s.end);
      break;
    case Behavior::merged_with_previous: {
      bool previous_match = false;
      for (const auto& s : segs) {
        if (s.is_match && !previous_match && !kept.empty()) kept.back().second = s.end;
        else kept.emplace_back(s.begin, s.end);
        previous_match = s.is_match;
      }
      break;
    }
    case Behavior::merged_with_next: {
      bool next_match = false;
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->is_match && !next_match && !kept.empty()) kept.back().first = it->begin;
        else kept.emplace_back(it->begin, it->end);
        next_match = it->is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
    }
    case Behavior::contiguous: {
      bool previous_match = false;
      for (const auto& s : segs) {
        if (s.is_match == previous_match && !kept.empty()) kept.back().second = s.end;
        else kept.emplace_back(s.begin, s.end);
        previous_match = s.is_match;
      }
      break;
    }
  }
  for (auto [b, e] : kept)
    if (e > b) out.push_back({t.substr(b, e - b), piece.at_start && b == 0});
}

// Spans of the single characters for which `pred` holds (HF's Fn(char) -> bool pattern).
template <class Pred>
void char_matches(std::string_view t, Pred pred, std::vector<Span>& out) {
  out.clear();
  for (size_t i = 0; i < t.size();) {
    const size_t b = i;
    if (pred(next_code_point(t, i))) out.emplace_back(b, i);
  }
}

// Shared driver: computes matches per piece and splits it.
template <class FindMatches>
void split_all(std::vector<Piece>& pieces, FindMatches find, Behavior behavior, bool invert) {
  std::vector<Piece> out;
  out.reserve(pieces.size() * 4);
  std::vector<Span> matches;
  for (const Piece& p : pieces) {
    find(p.text, matches);
    split_piece(p, matches, behavior, invert, out);
  }
  pieces = std::move(out);
}

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(const nlohmann::json& j, std::string_view where)
      : behavior_(parse_behavior(j.at("behavior").get<std::string>(), where)), invert_(j.value("invert", false)) {
    const PatternSpec p = read_pattern(j.at("pattern"), where);
    regex_ = std::make_unique<Regex>(p.is_regex ? Regex(p.text, where) : Regex::literal(p.text, where));
  }
  void split(std::vector<Piece>& pieces) const override {
    split_all(pieces, [&](std::string_view t, std::vector<Span>& m) { regex_->find_all(t, m); }, behavior_, invert_);
  }

 private:
  Behavior behavior_;
  bool invert_;
  std::unique_ptr<Regex> regex_;
};

constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(const nlohmann::json& j, std::string_view where)
      : add_prefix_space_(j.value("add_prefix_space", true)) {
    if (j.value("use_regex", true)) regex_ = std::make_unique<Regex>(kGpt2Pattern, where);
  }
  void split(std::vector<Piece>& pieces) const override {
    if (add_prefix_space_)
      for (Piece& p : pieces)
        if (p.text.empty() || p.text[0] != ' ') p.text.insert(0, 1, ' ');
    if (regex_)
      split_all(pieces, [&](std::string_view t, std::vector<Span>& m) { regex_->find_all(t, m); }, Behavior::isolated,
                false);
    const auto& table = byte_to_unicode();
    for (Piece& p : pieces) {
      std::string mapped;
      mapped.reserve(p.text.size() * 2);
      for (char c : p.text) mapped += table[static_cast<unsigned char>(c)];
      p.text = std::move(mapped);
    }
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
};

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(const nlohmann::json& j, std::string_view where)
      : replacement_(j.value("replacement", std::string("\xE2\x96\x81"))), split_(j.value("split", true)) {
    // Old files spell the scheme as add_prefix_space.
    const std::string scheme = j.contains("prepend_scheme")
                                   ? j["prepend_scheme"].get<std::string>()
                                   : (j.value("add_prefix_space", true) ? "always" : "never");
    if (scheme == "always") scheme_ = Scheme::always;
    else if (scheme == "first") scheme_ = Scheme::first;
    else if (scheme == "never") scheme_ = Scheme::never;
    else fail("tokenizer", where, ": unknown Metaspace prepend_scheme '", scheme, "'");
  }
  void split(std::vector<Piece>& pieces) const override {
    for (Piece& p : pieces) {
      std::string out;
      for (char c : p.text) {
        if (c == ' ') out += replacement_;
        else out.push_back(c);
      }
      const bool prepend = scheme_ == Scheme::always || (scheme_ == Scheme::first && p.at_start);
      if (prepend && out.compare(0, replacement_.size(), replacement_) != 0) out.insert(0, replacement_);
      p.text = std::move(out);
    }
    if (!split_) return;
    split_all(
        pieces,
        [&](std::string_view t, std::vector<Span>& m) {
          m.clear();
          for (size_t pos = 0; (pos = t.find(replacement_, pos)) != std::string_view::npos; pos += replacement_.size())
            m.emplace_back(pos, pos + replacement_.size());
        },
        Behavior::merged_with_next, false);
  }

 private:
  enum class Scheme { always, first, never };
  std::string replacement_;
  bool split_;
  Scheme scheme_ = Scheme::always;
};

class WhitespacePreTokenizer final : public PreTokenizer {
 public:
  explicit WhitespacePreTokenizer(std::string_view where) : regex_(R"(\w+|[^\w\s]+)", where) {}
  void split(std::vector<Piece>& pieces) const override {
    // The matches are the words; everything between them goes.
    split_all(pieces, [&](std::string_view t, std::vector<Span>& m) { regex_.find_all(t, m); }, Behavior::removed,
              true);
  }

 private:
  Regex regex_;
};

// Splits on characters that satisfy a predicate: WhitespaceSplit, Digits, Punctuation.
class CharClassPreTokenizer final : public PreTokenizer {
 public:
  using Pred = bool (*)(char32_t);
  CharClassPreTokenizer(Pred pred, Behavior behavior) : pred_(pred), behavior_(behavior) {}
  void split(std::vector<Piece>& pieces) const override {
    split_all(pieces, [&](std::string_view t, std::vector<Span>& m) { char_matches(t, pred_, m); }, behavior_, false);
  }

 private:
  Pred pred_;
  Behavior behavior_;
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts) : parts_(std::move(parts)) {}
  void split(std::vector<Piece>& pieces) const override {
    for (const auto& p : parts_) p->split(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& j, std::string_view where) {
  if (j.is_null()) return nullptr;
  const std::string type = j.value("type", "");
  if (type == "Split") return std::make_unique<SplitPreTokenizer>(j, where);
  if (type == "ByteLevel") return std::make_unique<ByteLevelPreTokenizer>(j, where);
  if (type == "Metaspace") return std::make_unique<MetaspacePreTokenizer>(j, where);
  if (type == "Whitespace") return std::make_unique<WhitespacePreTokenizer>(where);
  if (type == "WhitespaceSplit") return std::make_unique<CharClassPreTokenizer>(&is_whitespace, Behavior::removed);
  if (type == "Digits")
    return std::make_unique<CharClassPreTokenizer>(
        &is_numeric, j.value("individual_digits", false) ? Behavior::isolated : Behavior::contiguous);
  if (type == "Punctuation")
    return std::make_unique<CharClassPreTokenizer>(&is_punctuation,
                                                   parse_behavior(j.value("behavior", "Isolated"), where));
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (const auto& p : j.at("pretokenizers"))
      if (auto x = make_pre_tokenizer(p, where)) parts.push_back(std::move(x));
    return std::make_unique<SequencePreTokenizer>(std::move(parts));
  }
  fail("tokenizer", where, ": unknown pre_tokenizer type '", type,
       "' (supported: Split, ByteLevel, Metaspace, Whitespace, WhitespaceSplit, Digits, Punctuation, Sequence)");
}

}  // namespace lmx::detail
