// RMSNorm, RoPE and dropout under a gradient tape as one step each, and the loss's rule: see fused_steps.h.
#include "ops/fused_steps.h"

#include <bit>

#include "ops/op_util.h"

namespace lmx::detail {

Array dropout_step(const Array& x, float p, uint64_t seed) {
  const OpRecord record;  // one step, whose rule draws the mask again
  Array out(x.shape(), x.dtype(), x.device());
  if (!kern(x).dropout(contiguous(x), p, seed, out)) {
    // [x.shape] f32: 0 where dropped, 1 / (1 - p) where kept.
    const Array keep =
        multiply(astype(greater_equal(random_uniform(x.shape(), seed, 0, 1, Dtype::f32, x.device()),
                                      scalar(p, Dtype::f32, x.device())),
                        Dtype::f32),
                 1.0 / (1.0 - double(p)));
    out = astype(multiply(x, keep), x.dtype());
  }
  record(Step::dropout, {x}, out, 0, {int64_t(seed), int64_t(std::bit_cast<uint32_t>(p))});
  return out;
}

std::vector<Array> dropout_vjp(const StepRecord& st, const Array& g) {
  // dropout is linear in x: its gradient is dropout of g with the same mask.
  const Array dx = dropout_step(g, std::bit_cast<float>(uint32_t(st.args.at(1))), uint64_t(st.args.at(0)));
  return {astype(dx, st.inputs.at(0).dtype())};
}

Array rms_norm_step(const Array& x, const Array& weight, float eps, fast::RmsNormStyle style) {
  const OpRecord record;  // the ops below are the step's own: the tape sees one
  Array out(x.shape(), x.dtype(), x.device());
  kern(x).rms_norm(contiguous(x), contiguous(weight), eps, style, out);
  record(Step::rms_norm, {x, weight}, out, int(style), {int64_t(std::bit_cast<uint32_t>(eps))});
  return out;
}

std::vector<Array> rms_norm_vjp(const StepRecord& st, const Array& g_in, const std::vector<bool>& need) {
  const Array x = contiguous(st.inputs.at(0)), w = contiguous(st.inputs.at(1));
  const auto style = fast::RmsNormStyle(st.code);
  const bool gemma = style == fast::RmsNormStyle::gemma;
  const float eps = std::bit_cast<float>(uint32_t(st.args.at(0)));
  const Array g = contiguous(astype(g_in, x.dtype()));
  // In f32, made only where the ops need them: r the inverse RMS [..., 1], n = x·r.
  Array g32, r, n;
  auto f32_terms = [&] {
    if (n.valid()) return;
    const Array x32 = astype(x, Dtype::f32);
    g32 = astype(g, Dtype::f32);
    r = rsqrt(add(mean(square(x32), {-1}, true), double(eps)));
    n = multiply(x32, r);
  };
  std::vector<Array> grads(2);
  if (need.at(0)) {
    Array dx(x.shape(), x.dtype(), x.device());
    if (!kern(x).rms_norm_grad(x, w, g, eps, style, dx)) {
      // dn = g·w (Llama) or g·(1 + w) (Gemma); dx = r·(dn − n·mean(dn·n)).
      f32_terms();
      const Array w32 = astype(w, Dtype::f32), dn = multiply(g32, gemma ? add(w32, 1.0) : w32);
      dx = astype(multiply(r, subtract(dn, multiply(n, mean(multiply(dn, n), {-1}, true)))), x.dtype());
    }
    grads[0] = dx;
  }
  if (need.at(1)) {
    // Llama multiplies the weight by n rounded to the dtype; Gemma by n itself.
    f32_terms();
    const Array by = gemma ? n : astype(astype(n, x.dtype()), Dtype::f32);
    const int64_t d = x.shape(-1);
    grads[1] = astype(sum(reshape(multiply(g32, by), {-1, d}), {0}), w.dtype());
  }
  return grads;
}

Array rope_step(const Array& x, const Array& inv_freq, const Array& offsets) {
  const OpRecord record;
  Array out(x.shape(), x.dtype(), x.device());
  kern(x).rope(contiguous(x), contiguous(inv_freq), contiguous(offsets), out);
  record(Step::rope, {x, inv_freq, offsets}, out);
  return out;
}

std::vector<Array> rope_vjp(const StepRecord& st, const Array& g) {
  // Each pair (x1, x2) turns by θ: (x1·c − x2·s, x2·c + x1·s). The gradient turns g back by
  // −θ, and −θ = position · (−inv_freq) exactly, whose cosines are the same and sines negated.
  const Array& x = st.inputs.at(0);
  const Array back = neg(contiguous(st.inputs.at(1)));
  Array dx(x.shape(), x.dtype(), x.device());
  kern(x).rope(contiguous(astype(g, x.dtype())), back, contiguous(st.inputs.at(2)), dx);
  return {dx, Array(), Array()};
}

std::vector<Array> cross_entropy_rows_vjp(const StepRecord& st, const Array& g_in) {
  const Array logits = contiguous(st.inputs.at(0)), targets = contiguous(st.inputs.at(1));
  const Array g = contiguous(astype(g_in, Dtype::f32));  // [R]
  Array d(logits.shape(), logits.dtype(), logits.device());
  if (!kern(logits).cross_entropy_rows_grad(logits, targets, g, d)) {
    const int64_t r = logits.shape(0), v = logits.shape(1);
    const Array hit = equal(reshape(targets, {r, 1}), reshape(arange(0, double(v), 1, Dtype::i32, g.device()), {1, v}));
    const Array gr = reshape(g, {r, 1});
    const Array x = softmax(astype(logits, Dtype::f32), -1);
    const Array zero = constant(0, Dtype::f32, g.device());
    d = astype(where(not_equal(gr, zero), multiply(gr, subtract(x, astype(hit, Dtype::f32))), zero), logits.dtype());
  }
  return {d, Array()};
}

}  // namespace lmx::detail
