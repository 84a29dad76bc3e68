// The CUDA allocators, one per device: cudaMalloc/cudaFree behind the caching logic of
// lmx::Allocator.
#include "core/allocator.h"

#include <memory>
#include <string>
#include <vector>

#include "backend/cuda/cuda_ops.h"
#include "core/error.h"

namespace lmx::cuda {
namespace {

// Makes `device` current for its lifetime, then makes the previous one current again, so
// that an allocation on one GPU leaves the caller's choice of device as it was.
class OnDevice {
 public:
  explicit OnDevice(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ == device) previous_ = -1;
    else check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~OnDevice() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  OnDevice(const OnDevice&) = delete;
  OnDevice& operator=(const OnDevice&) = delete;

 private:
  int previous_ = -1;
};

// One device's memory: cudaMalloc/cudaFree on that device behind lmx::Allocator's cache.
class CudaAllocator final : public Allocator {
 public:
  explicit CudaAllocator(int device) : device_(device) {
    // Keep freed blocks for reuse without a bound of its own: when the device is full the
    // allocator gives the whole cache back and retries before it reports OutOfMemory.
    set_cache_limit(~size_t(0));
  }

 protected:
  void* raw_alloc(size_t bytes) override {
    const OnDevice on(device_);
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear it: the caller frees its cache and may retry
      return nullptr;
    }
    check(e, "cudaMalloc");
    return p;
  }
  // cudaFree waits for the device, so a block still read by a queued kernel is never
  // handed back early. Blocks reused from the cache are safe too: all work of a device
  // runs in order on its one stream.
  void raw_free(void* p, size_t) override {
    const OnDevice on(device_);
    check(cudaFree(p), "cudaFree");
  }
  Device device() const override { return Device::cuda(device_); }

 private:
  int device_;
};

Allocator& allocator_of(int device) {
  // Without a device cudaMalloc reports only a driver error; say what is missing.
  LMX_CHECK(device_count() > 0, "memory", "cannot allocate on cuda: no CUDA device is visible "
            "(no NVIDIA driver or GPU, or CUDA_VISIBLE_DEVICES hides them)");
  LMX_CHECK(device >= 0 && device < device_count(), "memory", "no device cuda:", device, " (", device_count(),
            " visible)");
  // One per visible device, all made at the first allocation (a thread-safe static; the
  // constructor touches no device), so that the lookup on every allocation takes no lock.
  // Never destroyed: arrays may outlive static destructors.
  static const auto& allocators = *[] {
    auto* all = new std::vector<std::unique_ptr<CudaAllocator>>();
    for (int d = 0; d < device_count(); ++d) all->emplace_back(new CudaAllocator(d));
    return all;
  }();
  return *allocators[size_t(device)];
}

}  // namespace

void register_cuda_allocator() { register_allocator(Device::Type::cuda, allocator_of); }

}  // namespace lmx::cuda
