#include "backend/cuda/tensor_map.h"

#include <cuda_runtime_api.h>
#include <cudaTypedefs.h>

namespace lmx::cuda {

bool tensor_map_16bit(CUtensorMap& map, const void* p, bool bf16, int rank, const int64_t* dims,
                      const int64_t* strides, const int* box, CUtensorMapSwizzle swizzle,
                      CUtensorMapL2promotion promotion) {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      f = nullptr;
    (void)cudaGetLastError();
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  constexpr int kMaxRank = 5;
  if (!encode || rank < 1 || rank > kMaxRank) return false;
  cuuint64_t d[kMaxRank], st[kMaxRank];
  cuuint32_t bx[kMaxRank], steps[kMaxRank];
  for (int i = 0; i < rank; ++i) {
    if (dims[i] <= 0 || box[i] <= 0 || (i + 1 < rank && (strides[i] <= 0 || strides[i] % 16 != 0))) return false;
    d[i] = cuuint64_t(dims[i]), bx[i] = cuuint32_t(box[i]), steps[i] = 1;
    if (i + 1 < rank) st[i] = cuuint64_t(strides[i]);
  }
  return encode(&map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, cuuint32_t(rank),
                const_cast<void*>(p), d, st, bx, steps, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, promotion,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

bool bf16_tensor_map(CUtensorMap& map, const void* p, int64_t rows, int64_t cols, int box_rows, int box_cols,
                     CUtensorMapSwizzle swizzle, CUtensorMapL2promotion promotion) {
  const int64_t dims[2] = {cols, rows}, strides[1] = {cols * 2};
  const int box[2] = {box_cols, box_rows};
  return tensor_map_16bit(map, p, true, 2, dims, strides, box, swizzle, promotion);
}

}  // namespace lmx::cuda
