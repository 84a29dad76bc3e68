// score_ids: a text's own tokens scored under the model, each given those before it, as
// evaluation harnesses ask for (OpenAI's echo with logprobs, loglikelihood tasks).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/thread_pool.h"
#include "runtime/prefill.h"
#include "runtime/text_model.h"

namespace lmx::runtime {

std::vector<Token> score_tokens(const models::CausalLM& model, std::span<const int32_t> ids, int top_logprobs,
                                Device device, int64_t budget) {
  const int64_t n = int64_t(ids.size()), vocab = model.spec().vocab_size;
  if (n < 2) return {};
  std::vector<Token> out(static_cast<size_t>(n - 1));
  // Positions in passes of `budget`, as a prompt's prefill runs, so that the
  // activations stay bounded; each pass's logits in pieces of 256 rows, so that [rows, V]
  // in f32 stays small (Gemma 3's 262K vocabulary: 268 MB a piece).
  constexpr int64_t kRows = 256;
  if (n > budget / 4) model.drop_fused_decoders();
  KVCache cache(model, /*rotate_sliding=*/true, n);
  for (int64_t begin = 0; begin < n - 1; begin += budget) {
    const int64_t end = std::min(n, begin + budget), len = end - begin;
    const std::vector<int32_t> piece(ids.begin() + begin, ids.begin() + end);
    const Array h = reshape(model.hidden_states(to_device(from_vector(piece, {1, len}), device), cache.layers()),
                            {len, -1});  // [len, H]
    for (int64_t r0 = 0; r0 < len && begin + r0 < n - 1; r0 += kRows) {
      const int64_t rows = std::min({kRows, len - r0, n - 1 - (begin + r0)});
      const std::vector<float> logits = to_floats(model.logits(slice_axis(h, 0, r0, r0 + rows)));  // [rows, V]
      parallel_for(rows, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; ++r) {
          const int64_t p = begin + r0 + r;  // position p's logits score the token at p + 1
          const std::span<const float> row(logits.data() + r * vocab, size_t(vocab));
          const TokenLogprobs lp = log_probabilities(row, ids[size_t(p + 1)], top_logprobs);
          Token& t = out[size_t(p)];
          t.id = ids[size_t(p + 1)];
          t.logprob = lp.chosen;
          t.top_logprobs = lp.top;
        }
      });
    }
  }
  return out;
}

std::vector<Token> LocalTextModel::score_ids(std::span<const int32_t> ids, int top_logprobs) {
  end_open_stream();
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t n = int64_t(ids.size());
  check_input([&] {
    LMX_CHECK(top_logprobs >= 0 && top_logprobs <= kMaxTopLogprobs, "score", "top_logprobs must be 0 to ",
              kMaxTopLogprobs, ", got ", top_logprobs);
    check_prompt(ids, model_->spec().vocab_size, context_len_, "score", "the text");
  });
  std::vector<Token> out;
  try {
    out = score_tokens(*model_, ids, top_logprobs, device_, prefill_tokens());
  } catch (const OutOfMemory& e) {
    err_ = make_error_code(Errc::out_of_memory);
    err_message_ = e.what();
    throw;
  }
  GenerationTimings t;
  t.prompt_tokens = int(n);
  t.prefill_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  record(t, FinishReason::max_tokens, {}, "");
  return out;
}

}  // namespace lmx::runtime
