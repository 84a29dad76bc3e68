#include "train/loss.h"

#include <cstdint>
#include <vector>

#include "core/error.h"
#include "ops/fast.h"

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
  // Each row's loss in one op (one kernel each way on CUDA, where the composition made about
  // ten passes over the [rows, V] logits in f32). [rows]
  const Array per_row = fast::cross_entropy_rows(reshape(logits, {-1, v}), from_vector(picks, {rows}, d));
  if (n == rows) return mean(per_row);
  // An ignored row's loss (from padding's logits, NaN perhaps) is selected away, so it reaches
  // neither the loss nor the gradient: the where gives its row a zero gradient, which the
  // op's rule writes as zeros without reading the row. (Taking the counted rows instead cost
  // a one-hot product in the backward pass, rows × n × V multiply-adds.)
  const Array counted = from_host(counts.data(), {rows}, Dtype::boolean, d);  // [rows]
  const Array zero = scalar(0, Dtype::f32, d);
  return multiply(sum(where(counted, per_row, zero)), 1.0 / double(n));  // the mean over counted rows
}

}  // namespace lmx::train
