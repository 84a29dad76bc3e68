// What every kernel-lab program shares: stop at the first failed CUDA (or library) call,
// naming the call and its line (exit status 2, apart from 1 for a failed check); the
// median timer; and the bf16 GEMM as lmx calls cuBLAS.
#pragma once

#include <cublas_v2.h>
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#define CHECK(call)                                                                    \
  do {                                                                                 \
    const cudaError_t e_ = (call);                                                     \
    if (e_ != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call,        \
                   cudaGetErrorString(e_));                                            \
      std::exit(2);                                                                    \
    }                                                                                  \
  } while (0)

// For libraries whose calls return an integer status, 0 on success (cuBLAS, cuBLASLt).
#define CHECK_STATUS(call)                                                             \
  do {                                                                                 \
    const int s_ = int(call);                                                          \
    if (s_ != 0) {                                                                     \
      std::fprintf(stderr, "%s:%d: %s failed: status %d\n", __FILE__, __LINE__, #call, s_); \
      std::exit(2);                                                                    \
    }                                                                                  \
  } while (0)

// The median time of f() in microseconds: 20 runs timed with CUDA events after 3 warm-ups.
template <class F>
float median_us(F&& f) {
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) f();
  std::vector<float> t;
  for (int i = 0; i < 20; ++i) {
    CHECK(cudaEventRecord(a));
    f();
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float ms;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms * 1000);
  }
  std::sort(t.begin(), t.end());
  CHECK(cudaEventDestroy(a));
  CHECK(cudaEventDestroy(b));
  return t[t.size() / 2];
}

// out [M, N] = x [M, K] · w [N, K]ᵀ in bf16 with f32 accumulation, as lmx's matmul calls
// cuBLAS (column-major: outᵀ = w · xᵀ).
inline void gemm_blas(cublasHandle_t blas, const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* out, int m,
                      int n, int k) {
  const float alpha = 1, beta = 0;
  CHECK_STATUS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, CUDA_R_16BF, k, x, CUDA_R_16BF, k,
                            &beta, out, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// A row-major bf16 [rows, cols] array read in boxes of box_rows × box_cols (the driver's
// cuTensorMapEncodeTiled, found through the runtime: the labs do not link libcuda).
inline CUtensorMap bf16_box_map(const void* p, int rows, int cols, int box_rows, int box_cols,
                                CUtensorMapSwizzle swizzle, CUtensorMapL2promotion promotion) {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found;
    CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found));
    if (found != cudaDriverEntryPointSuccess || !fn) {
      std::fprintf(stderr, "cuTensorMapEncodeTiled is not available from the driver\n");
      std::exit(2);
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  CUtensorMap map;
  const cuuint64_t dims[2] = {cuuint64_t(cols), cuuint64_t(rows)}, strides[1] = {cuuint64_t(cols) * 2};
  const cuuint32_t box[2] = {cuuint32_t(box_cols), cuuint32_t(box_rows)}, steps[2] = {1, 1};
  CHECK_STATUS(encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(p), dims, strides, box, steps,
                      CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, promotion, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE));
  return map;
}

// The largest error of 64 sampled outputs of x [m, k] · w [n, k]ᵀ against float64 sums,
// relative to the sum of the terms' magnitudes; got(i, j) reads output [i, j].
template <class Got>
double sampled_gemm_error(const std::vector<__nv_bfloat16>& hx, const std::vector<__nv_bfloat16>& hw, int m, int n,
                          int k, Got&& got) {
  std::mt19937 rng(7);
  double worst = 0;
  for (int s = 0; s < 64; ++s) {
    const int i = int(rng() % m), j = int(rng() % n);
    double ref = 0, mag = 0;
    for (int c = 0; c < k; ++c) {
      const double p = double(__bfloat162float(hx[size_t(i) * k + c])) * __bfloat162float(hw[size_t(j) * k + c]);
      ref += p, mag += std::fabs(p);
    }
    worst = std::max(worst, std::fabs(double(got(i, j)) - ref) / (mag + 1e-30));
  }
  return worst;
}
