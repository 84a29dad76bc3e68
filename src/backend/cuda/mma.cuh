// The tensor-core product m16n8k16 (PTX mma.sync, sm_80+) and its operand packing, shared
// by the self-attention kernel and the batched GEMVs of the fused decode step.
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

}  // namespace lmx::cuda
