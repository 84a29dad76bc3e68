#include "text/bpe.h"

#include <queue>

#include "core/error.h"
#include "text/unicode.h"

namespace lmx::detail {

Bpe::Bpe(BpeOptions options, StringIdMap vocab, std::vector<std::string> vocab_r)
    : options_(std::move(options)), vocab_(std::move(vocab)), vocab_r_(std::move(vocab_r)) {
  if (options_.unk_token) unk_id_ = token_to_id(*options_.unk_token);
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) {
    const char name[7] = {'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>', 0};
    byte_ids_[b] = token_to_id(name).value_or(-1);
  }
}

// The cache holds mutexes, so moves rebuild it empty.
Bpe::Bpe(Bpe&& o) noexcept
    : options_(std::move(o.options_)),
      vocab_(std::move(o.vocab_)),
      vocab_r_(std::move(o.vocab_r_)),
      merges_(std::move(o.merges_)),
      unk_id_(o.unk_id_),
      byte_ids_(o.byte_ids_) {}

Bpe& Bpe::operator=(Bpe&& o) noexcept {
  options_ = std::move(o.options_);
  vocab_ = std::move(o.vocab_);
  vocab_r_ = std::move(o.vocab_r_);
  merges_ = std::move(o.merges_);
  unk_id_ = o.unk_id_;
  byte_ids_ = o.byte_ids_;
  for (auto& shard : cache_) shard.words.clear();
  return *this;
}

void Bpe::add_merge(std::string_view left, std::string_view right, int32_t rank) {
  const auto a = token_to_id(left), b = token_to_id(right);
  LMX_CHECK(a && b, "tokenizer", "tokenizer.json: merge #", rank, " '", left, " ", right,
            "' uses a token that is not in the vocab");
  // The merged token drops the continuing-subword prefix of its right part.
  const size_t cut = std::min(options_.continuing_subword_prefix.size(), right.size());
  std::string merged;
  merged.reserve(left.size() + right.size());
  merged.append(left).append(right.substr(cut));
  const auto id = token_to_id(merged);
  LMX_CHECK(id.has_value(), "tokenizer", "tokenizer.json: merge #", rank, " makes '", merged,
            "', which is not in the vocab");
  // A repeated pair keeps its last rank, as HF's HashMap collect does.
  merges_.insert_or_assign(pair_key(*a, *b), Merge{rank, *id});
}

std::optional<int32_t> Bpe::token_to_id(std::string_view token) const {
  const int32_t id = vocab_.find(token);
  if (id < 0) return std::nullopt;
  return id;
}

const std::string* Bpe::id_to_token(int32_t id) const {
  if (id < 0 || size_t(id) >= vocab_r_.size() || vocab_r_[size_t(id)].empty()) return nullptr;
  return &vocab_r_[size_t(id)];
}

const Bpe::Merge* Bpe::find_merge(int32_t a, int32_t b) const {
  return merges_.find(pair_key(a, b));
}

void Bpe::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    if (const auto id = token_to_id(word)) {
      out.push_back(*id);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  CacheShard& shard = cache_[StringHash{}(word) % kCacheShards];
  if (cacheable) {
    std::lock_guard lock(shard.mu);
    const auto it = shard.words.find(word);
    if (it != shard.words.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t mark = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::lock_guard lock(shard.mu);
    if (shard.words.size() >= kCacheShardCapacity) shard.words.clear();
    shard.words.emplace(std::string(word), std::vector<int32_t>(out.begin() + std::ptrdiff_t(mark), out.end()));
  }
}

namespace {

struct Symbol {
  int32_t id;
  int32_t prev, next;  // -1 at the ends
  bool alive;
};

struct Candidate {
  int32_t rank, pos, new_id;
  // Lowest rank first, then leftmost (std::priority_queue pops the largest).
  bool operator<(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

}  // namespace

void Bpe::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  std::vector<int32_t> initial;
  initial.reserve(word.size());
  std::optional<int32_t> pending_unk;  // an unknown run waiting to be emitted (fuse_unk)
  std::string scratch;
  for (size_t i = 0; i < word.size();) {
    const size_t begin = i;
    i += std::min(utf8_length(static_cast<unsigned char>(word[i])), word.size() - i);
    std::string_view ch = word.substr(begin, i - begin);
    if ((begin != 0 && !options_.continuing_subword_prefix.empty()) ||
        (i == word.size() && !options_.end_of_word_suffix.empty())) {
      scratch.clear();
      if (begin != 0) scratch += options_.continuing_subword_prefix;
      scratch += ch;
      if (i == word.size()) scratch += options_.end_of_word_suffix;
      ch = scratch;
    }
    if (const auto id = token_to_id(ch)) {
      if (pending_unk) initial.push_back(*std::exchange(pending_unk, std::nullopt));
      initial.push_back(*id);
      continue;
    }
    if (options_.byte_fallback) {
      bool all = true;
      for (char c : ch) all &= byte_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        // HF emits the bytes without flushing a pending unknown first; keep that order.
        for (char c : ch) initial.push_back(byte_ids_[static_cast<unsigned char>(c)]);
        continue;
      }
    }
    if (!unk_id_) {
      LMX_CHECK(!options_.unk_token, "tokenizer", "tokenizer.json: unk_token '", *options_.unk_token,
                "' is not in the vocab");
      continue;  // no unknown token: the character is dropped
    }
    if (pending_unk && !options_.fuse_unk) initial.push_back(*pending_unk);
    pending_unk = *unk_id_;
  }
  if (pending_unk) initial.push_back(*pending_unk);

  const auto n = int32_t(initial.size());
  if (n <= 1 || merges_.size() == 0) {
    out.insert(out.end(), initial.begin(), initial.end());
    return;
  }
  std::vector<Symbol> sym(static_cast<size_t>(n));
  std::vector<Candidate> heap_storage;
  heap_storage.reserve(size_t(n) * 2);
  std::priority_queue<Candidate> queue(std::less<Candidate>(), std::move(heap_storage));
  for (int32_t k = 0; k < n; ++k) {
    sym[size_t(k)] = {initial[size_t(k)], k - 1, k + 1 < n ? k + 1 : -1, true};
    if (k > 0)
      if (const Merge* m = find_merge(initial[size_t(k - 1)], initial[size_t(k)])) queue.push({m->rank, k - 1, m->new_id});
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = sym[size_t(top.pos)];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = sym[size_t(left.next)];
    // Entries go stale when a neighbour merged since they were queued.
    const Merge* m = find_merge(left.id, right.id);
    if (!m || m->new_id != top.new_id) continue;
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (left.next >= 0) sym[size_t(left.next)].prev = top.pos;
    if (left.prev >= 0)
      if (const Merge* pm = find_merge(sym[size_t(left.prev)].id, left.id)) queue.push({pm->rank, left.prev, pm->new_id});
    if (left.next >= 0)
      if (const Merge* nm = find_merge(left.id, sym[size_t(left.next)].id)) queue.push({nm->rank, top.pos, nm->new_id});
  }
  for (int32_t k = 0; k >= 0; k = sym[size_t(k)].next) out.push_back(sym[size_t(k)].id);
}

}  // namespace lmx::detail
