// The hook through which ops report themselves to a gradient tape (src/autograd). Ops know
// nothing of gradients: each differentiable op says what it computed from what, and the
// tape, when one is recording on this thread, keeps it for the backward pass. With no tape
// the hook costs a thread-local read per op.
//
// Two kinds of op:
// - A primitive (a kernel's work: unary, matmul, take, ...) opens an OpRecord first. That
//   pauses the tape for the ops it calls inside itself, then reports the op as one step from
//   its public inputs to its result.
// - A composition (mean, the fast:: fallbacks) reports nothing itself: the ops it is made of
//   report themselves.
#pragma once

#include <cstdint>
#include <vector>

#include "core/array.h"

namespace lmx::detail {

// Which rule differentiates a recorded step (src/autograd/vjp.cpp holds one for each).
enum class Step : uint8_t {
  unary,   // code: UnaryOp
  binary,  // code: BinaryOp (arithmetic only: comparisons carry no gradient)
  where,   // inputs: cond, a, b
  astype,
  copy,  // copy, contiguous, to_device: the values unchanged
  matmul,
  reduce_rows,      // code: ReduceOp; [R, C] -> [R]
  softmax_rows,     // [R, C] -> [R, C]
  take,             // inputs: a, indices; args: {axis}
  take_along_axis,  // inputs: a, indices; args: {axis}
  reshape,          // reshape, squeeze, expand_dims, flatten
  transpose,        // args: the permutation
  broadcast_to,
  slice,             // args: {n, start[n], stop[n], step[n]}
  slice_update,      // inputs: a, update; args as slice
  concatenate,       // args: {axis}
  quantized_matmul,  // inputs: x, packed, scales, biases; args: {bits, group_size}
  attention,         // inputs: q, k, v, q_offsets[, key_valid]; args: {causal, window, scale's bits}
  rms_norm,          // inputs: x, weight; code: RmsNormStyle; args: {eps's bits}
  rope,              // inputs: x, inv_freq, offsets
  glu,               // inputs: gate, up; code: GluActivation
  cross_entropy_rows,  // inputs: logits [R, V], targets [R]
  dropout,             // inputs: x; args: {seed, p's bits}
};

struct StepRecord {
  Step step;
  int code = 0;
  std::vector<Array> inputs;  // in the op's own order, differentiable or not
  Array output;
  std::vector<int64_t> args;
};

class Recorder {
 public:
  virtual ~Recorder() = default;
  // Whether `a` depends on something the tape differentiates with respect to.
  virtual bool tracks(const Array& a) const = 0;
  virtual void add(StepRecord step) = 0;
};

// The recorder of this thread; nullptr when none records (or an op has paused it).
Recorder* recorder();
// Installs r (nullptr: none) and returns the one it replaces.
Recorder* set_recorder(Recorder* r);

// Whether any of `arrays` is tracked by this thread's recorder: a fused op then runs as
// its composition, whose steps each have a gradient.
bool any_tracked(std::initializer_list<const Array*> arrays);

// Opened by a primitive op before it calls other ops: pauses the recorder until the op
// returns, and reports the op to it as one step when any input is tracked.
class OpRecord {
 public:
  OpRecord() : rec_(set_recorder(nullptr)) {}
  ~OpRecord() { set_recorder(rec_); }
  OpRecord(const OpRecord&) = delete;
  OpRecord& operator=(const OpRecord&) = delete;
  void operator()(Step step, std::vector<Array> inputs, const Array& output, int code = 0,
                  std::vector<int64_t> args = {}) const;

 private:
  Recorder* rec_;
};

}  // namespace lmx::detail
