#include "train/loss.h"

#include "core/error.h"

namespace lmx::train {

Array cross_entropy(const Array& logits, const Array& targets) {
  LMX_CHECK(logits.valid() && is_float(logits.dtype()) && logits.ndim() >= 1, "cross_entropy",
            "logits must be a floating-point array [..., V]");
  LMX_CHECK(targets.valid() && targets.dtype() == Dtype::i32, "cross_entropy",
            "targets must be int32");
  Shape want = logits.shape();
  want.pop_back();
  LMX_CHECK(targets.shape() == want, "cross_entropy", "targets ", shape_str(targets.shape()),
            " for logits ", shape_str(logits.shape()), ": expected ", shape_str(want));
  const int64_t v = logits.shape(-1);
  // The targets are read here once (they come from the data, never from the model).
  const std::vector<int32_t> t = to_vector<int32_t>(targets);
  std::vector<int32_t> rows, picks;  // the positions that count, and their targets
  for (size_t i = 0; i < t.size(); ++i) {
    LMX_CHECK(t[i] == kIgnoreIndex || (t[i] >= 0 && t[i] < v), "cross_entropy", "target ", t[i],
              " at ", i, " is outside the vocabulary of ", v, " (use ", kIgnoreIndex,
              " to leave a position out)");
    if (t[i] == kIgnoreIndex) continue;
    rows.push_back(int32_t(i));
    picks.push_back(t[i]);
  }
  LMX_CHECK(!rows.empty(), "cross_entropy",
            "every target is ignored: there is nothing to learn from");
  // Only the counted rows are taken: an ignored position's logits (padding's, NaN perhaps)
  // reach neither the loss nor, through a product with zero, its gradient.
  const int64_t n = int64_t(rows.size());
  const Device d = logits.device();
  // Where every row counts, none is taken: take's gradient is a product with a one-hot
  // matrix, [rows, n]·[n, V] (40 G multiply-adds for 512 rows of a 151,936-token vocabulary).
  const Array all = astype(reshape(logits, {-1, v}), Dtype::f32);                       // [rows, V]
  const Array x = n == all.shape(0) ? all : take(all, to_device(from_vector(rows, {n}), d), 0);  // [n, V]
  const Array picked = take_along_axis(x, to_device(from_vector(picks, {n, 1}), d), -1);  // [n, 1]
  return mean(subtract(logsumexp(x, {-1}, true), picked));
}

}  // namespace lmx::train
