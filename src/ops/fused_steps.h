// RMSNorm and RoPE under a gradient tape as one step each (the tracked fast::rms_norm,
// fast::add_rms_norm, fast::rope, and the norms and RoPE of fast::self_attention), and dropout.
//
// Why: as compositions, a norm (f32 copy, square, mean, rsqrt, two products, two roundings)
// and a RoPE (its angles, cos and sin, two slices, a negation, a concatenation, two
// products and a sum) were about ten steps each under a tape, a kernel each way over
// [rows, D], most in f32; with attention as one step they led a LoRA step's GPU time. As
// one step, each runs the backend's forward kernel, and its rule one kernel: the norm's
// for x's gradient (the weight's, where a tape wants it, by ops); RoPE's is RoPE itself at
// the negated angles, since a rotation's gradient is the inverse rotation. The rule of
// fast::cross_entropy_rows (its forward is in fast.cpp) lives here too, and fast::dropout,
// whose step keeps no mask (a [rows, D] f32 array for each adapter's input, where the
// composition's product kept one) but draws it again from its seed.
#pragma once

#include <vector>

#include "ops/fast.h"
#include "ops/tape.h"

namespace lmx::detail {

// fast::rms_norm's values (arguments checked by the caller), recorded as one Step::rms_norm.
Array rms_norm_step(const Array& x, const Array& weight, float eps, fast::RmsNormStyle style);
// Step::rms_norm's rule: the gradients of x and of the weight, as `need` asks.
std::vector<Array> rms_norm_vjp(const StepRecord& st, const Array& g, const std::vector<bool>& need);

// fast::rope's values (arguments checked by the caller), recorded as one Step::rope.
Array rope_step(const Array& x, const Array& inv_freq, const Array& offsets);
// Step::rope's rule: x's gradient (none for the frequencies and offsets).
std::vector<Array> rope_vjp(const StepRecord& st, const Array& g);

// fast::dropout's values (p in (0, 1), checked by the caller), recorded as one Step::dropout.
Array dropout_step(const Array& x, float p, uint64_t seed);
// Step::dropout's rule: x's gradient, g times the step's mask drawn again from its seed.
std::vector<Array> dropout_vjp(const StepRecord& st, const Array& g);

// Step::cross_entropy_rows's rule: the logits' gradient, g_r · (softmax(x_r) − onehot(t_r)),
// zero in a row whose g_r is zero (a row the loss leaves out, whatever its logits hold).
std::vector<Array> cross_entropy_rows_vjp(const StepRecord& st, const Array& g);

}  // namespace lmx::detail
