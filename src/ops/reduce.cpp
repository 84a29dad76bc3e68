// Reductions, argmax and softmax. Each moves the reduced axes last, so that a kernel
// only ever reduces the rows of a contiguous [rows, cols] matrix.
#include <algorithm>
#include <numeric>

#include "ops/op_util.h"

namespace lmx {
namespace {

struct Plan {
  Array rows;       // [R, C] contiguous; not made where `single` (no kernel runs)
  Shape out_shape;  // the result's shape, keepdims applied
  // Every reduced axis has length 1 (C == 1): sum, max, min, mean and logsumexp are then the
  // input itself. A gradient summed back over a broadcast batch axis of 1 is such a case, and
  // as rows it was a copy plus one block per element (47 ms for a [1, 512, 151936] logits
  // gradient on an H200).
  bool single = false;
};

Plan plan_reduce(const Array& a, std::vector<int> axes, bool keepdims, const char* op, bool rows_always = false) {
  detail::check_valid(a, op);
  const int n = a.ndim();
  if (axes.empty()) {
    axes.resize(n);
    std::iota(axes.begin(), axes.end(), 0);
  }
  std::vector<bool> reduced(n, false);
  for (int ax : axes) {
    const int i = normalize_axis(ax, n, op);
    LMX_CHECK(!reduced[i], op, "axis ", ax, " is given twice");
    reduced[i] = true;
  }
  std::vector<int> perm;
  Shape out_shape;
  int64_t rows = 1, cols = 1;
  for (int i = 0; i < n; ++i) {
    if (reduced[i]) {
      if (keepdims) out_shape.push_back(1);
      continue;
    }
    perm.push_back(i);
    out_shape.push_back(a.shape()[i]);
    rows *= a.shape()[i];
  }
  for (int i = 0; i < n; ++i)
    if (reduced[i]) {
      perm.push_back(i);
      cols *= a.shape()[i];
    }
  if (cols == 1 && !rows_always) return {Array(), out_shape, true};
  return {reshape(contiguous(transpose(a, perm)), {rows, cols}), out_shape, cols == 1};
}

Array reduce(detail::ReduceOp op, const Array& a, std::vector<int> axes, bool keepdims, const char* name) {
  Plan p = plan_reduce(a, std::move(axes), keepdims, name);
  LMX_CHECK(a.dtype() != Dtype::boolean, name, "is not defined for bool arrays");
  if (op == detail::ReduceOp::logsumexp) detail::check_float(a, name);
  if (p.single) return reshape(a, p.out_shape);
  const bool needs_elems = op != detail::ReduceOp::sum;
  LMX_CHECK(!needs_elems || p.rows.shape(1) > 0 || p.rows.shape(0) == 0, name, "reduction over an empty axis");
  Array out({p.rows.shape(0)}, a.dtype(), a.device());
  {
    // The plan's transpose and reshape report themselves; the step is the rows' reduction.
    const detail::OpRecord record;
    detail::kern(a).reduce(op, p.rows, out);
    if (is_float(a.dtype())) record(detail::Step::reduce_rows, {p.rows}, out, int(op));
  }
  return reshape(out, p.out_shape);
}

}  // namespace

Array sum(const Array& a, std::vector<int> axes, bool keepdims) {
  return reduce(detail::ReduceOp::sum, a, std::move(axes), keepdims, "sum");
}
Array max(const Array& a, std::vector<int> axes, bool keepdims) {
  return reduce(detail::ReduceOp::max, a, std::move(axes), keepdims, "max");
}
Array min(const Array& a, std::vector<int> axes, bool keepdims) {
  return reduce(detail::ReduceOp::min, a, std::move(axes), keepdims, "min");
}
Array logsumexp(const Array& a, std::vector<int> axes, bool keepdims) {
  return reduce(detail::ReduceOp::logsumexp, a, std::move(axes), keepdims, "logsumexp");
}

Array mean(const Array& a, std::vector<int> axes, bool keepdims) {
  detail::check_valid(a, "mean");
  detail::check_float(a, "mean");
  Plan p = plan_reduce(a, axes, keepdims, "mean");
  if (p.single) return reshape(a, p.out_shape);
  LMX_CHECK(p.rows.shape(1) > 0, "mean", "mean over an empty axis");
  // Sum in f32 and divide once, so that a bf16 mean is not the rounding of a bf16 sum.
  Array s({p.rows.shape(0)}, Dtype::f32, a.device());
  const Array rows32 = astype(p.rows, Dtype::f32);
  {
    const detail::OpRecord record;
    detail::kern(a).reduce(detail::ReduceOp::sum, rows32, s);
    record(detail::Step::reduce_rows, {rows32}, s, int(detail::ReduceOp::sum));
  }
  const Array m = multiply(s, 1.0 / double(p.rows.shape(1)));
  return reshape(astype(m, a.dtype()), p.out_shape);
}

Array argmax(const Array& a, int axis, bool keepdims) {
  detail::check_valid(a, "argmax");
  LMX_CHECK(a.ndim() >= 1, "argmax", "needs an array of rank >= 1");
  LMX_CHECK(a.dtype() != Dtype::boolean, "argmax", "is not defined for bool arrays");
  Plan p = plan_reduce(a, {axis}, keepdims, "argmax", /*rows_always=*/true);
  LMX_CHECK(p.rows.shape(1) > 0, "argmax", "argmax over an empty axis");
  Array out({p.rows.shape(0)}, Dtype::i32, a.device());
  detail::kern(a).argmax(p.rows, out);
  return reshape(out, p.out_shape);
}

Array softmax(const Array& a, int axis) {
  detail::check_valid(a, "softmax");
  detail::check_float(a, "softmax");
  LMX_CHECK(a.ndim() >= 1, "softmax", "needs an array of rank >= 1");
  const int ax = normalize_axis(axis, a.ndim(), "softmax");
  const Array moved = contiguous(swapaxes(a, ax, -1));
  const Array rows = reshape(moved, {-1, moved.shape(-1)});
  Array out(rows.shape(), a.dtype(), a.device());
  {
    const detail::OpRecord record;
    detail::kern(a).softmax(rows, out);
    record(detail::Step::softmax_rows, {rows}, out);
  }
  return swapaxes(reshape(out, moved.shape()), ax, -1);
}

}  // namespace lmx
