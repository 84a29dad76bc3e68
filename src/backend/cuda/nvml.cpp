// GPU utilisation through NVML, loaded at run time: a build with CUDA must still start
// on machines without the NVIDIA driver (CI), so nothing links libnvidia-ml directly.
#include <dlfcn.h>

#include <mutex>

#include "backend/cuda/device.h"

namespace lmx::cuda {
namespace {

// The few NVML entry points used here, with their C ABI (nvml.h).
using NvmlReturn = int;  // NVML_SUCCESS == 0
struct NvmlUtilization {
  unsigned int gpu;     // percent of time a kernel ran over the last sample period
  unsigned int memory;  // percent of time memory was read or written
};
using NvmlDevice = struct NvmlDeviceOpaque*;

struct Nvml {
  NvmlReturn (*init)() = nullptr;
  NvmlReturn (*handle_by_index)(unsigned int, NvmlDevice*) = nullptr;
  NvmlReturn (*utilization)(NvmlDevice, NvmlUtilization*) = nullptr;
  bool ok = false;
};

const Nvml& nvml() {
  static Nvml n;
  static std::once_flag once;
  std::call_once(once, [] {
    void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) return;
    n.init = reinterpret_cast<NvmlReturn (*)()>(dlsym(lib, "nvmlInit_v2"));
    n.handle_by_index = reinterpret_cast<NvmlReturn (*)(unsigned int, NvmlDevice*)>(
        dlsym(lib, "nvmlDeviceGetHandleByIndex_v2"));
    n.utilization = reinterpret_cast<NvmlReturn (*)(NvmlDevice, NvmlUtilization*)>(
        dlsym(lib, "nvmlDeviceGetUtilizationRates"));
    n.ok = n.init && n.handle_by_index && n.utilization && n.init() == 0;
  });
  return n;
}

}  // namespace

double nvml_utilization(int device) {
  const Nvml& n = nvml();
  if (!n.ok) return -1;
  // NVML numbers devices as the driver does; CUDA_VISIBLE_DEVICES can reorder them, in
  // which case the figure is for another GPU. Good enough for a metric, not for control.
  NvmlDevice handle = nullptr;
  NvmlUtilization u{};
  if (n.handle_by_index(unsigned(device), &handle) != 0 || n.utilization(handle, &u) != 0) return -1;
  return double(u.gpu);
}

}  // namespace lmx::cuda
