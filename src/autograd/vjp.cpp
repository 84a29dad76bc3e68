// One vector-Jacobian product per step kind. Each rule computes in f32 from the step's
// inputs and rounds once to the input's dtype, so that a bf16 model's gradients are not
// the product of several bf16 roundings.
#include "autograd/vjp.h"

#include <cmath>
#include <numeric>

#include "core/error.h"
#include "ops/attention_step.h"
#include "ops/fast.h"
#include "ops/kernels.h"
#include "ops/fused_steps.h"
#include "ops/op_util.h"

namespace lmx::autograd {
namespace {

using detail::Step;

Array f32(const Array& a) { return astype(a, Dtype::f32); }
Array lit(double v, const Array& like) { return detail::constant(v, Dtype::f32, like.device()); }
// A bool array as 1.0 and 0.0.
Array indicator(const Array& cond) { return astype(cond, Dtype::f32); }
// The gradient for an input `in`: summed back to its shape, in its dtype; none for integers.
Array to_input(const Array& grad, const Array& in) {
  if (!is_float(in.dtype())) return {};
  return astype(unbroadcast(grad, in.shape()), in.dtype());
}

Array unary_vjp(UnaryOp op, const Array& x_in, const Array& g_in) {
  const Array x = f32(x_in), g = f32(g_in);
  switch (op) {
    case UnaryOp::neg: return neg(g);
    case UnaryOp::abs:
      return multiply(g, subtract(indicator(greater(x, lit(0, x))), indicator(less(x, lit(0, x)))));
    case UnaryOp::exp: return multiply(g, exp(x));
    case UnaryOp::log: return divide(g, x);
    case UnaryOp::sqrt: return divide(multiply(g, 0.5), sqrt(x));
    case UnaryOp::rsqrt: return multiply(multiply(g, -0.5), divide(rsqrt(x), x));  // -x^(-3/2) / 2
    case UnaryOp::tanh: return multiply(g, subtract(lit(1, x), square(tanh(x))));
    case UnaryOp::sigmoid: {
      const Array s = sigmoid(x);
      return multiply(g, multiply(s, subtract(lit(1, x), s)));
    }
    case UnaryOp::silu: {  // d/dx x·s(x) = s·(1 + x·(1 - s))
      const Array s = sigmoid(x);
      return multiply(g, multiply(s, add(multiply(x, subtract(lit(1, x), s)), 1.0)));
    }
    case UnaryOp::gelu_tanh: {  // 0.5·(1 + t) + 0.5·x·(1 - t²)·c·(1 + 3a·x²), t = tanh(c·(x +
                                // a·x³))
      const double c = std::sqrt(2.0 / M_PI), a = 0.044715;
      const Array x2 = square(x);
      const Array t = tanh(multiply(multiply(x, add(multiply(x2, a), 1.0)), c));
      const Array du = multiply(add(multiply(x2, 3 * a), 1.0), c);
      const Array d = add(multiply(add(t, 1.0), 0.5),
                          multiply(multiply(multiply(x, 0.5), subtract(lit(1, x), square(t))), du));
      return multiply(g, d);
    }
    case UnaryOp::square: return multiply(g, multiply(x, 2.0));
    case UnaryOp::sin: return multiply(g, cos(x));
    case UnaryOp::cos: return neg(multiply(g, sin(x)));
    case UnaryOp::logical_not: break;
  }
  fail("value_and_grad", "no gradient for unary op ", int(op));
}

// glu(gate, up) = round(act(gate))·up: one kernel for both gradients where the backend has
// it, else act's rule times up, and round(act(gate)) times the output's gradient.
std::vector<Array> glu_vjp(fast::GluActivation act, const Array& gate, const Array& up, const Array& g_in,
                           const std::vector<bool>& need) {
  const Array g = contiguous(astype(g_in, gate.dtype()));
  Array dg(gate.shape(), gate.dtype(), gate.device()), du(up.shape(), up.dtype(), up.device());
  if (gate.dtype() == up.dtype() &&
      detail::kern(gate).glu_grad(act, contiguous(gate), contiguous(up), g, dg, du))
    return {dg, du};
  const bool silu_act = act == fast::GluActivation::silu;
  if (need.at(0))
    dg = astype(unary_vjp(silu_act ? UnaryOp::silu : UnaryOp::gelu_tanh, gate, multiply(f32(g), f32(up))),
                gate.dtype());
  if (need.at(1)) du = astype(multiply(g, silu_act ? silu(gate) : gelu_tanh(gate)), up.dtype());
  return {need[0] ? dg : Array(), need[1] ? du : Array()};
}

std::vector<Array> binary_vjp(BinaryOp op, const Array& a_in, const Array& b_in, const Array& out,
                              const Array& g_in, const std::vector<bool>& need) {
  // The operands in f32, made only where a rule reads them: a sum's gradient needs none, and
  // the tape keeps an untracked addend as its shape alone (Tape::add).
  if (op == BinaryOp::add || op == BinaryOp::sub) {
    // g itself where no sum over broadcast axes rounds (the common case, a residual stream).
    auto passed = [&](const Array& gi, const Array& in) {
      return gi.shape() == in.shape() && gi.dtype() == in.dtype() ? gi : to_input(f32(gi), in);
    };
    return {need[0] ? passed(g_in, a_in) : Array(),
            need[1] ? passed(op == BinaryOp::sub ? neg(g_in) : g_in, b_in) : Array()};
  }
  const Array g = f32(g_in);
  Array ga, gb;
  if (op == BinaryOp::mul) {
    return {need[0] ? to_input(multiply(g, f32(b_in)), a_in) : Array(),
            need[1] ? to_input(multiply(g, f32(a_in)), b_in) : Array()};
  }
  const Array a = f32(a_in), b = f32(b_in);
  switch (op) {
    case BinaryOp::div:
      ga = divide(g, b);
      gb = neg(divide(multiply(ga, a), b));  // -g·a/b²
      break;
    case BinaryOp::pow: {
      ga = multiply(multiply(g, b), power(a, subtract(b, lit(1, b))));
      // d/db a^b = a^b·log(a), taken as 0 where a <= 0 (no real logarithm).
      const Array positive = greater(a, lit(0, a));
      gb = where(positive, multiply(multiply(g, f32(out)), log(where(positive, a, lit(1, a)))),
                 lit(0, a));
      break;
    }
    case BinaryOp::maximum:
    case BinaryOp::minimum: {
      // The larger (smaller) operand takes the gradient; a tie splits it evenly, as PyTorch does.
      const Array a_wins = op == BinaryOp::maximum ? greater(a, b) : less(a, b);
      const Array half = multiply(multiply(g, indicator(equal(a, b))), 0.5);
      ga = add(multiply(g, indicator(a_wins)), half);
      gb = add(multiply(g, indicator(logical_not(logical_or(a_wins, equal(a, b))))), half);
      break;
    }
    default: fail("value_and_grad", "no gradient for binary op ", int(op));
  }
  return {need[0] ? to_input(ga, a_in) : Array(), need[1] ? to_input(gb, b_in) : Array()};
}

// Only the products asked for: a frozen weight's gradient is as large as the weight and as
// costly as the forward product.
std::vector<Array> matmul_vjp(const Array& a_in, const Array& b_in, const Array& g_in,
                              const std::vector<bool>& need) {
  // As matrices: a [..., M, K], b [..., K, N], g [..., M, N] (a vector operand's axis restored).
  const Array a = a_in.ndim() == 1 ? expand_dims(a_in, 0) : a_in;
  const Array b = b_in.ndim() == 1 ? expand_dims(b_in, 1) : b_in;
  Array g = g_in;
  if (a_in.ndim() == 1) g = expand_dims(g, g.ndim() - (b_in.ndim() == 1 ? 0 : 1));
  if (b_in.ndim() == 1) g = expand_dims(g, g.ndim());
  g = astype(g, a.dtype());
  std::vector<Array> out(2);
  if (need[0])
    out[0] = reshape(unbroadcast(matmul(g, swapaxes(b, -1, -2)), a.shape()),
                     a_in.shape());  // [..., M, K]
  if (need[1])
    out[1] = reshape(unbroadcast(matmul(swapaxes(a, -1, -2), g), b.shape()),
                     b_in.shape());  // [..., K, N]
  return out;
}

Array reduce_rows_vjp(detail::ReduceOp op, const Array& x_in, const Array& out, const Array& g_in) {
  // x [R, C] -> out [R]; a sum's rule reads neither (the tape may keep their shapes only)
  const Array g = reshape(f32(g_in), {-1, 1});
  if (op == detail::ReduceOp::sum) return astype(broadcast_to(g, x_in.shape()), x_in.dtype());
  const Array x = f32(x_in), o = reshape(f32(out), {-1, 1});
  switch (op) {
    case detail::ReduceOp::sum: break;
    case detail::ReduceOp::max:
    case detail::ReduceOp::min: {  // shared evenly among the tied extremes
      const Array hit = indicator(equal(x, o));
      return astype(multiply(g, divide(hit, sum(hit, {-1}, true))), x_in.dtype());
    }
    case detail::ReduceOp::logsumexp: return astype(multiply(g, exp(subtract(x, o))), x_in.dtype());
  }
  fail("value_and_grad", "no gradient for reduction ", int(op));
}

Array softmax_rows_vjp(const Array& x_in, const Array& g_in) {
  const Array s = softmax(f32(x_in), -1), g = f32(g_in);  // [R, C], recomputed in f32
  return astype(multiply(s, subtract(g, sum(multiply(g, s), {-1}, true))), x_in.dtype());
}

// a [P, N, S] indexed along N by idx [M] (take) -> the gradient [P, N, S] of g [P, M, S]:
// each row of g added to the row it was read from, as a product with a one-hot matrix.
Array take_vjp(const Array& a, const Array& indices, int axis, const Array& g_in) {
  int64_t p = 1, s = 1;
  for (int i = 0; i < axis; ++i) p *= a.shape(i);
  for (int i = axis + 1; i < a.ndim(); ++i) s *= a.shape(i);
  const int64_t n = a.shape(axis), m = indices.size();
  const Array ids = reshape(astype(indices, Dtype::i32), {m, 1});
  const Array one_hot =
      indicator(equal(ids, reshape(arange(0, double(n), 1, Dtype::i32, a.device()), {1, n})));
  const Array g = reshape(f32(g_in), {p, m, s});
  return astype(reshape(matmul(swapaxes(one_hot, 0, 1), g), a.shape()),
                a.dtype());  // [N, M]·[P, M, S]
}

// a [P, N, S], idx and g [P, K, S] (take_along_axis) -> [P, N, S].
Array take_along_vjp(const Array& a, const Array& idx, int axis, const Array& g_in) {
  int64_t p = 1, s = 1;
  for (int i = 0; i < axis; ++i) p *= a.shape(i);
  for (int i = axis + 1; i < a.ndim(); ++i) s *= a.shape(i);
  const int64_t n = a.shape(axis), k = idx.shape(axis);
  const Array ids = reshape(astype(idx, Dtype::i32), {p, k, 1, s});
  const Array hit =
      equal(ids, reshape(arange(0, double(n), 1, Dtype::i32, a.device()), {1, 1, n, 1}));
  const Array g = reshape(f32(g_in), {p, k, 1, s});
  return astype(reshape(sum(where(hit, g, lit(0, g)), {1}), a.shape()),
                a.dtype());  // [P, K, N, S] -> [P, N, S]
}

struct SliceBounds {
  std::vector<int64_t> start, stop, step;
};
SliceBounds slice_bounds(const std::vector<int64_t>& args) {
  const auto n = size_t(args.at(0));
  auto part = [&](size_t i) {
    return std::vector<int64_t>(args.begin() + 1 + i * n, args.begin() + 1 + (i + 1) * n);
  };
  return {part(0), part(1), part(2)};
}

}  // namespace

Array unbroadcast(const Array& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  const int lead = g.ndim() - int(shape.size());
  LMX_CHECK(lead >= 0, "value_and_grad", "a gradient of shape ", shape_str(g.shape()),
            " cannot sum to ", shape_str(shape));
  std::vector<int> axes;
  for (int i = 0; i < g.ndim(); ++i)
    if (i < lead || (shape[size_t(i - lead)] == 1 && g.shape(i) != 1)) axes.push_back(i);
  const Array summed = axes.empty() ? g : sum(g, axes, true);
  return reshape(summed, shape);
}

bool vjp_reads(const detail::StepRecord& st, size_t i, const std::vector<bool>& need) {
  switch (st.step) {
    case Step::binary:
      switch (BinaryOp(st.code)) {
        case BinaryOp::add:
        case BinaryOp::sub: return false;
        case BinaryOp::mul: return need.at(1 - i);  // d(a·b)/da = b: b read for a's gradient
        default: return true;
      }
    case Step::matmul: return need.at(1 - i);  // dA = g·Bᵀ reads B, dB = Aᵀ·g reads A
    case Step::where: return i == 0;           // the condition; the branches by shape
    case Step::take:
    case Step::take_along_axis: return i == 1;  // the indices; the source by shape
    case Step::quantized_matmul: return i != 0;  // the packed weight; x by shape
    case Step::attention: return true;           // P is made again from q and k
    case Step::rms_norm: return true;
    case Step::rope: return i != 0;  // x by shape; the angles' inputs
    case Step::glu: return true;
    case Step::dropout: return false;  // x by shape: the mask comes from the seed
    case Step::cross_entropy_rows: return true;
    case Step::astype:
    case Step::copy:
    case Step::reshape:
    case Step::transpose:
    case Step::broadcast_to:
    case Step::slice:
    case Step::slice_update:
    case Step::concatenate: return false;
    case Step::reduce_rows: return detail::ReduceOp(st.code) != detail::ReduceOp::sum;
    case Step::unary:
    case Step::softmax_rows: return true;
  }
  return true;
}

bool vjp_reads_output(const detail::StepRecord& st) {
  if (st.step == Step::binary) return BinaryOp(st.code) == BinaryOp::pow;
  return st.step == Step::reduce_rows && detail::ReduceOp(st.code) != detail::ReduceOp::sum;
}

std::vector<Array> vjp(const detail::StepRecord& st, const Array& g,
                       const std::vector<bool>& need) {
  const std::vector<Array>& in = st.inputs;
  switch (st.step) {
    case Step::unary: return {astype(unary_vjp(UnaryOp(st.code), in[0], g), in[0].dtype())};
    case Step::binary: return binary_vjp(BinaryOp(st.code), in[0], in[1], st.output, g, need);
    case Step::where: {
      const Array zero = lit(0, g), g32 = f32(g);
      return {Array(), need[1] ? to_input(where(in[0], g32, zero), in[1]) : Array(),
              need[2] ? to_input(where(in[0], zero, g32), in[2]) : Array()};
    }
    case Step::astype:
    case Step::copy: return {astype(g, in[0].dtype())};
    case Step::matmul: return matmul_vjp(in[0], in[1], g, need);
    case Step::reduce_rows:
      return {reduce_rows_vjp(detail::ReduceOp(st.code), in[0], st.output, g)};
    case Step::softmax_rows: return {softmax_rows_vjp(in[0], g)};
    case Step::take: return {take_vjp(in[0], in[1], int(st.args.at(0)), g), Array()};
    case Step::take_along_axis:
      return {take_along_vjp(in[0], in[1], int(st.args.at(0)), g), Array()};
    case Step::reshape: return {reshape(g, in[0].shape())};
    case Step::transpose: {
      std::vector<int> inverse(st.args.size());
      for (size_t i = 0; i < st.args.size(); ++i) inverse[size_t(st.args[i])] = int(i);
      return {transpose(g, inverse)};
    }
    case Step::broadcast_to: return {unbroadcast(g, in[0].shape())};
    case Step::slice: {
      const SliceBounds s = slice_bounds(st.args);
      return {
          slice_update(zeros(in[0].shape(), g.dtype(), g.device()), g, s.start, s.stop, s.step)};
    }
    case Step::slice_update: {
      const SliceBounds s = slice_bounds(st.args);
      std::vector<Array> out(2);
      if (need[0])
        out[0] = to_input(
            slice_update(g, detail::constant(0, g.dtype(), g.device()), s.start, s.stop, s.step), in[0]);
      if (need[1]) out[1] = to_input(slice(g, s.start, s.stop, s.step), in[1]);
      return out;
    }
    case Step::concatenate: {
      const int axis = int(st.args.at(0));
      std::vector<Array> out;
      int64_t at = 0;
      for (size_t i = 0; i < in.size(); ++i) {
        const int64_t len = in[i].shape(axis);
        out.push_back(need[i] ? astype(slice_axis(g, axis, at, at + len), in[i].dtype()) : Array());
        at += len;
      }
      return out;
    }
    case Step::attention: return detail::attention_vjp(st, g);
    case Step::rms_norm: return detail::rms_norm_vjp(st, g, need);
    case Step::rope: return detail::rope_vjp(st, g);
    case Step::cross_entropy_rows: return detail::cross_entropy_rows_vjp(st, g);
    case Step::dropout: return detail::dropout_vjp(st, g);
    case Step::glu: return glu_vjp(fast::GluActivation(st.code), in[0], in[1], g, need);
    case Step::quantized_matmul: {
      // x [..., K]·Wᵀ -> g [..., N]: dx = g·W with W dequantized for this product only.
      const fast::QuantizedMatrix w{in[1], in[2], in[3], int(st.args.at(0)), int(st.args.at(1))};
      const Array gx = matmul(f32(g), fast::dequantize(w, Dtype::f32));
      return {astype(gx, in[0].dtype()), Array(), Array(), Array()};
    }
  }
  fail("value_and_grad", "no gradient rule for step ", int(st.step));
}

}  // namespace lmx::autograd
