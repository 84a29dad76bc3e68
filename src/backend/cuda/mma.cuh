// Tensor-core pieces (PTX, sm_80+) shared by the attention kernels and the batched GEMVs of
// the fused decode step: the product m16n8k16, its operand packing, ldmatrix, and 16-byte
// asynchronous copies into shared memory.
//
// Layouts, for lane l of a warp, g = l/4 and t = l%4: A (16x16, row-major) in 4 registers
// holds rows g and g+8 at columns 2t, 2t+1 (a0: row g, a1: row g+8) and at 2t+8, 2t+9
// (a2, a3); B (16x8) in 2 registers holds column g at rows 2t, 2t+1 (b0) and 2t+8, 2t+9
// (b1); C/D (16x8, f32) in 4 holds rows g and g+8 at columns 2t and 2t+1 (c0 c1, c2 c3).
#pragma once

#include "backend/cuda/common.cuh"

namespace lmx::cuda {

template <class T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, bfloat_t>)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// ldmatrix loads four 8x8 16-bit matrices whose rows the lanes address
// (lanes 8i..8i+7 give matrix i's rows); lane l receives row l/4, columns 2(l%4) and
// 2(l%4)+1 of each (with .trans, of the transposed matrix).
// The row's shared-memory address may be given as a 32-bit offset, which keeps a loop's
// addresses out of 64-bit registers.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(row));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(row));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  ldmatrix_x4(r, unsigned(__cvta_generic_to_shared(row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  ldmatrix_x4_trans(r, unsigned(__cvta_generic_to_shared(row)));
}
// Rows 0-7 of D [16, 8] += A [16, 8] · B [8, 8] (m16n8k8, bf16 products summed in f32)
// where A's rows 8-15 are zero: a0 is A's row g at columns 2t and 2t + 1, b0 B's column g
// at rows 2t and 2t + 1, d row g's columns 2t and 2t + 1. Rows 8-15 take no registers.
__device__ __forceinline__ void mma_1688_top(float (&d)[2], uint32_t a0, uint32_t b0) {
  [[maybe_unused]] float unused0, unused1;
  asm("mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%8,%9,%9};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(unused0), "=f"(unused1)
      : "r"(a0), "r"(0u), "r"(b0), "f"(d[0]), "f"(d[1]), "f"(0.0f));
}
// 16 bytes from global to shared memory without passing through registers (cp.async);
// complete after cp.async.wait_all.
__device__ __forceinline__ void copy16_async(void* smem_dst, const void* src) {
  const unsigned dst = unsigned(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}
// The same to a 32-bit shared-memory address, under an L2 policy (createpolicy).
__device__ __forceinline__ void copy16_async(uint32_t smem_dst, const void* src, uint64_t policy) {
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(smem_dst), "l"(src), "l"(policy)
               : "memory");
}
// Waits for this thread's copy16_async copies (other threads see them after a barrier).
__device__ __forceinline__ void copy_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
// Closes a group of this thread's copies so far; copy_async_wait_groups waits for every
// closed group and not for copies issued after the last close.
__device__ __forceinline__ void copy_async_close_group() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void copy_async_wait_groups() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
// Waits for every closed group but the last `pending` (0 to 4; the count is an immediate).
__device__ __forceinline__ void copy_async_wait_groups_but(int pending) {
  switch (pending) {
    case 4: asm volatile("cp.async.wait_group 4;\n" ::: "memory"); break;
    case 3: asm volatile("cp.async.wait_group 3;\n" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;\n" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;\n" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 0;\n" ::: "memory");
  }
}

// Two floats rounded to T, packed as an mma operand register (lo in the low half).
template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, bfloat_t>) {
    const __nv_bfloat162 p = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&p);
  } else {
    const __half2 p = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&p);
  }
}
// Two floats each rounded to T, as round_to does, through one packed conversion (the
// conversion unit, not the arithmetic, limits the softmax of long rows).
template <class T>
__device__ __forceinline__ void round2_to(float& lo, float& hi) {
  const uint32_t p = pack2<T>(lo, hi);
  if constexpr (std::is_same_v<T, bfloat_t>) {
    lo = __uint_as_float(p << 16);
    hi = __uint_as_float(p & 0xffff0000u);
  } else {
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&p));
    lo = f.x, hi = f.y;
  }
}

}  // namespace lmx::cuda
