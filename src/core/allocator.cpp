#include "core/allocator.h"

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <limits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "core/error.h"

namespace lmx {
namespace {

class CpuAllocator final : public Allocator {
 protected:
  void* raw_alloc(size_t bytes) override {
    // 64-byte alignment: whole cache lines and aligned SIMD loads in the kernels.
    void* p = std::aligned_alloc(64, bytes);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    // Large blocks in 2 MiB pages where the kernel has them on request (transparent huge
    // pages in "madvise" mode, Debian's default): fresh memory is faulted in a page at a
    // time, and at 4 KiB a training step's few GiB of activations took 950 K faults, more
    // time than its arithmetic on two cores. The block's whole 4 KiB pages are advised.
    if (p && bytes >= (size_t(4) << 20)) {
      const auto begin = (reinterpret_cast<uintptr_t>(p) + 4095) & ~uintptr_t(4095);
      const auto end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~uintptr_t(4095);
      if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
    }
#endif
    return p;
  }
  void raw_free(void* p, size_t) override { std::free(p); }
  Device device() const override { return Device::cpu(); }
};

AllocatorOf g_allocators[2] = {nullptr, nullptr};

struct Reclaimers {
  std::mutex mu;
  std::vector<std::weak_ptr<const Reclaim>> fns;
};
Reclaimers& reclaimers() {
  static auto* r = new Reclaimers();  // never destroyed, as the CPU allocator
  return *r;
}

std::string mib(size_t b) { return detail::cat(b / (1024 * 1024), " MiB"); }

}  // namespace

// Calls every registered function, outside the registry's lock (each may free arrays, or
// end its own registration).
bool release_kept_memory(Device d) {
  std::vector<std::shared_ptr<const Reclaim>> live;
  {
    Reclaimers& r = reclaimers();
    std::lock_guard lock(r.mu);
    for (const auto& w : r.fns)
      if (auto f = w.lock()) live.push_back(std::move(f));
  }
  for (const auto& f : live) (*f)(d);
  return !live.empty();
}

size_t Allocator::round_size(size_t bytes) {
  if (bytes <= 256) return 256;
  // Granularity of 1/8 of the highest power of two keeps waste under 12.5%, and at most
  // 2 MiB (the GPU's own page for large blocks): a KV cache's layers are large blocks of
  // one size, and at 1/8 Qwen3-0.6B's 56 arrays of 32.06 MiB (16,416 positions) took 36
  // MiB each, 220 MiB in all for nothing.
  const size_t gran = std::clamp<size_t>(std::bit_floor(bytes) / 8, 256, size_t(2) << 20);
  return (bytes + gran - 1) / gran * gran;
}

void* Allocator::allocate(size_t bytes) {
  const size_t size = round_size(bytes);
  void* p = take(size);
  if (!p && release_kept_memory(device())) p = take(size);  // memory kept to spare work goes before failing
  if (p) return p;
  const MemoryStats st = stats();
  if (st.limit && st.active + size > st.limit)
    throw OutOfMemory(detail::cat("[memory] allocating ", bytes, " bytes on ", device().str(),
                                  " would pass the memory limit of ", mib(st.limit), " (", mib(st.active),
                                  " in use); use a smaller batch or context, or raise the limit"));
  throw OutOfMemory(detail::cat("[memory] out of memory on ", device().str(), " allocating ", bytes, " bytes (",
                                mib(st.active), " in use); use a smaller batch or context"));
}

void* Allocator::take(size_t size) {
  std::lock_guard lock(mu_);
  if (st_.limit && st_.active + size > st_.limit) return nullptr;
  void* p = nullptr;
  if (auto it = cache_.find(size); it != cache_.end()) {
    p = it->second;
    cache_.erase(it);
    st_.cached -= size;
  } else {
    p = raw_alloc(size);
    if (!p && !cache_.empty()) {  // the device is full: give the cache back and try once more
      trim_cache_locked(0);
      p = raw_alloc(size);
    }
    if (!p) return nullptr;
  }
  st_.active += size;
  st_.peak = std::max(st_.peak, st_.active);
  return p;
}

void Allocator::release(void* p, size_t bytes) {
  if (!p) return;
  const size_t size = round_size(bytes);
  std::lock_guard lock(mu_);
  st_.active -= size;
  if (st_.cached + size <= st_.cache_limit) {
    cache_.emplace(size, p);
    st_.cached += size;
  } else {
    raw_free(p, size);
  }
}

void Allocator::trim_cache_locked(size_t target) {
  // Free the largest blocks first: they are the least likely to be asked for again soon.
  while (st_.cached > target && !cache_.empty()) {
    auto it = std::prev(cache_.end());
    raw_free(it->second, it->first);
    st_.cached -= it->first;
    cache_.erase(it);
  }
}

MemoryStats Allocator::stats() const {
  std::lock_guard lock(mu_);
  return st_;
}
void Allocator::set_memory_limit(size_t bytes) {
  std::lock_guard lock(mu_);
  st_.limit = bytes;
}
void Allocator::set_cache_limit(size_t bytes) {
  std::lock_guard lock(mu_);
  st_.cache_limit = bytes;
  trim_cache_locked(bytes);
}
void Allocator::clear_cache() {
  release_kept_memory(device());  // what it frees comes back to this cache first
  std::lock_guard lock(mu_);
  trim_cache_locked(0);
}
void Allocator::reset_peak() {
  std::lock_guard lock(mu_);
  st_.peak = st_.active;
}

Allocator& allocator_for(Device d) {
  static CpuAllocator* cpu = [] {
    auto* a = new CpuAllocator();  // never destroyed: arrays may outlive static destructors
    a->set_cache_limit(size_t(1) << 30);
    return a;
  }();
  if (d.type == Device::Type::cpu) return *cpu;
  const AllocatorOf of = g_allocators[int(d.type)];
  LMX_CHECK(of != nullptr, "memory", "no allocator for ", d.str(),
            ": this build of lmx has no CUDA backend (rebuild with -DLMX_CUDA=ON)");
  return of(d.index);
}

void register_allocator(Device::Type t, AllocatorOf of) { g_allocators[int(t)] = of; }

std::shared_ptr<const Reclaim> on_memory_pressure(Reclaim fn) {
  auto f = std::make_shared<const Reclaim>(std::move(fn));
  Reclaimers& r = reclaimers();
  std::lock_guard lock(r.mu);
  std::erase_if(r.fns, [](const std::weak_ptr<const Reclaim>& w) { return w.expired(); });
  r.fns.push_back(f);
  return f;
}

}  // namespace lmx
