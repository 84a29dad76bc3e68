// Whether CUDA device `index` can run lmx's kernels here. Tests that need a GPU skip,
// saying so, where it cannot.
#pragma once

#include "core/error.h"
#include "ops/kernels.h"

namespace lmx::test {

inline bool have_cuda(int index = 0) {
  try {
    detail::kernels_for(Device::cuda(index));
    return true;
  } catch (const Error&) {
    return false;
  }
}

}  // namespace lmx::test
