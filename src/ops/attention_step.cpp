// Attention under a gradient tape as one step: see attention_step.h.
#include "ops/attention_step.h"

#include <bit>

#include "ops/op_util.h"

namespace lmx::detail {
namespace {

// Step::attention's args: {causal, window, the scale's bits}.
std::vector<int64_t> step_args(float scale, const fast::AttentionMask& mask) {
  return {mask.causal ? 1 : 0, mask.window, int64_t(std::bit_cast<uint32_t>(scale))};
}

// The mask of a recorded step: its q_offsets and key_valid are the step's inputs 3 and 4.
fast::AttentionMask step_mask(const StepRecord& st) {
  fast::AttentionMask mask;
  mask.causal = st.args.at(0) != 0;
  mask.window = st.args.at(1);
  mask.q_offsets = st.inputs.at(3);
  if (st.inputs.size() > 4) mask.key_valid = st.inputs[4];
  return mask;
}

// x [B, Hq, L, D] summed over each group of Hq / Hkv query heads -> [B, Hkv, L, D]
Array sum_groups(const Array& x, int64_t hkv) {
  const int64_t b = x.shape(0), hq = x.shape(1), l = x.shape(2), d = x.shape(3);
  return sum(reshape(x, {b, hkv, hq / hkv, l, d}), {2});
}

}  // namespace

Array resolve_q_offsets(const Array& q, const Array& k, const fast::AttentionMask& mask) {
  const int64_t b = q.shape(0);
  if (mask.q_offsets) {
    const Array& o = *mask.q_offsets;
    LMX_CHECK(o.valid() && o.dtype() == Dtype::i32 && o.ndim() == 1 && o.shape(0) == b,
              "scaled_dot_product_attention", "q_offsets must be int32 of shape [", b, "]");
    return o;
  }
  return full({b}, double(k.shape(2) - q.shape(2)), Dtype::i32, q.device());
}

Array repeat_heads(const Array& x, int64_t hq) {
  const int64_t b = x.shape(0), hkv = x.shape(1), l = x.shape(2), d = x.shape(3);
  if (hq == hkv) return x;
  return reshape(broadcast_to(reshape(x, {b, hkv, 1, l, d}), {b, hkv, hq / hkv, l, d}), {b, hq, l, d});
}

Array attention_probabilities(const Array& q, const Array& k, float scale, const fast::AttentionMask& mask) {
  const int64_t b = q.shape(0), lq = q.shape(2), lk = k.shape(2);
  // scores [B, Hq, Lq, Lk]: q·kᵀ rounded to the dtype, then times the f32 scale and
  // rounded again, as PyTorch does for a low-precision tensor times a Python float.
  const Array scale32 = constant(scale, Dtype::f32, q.device());
  const Array scores = astype(multiply(matmul(q, swapaxes(repeat_heads(k, q.shape(1)), 2, 3)), scale32), q.dtype());
  // visible [B, 1, Lq, Lk]
  const Array qi = add(reshape(resolve_q_offsets(q, k, mask), {b, 1, 1}),
                       reshape(arange(0, double(lq), 1, Dtype::i32, q.device()), {1, lq, 1}));
  const Array kj = reshape(arange(0, double(lk), 1, Dtype::i32, q.device()), {1, 1, lk});
  Array visible = full({b, lq, lk}, 1, Dtype::boolean, q.device());
  if (mask.causal) visible = logical_and(visible, less_equal(kj, qi));
  if (mask.window > 0)
    visible = logical_and(visible, greater(kj, subtract(qi, scalar(double(mask.window), Dtype::i32, q.device()))));
  if (mask.key_valid) visible = logical_and(visible, reshape(*mask.key_valid, {b, 1, lk}));
  visible = reshape(visible, {b, 1, lq, lk});
  // Hidden keys get -1e30, not -inf: exp(-1e30 - max) is exactly 0 in f32 wherever the row
  // has a visible key, so the probabilities are those of a -inf mask, and a row with none
  // stays finite, so that one product with `any` makes it the zeros it is defined as.
  const Array masked = where(visible, astype(scores, Dtype::f32), constant(-1e30, Dtype::f32, q.device()));
  const Array any = max(astype(visible, Dtype::f32), {-1}, true);  // [B, 1, Lq, 1]: 1 or 0
  return multiply(softmax(masked, -1), any);
}

Array attention_step(const Array& q, const Array& k, const Array& v, float scale, const fast::AttentionMask& mask) {
  std::vector<Array> inputs{q, k, v, contiguous(resolve_q_offsets(q, k, mask))};
  if (mask.key_valid) inputs.push_back(contiguous(*mask.key_valid));
  const OpRecord record;  // the ops below are the step's own: the tape sees one
  Array out(q.shape(), q.dtype(), q.device());
  if (!kern(q).eager_attention(contiguous(q), contiguous(k), contiguous(v), scale, mask.causal, mask.window,
                               inputs[3], mask.key_valid ? &inputs[4] : nullptr, out))
    out = matmul(astype(attention_probabilities(q, k, scale, mask), q.dtype()), repeat_heads(v, q.shape(1)));
  record(Step::attention, inputs, out, 0, step_args(scale, mask));
  return out;
}

std::vector<Array> attention_vjp(const StepRecord& st, const Array& g_in) {
  const Array q = contiguous(st.inputs.at(0)), k = contiguous(st.inputs.at(1)), v = contiguous(st.inputs.at(2));
  const float scale = std::bit_cast<float>(uint32_t(st.args.at(2)));
  const fast::AttentionMask mask = step_mask(st);
  const Array g = contiguous(astype(g_in, q.dtype()));
  std::vector<Array> grads(st.inputs.size());  // none for the masks' arrays
  const Array dq(q.shape(), q.dtype(), q.device()), dk(k.shape(), k.dtype(), k.device()),
      dv(v.shape(), v.dtype(), v.device());
  if (kern(q).eager_attention_grad(q, k, v, g, scale, mask.causal, mask.window, st.inputs[3],
                                   mask.key_valid ? &*mask.key_valid : nullptr, dq, dk, dv)) {
    grads[0] = dq, grads[1] = dk, grads[2] = dv;
    return grads;
  }
  // The composition's rules, gathered: P in f32 as its forward made it, then
  // dS = scale · P ∘ (dP − rowsum(P ∘ dP)) in f32, rounded once to the dtype.
  const int64_t hq = q.shape(1), hkv = k.shape(1);
  const Array kr = repeat_heads(k, hq), vr = repeat_heads(v, hq);  // [B, Hq, Lk, D]
  const Array p = attention_probabilities(q, k, scale, mask);      // [B, Hq, Lq, Lk]
  const Array dp = astype(matmul(g, swapaxes(vr, 2, 3)), Dtype::f32);
  const Array ds = astype(multiply(multiply(p, subtract(dp, sum(multiply(p, dp), {-1}, true))),
                                   constant(scale, Dtype::f32, q.device())),
                          q.dtype());
  grads[0] = matmul(ds, kr);
  grads[1] = astype(sum_groups(matmul(swapaxes(ds, 2, 3), q), hkv), k.dtype());
  grads[2] = astype(sum_groups(matmul(swapaxes(astype(p, q.dtype()), 2, 3), g), hkv), v.dtype());
  return grads;
}

}  // namespace lmx::detail
