// matmul with broadcast batch dimensions and transposes expressed as strides.
#include "ops/op_util.h"

namespace lmx {

Array matmul(const Array& a_in, const Array& b_in) {
  detail::check_valid(a_in, "matmul", "first operand");
  detail::check_valid(b_in, "matmul", "second operand");
  detail::check_same_device(a_in, b_in, "matmul");
  LMX_CHECK(a_in.ndim() >= 1 && b_in.ndim() >= 1, "matmul", "operands must have rank >= 1");
  LMX_CHECK(is_float(a_in.dtype()) && a_in.dtype() == b_in.dtype(), "matmul",
            "expects two floating-point arrays of the same dtype, got ", dtype_name(a_in.dtype()), " and ",
            dtype_name(b_in.dtype()));
  const detail::OpRecord record;
  // Vectors become matrices as in NumPy; the added axis is dropped again at the end.
  const Array a = a_in.ndim() == 1 ? expand_dims(a_in, 0) : a_in;
  const Array b = b_in.ndim() == 1 ? expand_dims(b_in, 1) : b_in;
  const int64_t m = a.shape(-2), k = a.shape(-1), n = b.shape(-1);
  LMX_CHECK(b.shape(-2) == k, "matmul", "inner dimensions differ: ", shape_str(a_in.shape()), " x ",
            shape_str(b_in.shape()), " (", k, " vs ", b.shape(-2), ")");
  const Shape a_batch(a.shape().begin(), a.shape().end() - 2);
  const Shape b_batch(b.shape().begin(), b.shape().end() - 2);
  const Shape batch = broadcast_shapes(a_batch, b_batch, "matmul");
  const int64_t nb = numel(batch);

  // Flatten the batch to one axis. Broadcast batches become stride-0 views, so a weight
  // shared by every batch element is never copied.
  auto to3 = [&](const Array& x, int64_t r, int64_t c) {
    Shape full = batch;
    full.push_back(r);
    full.push_back(c);
    const Array xb = broadcast_to(x, full);
    // Collapsing the batch axes into one is a view only if the axes of size > 1 are
    // uniformly strided (each outer stride = inner stride x inner size).
    std::vector<size_t> live;
    for (size_t i = 0; i < batch.size(); ++i)
      if (batch[i] != 1) live.push_back(i);
    bool uniform = true;
    for (size_t j = 0; j + 1 < live.size(); ++j)
      uniform &= xb.strides()[live[j]] == xb.strides()[live[j + 1]] * batch[live[j + 1]];
    const Array src = uniform ? xb : contiguous(xb);
    const int64_t bstride = live.empty() ? 0 : src.strides()[live.back()];
    return src.view({nb, r, c}, {bstride, src.strides()[src.ndim() - 2], src.strides()[src.ndim() - 1]},
                    src.offset());
  };
  Array out({nb, m, n}, a.dtype(), a.device());
  if (out.size()) detail::kern(out).matmul(to3(a, m, k), to3(b, k, n), out);
  Shape shape = batch;
  if (a_in.ndim() > 1) shape.push_back(m);
  if (b_in.ndim() > 1) shape.push_back(n);
  const Array result = reshape(out, shape);
  record(detail::Step::matmul, {a_in, b_in}, result);
  return result;
}

}  // namespace lmx
