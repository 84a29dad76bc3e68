// The vector-Jacobian product of each step an op reports (ops/tape.h).
#pragma once

#include <vector>

#include "ops/tape.h"

namespace lmx::autograd {

// g: the gradient of the loss with respect to step.output (its shape and dtype). Returns
// one array per input of the step: the gradient with respect to it, in its shape and
// dtype, or an empty array for inputs without one (indices, conditions, integers).
std::vector<Array> vjp(const detail::StepRecord& step, const Array& g);

// g [...] summed over the axes that broadcasting added or stretched, back to `shape`.
Array unbroadcast(const Array& g, const Shape& shape);

}  // namespace lmx::autograd
