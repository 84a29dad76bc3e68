// KV caches. A KVCache holds one LayerCache per decoder layer; it is per-request state,
// kept apart from the read-only model weights.
#pragma once

#include <memory>
#include <vector>

#include "nn/layers.h"

namespace lmx {

// Preallocated, contiguous keys and values: [B, Hkv, capacity, D] per layer. Attention
// reads a view of the filled prefix, so appending a token copies only that token.
class ContiguousLayerCache final : public nn::LayerCache {
 public:
  explicit ContiguousLayerCache(int64_t capacity) : capacity_(capacity) {}
  int64_t next_position() const override { return length_; }
  View update(const Array& k, const Array& v) override;
  int64_t length() const { return length_; }
  // Forgets everything after the first `n` positions (prompt-cache reuse).
  void truncate(int64_t n);

 private:
  void reserve(const Array& like, int64_t capacity);
  Array k_, v_;  // [B, Hkv, capacity, D]
  int64_t capacity_;
  int64_t length_ = 0;
};

class KVCache {
 public:
  // `capacity` is a first guess at the sequence length; the cache grows past it if needed.
  KVCache(int num_layers, int64_t capacity = 256);
  nn::LayerCache* layer(int i) { return layers_[size_t(i)].get(); }
  int num_layers() const { return int(layers_.size()); }
  int64_t length() const;
  void truncate(int64_t n);

 private:
  std::vector<std::unique_ptr<ContiguousLayerCache>> layers_;
};

}  // namespace lmx
