// Linked when lmx is built without CUDA: every CUDA entry point reports that clearly.
#include "ops/kernels.h"

namespace lmx::detail {

bool cuda_built() { return false; }
int cuda_device_count() { return 0; }
Kernels* cuda_kernels(int) { return nullptr; }

}  // namespace lmx::detail
