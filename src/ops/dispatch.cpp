#include "core/error.h"
#include "ops/kernels.h"

namespace lmx::detail {

// Defined by the backends: backend/cpu and backend/cuda (or its stub without CUDA).
Kernels& cpu_kernels();
bool cuda_built();        // false from the stub
int cuda_device_count();  // visible devices; 0 without a driver or a GPU, or without CUDA
Kernels* cuda_kernels(int device_index);  // nullptr when there is no such device

Kernels& kernels_for(Device d) {
  if (d.type == Device::Type::cpu) return cpu_kernels();
  if (Kernels* k = cuda_kernels(d.index)) return *k;
  LMX_CHECK(cuda_built(), "device", d.str(), " is not available: this build of lmx has no CUDA backend "
            "(rebuild with -DLMX_CUDA=ON on a machine with the CUDA toolkit)");
  const int n = cuda_device_count();
  LMX_CHECK(n > 0, "device", d.str(), " is not available: no CUDA device is visible "
            "(no NVIDIA driver or GPU, or CUDA_VISIBLE_DEVICES hides them)");
  fail("device", d.str(), " is not available: ", n, n == 1 ? " CUDA device is" : " CUDA devices are",
       " visible (cuda:0 to cuda:", n - 1, ")");
}

}  // namespace lmx::detail
