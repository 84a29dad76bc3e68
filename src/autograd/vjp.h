// The vector-Jacobian product of each step an op reports (ops/tape.h).
#pragma once

#include <vector>

#include "ops/tape.h"

namespace lmx::autograd {

// g: the gradient of the loss with respect to step.output (its shape and dtype); need[i]:
// whether input i's gradient is wanted (the tape tracks it). Returns one array per input:
// the gradient with respect to it, in its shape and dtype, or an empty array where not
// needed or not defined (indices, conditions, integers).
std::vector<Array> vjp(const detail::StepRecord& step, const Array& g,
                       const std::vector<bool>& need);

// Whether the rule for `step` reads the values of input i when only the inputs in `need`
// want gradients; where it does not, its shape and dtype are enough (an addend's values,
// a slice's source), and the tape need not keep the values alive.
bool vjp_reads(const detail::StepRecord& step, size_t i, const std::vector<bool>& need);
// Whether the rule for `step` reads the values of its output (a power's, a max's).
bool vjp_reads_output(const detail::StepRecord& step);

// g [...] summed over the axes that broadcasting added or stretched, back to `shape`.
Array unbroadcast(const Array& g, const Shape& shape);

}  // namespace lmx::autograd
