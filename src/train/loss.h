// Losses for fine-tuning, written in ops so that the tape differentiates them.
#pragma once

#include "ops/ops.h"

namespace lmx::train {

// Targets equal to this take no part in the loss (prompt tokens, padding), as in PyTorch.
inline constexpr int32_t kIgnoreIndex = -100;

// Mean next-token cross-entropy over the targets that count, in f32 whatever the logits'
// dtype: logits [..., V] float, targets [...] int32 in [0, V) or kIgnoreIndex -> a scalar.
// All targets ignored is an lmx::Error (the mean would be 0/0).
Array cross_entropy(const Array& logits, const Array& targets);

}  // namespace lmx::train
