// Whether compute-sanitizer's initcheck sees the stores of a cuBLAS GEMM. lmx's fixture
// tests under initcheck report "uninitialized" reads of GEMM outputs (the q, k and v
// projections that the attention's copies and RoPE read next); this probe separates the
// tool from lmx. It fills A and B, has cublasGemmEx write C (beta = 0), checks C[0] on
// the host, then reads C, a buffer a plain kernel wrote, and a buffer nothing wrote, each
// in a kernel of its own name:
//
//   nvcc -O2 -arch=sm_90a tools/initcheck_cublas.cu -lcublas -o /tmp/initcheck_cublas
//   compute-sanitizer --tool initcheck --print-limit 100000 /tmp/initcheck_cublas 64 64 64 \
//     | grep -oE 'at read_[a-z_]+' | sort | uniq -c
//
// On an H200 with CUDA 13 (2026-11-29): C[0] = 35.75, as computed (64 x 0.746^2 rounded to
// bf16), yet every read of C is reported (512 of 512), as are those of the buffer nothing
// wrote; the plain kernel's buffer gives none. So initcheck does not see cuBLAS's stores,
// and its reports on reads of GEMM outputs say nothing about lmx.
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <cstdio>
#include <cstdlib>

__device__ unsigned sink;

// Reads n 16-byte words, each thread a share, and folds them into `sink`.
__device__ void read_words(const uint4* p, size_t n) {
  unsigned s = 0;
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const uint4 v = p[i];
    s += v.x ^ v.y ^ v.z ^ v.w;
  }
  atomicAdd(&sink, s);
}
__global__ void fill(uint4* p, size_t n) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = make_uint4(1, 2, 3, 4);
}
// Three names, so that the sanitizer's report tells the reads apart.
__global__ void read_after_cublas_gemm(const uint4* p, size_t n) { read_words(p, n); }
__global__ void read_after_plain_kernel(const uint4* p, size_t n) { read_words(p, n); }
__global__ void read_never_written(const uint4* p, size_t n) { read_words(p, n); }

int main(int argc, char** argv) {
  const int m = argc > 1 ? std::atoi(argv[1]) : 64, n = argc > 2 ? std::atoi(argv[2]) : 64,
            k = argc > 3 ? std::atoi(argv[3]) : 64;
  const size_t out_bytes = size_t(m) * n * sizeof(__nv_bfloat16), words = out_bytes / 16;
  __nv_bfloat16 *a, *b, *c, *written, *never;
  cudaMalloc(&a, size_t(m) * k * sizeof(__nv_bfloat16));
  cudaMalloc(&b, size_t(k) * n * sizeof(__nv_bfloat16));
  cudaMalloc(&c, out_bytes);
  cudaMalloc(&written, out_bytes);
  cudaMalloc(&never, out_bytes);
  cudaMemset(a, 0x3f, size_t(m) * k * sizeof(__nv_bfloat16));  // every element bf16 0x3f3f = 0.74609375
  cudaMemset(b, 0x3f, size_t(k) * n * sizeof(__nv_bfloat16));
  cublasHandle_t handle;
  cublasCreate(&handle);
  const float alpha = 1, beta = 0;
  // Row-major C[m, n] = A[m, k] B[k, n]^T with B stored [n, k], as lmx's projections are.
  const cublasStatus_t status =
      cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, b, CUDA_R_16BF, k, a, CUDA_R_16BF, k, &beta, c,
                   CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  fill<<<264, 256>>>(reinterpret_cast<uint4*>(written), words);
  read_after_cublas_gemm<<<264, 256>>>(reinterpret_cast<const uint4*>(c), words);
  read_after_plain_kernel<<<264, 256>>>(reinterpret_cast<const uint4*>(written), words);
  read_never_written<<<264, 256>>>(reinterpret_cast<const uint4*>(never), words);
  const cudaError_t error = cudaDeviceSynchronize();
  __nv_bfloat16 c0;
  cudaMemcpy(&c0, c, sizeof c0, cudaMemcpyDeviceToHost);
  std::printf("GEMM %d x %d x %d: cuBLAS status %d, CUDA %s, C[0] = %g (expected about %g)\n", m, n, k, int(status),
              cudaGetErrorString(error), double(__bfloat162float(c0)), k * 0.74609375 * 0.74609375);
  cublasDestroy(handle);
  return status == CUBLAS_STATUS_SUCCESS && error == cudaSuccess ? 0 : 1;
}
