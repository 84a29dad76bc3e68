#include "core/array.h"

#include <atomic>

#include "core/allocator.h"
#include "core/error.h"

namespace lmx {

Storage::Storage() : id([] {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}()) {}

Storage::~Storage() {
  if (owner) owner->release(ptr, bytes);
}

Array::Array(Shape shape, Dtype dtype, Device device)
    : shape_(std::move(shape)), strides_(row_major_strides(shape_)), dtype_(dtype) {
  for (int64_t d : shape_) LMX_CHECK(d >= 0, "array", "negative dimension in shape ", shape_str(shape_));
  auto s = std::make_shared<Storage>();
  s->device = device;
  s->bytes = std::max<size_t>(nbytes(), 1);
  Allocator& a = allocator_for(device);
  s->ptr = a.allocate(s->bytes);
  s->owner = &a;
  storage_ = std::move(s);
}

Array Array::borrow(const void* data, Shape shape, Dtype dtype, std::shared_ptr<const void> keep,
                    Device device) {
  Array a;
  a.shape_ = std::move(shape);
  a.strides_ = row_major_strides(a.shape_);
  a.dtype_ = dtype;
  auto s = std::make_shared<Storage>();
  s->ptr = const_cast<void*>(data);  // borrowed memory is read-only by contract
  s->bytes = a.nbytes();
  s->device = device;
  s->keep = std::move(keep);
  a.storage_ = std::move(s);
  return a;
}

int64_t Array::shape(int axis) const { return shape_[normalize_axis(axis, ndim(), "array")]; }

bool Array::is_contiguous() const {
  int64_t expect = 1;
  for (size_t i = shape_.size(); i-- > 0;) {
    if (shape_[i] == 1) continue;
    if (strides_[i] != expect) return false;
    expect *= shape_[i];
  }
  return true;
}

void* Array::raw() const {
  LMX_CHECK(storage_ != nullptr, "array", "use of an empty array");
  return static_cast<char*>(storage_->ptr) + offset_ * int64_t(itemsize(dtype_));
}

template <class T>
T* Array::data() const {
  LMX_CHECK(dtype_of<T>() == dtype_, "array", "data<", dtype_name(dtype_of<T>()),
            ">() on an array of ", dtype_name(dtype_));
  return static_cast<T*>(raw());
}
template float* Array::data<float>() const;
template f16_t* Array::data<f16_t>() const;
template bf16_t* Array::data<bf16_t>() const;
template int32_t* Array::data<int32_t>() const;
template uint32_t* Array::data<uint32_t>() const;
template uint8_t* Array::data<uint8_t>() const;
template int8_t* Array::data<int8_t>() const;
template bool* Array::data<bool>() const;

Array Array::view(Shape shape, Strides strides, int64_t offset) const {
  Array a = *this;
  a.shape_ = std::move(shape);
  a.strides_ = std::move(strides);
  a.offset_ = offset;
  return a;
}

}  // namespace lmx
