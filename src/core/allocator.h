// A caching allocator per device type, with active/peak/cached byte counts and limits.
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <mutex>

#include "core/device.h"

namespace lmx {

struct MemoryStats {
  size_t active = 0;  // bytes held by live arrays
  size_t peak = 0;    // highest `active` since the last reset_peak()
  size_t cached = 0;  // bytes freed by arrays but kept for reuse
  size_t limit = 0;   // allocations that would push `active` past this throw OutOfMemory
  size_t cache_limit = 0;
};

// Thread-safe. Blocks are rounded up (at most 1/8 waste) so that freed blocks are
// reused by the next request of a similar size, as a KV cache or scratch buffer makes.
class Allocator {
 public:
  virtual ~Allocator() = default;
  void* allocate(size_t bytes);  // throws OutOfMemory with a "[memory]" message
  void release(void* p, size_t bytes);
  MemoryStats stats() const;
  void set_memory_limit(size_t bytes);
  void set_cache_limit(size_t bytes);
  void clear_cache();
  void reset_peak();
  static size_t round_size(size_t bytes);

 protected:
  virtual void* raw_alloc(size_t bytes) = 0;  // nullptr when the device is full
  virtual void raw_free(void* p, size_t bytes) = 0;
  virtual Device device() const = 0;  // whose memory this is (errors name it; a shortage asks holders there)

 private:
  void* take(size_t size);  // nullptr where the limit or the device refuses
  void trim_cache_locked(size_t target);
  mutable std::mutex mu_;
  std::multimap<size_t, void*> cache_;  // rounded size -> free block
  MemoryStats st_;
};

// The allocator of a device: one for the CPU, one for each GPU (its own cache, counts and
// limit, so that no block freed on one GPU is handed out on another). The CPU's always
// exists; a GPU backend registers the function that gives each of its devices' allocators,
// which throws for a device that does not exist.
Allocator& allocator_for(Device d);
using AllocatorOf = Allocator& (*)(int device_index);
void register_allocator(Device::Type t, AllocatorOf of);

// Memory held only to spare work later (a model's idle fused decoders: CausalLM::
// recycle_fused_decoder) is registered with a function that lets go of what it keeps on a
// device. An allocator that cannot serve a request calls every such function with its own
// device, then tries once more before it throws OutOfMemory; clear_cache calls them too.
// The registration lasts as long as the handle.
using Reclaim = std::function<void(Device)>;
[[nodiscard]] std::shared_ptr<const Reclaim> on_memory_pressure(Reclaim fn);
// Asks every registered holder to let go of what it keeps on `d`; whether any is registered.
bool release_kept_memory(Device d);

}  // namespace lmx
