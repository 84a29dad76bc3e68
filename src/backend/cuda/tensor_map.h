// Tensor maps (the TMA's descriptors of a global array and the box it copies), encoded on
// the host through the driver, for the kernels that copy boxes of weights into shared
// memory: the gate/up GEMM (glu_gemm.cu) and the persistent decode step's fused down
// projection (fused_persistent_plan.cu encodes its maps).
#pragma once

#include <cuda.h>

#include <cstdint>

namespace lmx::cuda {

// A tensor map of a row-major bf16 [rows, cols] array in boxes of box_rows × box_cols, its
// rows box_cols · 2 bytes apart in shared memory unless swizzled; false where the driver
// cannot encode it (an old driver, or a shape the TMA does not take).
bool bf16_tensor_map(CUtensorMap& map, const void* p, int64_t rows, int64_t cols, int box_rows, int box_cols,
                     CUtensorMapSwizzle swizzle,
                     CUtensorMapL2promotion promotion = CU_TENSOR_MAP_L2_PROMOTION_L2_256B);

}  // namespace lmx::cuda
