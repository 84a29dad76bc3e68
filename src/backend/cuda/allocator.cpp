// The CUDA allocator: cudaMalloc/cudaFree behind the caching logic of lmx::Allocator.
#include "core/allocator.h"

#include "backend/cuda/cuda_ops.h"
#include "core/error.h"

namespace lmx::cuda {
namespace {

// Allocates on the calling thread's current device; the backend makes a device current
// before it allocates outputs or scratch.
class CudaAllocator final : public Allocator {
 protected:
  void* raw_alloc(size_t bytes) override {
    // Without a device cudaMalloc reports only a driver error; say what is missing.
    LMX_CHECK(device_count() > 0, "memory", "cannot allocate on cuda: no CUDA device is visible "
              "(no NVIDIA driver or GPU, or CUDA_VISIBLE_DEVICES hides them)");
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
  void raw_free(void* p, size_t) override { check(cudaFree(p), "cudaFree"); }
  const char* device_name() const override { return "cuda"; }
};

}  // namespace

void register_cuda_allocator() {
  static CudaAllocator* a = [] {
    auto* p = new CudaAllocator();  // never destroyed: arrays may outlive static destructors
    // Keep freed blocks for reuse without a bound of its own: when the device is full the
    // allocator gives the whole cache back and retries before it reports OutOfMemory.
    p->set_cache_limit(~size_t(0));
    return p;
  }();
  register_allocator(Device::Type::cuda, a);
}

}  // namespace lmx::cuda
