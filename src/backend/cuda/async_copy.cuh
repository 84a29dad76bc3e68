// Shared memory filled in the background: mbarriers, bulk and tensor (TMA) copies, and the
// cluster-wide barrier, for the kernels that stream their operands through a ring of
// shared-memory slots (fused_persistent.cu, glu_gemm.cu) or tiles (flash_wgmma.cu).
//
// An mbarrier's phase completes when its expected arrivals and its expected transaction
// bytes are all in; a copy counts its bytes on the barrier as they land. Waits name the
// phase by its parity, so a waiter must never fall a whole phase behind.
#pragma once

#include <cuda.h>

#include <cstdint>

namespace lmx::cuda {

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ void mbarrier_init(uint64_t* bar, unsigned arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(arrivals));
}
// Makes the initialisations visible to the copy engine and to the cluster's other blocks.
__device__ __forceinline__ void mbarrier_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
// An arrival that also arms the barrier for `bytes` of copies.
__device__ __forceinline__ void mbarrier_expect(uint64_t* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}
// An arrival on the barrier at `bar`'s offset in the shared memory of cluster block `rank`
// (this block's own included). It releases at block scope: callers use it to free a slot
// they only read, and a cluster-scope release would also wait for their global stores.
__device__ __forceinline__ void mbarrier_arrive_at(uint64_t* bar, unsigned rank) {
  asm volatile(
      "{\n .reg .b32 remote;\n mapa.shared::cluster.u32 remote, %0, %1;\n"
      " mbarrier.arrive.shared::cluster.b64 _, [remote];\n}\n" ::"r"(smem_addr(bar)),
      "r"(rank)
      : "memory");
}
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, unsigned parity) {
  uint32_t done = 0;
  while (!done)
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
}

// L2 cache policies (createpolicy) for copies and loads. evict_first: for data read once,
// whose lines are the first to go. The persistent decode step streams a token's weights
// (far more than L2 holds) with it, so that they do not push out what is read again soon:
// the activations, the norm weights, the cache. evict_unchanged: no hint. Pure: may be
// hoisted.
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}
__device__ __forceinline__ uint64_t evict_unchanged_policy() {
  uint64_t policy;
  asm("createpolicy.fractional.L2::evict_unchanged.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}

// Copies `bytes` (a multiple of 16, both addresses 16-byte aligned) from global to shared
// memory under an L2 policy; completion is counted on `bar`.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, unsigned bytes, uint64_t* bar,
                                          uint64_t policy = evict_unchanged_policy()) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;" ::"r"(
          smem_addr(dst)),
      "l"(src), "r"(bytes), "r"(smem_addr(bar)), "l"(policy)
      : "memory");
}

// The box of a 2-D tensor map at (inner, outer) into shared memory, counted on `bar`,
// under an L2 policy. Parts of the box outside the tensor are filled with zeros and
// counted all the same.
__device__ __forceinline__ void tensor_copy(void* dst, const CUtensorMap* map, uint64_t* bar, int inner, int outer,
                                            uint64_t policy = evict_unchanged_policy()) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1, {%2, "
      "%3}], [%4], %5;" ::"r"(smem_addr(dst)),
      "l"(map), "r"(inner), "r"(outer), "r"(smem_addr(bar)), "l"(policy)
      : "memory");
}
// The box of a 4-D tensor map at (c0, c1, c2, c3), innermost first, into shared memory,
// counted on `bar` (zeros where the box passes the tensor's end, counted all the same).
__device__ __forceinline__ void tensor_copy_4d(void* dst, const CUtensorMap* map, uint64_t* bar, int c0, int c1,
                                               int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];" ::"r"(smem_addr(dst)),
      "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(smem_addr(bar))
      : "memory");
}
// The same box into this offset of every cluster block in `blocks` (a mask of ranks), each
// counting it on its own barrier at `bar`'s offset.
__device__ __forceinline__ void tensor_multicast(void* dst, const CUtensorMap* map, uint64_t* bar, int inner,
                                                 int outer, uint16_t blocks) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, {%2, "
      "%3}], [%4], %5;" ::"r"(smem_addr(dst)),
      "l"(map), "r"(inner), "r"(outer), "r"(smem_addr(bar)), "h"(blocks)
      : "memory");
}

// Every thread of every block of the cluster: what each wrote before is visible to all after.
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release;\n barrier.cluster.wait.acquire;" ::: "memory");
}

}  // namespace lmx::cuda
