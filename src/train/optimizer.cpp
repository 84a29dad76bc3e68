#include "train/optimizer.h"

#include <cmath>

#include "core/error.h"
#include "ops/op_util.h"

namespace lmx::train {

AdamW::AdamW(std::vector<Array> params, AdamWOptions options)
    : params_(std::move(params)), o_(options) {
  LMX_CHECK(o_.lr >= 0 && o_.beta1 >= 0 && o_.beta1 < 1 && o_.beta2 >= 0 && o_.beta2 < 1 &&
                o_.eps > 0 && o_.weight_decay >= 0,
            "AdamW", "needs lr >= 0, betas in [0, 1), eps > 0 and weight_decay >= 0");
  for (const Array& p : params_) {
    LMX_CHECK(p.valid() && is_float(p.dtype()), "AdamW",
              "parameters must be floating-point arrays");
    LMX_CHECK(!p.storage()->keep, "AdamW", "a parameter of shape ", shape_str(p.shape()),
              " borrows read-only memory (a mapped checkpoint); copy it before training it");
    master_.push_back(p.dtype() == Dtype::f32 ? p : copy(astype(p, Dtype::f32)));
    m_.push_back(zeros(p.shape(), Dtype::f32, p.device()));
    v_.push_back(zeros(p.shape(), Dtype::f32, p.device()));
  }
}

void AdamW::step(std::span<const Array> grads, float lr) {
  LMX_CHECK(grads.size() == params_.size(), "AdamW", "got ", grads.size(), " gradients for ",
            params_.size(), " parameters");
  for (size_t i = 0; i < grads.size(); ++i)
    LMX_CHECK(grads[i].valid() && grads[i].shape() == params_[i].shape(), "AdamW", "gradient ", i,
              " has shape ", grads[i].valid() ? shape_str(grads[i].shape()) : "(none)",
              ", its parameter ", shape_str(params_[i].shape()));
  if (lr < 0) lr = o_.lr;
  ++t_;
  const double c1 = 1 - std::pow(double(o_.beta1), double(t_)),
               c2 = 1 - std::pow(double(o_.beta2), double(t_));
  // Each factor rounded to f32 once, as the composition's scalar operands are.
  const detail::Kernels::AdamWFactors factors{
      o_.beta1, float(1 - double(o_.beta1)), o_.beta2, float(1 - double(o_.beta2)),
      float(1 - double(lr) * o_.weight_decay), float(lr / c1), float(1 / c2), o_.eps};
  for (size_t i = 0; i < params_.size(); ++i) {
    // One fused launch where the backend has it (CUDA: some 25 launches a parameter before,
    // a quarter of a LoRA step's host time), else the composition below.
    if (params_[i].is_contiguous() &&
        detail::kern(params_[i]).adamw(contiguous(grads[i]), master_[i], m_[i], v_[i], params_[i], factors))
      continue;
    const Device d = params_[i].device();
    auto f = [&](double x) { return scalar(x, Dtype::f32, d); };
    const Array g = astype(grads[i], Dtype::f32);
    const Array m = add(multiply(m_[i], f(o_.beta1)), multiply(g, f(1 - double(o_.beta1))));
    const Array v = add(multiply(v_[i], f(o_.beta2)), multiply(square(g), f(1 - double(o_.beta2))));
    const Array decayed = multiply(master_[i], f(1 - double(lr) * o_.weight_decay));
    const Array update =
        divide(multiply(m, f(lr / c1)), add(sqrt(multiply(v, f(1 / c2))), f(o_.eps)));
    assign(master_[i], subtract(decayed, update));
    assign(m_[i], m);
    assign(v_[i], v);
    if (params_[i].dtype() != Dtype::f32) assign(params_[i], master_[i]);  // rounded once
  }
}

}  // namespace lmx::train
