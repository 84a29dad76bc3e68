// Reverse-mode gradients over the same ops that inference runs (DESIGN.md, "Autograd").
//
//   Array a = ..., b = ...;                       // parameters
//   auto [loss, grads] = autograd::value_and_grad([&] { return mean(square(matmul(x, a) - b)); },
//                                                 std::vector{a, b});
//
// While `fn` runs, a tape on this thread keeps every step that depends on a parameter
// (ops/tape.h), with the arrays it read; the backward pass then walks the steps in
// reverse, each through its own vector-Jacobian product (vjp.cpp). Steps that depend on
// no parameter (a frozen weight times a frozen input) are not kept, so a LoRA model keeps
// only what its adapters' gradients need. fast:: ops whose inputs are tracked run as their
// compositions of plain ops, with the same roundings.
//
// Gradients have their parameters' dtypes and shapes and are summed in those dtypes, as
// PyTorch sums them. There are no gradients of gradients: the backward pass records nothing.
// One tape per thread; a value_and_grad inside another's fn hides the outer one meanwhile.
#pragma once

#include <functional>
#include <span>
#include <vector>

#include "ops/ops.h"

namespace lmx::autograd {

struct ValueAndGrad {
  Array value;  // what fn returned
  std::vector<Array>
      grads;  // d value / d params[i], contiguous; zeros where value does not depend on it
};

// fn must return one floating-point element (a loss). Errors in fn propagate; no tape
// stays behind.
ValueAndGrad value_and_grad(const std::function<Array()>& fn, std::span<const Array> params);

// Activation checkpointing: fn(inputs), with none of fn's intermediate arrays kept for the
// backward pass, which runs fn again from `inputs` to differentiate it. Memory for a stack
// of layers falls from every layer's activations to one layer's plus each layer's input.
// fn must compute the same thing when run again (no state changed between the runs), and
// may use the parameters of the value_and_grad around it. Outside one it is fn(inputs).
using Function = std::function<Array(const std::vector<Array>&)>;
Array checkpoint(const Function& fn, const std::vector<Array>& inputs);

// x's values with no gradient flowing back through them.
Array stop_gradient(const Array& x);

}  // namespace lmx::autograd
