#include "text/added_vocab.h"

#include "text/components.h"
#include "text/unicode.h"

namespace lmx::detail {

void AddedVocab::Trie::insert(std::string_view key, int32_t token) {
  if (key.empty()) return;
  int32_t node = 0;
  first[static_cast<unsigned char>(key[0])] = true;
  for (char ch : key) {
    const auto c = static_cast<unsigned char>(ch);
    auto& edges = nodes[size_t(node)].edges;
    int32_t child = -1;
    for (const auto& [label, next] : edges)
      if (label == c) child = next;
    if (child < 0) {
      child = int32_t(nodes.size());
      nodes[size_t(node)].edges.emplace_back(c, child);
      nodes.emplace_back();
    }
    node = child;
  }
  // A duplicate content keeps the first entry.
  if (nodes[size_t(node)].token < 0) nodes[size_t(node)].token = token;
}

int32_t AddedVocab::Trie::longest(std::string_view text, size_t pos, size_t& len) const {
  int32_t node = 0, best = -1;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    int32_t child = -1;
    for (const auto& [label, next] : nodes[size_t(node)].edges)
      if (label == c) {
        child = next;
        break;
      }
    if (child < 0) break;
    node = child;
    if (nodes[size_t(node)].token >= 0) {
      best = nodes[size_t(node)].token;
      len = i + 1 - pos;
    }
  }
  return best;
}

void AddedVocab::build(std::vector<AddedToken> tokens, const Normalizer* normalizer) {
  tokens_ = std::move(tokens);
  index_by_id_.clear();
  id_by_content_.clear();
  raw_ = Trie{};
  normalized_ = Trie{};
  id_by_content_.reserve(tokens_.size());
  for (size_t k = 0; k < tokens_.size(); ++k) {
    AddedToken& t = tokens_[k];
    t.decoder_text = t.content;
    index_by_id_.emplace(t.id, k);
    id_by_content_.emplace(t.content, t.id);
    if (!t.normalized) {
      raw_.insert(t.content, int32_t(k));
    } else {
      std::string key = t.content;
      if (normalizer) normalizer->normalize(key);
      normalized_.insert(key, int32_t(k));
      t.decoder_text = key;
    }
  }
}

void AddedVocab::make_special(const std::string& content, int32_t id, const Normalizer* normalizer) {
  if (const auto existing = by_content(content)) {
    tokens_[index_by_id_.at(*existing)].special = true;
    return;
  }
  AddedToken t;
  t.content = content;
  t.id = id;
  t.special = true;
  std::vector<AddedToken> all = std::move(tokens_);
  all.push_back(std::move(t));
  build(std::move(all), normalizer);
}

const AddedToken* AddedVocab::by_id(int32_t id) const {
  const auto it = index_by_id_.find(id);
  return it == index_by_id_.end() ? nullptr : &tokens_[it->second];
}

std::optional<int32_t> AddedVocab::by_content(std::string_view content) const {
  const auto it = id_by_content_.find(content);
  if (it == id_by_content_.end()) return std::nullopt;
  return it->second;
}

namespace {

char32_t last_char(std::string_view s) {
  size_t b = s.size() - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  return next_code_point(s, b);
}

char32_t first_char(std::string_view s) {
  size_t i = 0;
  return next_code_point(s, i);
}

}  // namespace

void AddedVocab::split(std::string_view text, bool normalized_tokens, std::vector<TextSplit>& out) const {
  out.clear();
  const Trie& trie = normalized_tokens ? normalized_ : raw_;
  size_t start_offset = 0;  // end of the previous accepted match
  if (!trie.empty()) {
    for (size_t pos = 0; pos < text.size();) {
      size_t len = 0;
      const int32_t k = trie.first[static_cast<unsigned char>(text[pos])] ? trie.longest(text, pos, len) : -1;
      if (k < 0) {
        ++pos;
        continue;
      }
      const AddedToken& tok = tokens_[size_t(k)];
      size_t start = pos, stop = pos + len;
      pos = stop;  // the matcher resumes after the match even when the match is discarded
      if (tok.single_word) {
        const bool word_before = start > 0 && is_word_char(last_char(text.substr(0, start)));
        const bool word_after = stop < text.size() && is_word_char(first_char(text.substr(stop)));
        if (word_before || word_after) continue;
      }
      if (tok.lstrip) {
        size_t s = start;
        while (s > 0) {
          size_t b = s - 1;
          while (b > 0 && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
          size_t i = b;
          if (!is_whitespace(next_code_point(text, i))) break;
          s = b;
        }
        start = std::max(s, start_offset);
      }
      if (tok.rstrip) {
        while (stop < text.size()) {
          size_t i = stop;
          if (!is_whitespace(next_code_point(text, i))) break;
          stop = i;
        }
      }
      if (start_offset < start) out.push_back({start_offset, start, -1});
      out.push_back({start, stop, tok.id});
      start_offset = stop;
    }
  }
  if (start_offset < text.size()) out.push_back({start_offset, text.size(), -1});
}

}  // namespace lmx::detail
