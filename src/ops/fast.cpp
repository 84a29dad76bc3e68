// Fused ops: argument checks, dispatch, and the fallbacks composed of plain ops that
// define what each fused kernel must compute.
#include "ops/fast.h"

#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>

#include "ops/attention_step.h"
#include "ops/fused_steps.h"
#include "ops/op_util.h"

namespace lmx::fast {
namespace {

void check_norm_args(const Array& x, const Array& w, const char* op) {
  detail::check_valid(x, op);
  detail::check_valid(w, op, "weight");
  detail::check_float(x, op);
  detail::check_float(w, op);
  detail::check_same_device(x, w, op);
  LMX_CHECK(x.ndim() >= 1 && w.ndim() == 1 && w.shape(0) == x.shape(-1), op, "weight of shape ",
            shape_str(w.shape()), " does not match the last axis of x ", shape_str(x.shape()));
}

void check_glu_args(const Array& gate, const Array& up) {
  detail::check_valid(gate, "glu", "gate");
  detail::check_valid(up, "glu", "up");
  detail::check_float(gate, "glu");
  detail::check_same_device(gate, up, "glu");
  LMX_CHECK(gate.shape() == up.shape() && gate.dtype() == up.dtype(), "glu", "gate ", shape_str(gate.shape()), " ",
            dtype_name(gate.dtype()), " and up ", shape_str(up.shape()), " ", dtype_name(up.dtype()),
            " must have one shape and dtype");
}

// x [..., K] and two Linear-layout weights [N, K] alike (gated_projection, linear_pair).
void check_weight_pair(const Array& x, const Array& w0, const Array& w1, const char* op, const char* name0,
                       const char* name1) {
  detail::check_valid(x, op);
  detail::check_valid(w0, op, name0);
  detail::check_valid(w1, op, name1);
  detail::check_float(x, op);
  detail::check_same_device(x, w0, op);
  detail::check_same_device(x, w1, op);
  LMX_CHECK(x.ndim() >= 1 && w0.ndim() == 2 && w0.shape() == w1.shape() && w0.shape(1) == x.shape(-1), op, "x ",
            shape_str(x.shape()), " with weights ", shape_str(w0.shape()), " and ", shape_str(w1.shape()),
            ": the weights must be [N, K] alike, K the last axis of x");
}

void check_gated_projection_args(const Array& x, const Array& w_gate, const Array& w_up) {
  check_weight_pair(x, w_gate, w_up, "gated_projection", "w_gate", "w_up");
}

void check_linear_pair_args(const Array& x, const Array& w0, const Array& w1) {
  check_weight_pair(x, w0, w1, "linear_pair", "w0", "w1");
}

void check_rope_args(const Array& x, const Array& inv_freq, const Array& offsets) {
  detail::check_valid(x, "rope");
  detail::check_float(x, "rope");
  LMX_CHECK(x.ndim() == 4, "rope", "expects x of shape [B, H, L, D], got ", shape_str(x.shape()));
  LMX_CHECK(x.shape(3) % 2 == 0, "rope", "head dimension ", x.shape(3), " must be even");
  LMX_CHECK(inv_freq.valid() && inv_freq.dtype() == Dtype::f32 && inv_freq.ndim() == 1 &&
                inv_freq.shape(0) == x.shape(3) / 2,
            "rope", "inv_freq must be f32 of shape [", x.shape(3) / 2, "]");
  LMX_CHECK(offsets.valid() && offsets.dtype() == Dtype::i32 && offsets.ndim() == 1 &&
                offsets.shape(0) == x.shape(0),
            "rope", "offsets must be int32 of shape [", x.shape(0), "]");
  detail::check_same_device(x, inv_freq, "rope");
  detail::check_same_device(x, offsets, "rope");
}

// x [B, L, H, D]: the rope checks on the head-major view, plus the norm's.
void check_rope_heads_args(const Array& x, const Array& inv_freq, const Array& offsets, const HeadNorm* norm) {
  detail::check_valid(x, "rope_heads");
  LMX_CHECK(x.ndim() == 4, "rope_heads", "expects x of shape [B, L, H, D], got ", shape_str(x.shape()));
  check_rope_args(swapaxes(x, 1, 2), inv_freq, offsets);
  if (norm) check_norm_args(x, norm->weight, "rope_heads");
}

void check_rope_to_cache_args(const Array& q, const Array& k, const Array& v, const Array& inv_freq,
                              const Array& offsets, const HeadNorm* q_norm, const HeadNorm* k_norm,
                              const CacheSlots& slots) {
  const char* op = "rope_to_cache";
  check_rope_heads_args(q, inv_freq, offsets, q_norm);
  check_rope_heads_args(k, inv_freq, offsets, k_norm);
  detail::check_valid(v, op, "v");
  detail::check_valid(slots.k, op, "k slots");
  detail::check_valid(slots.v, op, "v slots");
  LMX_CHECK((q_norm == nullptr) == (k_norm == nullptr), op, "give both q and k norms, or neither");
  LMX_CHECK(k.shape() == v.shape() && q.shape(0) == k.shape(0) && q.shape(1) == k.shape(1) &&
                q.shape(3) == k.shape(3),
            op, "expects q [B, L, Hq, D] and k, v [B, L, Hkv, D], got ", shape_str(q.shape()), ", ",
            shape_str(k.shape()), ", ", shape_str(v.shape()));
  const Shape want{k.shape(0), k.shape(2), k.shape(1), k.shape(3)};
  for (const Array* a : {&k, &v, &slots.k, &slots.v})
    LMX_CHECK(a->dtype() == q.dtype(), op, "q, k, v and the slots must share a dtype, got ",
              dtype_name(q.dtype()), " and ", dtype_name(a->dtype()));
  for (const Array* a : {&v, &slots.k, &slots.v}) detail::check_same_device(q, *a, op);
  LMX_CHECK(slots.k.shape() == want && slots.v.shape() == want, op, "slots of shape ", shape_str(slots.k.shape()),
            " and ", shape_str(slots.v.shape()), " for keys [B, Hkv, L, D] = ", shape_str(want));
  LMX_CHECK(!slots.k.storage()->keep && !slots.v.storage()->keep, op,
            "the slots borrow read-only memory (e.g. mapped weights)");
}

void check_add_norm_args(const Array& x, const Array& y, const Array& weight, const Array* y_weight) {
  check_norm_args(x, weight, "add_rms_norm");
  check_norm_args(y, weight, "add_rms_norm");
  if (y_weight) check_norm_args(y, *y_weight, "add_rms_norm");
  LMX_CHECK(x.shape() == y.shape() && x.dtype() == y.dtype(), "add_rms_norm", "x ", shape_str(x.shape()), " ",
            dtype_name(x.dtype()), " and y ", shape_str(y.shape()), " ", dtype_name(y.dtype()),
            " must have one shape and dtype");
}

void check_self_attention_args(const Array& q, const Array& k, const Array& v, const SelfAttention& a) {
  const char* op = "self_attention";
  detail::check_valid(q, op, "q");
  detail::check_valid(k, op, "k");
  detail::check_valid(v, op, "v");
  LMX_CHECK(q.ndim() == 4 && k.ndim() == 4 && k.shape() == v.shape() && q.shape(0) == k.shape(0) &&
                q.shape(1) == k.shape(1) && q.shape(3) == k.shape(3),
            op, "expects q [B, L, Hq, D] and k, v [B, L, Hkv, D], got ", shape_str(q.shape()), ", ",
            shape_str(k.shape()), ", ", shape_str(v.shape()));
  LMX_CHECK(k.shape(2) > 0 && q.shape(2) % k.shape(2) == 0, op, "query heads (", q.shape(2),
            ") must be a multiple of key/value heads (", k.shape(2), ")");
  LMX_CHECK(q.dtype() == k.dtype() && q.dtype() == v.dtype(), op, "q, k and v must share a dtype, got ",
            dtype_name(q.dtype()), ", ", dtype_name(k.dtype()), ", ", dtype_name(v.dtype()));
  LMX_CHECK((a.q_norm == nullptr) == (a.k_norm == nullptr), op, "give both q and k norms, or neither");
  LMX_CHECK(a.window >= 0, op, "window must be >= 0, got ", a.window);
  check_rope_heads_args(q, a.inv_freq, a.offsets, a.q_norm);
  check_rope_heads_args(k, a.inv_freq, a.offsets, a.k_norm);
}

// self_attention as the ops it fuses: the fast ones, the reference ones, or (under a tape)
// the reference norms and RoPE around attention as one step.
enum class Composed { fast, reference, tracked };
// reference::rope_heads with the norm as one step.
Array tracked_rope_heads(const Array& x, const Array& inv_freq, const Array& offsets, const HeadNorm* norm) {
  const Array h = norm ? detail::rms_norm_step(x, norm->weight, norm->eps, norm->style) : x;
  return detail::rope_step(swapaxes(h, 1, 2), inv_freq, offsets);
}
Array compose_self_attention(const Array& q, const Array& k, const Array& v, const SelfAttention& a, Composed how) {
  Array (*rope)(const Array&, const Array&, const Array&, const HeadNorm*) =
      how == Composed::fast        ? rope_heads
      : how == Composed::reference ? reference::rope_heads
                                   : tracked_rope_heads;
  Array (*sdpa)(const Array&, const Array&, const Array&, float, const AttentionMask&) =
      how == Composed::fast        ? scaled_dot_product_attention
      : how == Composed::reference ? reference::scaled_dot_product_attention
                                   : detail::attention_step;
  AttentionMask mask;
  mask.window = a.window;
  const Array o = sdpa(rope(q, a.inv_freq, a.offsets, a.q_norm), rope(k, a.inv_freq, a.offsets, a.k_norm),
                       contiguous(swapaxes(v, 1, 2)), a.scale, mask);  // [B, Hq, L, D]
  return swapaxes(o, 1, 2);
}

void check_attention_args(const Array& q, const Array& k, const Array& v, const AttentionMask& mask) {
  const char* op = "scaled_dot_product_attention";
  detail::check_valid(q, op, "q");
  detail::check_valid(k, op, "k");
  detail::check_valid(v, op, "v");
  detail::check_float(q, op);
  LMX_CHECK(q.dtype() == k.dtype() && q.dtype() == v.dtype(), op, "q, k and v must share a dtype, got ",
            dtype_name(q.dtype()), ", ", dtype_name(k.dtype()), ", ", dtype_name(v.dtype()));
  detail::check_same_device(q, k, op);
  detail::check_same_device(q, v, op);
  LMX_CHECK(q.ndim() == 4 && k.ndim() == 4 && v.ndim() == 4, op,
            "expects q [B, Hq, Lq, D] and k, v [B, Hkv, Lk, D], got ", shape_str(q.shape()), ", ",
            shape_str(k.shape()), ", ", shape_str(v.shape()));
  LMX_CHECK(k.shape() == v.shape(), op, "k ", shape_str(k.shape()), " and v ", shape_str(v.shape()), " differ");
  LMX_CHECK(q.shape(0) == k.shape(0) && q.shape(3) == k.shape(3), op, "q ", shape_str(q.shape()),
            " does not match k ", shape_str(k.shape()), " in batch or head dimension");
  LMX_CHECK(k.shape(1) > 0 && q.shape(1) % k.shape(1) == 0, op, "query heads (", q.shape(1),
            ") must be a multiple of key/value heads (", k.shape(1), ")");
  if (mask.key_valid) {
    const Array& kv = *mask.key_valid;
    LMX_CHECK(kv.valid() && kv.dtype() == Dtype::boolean && kv.shape() == Shape({k.shape(0), k.shape(2)}), op,
              "key_valid must be bool of shape [", k.shape(0), ", ", k.shape(2), "]");
  }
}

}  // namespace

Array rms_norm(const Array& x, const Array& weight, float eps, RmsNormStyle style) {
  check_norm_args(x, weight, "rms_norm");
  // Under a gradient tape most fused ops run as their compositions, whose steps each have a
  // gradient; the norm is one step with a rule of its own (ops/fused_steps.h).
  if (detail::any_tracked({&x, &weight})) return detail::rms_norm_step(x, weight, eps, style);
  const Array xc = contiguous(x);
  Array out(x.shape(), x.dtype(), x.device());
  detail::kern(x).rms_norm(xc, contiguous(weight), eps, style, out);
  return out;
}

Array layer_norm(const Array& x, const Array& weight, const std::optional<Array>& bias, float eps) {
  check_norm_args(x, weight, "layer_norm");
  if (bias) check_norm_args(x, *bias, "layer_norm");
  if (detail::any_tracked({&x, &weight, bias ? &*bias : nullptr})) return reference::layer_norm(x, weight, bias, eps);
  Array out(x.shape(), x.dtype(), x.device());
  // The kernel reads bias in the weight's dtype.
  const Array b = bias ? contiguous(astype(*bias, weight.dtype())) : Array();
  detail::kern(x).layer_norm(contiguous(x), contiguous(weight), bias ? &b : nullptr, eps, out);
  return out;
}

Array dropout(const Array& x, float p, uint64_t seed) {
  detail::check_valid(x, "dropout", "x");
  detail::check_float(x, "dropout");
  LMX_CHECK(p >= 0 && p < 1, "dropout", "p must be in [0, 1), got ", p);
  return p == 0 ? x : detail::dropout_step(x, p, seed);
}

Array glu(const Array& gate, const Array& up, GluActivation act) {
  check_glu_args(gate, up);
  // Under a tape, one step (Step::glu) with a rule of its own: one kernel each way where the
  // composition made about a dozen over the MLP's widest rows, most in f32.
  const detail::OpRecord record;
  Array out(gate.shape(), gate.dtype(), gate.device());
  detail::kern(gate).glu(act, contiguous(gate), contiguous(up), out);
  record(detail::Step::glu, {gate, up}, out, int(act));
  return out;
}

Array gated_projection(const Array& x, const Array& w_gate, const Array& w_up, GluActivation act) {
  check_gated_projection_args(x, w_gate, w_up);
  const bool tracked = detail::any_tracked({&x, &w_gate, &w_up});
  if (x.size() > 0 && !tracked && x.dtype() == w_gate.dtype() && x.dtype() == w_up.dtype()) {
    const int64_t k = x.shape(-1), n = w_gate.shape(0);
    const Array rows = contiguous(reshape(x, {-1, k}));  // [R, K]
    if (const Array out = detail::kern(x).gated_projection(act, rows, contiguous(w_gate), contiguous(w_up));
        out.valid()) {  // [R, N]
      Shape shape = x.shape();
      shape.back() = n;
      return reshape(out, shape);
    }
  }
  return reference::gated_projection(x, w_gate, w_up, act);
}

std::pair<Array, Array> linear_pair(const Array& x, const Array& w0, const Array& w1) {
  check_linear_pair_args(x, w0, w1);
  if (x.size() > 0 && !detail::any_tracked({&x, &w0, &w1}) && x.dtype() == w0.dtype() && x.dtype() == w1.dtype()) {
    const int64_t k = x.shape(-1), n = w0.shape(0);
    const Array rows = contiguous(reshape(x, {-1, k}));  // [R, K]
    if (const auto [a, b] = detail::kern(x).linear_pair(rows, contiguous(w0), contiguous(w1)); a.valid()) {
      Shape shape = x.shape();  // [..., N]
      shape.back() = n;
      return {reshape(a, shape), reshape(b, shape)};
    }
  }
  return reference::linear_pair(x, w0, w1);
}

Array cross_entropy_rows(const Array& logits, const Array& targets) {
  const char* op = "cross_entropy_rows";
  detail::check_valid(logits, op, "logits");
  detail::check_valid(targets, op, "targets");
  detail::check_float(logits, op);
  detail::check_same_device(logits, targets, op);
  LMX_CHECK(logits.ndim() == 2 && targets.ndim() == 1 && targets.shape(0) == logits.shape(0) &&
                targets.dtype() == Dtype::i32 && logits.shape(1) > 0,
            op, "expects logits [R, V] and int32 targets [R], got ", shape_str(logits.shape()), " and ",
            dtype_name(targets.dtype()), " ", shape_str(targets.shape()));
  const Array x = contiguous(logits), t = contiguous(targets);
  const detail::OpRecord record;  // under a tape one step (Step::cross_entropy_rows)
  Array loss({x.shape(0)}, Dtype::f32, x.device());
  if (!detail::kern(x).cross_entropy_rows(x, t, loss)) {
    const Array x32 = astype(x, Dtype::f32);
    loss = subtract(reshape(logsumexp(x32, {-1}, true), {-1}),
                    reshape(take_along_axis(x32, reshape(t, {-1, 1}), -1), {-1}));
  }
  record(detail::Step::cross_entropy_rows, {logits, targets}, loss);
  return loss;
}

Array rope(const Array& x, const Array& inv_freq, const Array& offsets) {
  check_rope_args(x, inv_freq, offsets);
  if (detail::any_tracked({&x})) return detail::rope_step(x, inv_freq, offsets);
  Array out(x.shape(), x.dtype(), x.device());
  detail::kern(x).rope(contiguous(x), contiguous(inv_freq), contiguous(offsets), out);
  return out;
}

Array rope_heads(const Array& x, const Array& inv_freq, const Array& offsets, const HeadNorm* norm) {
  check_rope_heads_args(x, inv_freq, offsets, norm);
  if (detail::any_tracked({&x, norm ? &norm->weight : nullptr}))
    return reference::rope_heads(x, inv_freq, offsets, norm);
  Array out({x.shape(0), x.shape(2), x.shape(1), x.shape(3)}, x.dtype(), x.device());
  const Array w = norm ? contiguous(norm->weight) : Array();
  if (detail::kern(x).rope_heads(contiguous(x), contiguous(inv_freq), contiguous(offsets), norm ? &w : nullptr,
                                 norm ? norm->eps : 0.0f, norm ? norm->style : RmsNormStyle::llama, out))
    return out;
  const Array h = norm ? rms_norm(x, norm->weight, norm->eps, norm->style) : x;
  return rope(swapaxes(h, 1, 2), inv_freq, offsets);
}

Array rope_to_cache(const Array& q, const Array& k, const Array& v, const Array& inv_freq, const Array& offsets,
                    const HeadNorm* q_norm, const HeadNorm* k_norm, const CacheSlots& slots) {
  check_rope_to_cache_args(q, k, v, inv_freq, offsets, q_norm, k_norm, slots);
  Array q_out({q.shape(0), q.shape(2), q.shape(1), q.shape(3)}, q.dtype(), q.device());
  const Array qn = q_norm ? contiguous(q_norm->weight) : Array();
  const Array kn = k_norm ? contiguous(k_norm->weight) : Array();
  const bool norms_alike = !q_norm || (q_norm->eps == k_norm->eps && q_norm->style == k_norm->style);
  if (norms_alike && detail::kern(q).rope_to_cache(contiguous(q), contiguous(k), contiguous(v), contiguous(inv_freq),
                                                   contiguous(offsets), q_norm ? &qn : nullptr,
                                                   k_norm ? &kn : nullptr, q_norm ? q_norm->eps : 0.0f,
                                                   q_norm ? q_norm->style : RmsNormStyle::llama, q_out, slots.k,
                                                   slots.v))
    return q_out;
  assign(slots.k, rope_heads(k, inv_freq, offsets, k_norm));
  assign(slots.v, swapaxes(v, 1, 2));
  return rope_heads(q, inv_freq, offsets, q_norm);
}

Array self_attention(const Array& q, const Array& k, const Array& v, const SelfAttention& a) {
  check_self_attention_args(q, k, v, a);
  if (detail::any_tracked({&q, &k, &v, a.q_norm ? &a.q_norm->weight : nullptr, a.k_norm ? &a.k_norm->weight : nullptr})) {
    // The norms, RoPE and attention, one tape step each. The attention's step keeps q, k and
    // v alone, so the block is not handed to the tape to run again: without that replay a
    // LoRA step ran 1.38x as fast at 1 row and 1.10x at 4 on an H100, for 4-7% more peak
    // memory (bench/NOTES.md).
    return compose_self_attention(q, k, v, a, Composed::tracked);
  }
  Array out(q.shape(), q.dtype(), q.device());
  const Array qn = a.q_norm ? contiguous(a.q_norm->weight) : Array();
  const Array kn = a.k_norm ? contiguous(a.k_norm->weight) : Array();
  const bool norms_alike = !a.q_norm || (a.q_norm->eps == a.k_norm->eps && a.q_norm->style == a.k_norm->style);
  if (norms_alike && detail::kern(q).self_attention(contiguous(q), contiguous(k), contiguous(v),
                                                    contiguous(a.inv_freq), contiguous(a.offsets),
                                                    a.q_norm ? &qn : nullptr, a.k_norm ? &kn : nullptr,
                                                    a.q_norm ? a.q_norm->eps : 0.0f,
                                                    a.q_norm ? a.q_norm->style : RmsNormStyle::llama, a.scale,
                                                    a.window, out))
    return out;
  return compose_self_attention(q, k, v, a, Composed::fast);
}

AddNorm add_rms_norm(const Array& x, const Array& y, const Array& weight, float eps, RmsNormStyle style,
                     const Array* y_weight) {
  check_add_norm_args(x, y, weight, y_weight);
  if (detail::any_tracked({&x, &y, &weight, y_weight})) {
    const Array sum = add(x, y_weight ? detail::rms_norm_step(y, *y_weight, eps, style) : y);
    return {sum, detail::rms_norm_step(sum, weight, eps, style)};
  }
  AddNorm r{Array(x.shape(), x.dtype(), x.device()), Array(x.shape(), x.dtype(), x.device())};
  const Array yw = y_weight ? contiguous(*y_weight) : Array();
  if (detail::kern(x).add_rms_norm(contiguous(x), contiguous(y), y_weight ? &yw : nullptr, contiguous(weight), eps,
                                   style, r.sum, r.normed))
    return r;
  r.sum = add(x, y_weight ? rms_norm(y, *y_weight, eps, style) : y);
  r.normed = rms_norm(r.sum, weight, eps, style);
  return r;
}

Array scaled_dot_product_attention(const Array& q, const Array& k, const Array& v, float scale,
                                   const AttentionMask& mask) {
  check_attention_args(q, k, v, mask);
  if (detail::any_tracked({&q, &k, &v})) return detail::attention_step(q, k, v, scale, mask);
  const Array q_off = contiguous(detail::resolve_q_offsets(q, k, mask));
  Array out(q.shape(), q.dtype(), q.device());
  // k and v may be views into a larger preallocated cache: only the last axis must be dense.
  auto dense_last = [](const Array& a) { return a.strides()[3] == 1 ? a : contiguous(a); };
  const Array kv_valid = mask.key_valid ? contiguous(*mask.key_valid) : Array();
  detail::kern(q).attention(contiguous(q), dense_last(k), dense_last(v), scale, mask.causal, mask.window, q_off,
                            mask.key_valid ? &kv_valid : nullptr, out);
  return out;
}

Array sample_tokens(const Array& logits, std::span<const uint64_t> bits, const SampleFilter& f) {
  detail::check_valid(logits, "sample_tokens");
  detail::check_float(logits, "sample_tokens");
  LMX_CHECK(logits.ndim() == 2 && logits.shape(1) > 0, "sample_tokens",
            "expects logits [rows, V] with V > 0, got ", shape_str(logits.shape()));
  LMX_CHECK(int64_t(bits.size()) == logits.shape(0), "sample_tokens",
            "needs one random word per row: ", logits.shape(0), " rows, ", bits.size(), " words");
  LMX_CHECK(f.temperature > 0 && std::isfinite(f.temperature) && f.top_k >= 0 && f.top_p > 0 &&
                f.top_p <= 1 && f.min_p >= 0 && f.min_p <= 1,
            "sample_tokens",
            "needs temperature > 0, top_k >= 0, top_p in (0, 1] and min_p in [0, 1]; got ",
            f.temperature, ", ", f.top_k, ", ", f.top_p, " and ", f.min_p);
  Array out({logits.shape(0)}, Dtype::i32, logits.device());
  detail::kern(logits).sample_tokens(contiguous(logits), bits, f, out);
  return out;
}

void check_chosen(std::span<const int32_t> ids, int64_t vocab, const char* where) {
  for (const int32_t id : ids)
    LMX_CHECK(id >= 0 && id < vocab, where,
              "no token can be chosen: every logit is NaN (or, for a draw, NaN or -inf). The model's weights or "
              "activations are not finite; float16 weights can overflow where bfloat16 keeps its range");
}

PackedEdits pack_edits(int64_t rows, int64_t v, std::span<const int64_t> starts,
                       std::span<const LogitEdit> edits, const Penalties& p, Device device) {
  LMX_CHECK(int64_t(starts.size()) == rows + 1 && starts.front() == 0 &&
                starts.back() == int64_t(edits.size()),
            "edit_logits", "needs rows + 1 = ", rows + 1, " starts from 0 to the ", edits.size(),
            " edits, got ", starts.size());
  LMX_CHECK(p.repetition > 0, "edit_logits", "the repetition penalty must be > 0, got ",
            p.repetition);
  std::vector<int32_t> packed, bounds;
  for (int64_t r = 0; r < rows; ++r) {
    LMX_CHECK(starts[size_t(r)] <= starts[size_t(r + 1)], "edit_logits",
              "starts must not decrease");
    for (int64_t e = starts[size_t(r)]; e < starts[size_t(r + 1)]; ++e) {
      const LogitEdit& d = edits[size_t(e)];
      LMX_CHECK(d.id >= 0 && d.id < v && d.count >= 0, "edit_logits", "row ", r, ": token ", d.id,
                " is outside the vocabulary of ", v, ", or its count ", d.count, " is negative");
      const LogitEdit* before = e == starts[size_t(r)] ? nullptr : &edits[size_t(e - 1)];
      LMX_CHECK(!before || before->id < d.id || (before->id == d.id && before->count == d.count),
                "edit_logits", "row ", r,
                ": the edits must be sorted by id, each id's entries with one count");
      uint32_t bits = 0;
      std::memcpy(&bits, &d.bias, 4);
      packed.insert(packed.end(), {d.id, d.count, int32_t(bits), int32_t(d.has_bias)});
    }
  }
  for (const int64_t b : starts) bounds.push_back(int32_t(b));
  LMX_CHECK(edits.size() < size_t(INT32_MAX), "edit_logits", edits.size(), " edits are too many");
  PackedEdits out{from_vector(bounds, {rows + 1}, device), Array()};
  if (!edits.empty()) out.entries = from_vector(packed, {int64_t(edits.size()), 4}, device);
  return out;
}

Array edit_logits(const Array& logits, std::span<const int64_t> starts,
                  std::span<const LogitEdit> edits, const Penalties& p) {
  detail::check_valid(logits, "edit_logits");
  detail::check_float(logits, "edit_logits");
  LMX_CHECK(logits.ndim() == 2, "edit_logits", "expects logits [rows, V], got ",
            shape_str(logits.shape()));
  const PackedEdits packed =
      pack_edits(logits.shape(0), logits.shape(1), starts, edits, p, logits.device());
  Array out = logits.dtype() == Dtype::f32 ? copy(logits) : astype(logits, Dtype::f32);
  if (edits.empty()) return out;
  detail::kern(logits).edit_logits(out, packed.starts, packed.entries, p);
  return out;
}

namespace reference {

Array self_attention(const Array& q, const Array& k, const Array& v, const SelfAttention& a) {
  check_self_attention_args(q, k, v, a);
  return compose_self_attention(q, k, v, a, Composed::reference);
}

Array glu(const Array& gate, const Array& up, GluActivation act) {
  check_glu_args(gate, up);
  return multiply(act == GluActivation::silu ? silu(gate) : gelu_tanh(gate), up);
}

std::pair<Array, Array> linear_pair(const Array& x, const Array& w0, const Array& w1) {
  check_linear_pair_args(x, w0, w1);
  return {matmul(x, swapaxes(w0, 0, 1)), matmul(x, swapaxes(w1, 0, 1))};
}

// The composition: two GEMMs through transposed views (the weights are not copied), then glu.
Array gated_projection(const Array& x, const Array& w_gate, const Array& w_up, GluActivation act) {
  check_gated_projection_args(x, w_gate, w_up);
  return fast::glu(matmul(x, swapaxes(w_gate, 0, 1)), matmul(x, swapaxes(w_up, 0, 1)), act);
}

Array rms_norm(const Array& x, const Array& weight, float eps, RmsNormStyle style) {
  check_norm_args(x, weight, "rms_norm");
  const Array x32 = astype(x, Dtype::f32);
  const Array inv = rsqrt(add(mean(square(x32), {-1}, true), eps));
  if (style == RmsNormStyle::gemma)
    return astype(multiply(multiply(x32, inv), add(astype(weight, Dtype::f32), 1.0)), x.dtype());
  return astype(multiply(astype(multiply(x32, inv), x.dtype()), weight), x.dtype());
}

Array layer_norm(const Array& x, const Array& weight, const std::optional<Array>& bias, float eps) {
  check_norm_args(x, weight, "layer_norm");
  const Array x32 = astype(x, Dtype::f32);
  const Array centered = subtract(x32, mean(x32, {-1}, true));
  const Array var = mean(square(centered), {-1}, true);
  Array y = multiply(multiply(centered, rsqrt(add(var, eps))), astype(weight, Dtype::f32));
  if (bias) y = add(y, astype(*bias, Dtype::f32));
  return astype(y, x.dtype());
}

Array rope(const Array& x, const Array& inv_freq, const Array& offsets) {
  check_rope_args(x, inv_freq, offsets);
  const int64_t b = x.shape(0), l = x.shape(2), half = x.shape(3) / 2;
  // positions [B, L] in f32, freqs [B, 1, L, D/2], emb [B, 1, L, D]
  const Array pos = astype(add(reshape(offsets, {b, 1}), reshape(arange(0, double(l), 1, Dtype::i32, x.device()),
                                                                 {1, l})),
                           Dtype::f32);
  const Array freqs = reshape(multiply(reshape(pos, {b, l, 1}), reshape(inv_freq, {1, 1, half})), {b, 1, l, half});
  const Array emb = concatenate({freqs, freqs}, -1);
  const Array c = astype(cos(emb), x.dtype()), s = astype(sin(emb), x.dtype());
  const Array x1 = slice_axis(x, 3, 0, half), x2 = slice_axis(x, 3, half, 2 * half);
  const Array rotated = concatenate({neg(x2), x1}, -1);
  return add(multiply(x, c), multiply(rotated, s));
}

Array rope_heads(const Array& x, const Array& inv_freq, const Array& offsets, const HeadNorm* norm) {
  check_rope_heads_args(x, inv_freq, offsets, norm);
  const Array h = norm ? reference::rms_norm(x, norm->weight, norm->eps, norm->style) : x;
  return reference::rope(swapaxes(h, 1, 2), inv_freq, offsets);
}

Array rope_to_cache(const Array& q, const Array& k, const Array& v, const Array& inv_freq, const Array& offsets,
                    const HeadNorm* q_norm, const HeadNorm* k_norm, const CacheSlots& slots) {
  check_rope_to_cache_args(q, k, v, inv_freq, offsets, q_norm, k_norm, slots);
  assign(slots.k, reference::rope_heads(k, inv_freq, offsets, k_norm));
  assign(slots.v, swapaxes(v, 1, 2));
  return reference::rope_heads(q, inv_freq, offsets, q_norm);
}

AddNorm add_rms_norm(const Array& x, const Array& y, const Array& weight, float eps, RmsNormStyle style,
                     const Array* y_weight) {
  check_add_norm_args(x, y, weight, y_weight);
  const Array sum = add(x, y_weight ? reference::rms_norm(y, *y_weight, eps, style) : y);
  return {sum, reference::rms_norm(sum, weight, eps, style)};
}

Array scaled_dot_product_attention(const Array& q, const Array& k, const Array& v, float scale,
                                   const AttentionMask& mask) {
  check_attention_args(q, k, v, mask);
  // probabilities [B, Hq, Lq, Lk], rounded to the dtype, times v with its heads repeated
  const Array probs = detail::attention_probabilities(q, k, scale, mask);
  return matmul(astype(probs, q.dtype()), detail::repeat_heads(v, q.shape(1)));
}

}  // namespace reference
}  // namespace lmx::fast
