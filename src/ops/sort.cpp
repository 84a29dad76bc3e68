// sort, argsort, topk and categorical sampling along the last axis.
#include "ops/op_util.h"

namespace lmx {
namespace {

Array rows_of(const Array& a, const char* op) {
  detail::check_valid(a, op);
  LMX_CHECK(a.ndim() >= 1, op, "needs an array of rank >= 1");
  LMX_CHECK(a.dtype() != Dtype::boolean, op, "is not defined for bool arrays");
  return reshape(contiguous(a), {-1, a.shape(-1)});
}

}  // namespace

Array sort(const Array& a, bool descending) {
  const Array rows = rows_of(a, "sort");
  Array values(rows.shape(), a.dtype(), a.device());
  detail::kern(a).sort(rows, descending, int(rows.shape(1)), values, Array());
  return reshape(values, a.shape());
}

Array argsort(const Array& a, bool descending) {
  const Array rows = rows_of(a, "argsort");
  Array idx(rows.shape(), Dtype::i32, a.device());
  detail::kern(a).sort(rows, descending, int(rows.shape(1)), Array(), idx);
  return reshape(idx, a.shape());
}

std::pair<Array, Array> topk(const Array& a, int k) {
  const Array rows = rows_of(a, "topk");
  LMX_CHECK(k >= 1 && k <= rows.shape(1), "topk", "k = ", k, " is outside [1, ", rows.shape(1), "]");
  Array values({rows.shape(0), k}, a.dtype(), a.device());
  Array idx({rows.shape(0), k}, Dtype::i32, a.device());
  detail::kern(a).sort(rows, true, k, values, idx);
  Shape shape = a.shape();
  shape.back() = k;
  return {reshape(values, shape), reshape(idx, shape)};
}

Array categorical(const Array& logits, uint64_t seed) {
  const Array rows = rows_of(logits, "categorical");
  detail::check_float(logits, "categorical");
  LMX_CHECK(rows.shape(1) > 0, "categorical", "needs at least one category");
  Array out({rows.shape(0)}, Dtype::i32, logits.device());
  detail::kern(logits).categorical(rows, seed, out);
  return reshape(out, Shape(logits.shape().begin(), logits.shape().end() - 1));
}

}  // namespace lmx
