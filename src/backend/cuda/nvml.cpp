// GPU utilisation, SM clock and power through NVML, loaded at run time: a build with CUDA
// must still start on machines without the NVIDIA driver (CI), so nothing links
// libnvidia-ml directly.
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

constexpr int kNvmlClockSm = 1;         // NVML_CLOCK_SM
constexpr unsigned kNvmlPowerNow = 186;  // NVML_FI_DEV_POWER_INSTANT, milliwatts
// nvmlFieldValue_t: a query of one field and its answer.
struct NvmlField {
  unsigned int id, scope;
  long long timestamp, latency_us;
  int type;
  NvmlReturn result;
  union {
    double d;
    unsigned int u;
    unsigned long long ull;
  } value;
};

struct Nvml {
  NvmlReturn (*init)() = nullptr;
  NvmlReturn (*handle_by_index)(unsigned int, NvmlDevice*) = nullptr;
  NvmlReturn (*utilization)(NvmlDevice, NvmlUtilization*) = nullptr;
  NvmlReturn (*clock)(NvmlDevice, int, unsigned int*) = nullptr;  // MHz
  NvmlReturn (*power)(NvmlDevice, unsigned int*) = nullptr;       // milliwatts, a second's mean
  NvmlReturn (*fields)(NvmlDevice, int, NvmlField*) = nullptr;
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
    // Optional: without them only the clock and power readings are missing.
    n.clock = reinterpret_cast<NvmlReturn (*)(NvmlDevice, int, unsigned int*)>(dlsym(lib, "nvmlDeviceGetClockInfo"));
    n.power = reinterpret_cast<NvmlReturn (*)(NvmlDevice, unsigned int*)>(dlsym(lib, "nvmlDeviceGetPowerUsage"));
    n.fields = reinterpret_cast<NvmlReturn (*)(NvmlDevice, int, NvmlField*)>(dlsym(lib, "nvmlDeviceGetFieldValues"));
    n.ok = n.init && n.handle_by_index && n.utilization && n.init() == 0;
  });
  return n;
}

// NVML numbers devices as the driver does; CUDA_VISIBLE_DEVICES can reorder them, in
// which case the figures are for another GPU. Good enough for metrics, not for control.
NvmlDevice handle(const Nvml& n, int device) {
  NvmlDevice h = nullptr;
  return n.ok && n.handle_by_index(unsigned(device), &h) == 0 ? h : nullptr;
}

}  // namespace

double nvml_utilization(int device) {
  const Nvml& n = nvml();
  const NvmlDevice h = handle(n, device);
  NvmlUtilization u{};
  if (!h || n.utilization(h, &u) != 0) return -1;
  return double(u.gpu);
}

bool nvml_clock_and_power(int device, double& sm_mhz, double& watts) {
  const Nvml& n = nvml();
  const NvmlDevice h = handle(n, device);
  unsigned int mhz = 0, mw = 0;
  if (!h || !n.clock || n.clock(h, kNvmlClockSm, &mhz) != 0) return false;
  // The power now where the driver has it: nvmlDeviceGetPowerUsage averages over a second
  // on recent GPUs, longer than many a benchmark's timed runs.
  NvmlField f{};
  f.id = kNvmlPowerNow;
  if (n.fields && n.fields(h, 1, &f) == 0 && f.result == 0 && f.type == 1) {
    mw = f.value.u;  // NVML_VALUE_TYPE_UNSIGNED_INT
  } else if (!n.power || n.power(h, &mw) != 0) {
    return false;
  }
  sm_mhz = mhz, watts = mw / 1000.0;
  return true;
}

}  // namespace lmx::cuda
