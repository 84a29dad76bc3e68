// Array: shared storage plus a view (shape, strides, offset, dtype, device).
//
// Arrays are cheap values: copying one shares its storage. Views made by slice,
// transpose, reshape and broadcast share storage too, so writing through an op that
// updates in place (slice_update_, the KV cache) is visible in every view.
// Thread-safety: distinct Arrays may be used from distinct threads; one Array must
// not be written while another thread reads it.
#pragma once

#include <memory>
#include <vector>

#include "core/device.h"
#include "core/dtype.h"
#include "core/shape.h"

namespace lmx {

class Allocator;

// A block of device memory. Either owned (returned to its allocator when the last
// Array lets go) or borrowed from something the `keep` pointer keeps alive, such as
// the mmap of a safetensors file.
struct Storage {
  void* ptr = nullptr;
  size_t bytes = 0;
  Device device;
  Allocator* owner = nullptr;
  std::shared_ptr<const void> keep;
  // A number no other storage of this process has: an identity that stays unique after the
  // storage is freed and its memory reused (the gradient tape names values by it).
  const uint64_t id;
  Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage();
};

class Array {
 public:
  Array() = default;
  // Uninitialised memory for `shape` on `device`.
  Array(Shape shape, Dtype dtype, Device device = Device::cpu());
  // Wraps memory owned elsewhere without copying. `keep` holds the owner alive.
  static Array borrow(const void* data, Shape shape, Dtype dtype, std::shared_ptr<const void> keep,
                      Device device = Device::cpu());

  bool valid() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int64_t shape(int axis) const;  // negative axes count from the end
  const Strides& strides() const { return strides_; }
  int64_t offset() const { return offset_; }
  int ndim() const { return int(shape_.size()); }
  int64_t size() const { return numel(shape_); }
  size_t nbytes() const { return size_t(size()) * itemsize(dtype_); }
  Dtype dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device : Device::cpu(); }
  bool is_contiguous() const;  // row-major with no gaps (size-1 dims ignored)
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  // Address of element [0, ..., 0], offset included. For CUDA arrays this is a device pointer.
  void* raw() const;
  template <class T>
  T* data() const;  // checks that T matches the dtype

  // A view on the same storage: the caller guarantees it stays inside it.
  Array view(Shape shape, Strides strides, int64_t offset) const;

 private:
  std::shared_ptr<Storage> storage_;
  Shape shape_;
  Strides strides_;
  int64_t offset_ = 0;  // in elements
  Dtype dtype_ = Dtype::f32;
};

}  // namespace lmx
