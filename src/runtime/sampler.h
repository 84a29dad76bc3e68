// Token sampling with transformers' semantics and order: repetition penalty, presence
// and frequency penalties, logit bias, then temperature, top-k, top-p and min-p.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <utility>
#include <vector>

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

// Stateful only in its random stream. Not thread-safe; use one per sequence.
class Sampler {
 public:
  explicit Sampler(SamplingOptions options);
  // logits [V] in f32; `history` is every token so far (prompt included), which the
  // penalties look at as HF's processors do.
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history);
  // The processed distribution the next draw would use, [V], zeros for removed tokens
  // (for tests and for clients that want probabilities).
  std::vector<float> probabilities(std::span<const float> logits, std::span<const int32_t> history) const;
  const SamplingOptions& options() const { return opts_; }
  // Plain argmax of the raw logits: no temperature, penalty or bias.
  bool greedy() const;
  // k where a draw picks among the k most likely raw logits only (top-k with no penalty or
  // bias, which could move a token across the k-th), so that a caller with the logits on
  // a device may read back the top k + 1 and call sample_top; 0 where a draw needs every
  // logit (sample).
  int candidates(int64_t vocab) const;
  // sample() over a vocabulary whose tokens other than `ids` have logits too small to
  // matter: ids and logits are the candidates(V) + 1 most likely, largest first. nullopt
  // (and no draw taken) where the last ties the k-th after the temperature: top-k then
  // keeps more than k tokens, and the caller must call sample() with every logit.
  std::optional<int32_t> sample_top(std::span<const int32_t> ids, std::span<const float> logits);

 private:
  std::vector<float> process(std::span<const float> logits, std::span<const int32_t> history) const;
  int32_t draw(const std::vector<float>& p);  // inverts the CDF of p at the stream's next number
  SamplingOptions opts_;
  uint64_t seed_;
  uint64_t draws_ = 0;
};

}  // namespace lmx
