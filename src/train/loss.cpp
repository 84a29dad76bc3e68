#include "train/loss.h"

#include <cstdint>
#include <vector>

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
  std::vector<int32_t> picks(t.size(), 0);  // each row's target; 0 (any valid id) where ignored
  std::vector<uint8_t> counts(t.size(), 0);
  int64_t n = 0;
  for (size_t i = 0; i < t.size(); ++i) {
    LMX_CHECK(t[i] == kIgnoreIndex || (t[i] >= 0 && t[i] < v), "cross_entropy", "target ", t[i],
              " at ", i, " is outside the vocabulary of ", v, " (use ", kIgnoreIndex,
              " to leave a position out)");
    if (t[i] == kIgnoreIndex) continue;
    picks[i] = t[i], counts[i] = 1, ++n;
  }
  LMX_CHECK(n > 0, "cross_entropy", "every target is ignored: there is nothing to learn from");
  const int64_t rows = int64_t(t.size());
  const Device d = logits.device();
  const Array all = astype(reshape(logits, {-1, v}), Dtype::f32);  // [rows, V]
  const Array targets_col = from_vector(picks, {rows, 1}, d);
  if (n == rows) {
    const Array picked = take_along_axis(all, targets_col, -1);  // [rows, 1]
    return mean(subtract(logsumexp(all, {-1}, true), picked));
  }
  // An ignored row's logits (padding's, NaN perhaps) are selected away before anything reads
  // them, so that they reach neither the loss nor, through a product with zero, its gradient.
  // (Taking the counted rows instead costs a one-hot product in the backward pass, rows × n ×
  // V multiply-adds: 31 G for 512 rows with 400 counted in a 151,936-token vocabulary.)
  const Array counted = from_host(counts.data(), {rows, 1}, Dtype::boolean, d);  // [rows, 1]
  const Array zero = scalar(0, Dtype::f32, d);
  const Array x = where(counted, all, zero);                                                 // [rows, V]
  const Array per_row = subtract(logsumexp(x, {-1}, true), take_along_axis(x, targets_col, -1));  // [rows, 1]
  return multiply(sum(where(counted, per_row, zero)), 1.0 / double(n));  // the mean over counted rows
}

}  // namespace lmx::train
