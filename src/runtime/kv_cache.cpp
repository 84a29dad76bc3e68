#include "runtime/kv_cache.h"

#include "core/error.h"
#include "ops/ops.h"

namespace lmx {
namespace {

void check_like(const Array& stored, const Shape& k, Dtype dtype, Device device) {
  LMX_CHECK(k.size() == 4, "kv_cache", "new keys must be [B, Hkv, L, D], got ", shape_str(k));
  LMX_CHECK(!stored.valid() || (k[0] == stored.shape(0) && k[1] == stored.shape(1) && k[3] == stored.shape(3) &&
                                dtype == stored.dtype() && device == stored.device()),
            "kv_cache", "new keys ", shape_str(k), " ", dtype_name(dtype), " do not match the cache ",
            shape_str(stored.shape()), " ", dtype_name(stored.dtype()));
}

}  // namespace

void ContiguousLayerCache::reserve(const Shape& like, Dtype dtype, Device device, int64_t capacity) {
  // like [B, Hkv, L, D]; growth keeps what is stored so far.
  const Shape shape{like[0], like[1], capacity, like[3]};
  Array k(shape, dtype, device), v(shape, dtype, device);
  if (length_ > 0) {
    assign(slice_axis(k, 2, 0, length_), slice_axis(k_, 2, 0, length_));
    assign(slice_axis(v, 2, 0, length_), slice_axis(v_, 2, 0, length_));
  }
  k_ = std::move(k);
  v_ = std::move(v);
  capacity_ = capacity;
}

void ContiguousLayerCache::reserve_positions(int64_t n) {
  if (!k_.valid()) capacity_ = std::max(capacity_, n);
  else if (n > capacity_) reserve(k_.shape(), k_.dtype(), k_.device(), n);
}

void ContiguousLayerCache::copy_slots(const Array& k, const Array& v, int64_t to, const ContiguousLayerCache& from,
                                      int64_t row, int64_t first, int64_t at, int64_t n) {
  if (n <= 0) return;
  const int64_t heads = k.shape(1), dim = k.shape(3);
  const std::vector<int64_t> src0{row, 0, first, 0}, src1{row + 1, heads, first + n, dim};
  const std::vector<int64_t> dst0{to, 0, at, 0}, dst1{to + 1, heads, at + n, dim};
  assign(slice(k, dst0, dst1), slice(from.k_, src0, src1));
  assign(slice(v, dst0, dst1), slice(from.v_, src0, src1));
}

void ContiguousLayerCache::place(int64_t row, const ContiguousLayerCache& from, int64_t from_row) {
  LMX_CHECK(k_.valid() && from.k_.valid() && from.length_ <= length_ && row < k_.shape(0), "kv_cache", "place ",
            from.length_, " slots in row ", row, " of a cache of ", length_, " slots");
  copy_slots(k_, v_, row, from, from_row, 0, length_ - from.length_, from.length_);
}

std::pair<Array, Array> ContiguousLayerCache::regroup_buffers(int64_t rows, int64_t capacity,
                                                              const ContiguousLayerCache* joining) const {
  LMX_CHECK(k_.valid() || (joining && joining->k_.valid()), "kv_cache", "regroup of rows with no keys stored");
  const Array& like = k_.valid() ? k_ : joining->k_;  // [B, Hkv, capacity, D]
  const Shape shape{rows, like.shape(1), capacity, like.shape(3)};
  return {zeros(shape, like.dtype(), like.device()), zeros(shape, like.dtype(), like.device())};
}

void ContiguousLayerCache::regroup(std::pair<Array, Array> buffers, std::span<const int64_t> keep,
                                   const ContiguousLayerCache* joining, std::span<const int64_t> join,
                                   int64_t length) {
  auto& [k, v] = buffers;
  const int64_t capacity = k.shape(2);
  LMX_CHECK(int64_t(keep.size() + join.size()) == k.shape(0) && (keep.empty() || k_.valid()) &&
                (join.empty() || (joining && joining->k_.valid() && joining->length_ <= length)) && length <= capacity,
            "kv_cache", "regroup into ", k.shape(0), " rows of ", length, " slots (room for ", capacity, ") from ",
            keep.size(), " rows of ", length_, " slots and ", join.size(), " joining");
  const int64_t shift = length - length_, first = std::max<int64_t>(0, -shift);
  for (size_t i = 0; i < keep.size(); ++i)
    copy_slots(k, v, int64_t(i), *this, keep[i], first, first + shift, length_ - first);
  for (size_t j = 0; j < join.size(); ++j) {
    const int64_t n = joining->length_;
    copy_slots(k, v, int64_t(keep.size() + j), *joining, join[j], 0, length - n, n);
  }
  k_ = std::move(k);
  v_ = std::move(v);
  length_ = length;
  capacity_ = capacity;
}

fast::FusedCacheView ContiguousLayerCache::fused_view() {
  if (!k_.valid()) return {};
  if (length_ + 1 > capacity_) reserve(k_.shape(), k_.dtype(), k_.device(), capacity_ * 2);
  return {k_, v_};
}

fast::CacheSlots ContiguousLayerCache::slots(const Shape& shape, Dtype dtype, Device device) {
  check_like(k_, shape, dtype, device);
  const int64_t l = shape[2];
  if (!k_.valid() || length_ + l > capacity_) {
    // Grow geometrically so that a long generation reallocates only a few times.
    int64_t cap = std::max<int64_t>(capacity_, 16);
    while (cap < length_ + l) cap *= 2;
    reserve(shape, dtype, device, cap);
  }
  return {slice_axis(k_, 2, length_, length_ + l), slice_axis(v_, 2, length_, length_ + l)};
}

nn::LayerCache::View ContiguousLayerCache::stored(int64_t l) {
  LMX_CHECK(k_.valid() && l >= 0 && length_ + l <= capacity_, "kv_cache", "stored(", l,
            ") without slots for them (ask slots() first)");
  const int64_t start = length_;
  length_ += l;
  return {slice_axis(k_, 2, 0, length_), slice_axis(v_, 2, 0, length_), start};
}

nn::LayerCache::View ContiguousLayerCache::update(const Array& k, const Array& v) {
  const fast::CacheSlots s = slots(k.shape(), k.dtype(), k.device());
  assign(s.k, k);
  assign(s.v, v);
  return stored(k.shape(2));
}

Array RotatingLayerCache::read(const Array& ring, int64_t first, int64_t count) const {
  const int64_t s = first % window_, n1 = std::min(count, window_ - s);
  const Array a = slice_axis(ring, 2, s, s + n1);
  return n1 == count ? a : concatenate({a, slice_axis(ring, 2, 0, count - n1)}, 2);
}

void RotatingLayerCache::write(const Array& ring, int64_t first, const Array& src) {
  const int64_t count = src.shape(2), s = first % window_, n1 = std::min(count, window_ - s);
  assign(slice_axis(ring, 2, s, s + n1), slice_axis(src, 2, 0, n1));
  if (n1 < count) assign(slice_axis(ring, 2, 0, count - n1), slice_axis(src, 2, n1, count));
}

void RotatingLayerCache::hold(const Shape& like, Dtype dtype, Device device) {
  if (k_.valid()) return;
  const Shape shape{like[0], like[1], window_, like[3]};  // [B, Hkv, window, D]
  k_ = Array(shape, dtype, device);
  v_ = Array(shape, dtype, device);
}

bool RotatingLayerCache::first_prompt_fits(int64_t l) const { return pos_ == 0 && l >= 1 && l <= window_; }

fast::CacheSlots RotatingLayerCache::slots(const Shape& shape, Dtype dtype, Device device) {
  check_like(k_, shape, dtype, device);
  const int64_t l = shape[2];
  if (first_prompt_fits(l)) {  // positions 0..l-1 in slots 0..l-1: as write() would place them
    hold(shape, dtype, device);
    return {slice_axis(k_, 2, 0, l), slice_axis(v_, 2, 0, l)};
  }
  if (l != 1 || pos_ < 1 || !k_.valid()) return {};
  const int64_t s = pos_ % window_;
  return {slice_axis(k_, 2, s, s + 1), slice_axis(v_, 2, s, s + 1)};
}

nn::LayerCache::View RotatingLayerCache::stored(int64_t l) {
  if (k_.valid() && first_prompt_fits(l)) {  // the first prompt, in place: causal and window masks
    pos_ = l;
    return {slice_axis(k_, 2, 0, l), slice_axis(v_, 2, 0, l), 0, false};
  }
  LMX_CHECK(l == 1 && pos_ >= 1 && k_.valid(), "kv_cache", "a rotating cache stores in place only a first "
            "prompt within its window, or one decode token at a time after it (ask slots() first)");
  // The new token sees every held position (at most window - 1 before it).
  ++pos_;
  const int64_t held = std::min(pos_, window_);
  return {slice_axis(k_, 2, 0, held), slice_axis(v_, 2, 0, held), held - 1, true};
}

nn::LayerCache::View RotatingLayerCache::update(const Array& k, const Array& v) {
  check_like(k_, k.shape(), k.dtype(), k.device());
  const int64_t l = k.shape(2);
  hold(k.shape(), k.dtype(), k.device());
  if (const fast::CacheSlots s = slots(k.shape(), k.dtype(), k.device()); s.k.valid()) {  // in place
    assign(s.k, k);
    assign(s.v, v);
    return stored(l);
  }
  // A later prompt, or a first one past the window: attend over the held tail plus the new
  // chunk, in order, with the usual causal and window masks; then keep the last `window`
  // positions.
  const int64_t kept = std::min(pos_, window_ - 1);
  const Array keys = kept ? concatenate({read(k_, pos_ - kept, kept), k}, 2) : k;
  const Array vals = kept ? concatenate({read(v_, pos_ - kept, kept), v}, 2) : v;
  const int64_t total = kept + l, store = std::min(total, window_);
  write(k_, pos_ + l - store, slice_axis(keys, 2, total - store, total));
  write(v_, pos_ + l - store, slice_axis(vals, 2, total - store, total));
  pos_ += l;
  return {keys, vals, kept, false};
}

KVCache::KVCache(int num_layers, int64_t capacity) {
  for (int i = 0; i < num_layers; ++i) layers_.push_back(std::make_unique<ContiguousLayerCache>(capacity));
}

KVCache::KVCache(const models::CausalLM& model, bool rotate_sliding, int64_t capacity) {
  for (const nn::AttentionSpec& a : model.spec().layers) {
    if (rotate_sliding && a.window > 0) layers_.push_back(std::make_unique<RotatingLayerCache>(a.window));
    else layers_.push_back(std::make_unique<ContiguousLayerCache>(capacity));
  }
}

std::vector<nn::LayerCache*> KVCache::layers() const {
  std::vector<nn::LayerCache*> out;
  for (const auto& l : layers_) out.push_back(l.get());
  return out;
}

void KVCache::reserve(int64_t n) {
  for (const auto& l : layers_)
    if (auto* c = dynamic_cast<ContiguousLayerCache*>(l.get())) c->reserve_positions(n);
}

std::vector<fast::FusedCacheView> KVCache::fused_views() const {
  std::vector<fast::FusedCacheView> views;
  for (const auto& l : layers_) {
    views.push_back(l->fused_view());
    if (!views.back().k.valid()) return {};
  }
  return views;
}

void KVCache::commit_one() {
  for (const auto& l : layers_) l->commit_one();
}

void KVCache::regroup(std::span<const int64_t> keep, const KVCache* joining, std::span<const int64_t> join,
                      int64_t length, int64_t capacity) {
  LMX_CHECK(join.empty() || (joining && joining->num_layers() == num_layers()), "kv_cache",
            "regroup: the joining cache has other layers");
  std::vector<ContiguousLayerCache*> mine, theirs;
  for (size_t i = 0; i < layers_.size(); ++i) {
    mine.push_back(dynamic_cast<ContiguousLayerCache*>(layers_[i].get()));
    theirs.push_back(join.empty() ? nullptr : dynamic_cast<ContiguousLayerCache*>(joining->layers_[i].get()));
    LMX_CHECK(mine.back() && (join.empty() || theirs.back()), "kv_cache", "regroup needs contiguous caches (layer ",
              i, ")");
  }
  // Every layer's buffers first: where memory runs out (OutOfMemory), nothing has changed.
  std::vector<std::pair<Array, Array>> buffers;
  for (size_t i = 0; i < mine.size(); ++i)
    buffers.push_back(mine[i]->regroup_buffers(int64_t(keep.size() + join.size()), capacity, theirs[i]));
  for (size_t i = 0; i < mine.size(); ++i) mine[i]->regroup(std::move(buffers[i]), keep, theirs[i], join, length);
}

void KVCache::place(int64_t row, const KVCache& from, int64_t from_row) {
  LMX_CHECK(from.num_layers() == num_layers(), "kv_cache", "place: the joining cache has other layers");
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto* c = dynamic_cast<ContiguousLayerCache*>(layers_[i].get());
    auto* f = dynamic_cast<const ContiguousLayerCache*>(from.layers_[i].get());
    LMX_CHECK(c && f, "kv_cache", "place needs contiguous caches (layer ", i, ")");
    c->place(row, *f, from_row);
  }
}

bool KVCache::truncate(int64_t n) {
  bool ok = true;
  for (const auto& l : layers_)
    if (auto* r = dynamic_cast<RotatingLayerCache*>(l.get())) ok &= r->can_truncate(n);
  if (!ok) n = 0;
  for (const auto& l : layers_) {
    if (auto* r = dynamic_cast<RotatingLayerCache*>(l.get())) r->truncate(n);
    else static_cast<ContiguousLayerCache*>(l.get())->truncate(n);
  }
  return ok;
}

}  // namespace lmx
