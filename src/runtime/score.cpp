// score_ids and score_batch: texts' own tokens scored under the model, each given those
// before it, as evaluation harnesses ask for (OpenAI's echo with logprobs, loglikelihood
// tasks).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "runtime/prefill.h"
#include "runtime/text_model.h"

namespace lmx::runtime {

namespace {

// out[i] scores targets[i] under h[i] [P, H], the final hidden state of the position
// before it, in pieces of 256 rows that keep the f32 logits small (Gemma 3's 262K
// vocabulary: 268 MB a piece).
void score_hidden(const models::CausalLM& model, const Array& h, std::span<const int32_t> targets, int top_logprobs,
                  std::span<Token> out) {
  constexpr int64_t kRows = 256;
  const int64_t p = int64_t(targets.size());
  for (int64_t r0 = 0; r0 < p; r0 += kRows) {
    const int64_t rows = std::min(kRows, p - r0);
    const std::span<const int32_t> want = targets.subspan(size_t(r0), size_t(rows));
    const std::vector<TokenLogprobs> lp =
        log_probabilities_rows(model.logits(slice_axis(h, 0, r0, r0 + rows)), want, top_logprobs);
    for (int64_t r = 0; r < rows; ++r) {
      Token& t = out[size_t(r0 + r)];
      t.id = want[size_t(r)];
      t.logprob = lp[size_t(r)].chosen;
      t.top_logprobs = lp[size_t(r)].top;
    }
  }
}

}  // namespace

std::vector<Token> score_tokens(const models::CausalLM& model, std::span<const int32_t> ids, int top_logprobs,
                                Device device, int64_t budget) {
  const int64_t n = int64_t(ids.size());
  if (n < 2) return {};
  std::vector<Token> out(static_cast<size_t>(n - 1));
  // Positions in passes of `budget`, as a prompt's prefill runs, so that the activations
  // stay bounded.
  if (n > budget / 4) model.drop_fused_decoders();
  KVCache cache(model, /*rotate_sliding=*/true, n);
  for (int64_t begin = 0; begin < n - 1; begin += budget) {
    const int64_t end = std::min(n, begin + budget), len = end - begin;
    const std::vector<int32_t> piece(ids.begin() + begin, ids.begin() + end);
    const Array h = reshape(model.hidden_states(to_device(from_vector(piece, {1, len}), device), cache.layers()),
                            {len, -1});  // [len, H]
    const int64_t scored = std::min(len, n - 1 - begin);  // position p's logits score the token at p + 1
    score_hidden(model, slice_axis(h, 0, 0, scored), ids.subspan(size_t(begin + 1), size_t(scored)), top_logprobs,
                 std::span<Token>(out).subspan(size_t(begin), size_t(scored)));
  }
  return out;
}

std::vector<std::vector<Token>> score_texts(const models::CausalLM& model,
                                            const std::vector<std::vector<int32_t>>& texts, int top_logprobs,
                                            Device device, int64_t budget) {
  std::vector<std::vector<Token>> out(texts.size());
  const std::vector<size_t> order = by_length(texts);
  size_t total = 0;
  for (const auto& t : texts) total += t.size();
  if (int64_t(total) > budget / 4) model.drop_fused_decoders();  // as a prefill of as many tokens does
  for (const auto& [b, e] : chunks_by_tokens(texts, order, size_t(budget))) {
    if (e - b == 1) {  // alone, perhaps longer than a pass
      out[order[b]] = score_tokens(model, texts[order[b]], top_logprobs, device, budget);
      continue;
    }
    // Right padding, as classify runs prompts: with a causal mask, no real position sees the
    // padding after it. Only the positions that score a token (all but each text's last)
    // leave the last layer.
    size_t longest = 0;
    for (size_t i = b; i < e; ++i) longest = std::max(longest, texts[order[i]].size());
    const int64_t rows = int64_t(e - b), l = int64_t(longest);
    std::vector<int32_t> flat(size_t(rows * l), 0), at, targets;
    for (int64_t r = 0; r < rows; ++r) {
      const std::vector<int32_t>& t = texts[order[b + size_t(r)]];
      std::copy(t.begin(), t.end(), flat.begin() + r * l);
      for (size_t p = 0; p + 1 < t.size(); ++p) {
        at.push_back(int32_t(r * l + int64_t(p)));
        targets.push_back(t[p + 1]);
      }
    }
    if (at.empty()) continue;  // texts of one token: nothing to score
    const Array h = model.hidden_states(to_device(from_vector(flat, {rows, l}), device), {}, nullptr,
                                        to_device(from_vector(at, {int64_t(at.size())}), device));  // [P, H]
    std::vector<Token> scored(targets.size());
    score_hidden(model, h, targets, top_logprobs, scored);
    size_t next = 0;
    for (size_t i = b; i < e; ++i) {
      const size_t n = texts[order[i]].size() - 1;
      out[order[i]].assign(scored.begin() + long(next), scored.begin() + long(next + n));
      next += n;
    }
  }
  return out;
}

std::vector<Token> LocalTextModel::score_ids(std::span<const int32_t> ids, int top_logprobs) {
  const std::vector<std::vector<int32_t>> one = {{ids.begin(), ids.end()}};
  return std::move(score_batch(one, top_logprobs)[0]);
}

std::vector<std::vector<Token>> LocalTextModel::score_batch(std::span<const std::vector<int32_t>> texts,
                                                            int top_logprobs) {
  end_open_stream();
  const auto t0 = std::chrono::steady_clock::now();
  int total = 0;
  check_input([&] {
    LMX_CHECK(top_logprobs >= 0 && top_logprobs <= kMaxTopLogprobs, "score", "top_logprobs must be 0 to ",
              kMaxTopLogprobs, ", got ", top_logprobs);
    for (size_t r = 0; r < texts.size(); ++r) {
      check_prompt(texts[r], model_->spec().vocab_size, context_len_, "score",
                   texts.size() == 1 ? std::string("the text") : detail::cat("text ", r));
      total += int(texts[r].size());
    }
  });
  std::vector<std::vector<Token>> out;
  try {
    out = score_texts(*model_, {texts.begin(), texts.end()}, top_logprobs, device_, prefill_tokens());
  } catch (const OutOfMemory& e) {
    err_ = make_error_code(Errc::out_of_memory);
    err_message_ = e.what();
    throw;
  }
  GenerationTimings t;
  t.prompt_tokens = total;
  t.prefill_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  record(t, FinishReason::max_tokens, {}, "");
  return out;
}

}  // namespace lmx::runtime
