#include "runtime/prefill.h"

#include <algorithm>
#include <cstdlib>
#include <numeric>

#include "core/error.h"
#include "ops/ops.h"

namespace lmx::runtime {

int64_t prefill_tokens() {
  static const int64_t tokens = [] {
    const char* v = std::getenv("LMX_PREFILL_TOKENS");
    return v ? std::max<int64_t>(1, std::atoll(v)) : kPrefillTokens;
  }();
  return tokens;
}

nn::SequenceBatch padded_rows(std::span<const int64_t> pads, int64_t begin, int64_t end, Device device) {
  const int64_t rows = int64_t(pads.size());
  std::vector<int32_t> pos(static_cast<size_t>(rows));
  std::vector<uint8_t> valid(size_t(rows * end));  // [rows, end]
  for (int64_t r = 0; r < rows; ++r) {
    pos[size_t(r)] = int32_t(begin - pads[size_t(r)]);
    for (int64_t s = 0; s < end; ++s) valid[size_t(r * end + s)] = s >= pads[size_t(r)];
  }
  return {to_device(from_vector(pos, {rows}), device),
          to_device(astype(from_vector(valid, {rows, end}), Dtype::boolean), device)};
}

Array prefill_rows(const models::CausalLM& model, std::span<const int32_t> ids, int64_t rows, int64_t len,
                   std::span<nn::LayerCache* const> caches, std::span<const int64_t> pads, Device device,
                   int64_t budget, const std::function<bool()>& stop) {
  LMX_CHECK(rows > 0 && len > 0 && int64_t(ids.size()) == rows * len && (pads.empty() || int64_t(pads.size()) == rows),
            "prefill", "expected ", rows, " rows of ", len, " ids and ", rows, " pads (or none), got ", ids.size(),
            " ids and ", pads.size(), " pads");
  const int64_t step = std::max<int64_t>(1, budget / rows);  // positions a pass
  // Past a quarter of a pass, the memory the model's kept fused decoders hold (on the CUDA
  // backend their LM head's int8 copy and a tiled down projection, 0.15-0.35 GB on the 1B
  // models) is worth more to the activations than the 1-2 ms of making one again: with it
  // kept, one pass of 4,096 tokens took Llama-3.2-1B 41 MB past weights + KV + 512 MiB.
  if (rows * len > budget / 4) model.drop_fused_decoders();
  Array h;
  for (int64_t begin = 0; begin < len; begin += step) {
    if (begin > 0 && stop && stop()) return Array();
    const int64_t end = std::min(len, begin + step), n = end - begin;
    std::vector<int32_t> piece(size_t(rows * n));  // [rows, n]: positions [begin, end) of every row
    for (int64_t r = 0; r < rows; ++r)
      std::copy_n(ids.begin() + r * len + begin, n, piece.begin() + r * n);
    const Array x = to_device(from_vector(piece, {rows, n}), device);
    if (pads.empty()) {
      h = model.last_hidden_states(x, caches);
      continue;
    }
    const nn::SequenceBatch batch = padded_rows(pads, begin, end, device);
    h = model.last_hidden_states(x, caches, &batch);
  }
  return h;  // [rows, H] of the last pass: each row's last position
}

std::vector<std::pair<size_t, size_t>> chunks_by_tokens(const std::vector<std::vector<int32_t>>& ids,
                                                        const std::vector<size_t>& order, size_t budget) {
  std::vector<std::pair<size_t, size_t>> out;
  size_t start = 0, longest = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    longest = std::max(longest, ids[order[i]].size());
    if (i > start && longest * (i - start + 1) > budget) {
      out.emplace_back(start, i);
      start = i;
      longest = ids[order[i]].size();
    }
  }
  if (start < order.size()) out.emplace_back(start, order.size());
  return out;
}

std::vector<size_t> by_length(const std::vector<std::vector<int32_t>>& ids) {
  std::vector<size_t> order(ids.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ids[a].size() < ids[b].size(); });
  return order;
}

}  // namespace lmx::runtime
