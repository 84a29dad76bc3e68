// What the model tests compare logits and tokens with.
#pragma once

#include <cmath>
#include <vector>

#include "models/transformer.h"
#include "runtime/generator.h"

namespace lmx::test {

inline double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, double(std::abs(x)));
  return m;
}

// ‖got − want‖₂ / ‖want‖₂, the bf16 tolerance's measure.
inline double relative_l2(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    den += double(want[i]) * want[i];
  }
  return std::sqrt(num / den);
}

// n greedy tokens after `prompt`, through the generator a user's generate() runs.
inline std::vector<int32_t> greedy(const models::CausalLM& m, const std::vector<int32_t>& prompt, int n) {
  KVCache cache(m.num_layers());
  GenerationLimits limits;
  limits.max_tokens = n;
  TokenGenerator gen(m, prompt, SamplingOptions{}, limits, cache);
  std::vector<int32_t> out;
  while (auto t = gen.next()) out.push_back(*t);
  return out;
}

}  // namespace lmx::test
