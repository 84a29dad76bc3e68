// The CUDA device context (one stream and one cuBLAS handle per device) and the error
// checks that turn every CUDA and cuBLAS failure into lmx::Error (OutOfMemory when the
// device is full). Host-only: included by the .cpp and the .cu files of the backend.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <source_location>

namespace lmx::cuda {

// Throws "[cuda] <call> failed: <error string> at file:line" unless `e` is cudaSuccess.
void check(cudaError_t e, const char* call,
           std::source_location loc = std::source_location::current());
void check_blas(cublasStatus_t s, const char* call,
                std::source_location loc = std::source_location::current());
// After every kernel launch: reports launch errors (bad configuration, no kernel image).
inline void check_launch(const char* kernel,
                         std::source_location loc = std::source_location::current()) {
  check(cudaGetLastError(), kernel, loc);
}

struct Context {
  int device = 0;
  cudaStream_t stream = nullptr;  // every kernel and copy of this device runs here, in order
  cublasHandle_t blas = nullptr;  // bound to `stream`
  int sm_count = 0;
  size_t total_memory = 0;
  size_t max_smem_per_block = 0;  // dynamic shared memory a kernel may opt in to
};

// The context of a device, created on first use; makes the device current for this thread.
Context& context(int device);
// Visible devices; 0 when there is no driver or no GPU (never throws).
int device_count();

// Blocks until `ctx.stream` has finished its work.
void synchronize(const Context& ctx);

// Percent of time the GPU was busy over NVML's last sample window; -1 without NVML.
double nvml_utilization(int device);

}  // namespace lmx::cuda
