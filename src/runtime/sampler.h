// Token sampling with transformers' semantics and order: repetition penalty, presence
// and frequency penalties, logit bias, then temperature, top-k, top-p and min-p.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "ops/fast.h"

namespace lmx {

struct SamplingOptions {
  float temperature = 0;        // 0 = greedy (argmax)
  int top_k = 0;                // 0 = off
  float top_p = 1;              // 1 = off
  float min_p = 0;              // 0 = off
  float repetition_penalty = 1; // HF: divides positive, multiplies negative logits of seen tokens
  float presence_penalty = 0;   // OpenAI-style: minus this once for every seen token
  float frequency_penalty = 0;  // minus this times the count of each seen token
  std::vector<std::pair<int32_t, float>> logit_bias;  // added to the raw logits
  std::optional<uint64_t> seed;  // fixed seed: reproducible draws
};

// A token's log-probabilities under the model (GenerateOptions::logprobs).
struct TokenLogprobs {
  float chosen = 0;                              // log p(chosen)
  std::vector<std::pair<int32_t, float>> top;    // the `top` most likely ids, most likely first
};
// log_softmax(logits)[chosen] and the `top` largest entries (ties: the lower id), the sum
// taken in double. NaN logits count as impossible.
TokenLogprobs log_probabilities(std::span<const float> logits, int32_t chosen, int top);
// log_probabilities of each row of `logits` [rows, V] (on any device), row r's for
// chosen[r], `top` (0 to kMaxTopLogprobs) alternatives. The sums are made where the logits
// are: only each row's log-sum-exp (in f32), its chosen logit and its alternatives come
// back, not [rows, V] (152K floats a row for Qwen3: their copy and a scan in double on the
// host cost a decode step several times over). A row whose sum is not finite (NaN logits)
// is scored on the host by log_probabilities.
std::vector<TokenLogprobs> log_probabilities_rows(const Array& logits, std::span<const int32_t> chosen, int top);

// Stateful only in its random stream. Not thread-safe; use one per sequence.
class Sampler {
 public:
  explicit Sampler(SamplingOptions options);
  // logits [V] in f32; `history` is every token so far (prompt included), which the
  // penalties look at as HF's processors do. NaN logits are never drawn; -1 where no token
  // can be (every logit NaN, or for a draw NaN or -inf), as fast::sample_tokens and argmax.
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history);
  // The processed distribution the next draw would use, [V], zeros for removed tokens
  // (for tests and for clients that want probabilities).
  std::vector<float> probabilities(std::span<const float> logits, std::span<const int32_t> history) const;
  const SamplingOptions& options() const { return opts_; }
  // Plain argmax of the raw logits: no temperature, penalty or bias.
  bool greedy() const;
  // A draw where the logits are (a GPU), as sample() draws:
  //   x = needs_edits() ? fast::edit_logits(logits, [0, n], edits(history), penalties()) : logits
  //   filter() ? fast::sample_tokens(x, {take_word()}, *filter()) : argmax(x)
  // Whether the logits need edits first: a logit bias or a penalty, which look at the
  // history. Without them a draw needs nothing from the host but its random word.
  bool needs_edits() const;
  // Appends a row's edits (fast::edit_logits's entries, sorted by id) for `history`, over
  // a vocabulary of `vocab`.
  void edits(std::span<const int32_t> history, int64_t vocab,
             std::vector<fast::LogitEdit>& out) const;
  fast::Penalties penalties() const;
  // The draw's options after the edits; nullopt at temperature 0 (the argmax).
  std::optional<fast::SampleFilter> filter() const;
  // The random word of the next draw, for a draw made elsewhere (fast::sample_tokens).
  uint64_t take_word();

 private:
  bool penalised() const;  // a repetition, presence or frequency penalty: the history counts
  std::vector<float> process(std::span<const float> logits, std::span<const int32_t> history) const;
  int32_t draw(const std::vector<float>& p);  // inverts the CDF of p at the stream's next number
  SamplingOptions opts_;
  uint64_t seed_;
  uint64_t draws_ = 0;
};

}  // namespace lmx
