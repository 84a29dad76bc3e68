// take / embedding / take_along_axis.
#include "ops/op_util.h"

namespace lmx {

Array take(const Array& a, const Array& indices, int axis) {
  detail::check_valid(a, "take");
  detail::check_valid(indices, "take", "indices");
  detail::check_index_dtype(indices, "take");
  detail::check_same_device(a, indices, "take");
  const int ax = normalize_axis(axis, a.ndim(), "take");
  int64_t p = 1, s = 1;
  for (int i = 0; i < ax; ++i) p *= a.shape()[i];
  for (int i = ax + 1; i < a.ndim(); ++i) s *= a.shape()[i];
  const int64_t n = a.shape()[ax], m = indices.size();
  const detail::OpRecord record;
  Shape shape(a.shape().begin(), a.shape().begin() + ax);
  shape.insert(shape.end(), indices.shape().begin(), indices.shape().end());
  shape.insert(shape.end(), a.shape().begin() + ax + 1, a.shape().end());
  Array out(shape, a.dtype(), a.device());
  if (out.size())
    detail::kern(a).take(reshape(a, {p, n, s}), reshape(indices, {m}), reshape(out, {p, m, s}));
  if (is_float(a.dtype())) record(detail::Step::take, {a, indices}, out, 0, {ax});
  return out;
}

Array embedding(const Array& weight, const Array& ids) {
  LMX_CHECK(weight.valid() && weight.ndim() == 2, "embedding", "weight must be a [vocab, hidden] matrix");
  return take(weight, ids, 0);
}

Array take_along_axis(const Array& a, const Array& indices, int axis) {
  detail::check_valid(a, "take_along_axis");
  detail::check_valid(indices, "take_along_axis", "indices");
  detail::check_index_dtype(indices, "take_along_axis");
  detail::check_same_device(a, indices, "take_along_axis");
  LMX_CHECK(indices.ndim() == a.ndim(), "take_along_axis", "indices have rank ", indices.ndim(),
            ", the array has rank ", a.ndim());
  const int ax = normalize_axis(axis, a.ndim(), "take_along_axis");
  const detail::OpRecord record;
  Shape idx_shape = a.shape();
  idx_shape[ax] = indices.shape()[ax];
  const Array idx = broadcast_to(indices, broadcast_shapes(indices.shape(), idx_shape, "take_along_axis"));
  LMX_CHECK(idx.shape() == idx_shape, "take_along_axis", "indices of shape ", shape_str(indices.shape()),
            " do not fit an array of shape ", shape_str(a.shape()), " outside axis ", ax);
  int64_t p = 1, s = 1;
  for (int i = 0; i < ax; ++i) p *= a.shape()[i];
  for (int i = ax + 1; i < a.ndim(); ++i) s *= a.shape()[i];
  Array out(idx_shape, a.dtype(), a.device());
  if (out.size())
    detail::kern(a).take_along(reshape(a, {p, a.shape()[ax], s}), reshape(idx, {p, idx_shape[ax], s}),
                               reshape(out, {p, idx_shape[ax], s}));
  if (is_float(a.dtype())) record(detail::Step::take_along_axis, {a, idx}, out, 0, {ax});
  return out;
}

}  // namespace lmx
