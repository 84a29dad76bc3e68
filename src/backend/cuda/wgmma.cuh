// Hopper's warpgroup matrix multiply (wgmma, sm_90a) on operands in shared memory: the
// operand descriptor, the ordering instructions and the one shape glu_gemm.cu uses. The
// kernel lab (bench/kernels/glu_gemm_lab.cu) includes it too.
//
// A warpgroup (4 warps) issues wgmma together; the products run asynchronously, in groups
// committed with wgmma_commit and waited for with wgmma_wait<n> (at most n groups still
// running). Accumulator registers must not be touched between an issue and its wait.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "backend/cuda/async_copy.cuh"

namespace lmx::cuda {

// The shared-memory matrix descriptor of a K-major tile in 128-byte swizzle: rows of 128
// bytes, 8-row groups 1,024 bytes apart. Adding 2 moves its start by 32 bytes (16 values
// of K) within the swizzle row.
__device__ __forceinline__ uint64_t wgmma_descriptor(const void* tile) {
  uint64_t d = (smem_addr(tile) & 0x3FFFF) >> 4;
  d |= uint64_t(1) << 16;          // leading byte offset: unused for swizzled K-major tiles
  d |= uint64_t(1024 >> 4) << 32;  // stride byte offset
  d |= uint64_t(1) << 62;          // 128-byte swizzle
  return d;
}

// d += A·Bᵀ (d = A·Bᵀ where scale_d is 0) for A [64, 16] and B [256, 16], both K-major in
// shared memory, bf16 in, f32 accumulated. Warp w of the warpgroup holds rows 16w + lane/4
// and that + 8; registers 4j..4j+3 hold columns 8j + 2(lane%4) and the next, of both rows.
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[128], uint64_t desc_a, uint64_t desc_b, int scale_d) {
#define LMX_D8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
                  "+f"(d[i + 6]), "+f"(d[i + 7])
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
      "%128, %129, p, 1, 1, 0, 0;\n}\n"
      : LMX_D8(0), LMX_D8(8), LMX_D8(16), LMX_D8(24), LMX_D8(32), LMX_D8(40), LMX_D8(48), LMX_D8(56), LMX_D8(64),
        LMX_D8(72), LMX_D8(80), LMX_D8(88), LMX_D8(96), LMX_D8(104), LMX_D8(112), LMX_D8(120)
      : "l"(desc_a), "l"(desc_b), "r"(scale_d));
#undef LMX_D8
}

// The descriptor of an MN-major tile in 128-byte swizzle (B stored [K, N] with N contiguous,
// read with imm-trans-b): rows of 64 values of N, 8-row groups of K 1,024 bytes apart, and
// the next 64 values of N `mn_block_bytes` further on.
__device__ __forceinline__ uint64_t wgmma_descriptor_mn(const void* tile, uint32_t mn_block_bytes) {
  uint64_t d = (smem_addr(tile) & 0x3FFFF) >> 4;
  d |= uint64_t((mn_block_bytes & 0x3FFFF) >> 4) << 16;  // leading byte offset: the next 64 of N
  d |= uint64_t(1024 >> 4) << 32;                        // stride byte offset: the next 8 of K
  d |= uint64_t(1) << 62;                                // 128-byte swizzle
  return d;
}

// The attention's two products, for T = bf16 or f16 (flash_wgmma.cu). Accumulators as
// [N / 8][4]: tile j holds columns 8j + 2(lane%4) and the next, of rows 16w + lane/4 (0, 1)
// and that + 8 (2, 3), warp w of the warpgroup: the m16n8 layout of mma.cuh, per warp.
#define LMX_T4(j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define LMX_R32                                                                                                   \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, " \
  "%24, %25, %26, %27, %28, %29, %30, %31}"
#define LMX_R64                                                                                                   \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, " \
  "%24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, "  \
  "%46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define LMX_T32 LMX_T4(0), LMX_T4(1), LMX_T4(2), LMX_T4(3), LMX_T4(4), LMX_T4(5), LMX_T4(6), LMX_T4(7)
#define LMX_T64 LMX_T32, LMX_T4(8), LMX_T4(9), LMX_T4(10), LMX_T4(11), LMX_T4(12), LMX_T4(13), LMX_T4(14), LMX_T4(15)

// d (+)= A·Bᵀ for A [64, 16] and B [64, 16], both K-major in shared memory.
template <class T>
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[8][4], uint64_t desc_a, uint64_t desc_b, int scale_d) {
#define LMX_SS(TY)                                                                                        \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                              \
               "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " " LMX_R32 ", %32, %33, p, 1, 1, 0, 0;\n}\n" \
               : LMX_T32                                                                                  \
               : "l"(desc_a), "l"(desc_b), "r"(scale_d))
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    LMX_SS("bf16");
  else
    LMX_SS("f16");
#undef LMX_SS
}

// d += A·B for A [64, 16] in registers (the m16n8k16 A layout of mma.cuh, per warp) and B
// [16, N] MN-major in shared memory (imm-trans-b), N = 64 or 128.
template <class T, int N>
__device__ __forceinline__ void wgmma_m64k16_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t desc_b) {
  static_assert(N == 64 || N == 128);
#define LMX_RS(SHAPE, TY, R, TT, OPS, P)                                                                          \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " P ", 0;\nwgmma.mma_async.sync.aligned." SHAPE ".f32." TY "." TY \
               " " R ", " OPS ", p, 1, 1, 1;\n}\n"                                                                \
               : TT                                                                                              \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1))
  constexpr bool bf16 = std::is_same_v<T, __nv_bfloat16>;
  if constexpr (N == 64 && bf16)
    LMX_RS("m64n64k16", "bf16", LMX_R32, LMX_T32, "{%32, %33, %34, %35}, %36", "%37");
  else if constexpr (N == 64)
    LMX_RS("m64n64k16", "f16", LMX_R32, LMX_T32, "{%32, %33, %34, %35}, %36", "%37");
  else if constexpr (bf16)
    LMX_RS("m64n128k16", "bf16", LMX_R64, LMX_T64, "{%64, %65, %66, %67}, %68", "%69");
  else
    LMX_RS("m64n128k16", "f16", LMX_R64, LMX_T64, "{%64, %65, %66, %67}, %68", "%69");
#undef LMX_RS
}
#undef LMX_T4
#undef LMX_R32
#undef LMX_R64
#undef LMX_T32
#undef LMX_T64

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(kPending) : "memory");
}
// After a wait: keeps the compiler from moving uses of the accumulators before it.
template <int N>
__device__ __forceinline__ void wgmma_hold(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int N>
__device__ __forceinline__ void wgmma_hold(float (&d)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) wgmma_hold(d[i]);
}

}  // namespace lmx::cuda
