// The backend's GEMM (gemm.cpp), for the ops that multiply: matmul, the paired projections
// and the attention's scores and values.
#pragma once

#include <cstddef>
#include <cstdint>

#include "backend/cuda/device.h"

namespace lmx::cuda {

// c = op(a) · op(b) in cuBLAS's column-major terms ([m, k] · [k, n] -> [m, n], each matrix
// of a batch one stride from the last), f32 sums rounded once to `type`, the dtype of all
// three. Small products run through a cuBLASLt plan kept per shape (11.3 µs of host time a
// call against cuBLAS's 12.5 on the H200 machine), Llama-3.2-1B's gate/up at a
// classification pass's rows at a measured tile, the rest through
// cublasGemmStridedBatchedEx. `what` names the op in errors.
struct Gemm {
  cublasOperation_t op_a = CUBLAS_OP_N, op_b = CUBLAS_OP_N;
  int64_t m = 0, n = 0, k = 0, batch = 1;
  const void* a = nullptr;
  int64_t lda = 0, stride_a = 0;
  const void* b = nullptr;
  int64_t ldb = 0, stride_b = 0;
  void* c = nullptr;
  int64_t ldc = 0, stride_c = 0;
  cudaDataType_t type = CUDA_R_16BF;
};
void gemm(const Context& ctx, const Gemm& g, const char* what);

// Products run at the table's tile and through the other kept plans, and the plans kept
// (at most kGemmPlansKept, the ones used last).
int64_t tuned_gemms();
int64_t planned_gemms();
size_t gemm_plans();
constexpr size_t kGemmPlansKept = 256;

}  // namespace lmx::cuda
