// Open-addressing hash tables for the two hot lookups of BPE: token string -> id and
// (left id, right id) -> merge. Flat arrays keep a lookup to one or two cache misses,
// which matters both for encode speed and for building the 500k-merge tables at load.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace lmx::detail {

inline uint64_t hash_bytes(std::string_view s) {
  // A multiply-xorshift over 8-byte words; good enough for token strings.
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (s.size() * 0xC2B2AE3D27D4EB4Full);
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * 0xFF51AFD7ED558CCDull;
    h ^= h >> 32;
  }
  uint64_t tail = 0;
  std::memcpy(&tail, s.data() + i, s.size() - i);
  h = (h ^ tail) * 0xC4CEB9FE1A85EC53ull;
  return h ^ (h >> 29);
}

inline size_t table_capacity(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;  // load factor <= 0.5
  return cap;
}

// String -> int32 id. Keys are unique; a repeated insert keeps the first id. Each key lives
// in one arena as [id:4][length:4][bytes], and a slot holds its arena offset and 32 hash
// bits, so a lookup touches one slot and one arena entry.
class StringIdMap {
 public:
  void reserve(size_t n, size_t key_bytes = 0) {
    arena_.reserve(arena_.size() + key_bytes + n * 8);
    if (table_capacity(n) > slots_.size()) rehash(table_capacity(n));
  }
  void insert(std::string_view key, int32_t id) {
    if ((size_ + 1) * 2 > slots_.size()) rehash(table_capacity(size_ + 1));
    const uint64_t h = hash_bytes(key);
    size_t i = h & (slots_.size() - 1);
    for (; slots_[i] != 0; i = (i + 1) & (slots_.size() - 1))
      if (matches(slots_[i], uint32_t(h), key)) return;
    if (arena_.empty()) arena_.push_back(0);  // offset 0 marks an empty slot
    const uint64_t offset = arena_.size();
    const auto len = uint32_t(key.size());
    arena_.resize(arena_.size() + 8 + key.size());
    std::memcpy(arena_.data() + offset, &id, 4);
    std::memcpy(arena_.data() + offset + 4, &len, 4);
    std::memcpy(arena_.data() + offset + 8, key.data(), key.size());
    slots_[i] = (offset << 32) | uint32_t(h);
    ++size_;
  }
  // -1 when absent.
  int32_t find(std::string_view key) const {
    if (slots_.empty()) return -1;
    const uint64_t h = hash_bytes(key);
    for (size_t i = h & (slots_.size() - 1); slots_[i] != 0; i = (i + 1) & (slots_.size() - 1)) {
      if (matches(slots_[i], uint32_t(h), key)) {
        int32_t id;
        std::memcpy(&id, arena_.data() + (slots_[i] >> 32), 4);
        return id;
      }
    }
    return -1;
  }
  size_t size() const { return size_; }

 private:
  std::string_view key_at(uint64_t offset) const {
    uint32_t len;
    std::memcpy(&len, arena_.data() + offset + 4, 4);
    return {arena_.data() + offset + 8, len};
  }
  bool matches(uint64_t slot, uint32_t tag, std::string_view key) const {
    return uint32_t(slot) == tag && key_at(slot >> 32) == key;
  }
  void rehash(size_t cap) {
    std::vector<uint64_t> old = std::move(slots_);
    slots_.assign(cap, 0);
    for (uint64_t slot : old) {
      if (slot == 0) continue;
      size_t i = hash_bytes(key_at(slot >> 32)) & (cap - 1);
      while (slots_[i] != 0) i = (i + 1) & (cap - 1);
      slots_[i] = slot;
    }
  }
  std::vector<char> arena_;
  std::vector<uint64_t> slots_;  // (arena offset << 32) | low hash bits; 0 = empty
  size_t size_ = 0;
};

// uint64 key -> value; the key ~0 is reserved as the empty marker.
template <class Value>
class U64Map {
 public:
  void reserve(size_t n) {
    if (table_capacity(n) > keys_.size()) rehash(table_capacity(n));
  }
  void insert_or_assign(uint64_t key, const Value& v) {
    if ((size_ + 1) * 2 > keys_.size()) rehash(table_capacity(size_ + 1));
    size_t i = slot(key);
    for (; keys_[i] != kEmpty; i = (i + 1) & (keys_.size() - 1))
      if (keys_[i] == key) {
        values_[i] = v;
        return;
      }
    keys_[i] = key;
    values_[i] = v;
    ++size_;
  }
  const Value* find(uint64_t key) const {
    if (keys_.empty()) return nullptr;
    for (size_t i = slot(key); keys_[i] != kEmpty; i = (i + 1) & (keys_.size() - 1))
      if (keys_[i] == key) return &values_[i];
    return nullptr;
  }
  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  size_t slot(uint64_t key) const {
    const uint64_t h = (key ^ (key >> 29)) * 0x9E3779B97F4A7C15ull;
    return size_t(h >> 20) & (keys_.size() - 1);
  }
  void rehash(size_t cap) {
    std::vector<uint64_t> old_keys = std::move(keys_);
    std::vector<Value> old_values = std::move(values_);
    keys_.assign(cap, kEmpty);
    values_.assign(cap, Value{});
    size_ = 0;
    for (size_t k = 0; k < old_keys.size(); ++k)
      if (old_keys[k] != kEmpty) insert_or_assign(old_keys[k], old_values[k]);
  }
  std::vector<uint64_t> keys_;
  std::vector<Value> values_;
  size_t size_ = 0;
};

}  // namespace lmx::detail
