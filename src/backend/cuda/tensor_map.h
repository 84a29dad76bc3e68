// Tensor maps (the TMA's descriptors of a global array and the box it copies), encoded on
// the host through the driver, for the kernels that copy boxes into shared memory: the
// gate/up GEMM (glu_gemm.cu), the persistent decode step's fused down projection
// (fused_persistent_plan.cu encodes its maps) and the Hopper flash attention
// (flash_wgmma.cu: queries, keys and values).
#pragma once

#include <cuda.h>

#include <cstdint>

namespace lmx::cuda {

// A tensor map of a 16-bit array (bf16 or f16) of `rank` dimensions, innermost first: dims
// and box in elements, strides[i] the bytes between steps of dimension i + 1 (multiples of
// 16). Boxes past the array's end are filled with zeros. False where the driver cannot
// encode it (an old driver, or a shape the TMA does not take).
bool tensor_map_16bit(CUtensorMap& map, const void* p, bool bf16, int rank, const int64_t* dims,
                      const int64_t* strides, const int* box, CUtensorMapSwizzle swizzle,
                      CUtensorMapL2promotion promotion = CU_TENSOR_MAP_L2_PROMOTION_L2_256B);

// A tensor map of a row-major bf16 [rows, cols] array in boxes of box_rows × box_cols, its
// rows box_cols · 2 bytes apart in shared memory unless swizzled; false where the driver
// cannot encode it (an old driver, or a shape the TMA does not take).
bool bf16_tensor_map(CUtensorMap& map, const void* p, int64_t rows, int64_t cols, int box_rows, int box_cols,
                     CUtensorMapSwizzle swizzle,
                     CUtensorMapL2promotion promotion = CU_TENSOR_MAP_L2_PROMOTION_L2_256B);

}  // namespace lmx::cuda
