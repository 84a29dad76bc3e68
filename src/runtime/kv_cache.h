// KV caches. A KVCache holds one LayerCache per decoder layer; it is per-request state,
// kept apart from the read-only model weights.
#pragma once

#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "models/transformer.h"
#include "nn/layers.h"

namespace lmx {

// Preallocated, contiguous keys and values: [B, Hkv, capacity, D] per layer. Attention
// reads a view of the filled prefix, so appending a token copies only that token.
class ContiguousLayerCache final : public nn::LayerCache {
 public:
  explicit ContiguousLayerCache(int64_t capacity) : capacity_(capacity) {}
  int64_t next_position() const override { return length_; }
  View update(const Array& k, const Array& v) override;
  fast::CacheSlots slots(const Shape& shape, Dtype dtype, Device device) override;
  View stored(int64_t l) override;
  void truncate(int64_t n) { length_ = std::min(length_, std::max<int64_t>(0, n)); }
  // Makes room for n positions in all, now or at the first update.
  void reserve_positions(int64_t n);
  fast::FusedCacheView fused_view() override;
  void commit_one() override { ++length_; }
  // Continuous batching (KVCache::regroup): `buffers` (regroup_buffers': zeros of `rows`
  // rows and `capacity` slots) become this cache's, with this cache's rows `keep`, then
  // `joining`'s rows `join`, and `length` slots filled. A kept row's slots move by length -
  // this length (those that would fall before slot 0 are dropped); a joining row's end at
  // `length`. The slots before them stay zero.
  std::pair<Array, Array> regroup_buffers(int64_t rows, int64_t capacity, const ContiguousLayerCache* joining) const;
  void regroup(std::pair<Array, Array> buffers, std::span<const int64_t> keep, const ContiguousLayerCache* joining,
               std::span<const int64_t> join, int64_t length);
  // Row `row` takes `from`'s row `from_row`: its stored slots, ending at this cache's length
  // (the slots before them keep what they held). In place: the buffers stay.
  void place(int64_t row, const ContiguousLayerCache& from, int64_t from_row);

 private:
  // Row `to` of buffers (k, v), slots [at, at + n), takes `from`'s row `row`, slots [first, first + n).
  static void copy_slots(const Array& k, const Array& v, int64_t to, const ContiguousLayerCache& from, int64_t row,
                         int64_t first, int64_t at, int64_t n);
  // Buffers of `capacity` positions for keys like `shape` [B, Hkv, L, D], keeping what is stored.
  void reserve(const Shape& shape, Dtype dtype, Device device, int64_t capacity);
  Array k_, v_;  // [B, Hkv, capacity, D]
  int64_t capacity_;
  int64_t length_ = 0;
};

// For sliding-window layers: keeps only the last `window` positions, so memory stays
// bounded however long the generation runs. The token at position p lives in slot
// p % window.
class RotatingLayerCache final : public nn::LayerCache {
 public:
  explicit RotatingLayerCache(int64_t window) : window_(window) {}
  int64_t next_position() const override { return pos_; }
  View update(const Array& k, const Array& v) override;
  // Decode steps (one token, something held): its slot p % window. And a first prompt
  // that fits the window: slots 0..L-1, so that its keys and values go straight into the
  // ring (one launch with the RoPE, not two copies after it; bench/NOTES.md p46).
  fast::CacheSlots slots(const Shape& shape, Dtype dtype, Device device) override;
  View stored(int64_t l) override;
  // Positions past the window are gone and slots get reused, so the only cuts that
  // keep the ring consistent are "nothing" and "everything".
  bool can_truncate(int64_t n) const { return n >= pos_ || n == 0; }
  void truncate(int64_t n) { pos_ = std::min(pos_, std::max<int64_t>(0, n)); }
  int64_t slots() const { return k_.valid() ? k_.shape(2) : 0; }
  fast::FusedCacheView fused_view() override { return {k_, v_}; }
  void commit_one() override { ++pos_; }

 private:
  void hold(const Shape& like, Dtype dtype, Device device);  // the ring, made at the first keys
  bool first_prompt_fits(int64_t l) const;
  Array read(const Array& ring, int64_t first, int64_t count) const;  // chronological [B, H, count, D]
  void write(const Array& ring, int64_t first, const Array& src);     // src chronological
  Array k_, v_;  // [B, Hkv, window, D]
  int64_t window_;
  int64_t pos_ = 0;
};

class KVCache {
 public:
  // Contiguous caches for every layer; `capacity` is a first guess that grows if needed.
  explicit KVCache(int num_layers, int64_t capacity = 256);
  // One cache per layer of `model`; sliding-window layers get rotating caches when
  // `rotate_sliding` is set (single sequences), contiguous ones otherwise (batches).
  KVCache(const models::CausalLM& model, bool rotate_sliding, int64_t capacity = 256);

  std::vector<nn::LayerCache*> layers() const;
  int num_layers() const { return int(layers_.size()); }
  int64_t length() const { return layers_.empty() ? 0 : layers_[0]->next_position(); }
  // Keeps the first n positions (prompt-cache reuse). Returns false, leaving the cache
  // empty, when a rotating layer no longer holds them.
  bool truncate(int64_t n);
  // Room for n positions in every contiguous layer, so that a generation of known length
  // never reallocates (which would also make a fused decoder record its graph again).
  void reserve(int64_t n);
  // Every layer's buffers for a fused decode step (nn::LayerCache::fused_view), or an
  // empty vector when a layer cannot serve one; commit_one() counts the stored token.
  std::vector<fast::FusedCacheView> fused_views() const;
  void commit_one();
  // A batch's rows as requests leave and join it (continuous batching): the cache becomes
  // this one's rows `keep`, then `joining`'s rows `join` (joining may be null where `join` is
  // empty), `length` slots filled and room for `capacity`. A kept row's slots move by
  // length - length(), keeping its last tokens; a joining row's stored slots end at
  // `length`, and the slots before them are zero, never read by a step that pads them
  // out. Every layer must be contiguous. Both caches are held while it copies; where memory
  // runs out (OutOfMemory) nothing changes, since every layer's buffers are made first.
  void regroup(std::span<const int64_t> keep, const KVCache* joining, std::span<const int64_t> join,
               int64_t length, int64_t capacity);
  // A joining row in the place of one that has ended, without a copy of the rest:
  // ContiguousLayerCache::place in every layer (`from`'s length at most this one's).
  void place(int64_t row, const KVCache& from, int64_t from_row);

 private:
  std::vector<std::unique_ptr<nn::LayerCache>> layers_;
};

}  // namespace lmx
