// Added tokens (spec 4.4): found in the text before the model runs, leftmost-longest,
// with HF's single_word, lstrip and rstrip rules.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "text/bpe.h"

namespace lmx::detail {

class Normalizer;

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool normalized = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  // What decode hands to the decoder: HF uses the normalized content of normalized tokens.
  std::string decoder_text;
};

// One stretch of the input: an added token (id >= 0) or text for the model (id == -1).
struct TextSplit {
  size_t begin, end;
  int32_t id;
};

class AddedVocab {
 public:
  // Builds both matchers. Normalized tokens are matched by their normalized content.
  void build(std::vector<AddedToken> tokens, const Normalizer* normalizer);

  // Splits `text` with the raw-text matcher (normalized == false) or the normalized one.
  void split(std::string_view text, bool normalized_tokens, std::vector<TextSplit>& out) const;

  // Marks `content` special, adding it as a token with `id` when it is not one yet: what
  // transformers does with the named special tokens of tokenizer_config.json.
  void make_special(const std::string& content, int32_t id, const Normalizer* normalizer);

  const AddedToken* by_id(int32_t id) const;
  std::optional<int32_t> by_content(std::string_view content) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }
  bool has_normalized() const { return !normalized_.empty(); }

 private:
  // A byte trie; each terminal node remembers the token it ends.
  struct Trie {
    struct Node {
      std::vector<std::pair<unsigned char, int32_t>> edges;
      int32_t token = -1;  // index into tokens_
    };
    std::vector<Node> nodes{1};
    std::array<bool, 256> first{};
    bool empty() const { return nodes.size() == 1; }
    void insert(std::string_view key, int32_t token);
    // Index of the longest token starting at text[pos] and its length, or -1.
    int32_t longest(std::string_view text, size_t pos, size_t& len) const;
  };

  std::vector<AddedToken> tokens_;
  std::unordered_map<int32_t, size_t> index_by_id_;
  TokenMap id_by_content_;
  Trie raw_, normalized_;
};

}  // namespace lmx::detail
