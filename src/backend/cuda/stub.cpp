// Linked when lmx is built without CUDA: every CUDA entry point reports that clearly.
#include "ops/kernels.h"

namespace lmx::detail {

Kernels* cuda_kernels(int) { return nullptr; }

}  // namespace lmx::detail
