// Device helpers of the fused decode kernels: programmatic dependent launch, streaming
// loads, bf16 unpacking, and the launch wrapper that sets the PDL attribute.
#pragma once

#include "backend/cuda/async_copy.cuh"
#include "backend/cuda/common.cuh"
#include "backend/cuda/fused_kernels.h"

namespace lmx::cuda::fused {

// With programmatic dependent launch a kernel may start while the one before it is still
// finishing. Everything before this wait may touch only weights (never written during a
// step); everything after it sees the previous kernel's results. Without PDL it returns
// at once.
__device__ __forceinline__ void wait_for_previous_kernel() {
  asm volatile("griddepcontrol.wait;" ::: "memory");
}
// Lets the next kernel's blocks be scheduled (they still wait for this one to finish
// before reading its results).
__device__ __forceinline__ void allow_next_kernel() {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

// Adds 1 to a counter that the grid's blocks share and returns the old count, as one
// acquire-release atomic at GPU scope. Called by one thread after a block barrier: the
// block's earlier writes are visible to whichever block sees the new count, and, after
// the block's next barrier, what the blocks that counted before it wrote is visible to
// all its threads. One instruction in place of a full fence, a relaxed atomic and
// another full fence.
__device__ __forceinline__ unsigned count_arrival(unsigned* counter) {
  unsigned old;
  asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;" : "=r"(old) : "l"(counter) : "memory");
  return old;
}

// Adds four floats into p (16-byte aligned) as one reduction at L2: no round trip to
// wait for, a quarter of the atomics of four scalar adds.
__device__ __forceinline__ void add_at_l2(float* p, float4 v) {
  asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(p), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w)
               : "memory");
}

__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// 16 bytes of weights through the read-only path (the weights never change during a step),
// marked first to leave L2: a step reads each weight once, and far more of them than L2
// holds, so that they keep no activation or cached key out of it (bench/NOTES.md, p15).
__device__ __forceinline__ uint4 load_stream(const bf16* p) {
  uint4 v;
  asm("ld.global.nc.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p), "l"(evict_first_policy()));
  return v;
}

// An activation written earlier in the step. Between kernels L1 starts empty, so the
// kernel-per-phase path may cache it there; inside the persistent kernel another block may
// have written it since this SM last read it, and L1 is not coherent: read through L2.
template <bool kCoherent, class T>
__device__ __forceinline__ T load_activation(const T* p) {
  if constexpr (kCoherent)
    return __ldcg(p);
  else
    return *p;
}

// The persistent step (fused_persistent.cu) runs the shared device code on the first
// kWorkers threads of its blocks. Its last warp only issues weight copies and never joins
// their barriers, so that code meets at `sync_workers` and strides by `workers`. Elsewhere
// (kPersistent false) every thread of the block takes part.
constexpr int kWorkers = 256;
template <bool kPersistent>
__device__ __forceinline__ int workers() {
  return kPersistent ? kWorkers : int(blockDim.x);
}
template <bool kPersistent>
__device__ __forceinline__ void sync_workers() {
  if constexpr (kPersistent)
    asm volatile("bar.sync 1, %0;" ::"n"(kWorkers) : "memory");  // barrier 0 is __syncthreads'
  else
    __syncthreads();
}
template <bool kPersistent>
struct SyncWorkers {
  __device__ __forceinline__ void operator()() const { sync_workers<kPersistent>(); }
};
template <bool kPersistent, class T, class Op>
__device__ __forceinline__ T workers_reduce(T v, Op op) {
  return block_reduce(v, op, workers<kPersistent>(), SyncWorkers<kPersistent>{});
}

// bf16 -> f32 is a 16-bit shift.
__device__ __forceinline__ float bf16_lo(uint32_t u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }

// acc + w[0..8)·x[0..8), f32 with fused multiply-adds.
__device__ __forceinline__ float dot8(uint4 w, const float* x, float acc) {
  const float4 a = *reinterpret_cast<const float4*>(x), b = *reinterpret_cast<const float4*>(x + 4);
  acc = __fmaf_rn(bf16_lo(w.x), a.x, acc);
  acc = __fmaf_rn(bf16_hi(w.x), a.y, acc);
  acc = __fmaf_rn(bf16_lo(w.y), a.z, acc);
  acc = __fmaf_rn(bf16_hi(w.y), a.w, acc);
  acc = __fmaf_rn(bf16_lo(w.z), b.x, acc);
  acc = __fmaf_rn(bf16_hi(w.z), b.y, acc);
  acc = __fmaf_rn(bf16_lo(w.w), b.z, acc);
  acc = __fmaf_rn(bf16_hi(w.w), b.w, acc);
  return acc;
}

// Four RMSNorm weights, packed bf16, as the norm multiplies by them: 1 + w for Gemma.
__device__ __forceinline__ float4 norm_weights4(uint2 w, bool gemma) {
  const float o = gemma ? 1.0f : 0.0f;
  return make_float4(o + bf16_lo(w.x), o + bf16_hi(w.x), o + bf16_lo(w.y), o + bf16_hi(w.y));
}

// The argmax order: larger value first, then the smaller index (as torch.argmax).
__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
  return v > bv || (v == bv && i < bi);
}

// The embedding row [hidden] of `token`, one of `vocab`. A step whose logits were all NaN
// chooses no token: its argmax keeps its INT_MAX start (better() never takes a NaN), and a
// draw may find no token either. Row 0 is read in its place, so that the next step reads
// nothing out of bounds; the host refuses such an id with a clear error
// (CudaFusedDecoder::checked), and the generation stops there.
__device__ __forceinline__ const bf16* embed_row(const bf16* embed, int token, int vocab, int hidden) {
  return embed + size_t(unsigned(token) < unsigned(vocab) ? token : 0) * size_t(hidden);
}

// A sequence's next token, once its argmax is known: the input of the next step, one
// position on, and the token history's next entry. state [3]: token, position, count.
__device__ __forceinline__ void advance_sequence(int* state, int* history, int history_len, int token) {
  const int count = state[2];
  history[count % history_len] = token;
  state[0] = token;
  state[1] += 1;
  state[2] = count + 1;
}

// The launch attribute that lets a kernel start while the one before it finishes
// (programmatic dependent launch; see wait_for_previous_kernel).
inline cudaLaunchAttribute pdl_attribute() {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  return attr;
}

// Launches kernel<<<grid, block, smem, stream>>>(args...) with the launch attributes
// attrs[0, n) (none when n is 0).
template <class... Params, class... Args>
void launch_with(const char* name, void (*kernel)(Params...), cudaStream_t stream, const cudaLaunchAttribute* attrs,
                 int n, dim3 grid, dim3 block, size_t smem, Args... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = const_cast<cudaLaunchAttribute*>(attrs);
  config.numAttrs = unsigned(n);
  check(cudaLaunchKernelEx(&config, kernel, Params(args)...), name);
}

// The same, as a programmatic dependent launch when `pdl` is set.
template <class... Params, class... Args>
void launch(const char* name, void (*kernel)(Params...), cudaStream_t stream, bool pdl, dim3 grid, dim3 block,
            size_t smem, Args... args) {
  const cudaLaunchAttribute attr = pdl_attribute();
  launch_with(name, kernel, stream, &attr, pdl ? 1 : 0, grid, block, smem, args...);
}

}  // namespace lmx::cuda::fused
