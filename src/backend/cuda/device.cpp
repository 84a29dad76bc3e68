#include "backend/cuda/device.h"

#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "core/error.h"

namespace lmx::cuda {
namespace {

std::string where(const std::source_location& loc) {
  return detail::cat(loc.file_name(), ":", loc.line());
}

}  // namespace

void check(cudaError_t e, const char* call, std::source_location loc) {
  if (e == cudaSuccess) return;
  // A failed call also leaves its error as the thread's last error, which the next
  // check_launch would report against an innocent kernel. Clear it (sticky errors, which
  // break the context, come back from every later call anyway).
  cudaGetLastError();
  const std::string msg =
      detail::cat("[cuda] ", call, " failed: ", cudaGetErrorString(e), " at ", where(loc));
  if (e == cudaErrorMemoryAllocation)
    throw OutOfMemory(msg + "; free arrays, call clear_cache() or use a smaller batch or context");
  throw Error(msg);
}

void check_blas(cublasStatus_t s, const char* call, std::source_location loc) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  const std::string msg = detail::cat("[cuda] ", call, " failed: ", cublasGetStatusName(s), " (",
                                      cublasGetStatusString(s), ") at ", where(loc));
  if (s == CUBLAS_STATUS_ALLOC_FAILED) throw OutOfMemory(msg);
  throw Error(msg);
}

void allow_shared_memory(const void* kernel, size_t bytes, bool all_shared) {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  static std::mutex mu;
  static std::map<std::pair<int, const void*>, size_t> granted;  // per device and kernel
  std::lock_guard lock(mu);
  const auto [it, first] = granted.try_emplace({device, kernel}, 0);
  if (bytes > it->second) {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
          "cudaFuncSetAttribute");
    it->second = bytes;
  }
  if (first && all_shared)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                               int(cudaSharedmemCarveoutMaxShared)),
          "cudaFuncSetAttribute");
}

int per_device(const Context& ctx, const void* kernel, int (*ask)(const Context&)) {
  static std::mutex mu;
  static std::map<std::pair<int, const void*>, int> known;
  std::lock_guard lock(mu);
  const auto [it, first] = known.try_emplace({ctx.device, kernel}, 0);
  if (first) {
    try {
      it->second = ask(ctx);
    } catch (...) {
      known.erase(it);  // asked again next time
      throw;
    }
  }
  return it->second;
}

int device_count() {
  static const int n = [] {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
      cudaGetLastError();  // no driver or no device: report none, leave no error behind
      return 0;
    }
    return count;
  }();
  return n;
}

Context& context(int device) {
  static std::mutex mu;
  static std::vector<std::unique_ptr<Context>>
      contexts;  // never destroyed: arrays may outlive statics
  Context* ctx = nullptr;
  {
    std::lock_guard lock(mu);
    LMX_CHECK(device >= 0 && device < device_count(), "cuda", "no device cuda:", device, " (",
              device_count(), " visible)");
    if (contexts.empty()) contexts.resize(size_t(device_count()));
    auto& slot = contexts[size_t(device)];
    if (!slot) {
      auto c = std::make_unique<Context>();
      c->device = device;
      check(cudaSetDevice(device), "cudaSetDevice");
      // Non-blocking: the legacy default stream, used by other libraries, never waits on ours.
      check(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking),
            "cudaStreamCreateWithFlags");
      check_blas(cublasCreate(&c->blas), "cublasCreate");
      check_blas(cublasSetStream(c->blas, c->stream), "cublasSetStream");
      // f32 accumulation everywhere, split-K reductions included: results match the CPU's.
      check_blas(cublasSetMathMode(c->blas,
                                   cublasMath_t(CUBLAS_DEFAULT_MATH |
                                                CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)),
                 "cublasSetMathMode");
      cudaDeviceProp prop{};
      check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
      c->sm_count = prop.multiProcessorCount;
      c->total_memory = prop.totalGlobalMem;
      c->max_smem_per_block = prop.sharedMemPerBlockOptin;
      c->compute_capability = prop.major * 10 + prop.minor;
      if (prop.canMapHostMemory) {
        void* p = nullptr;
        check(cudaHostAlloc(&p, sizeof(DeviceFault), cudaHostAllocMapped), "cudaHostAlloc");
        c->fault = new (p) DeviceFault{};
      }
      slot = std::move(c);
    }
    ctx = slot.get();
  }
  check(cudaSetDevice(device), "cudaSetDevice");
  return *ctx;
}

void synchronize(const Context& ctx) {
  check(cudaStreamSynchronize(ctx.stream), "cudaStreamSynchronize");
  raise_fault(ctx);
}

void raise_fault(const Context& ctx) {
  if (!ctx.fault || ctx.fault->op == 0) return;
  const DeviceFault f = *ctx.fault;
  *ctx.fault = DeviceFault{};
  const bool is_signed = f.op != kFaultTakeU32 && f.op != kFaultTakeAlongU32;
  const long long index = is_signed ? (long long)int32_t(f.raw_index) : (long long)f.raw_index;
  const char* op = f.op == kFaultTakeI32 || f.op == kFaultTakeU32 ? "take" : "take_along_axis";
  fail(op, "index ", index, " is out of range for an axis of size ", f.bound,
       " (found on the device and reported at the next wait for it; the output's rows for it are zeros)");
}

}  // namespace lmx::cuda
