// The BPE model of tokenizer.json (spec 4.1): vocab, ranked merges and the per-word merge
// loop, with a bounded word cache.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "text/flat_map.h"

namespace lmx::detail {

// Hash that lets unordered_map<std::string, ...> be searched with a string_view.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using TokenMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

struct BpeOptions {
  std::optional<std::string> unk_token;
  std::string continuing_subword_prefix;  // "" when null
  std::string end_of_word_suffix;         // "" when null
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
};

class Bpe {
 public:
  Bpe() = default;
  // `vocab_r[id]` is the token of each id ("" for ids the vocab skips).
  Bpe(BpeOptions options, StringIdMap vocab, std::vector<std::string> vocab_r);
  Bpe(Bpe&& other) noexcept;
  Bpe& operator=(Bpe&& other) noexcept;

  // Registers merge `rank`; throws when a part or the merged token is not in the vocab.
  void add_merge(std::string_view left, std::string_view right, int32_t rank);
  void reserve_merges(size_t n) { merges_.reserve(n); }

  // Appends the ids of one pre-tokenized word. Thread-safe.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string* id_to_token(int32_t id) const;
  size_t size() const { return vocab_r_.size(); }
  const BpeOptions& options() const { return options_; }

 private:
  struct Merge {
    int32_t rank = 0;
    int32_t new_id = 0;
  };
  static uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  const Merge* find_merge(int32_t a, int32_t b) const;
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  // Sharded so that concurrent encodes rarely wait on one another; a full shard is
  // cleared rather than evicted piecemeal, which keeps the bookkeeping free.
  struct CacheShard {
    std::mutex mu;
    std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> words;
  };
  static constexpr size_t kCacheShards = 16;
  static constexpr size_t kCacheShardCapacity = 4096;
  static constexpr size_t kMaxCachedWordBytes = 128;

  BpeOptions options_;
  StringIdMap vocab_;
  std::vector<std::string> vocab_r_;
  U64Map<Merge> merges_;
  std::optional<int32_t> unk_id_;
  std::array<int32_t, 256> byte_ids_{};  // id of <0xHH>, or -1
  mutable std::array<CacheShard, kCacheShards> cache_;
};

}  // namespace lmx::detail
