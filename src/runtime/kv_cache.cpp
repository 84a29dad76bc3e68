#include "runtime/kv_cache.h"

#include "core/error.h"

namespace lmx {

void ContiguousLayerCache::reserve(const Array& like, int64_t capacity) {
  // like [B, Hkv, L, D]; growth keeps what is stored so far.
  const Shape shape{like.shape(0), like.shape(1), capacity, like.shape(3)};
  Array k(shape, like.dtype(), like.device()), v(shape, like.dtype(), like.device());
  if (length_ > 0) {
    assign(slice_axis(k, 2, 0, length_), slice_axis(k_, 2, 0, length_));
    assign(slice_axis(v, 2, 0, length_), slice_axis(v_, 2, 0, length_));
  }
  k_ = std::move(k);
  v_ = std::move(v);
  capacity_ = capacity;
}

nn::LayerCache::View ContiguousLayerCache::update(const Array& k, const Array& v) {
  const int64_t l = k.shape(2);
  if (k_.valid()) {
    LMX_CHECK(k.shape(0) == k_.shape(0) && k.shape(1) == k_.shape(1) && k.shape(3) == k_.shape(3) &&
                  k.dtype() == k_.dtype(),
              "kv_cache", "new keys ", shape_str(k.shape()), " do not match the cache ", shape_str(k_.shape()));
  }
  if (!k_.valid() || length_ + l > capacity_) {
    // Grow geometrically so that a long generation reallocates only a few times.
    int64_t cap = std::max<int64_t>(capacity_, 16);
    while (cap < length_ + l) cap *= 2;
    reserve(k, cap);
  }
  assign(slice_axis(k_, 2, length_, length_ + l), k);
  assign(slice_axis(v_, 2, length_, length_ + l), v);
  const int64_t start = length_;
  length_ += l;
  return {slice_axis(k_, 2, 0, length_), slice_axis(v_, 2, 0, length_), start};
}

void ContiguousLayerCache::truncate(int64_t n) { length_ = std::min(length_, std::max<int64_t>(0, n)); }

KVCache::KVCache(int num_layers, int64_t capacity) {
  for (int i = 0; i < num_layers; ++i) layers_.push_back(std::make_unique<ContiguousLayerCache>(capacity));
}

int64_t KVCache::length() const { return layers_.empty() ? 0 : layers_[0]->length(); }

void KVCache::truncate(int64_t n) {
  for (auto& l : layers_) l->truncate(n);
}

}  // namespace lmx
