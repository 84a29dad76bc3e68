#include "core/error.h"
#include "ops/kernels.h"

namespace lmx::detail {

// Defined by the backends: backend/cpu and backend/cuda (or its stub without CUDA).
Kernels& cpu_kernels();
Kernels* cuda_kernels(int device_index);

Kernels& kernels_for(Device d) {
  if (d.type == Device::Type::cpu) return cpu_kernels();
  Kernels* k = cuda_kernels(d.index);
  LMX_CHECK(k != nullptr, "device", d.str(), " is not available: this build of lmx has no CUDA backend "
            "(rebuild with -DLMX_CUDA=ON on a machine with the CUDA toolkit)");
  return *k;
}

}  // namespace lmx::detail
