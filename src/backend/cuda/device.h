// The CUDA device context (one stream and one cuBLAS handle per device) and the error
// checks that turn every CUDA and cuBLAS failure into lmx::Error (OutOfMemory when the
// device is full). Host-only: included by the .cpp and the .cu files of the backend.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <source_location>

namespace lmx::cuda {

// The backend's measurement switches (LMX_FUSED_DOWN, LMX_GEMM_TILES, ...): on unless the
// environment variable is set to "0".
inline bool switch_on(const char* name) {
  const char* v = std::getenv(name);
  return !v || std::strcmp(v, "0") != 0;
}
// The same for switches that are off unless set (LMX_FUSED_PROFILE, ...).
inline bool switch_set(const char* name) { return std::getenv(name) && switch_on(name); }

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

// A fault a kernel found in its input (an index out of range) and left for the host: the
// op's name, the offending value and the bound it broke. It lives in mapped pinned host
// memory, so a kernel records it with plain stores and the host reads it after any wait
// for the stream, with no copy and no synchronisation of its own. Only the first fault
// between two waits is kept.
enum FaultOp : int { kFaultNone = 0, kFaultTakeI32, kFaultTakeU32, kFaultTakeAlongI32, kFaultTakeAlongU32 };
struct DeviceFault {
  int op = kFaultNone;
  uint32_t raw_index = 0;  // the index's 32 bits; op says whether they are signed
  long long bound = 0;
};

struct Context {
  int device = 0;
  cudaStream_t stream = nullptr;  // every kernel and copy of this device runs here, in order
  cublasHandle_t blas = nullptr;  // bound to `stream`
  int sm_count = 0;
  size_t total_memory = 0;
  size_t max_smem_per_block = 0;  // dynamic shared memory a kernel may opt in to
  int compute_capability = 0;     // major · 10 + minor: 90 for the H100 and H200
  // Host-mapped, or null where the device cannot map host memory (then ops that would
  // record faults check on the host, synchronously).
  DeviceFault* fault = nullptr;
};

// The context of a device, created on first use; makes the device current for this thread.
Context& context(int device);
// Visible devices; 0 when there is no driver or no GPU (never throws).
int device_count();

// Blocks until `ctx.stream` has finished its work, then raises the fault a kernel recorded
// since the last wait, if any (see DeviceFault).
void synchronize(const Context& ctx);
// After any other wait for the stream (an event): raises a recorded fault as lmx::Error,
// naming the op, and clears it so that the device stays usable.
void raise_fault(const Context& ctx);

// Lets `kernel` launch with up to `bytes` of dynamic shared memory on the current device,
// and with `all_shared` prefer all of the SM's unified memory as shared memory. These
// attributes belong to a device's context: a process that runs on two GPUs must set them on
// each, or a launch above 48 KiB fails on the second. The driver is asked only where the
// kernel needs more on this device than it has been given, never for less, so that threads
// launching one kernel with different sizes do not undercut each other.
void allow_shared_memory(const void* kernel, size_t bytes, bool all_shared = false);
template <class Kernel>
void allow_shared_memory(Kernel* kernel, size_t bytes, bool all_shared = false) {
  allow_shared_memory(reinterpret_cast<const void*>(kernel), bytes, all_shared);
}

// What the driver says about `kernel` on ctx's device (say, how many of its blocks fit at
// once), asked once per device and kernel and kept: the answer holds only for that GPU.
int per_device(const Context& ctx, const void* kernel, int (*ask)(const Context&));

// Percent of time the GPU was busy over NVML's last sample window; -1 without NVML.
double nvml_utilization(int device);
// The SM clock now (MHz) and the board's power draw (W: now where the driver reports it,
// else its mean over the last second); false without NVML.
bool nvml_clock_and_power(int device, double& sm_mhz, double& watts);

}  // namespace lmx::cuda
