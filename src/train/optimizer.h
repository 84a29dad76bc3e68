// AdamW (Loshchilov and Hutter; PyTorch's torch.optim.AdamW update, step by step):
//   p ← p − lr·wd·p
//   m ← β1·m + (1 − β1)·g        v ← β2·v + (1 − β2)·g²
//   p ← p − lr · (m / (1 − β1ᵗ)) / (√(v / (1 − β2ᵗ)) + ε)
// Mixed precision: m, v and a master copy of each parameter are kept in f32; a bf16 or
// f16 parameter is the master rounded once after each step, so that small updates add up
// in the master instead of vanishing in the parameter's rounding.
#pragma once

#include <span>
#include <vector>

#include "ops/ops.h"

namespace lmx::train {

struct AdamWOptions {
  float lr = 1e-4f;
  float beta1 = 0.9f, beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.01f;
};

class AdamW {
 public:
  // The parameters are updated in place (their storage is written, so every view and
  // every module holding them sees the new values); they must own their memory.
  AdamW(std::vector<Array> params, AdamWOptions options = {});
  // One update from grads[i] (shape and dtype of params[i]); lr overrides the options' (a
  // schedule).
  void step(std::span<const Array> grads, float lr = -1);
  int64_t steps() const { return t_; }
  const AdamWOptions& options() const { return o_; }

 private:
  std::vector<Array> params_, master_, m_, v_;
  AdamWOptions o_;
  int64_t t_ = 0;
};

}  // namespace lmx::train
