#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <unordered_map>

#include "core/error.h"

namespace lmx {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

uint64_t mix(uint64_t seed, uint64_t i) {  // splitmix64 over (seed, counter)
  uint64_t z = seed * 0x9e3779b97f4a7c15ull + (i + 1) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

int32_t argmax(std::span<const float> v) {
  return int32_t(std::max_element(v.begin(), v.end()) - v.begin());  // first of ties, like torch
}

}  // namespace

Sampler::Sampler(SamplingOptions o) : opts_(std::move(o)) {
  LMX_CHECK(opts_.temperature >= 0, "sampler", "temperature must be >= 0, got ", opts_.temperature);
  LMX_CHECK(opts_.top_p > 0 && opts_.top_p <= 1, "sampler", "top_p must be in (0, 1], got ", opts_.top_p);
  LMX_CHECK(opts_.min_p >= 0 && opts_.min_p <= 1, "sampler", "min_p must be in [0, 1], got ", opts_.min_p);
  LMX_CHECK(opts_.top_k >= 0, "sampler", "top_k must be >= 0, got ", opts_.top_k);
  LMX_CHECK(opts_.repetition_penalty > 0, "sampler", "repetition_penalty must be > 0, got ",
            opts_.repetition_penalty);
  seed_ = opts_.seed ? *opts_.seed : std::random_device{}();
}

bool Sampler::greedy() const {
  return opts_.temperature == 0 && opts_.logit_bias.empty() && opts_.repetition_penalty == 1 &&
         opts_.presence_penalty == 0 && opts_.frequency_penalty == 0;
}

std::vector<float> Sampler::process(std::span<const float> logits, std::span<const int32_t> history) const {
  std::vector<float> x(logits.begin(), logits.end());
  const int64_t v = int64_t(x.size());
  for (const auto& [id, bias] : opts_.logit_bias) {
    LMX_CHECK(id >= 0 && id < v, "sampler", "logit_bias token ", id, " is outside the vocabulary of ", v);
    x[size_t(id)] += bias;
  }
  if (opts_.repetition_penalty != 1 || opts_.presence_penalty != 0 || opts_.frequency_penalty != 0) {
    std::unordered_map<int32_t, int> counts;
    for (int32_t t : history)
      if (t >= 0 && t < v) ++counts[t];
    for (const auto& [t, n] : counts) {
      float& l = x[size_t(t)];
      // HF RepetitionPenaltyLogitsProcessor: once per distinct token, sign-aware.
      if (opts_.repetition_penalty != 1) l = l < 0 ? l * opts_.repetition_penalty : l / opts_.repetition_penalty;
      l -= opts_.presence_penalty + opts_.frequency_penalty * float(n);
    }
  }
  if (opts_.temperature == 0) return x;
  for (float& l : x) l /= opts_.temperature;
  if (opts_.top_k > 0 && opts_.top_k < v) {
    // HF TopK: keep everything >= the k-th largest value (ties at the threshold stay).
    std::vector<float> sorted = x;
    std::nth_element(sorted.begin(), sorted.begin() + (opts_.top_k - 1), sorted.end(), std::greater<>());
    const float kth = sorted[size_t(opts_.top_k - 1)];
    for (float& l : x)
      if (l < kth) l = kNegInf;
  }
  if (opts_.top_p < 1 || opts_.min_p > 0) {
    const float m = *std::max_element(x.begin(), x.end());
    std::vector<float> p(x.size());
    double total = 0;
    for (size_t i = 0; i < x.size(); ++i) total += p[i] = std::exp(x[i] - m);
    for (float& q : p) q = float(q / total);
    if (opts_.top_p < 1) {
      // HF TopP: sort ascending, drop the tokens whose cumulative mass is <= 1 - top_p;
      // the most likely token always stays.
      std::vector<int32_t> order(x.size());
      std::iota(order.begin(), order.end(), 0);
      // Among equal logits the lower id counts as more likely, as argmax does.
      std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
        return x[size_t(a)] != x[size_t(b)] ? x[size_t(a)] < x[size_t(b)] : a > b;
      });
      double cum = 0;
      for (size_t r = 0; r + 1 < order.size(); ++r) {
        cum += p[size_t(order[r])];
        if (cum <= 1.0 - opts_.top_p) x[size_t(order[r])] = kNegInf;
        else break;
      }
    }
    if (opts_.min_p > 0) {
      // HF MinP: drop tokens whose probability is below min_p times the top probability.
      const float top = *std::max_element(p.begin(), p.end());
      for (size_t i = 0; i < x.size(); ++i)
        if (p[i] < opts_.min_p * top) x[i] = kNegInf;
    }
  }
  return x;
}

std::vector<float> Sampler::probabilities(std::span<const float> logits, std::span<const int32_t> history) const {
  std::vector<float> x = process(logits, history);
  std::vector<float> p(x.size(), 0.0f);
  if (opts_.temperature == 0) {
    p[size_t(argmax(x))] = 1;
    return p;
  }
  const float m = *std::max_element(x.begin(), x.end());
  double total = 0;
  for (size_t i = 0; i < x.size(); ++i) total += p[i] = std::isinf(x[i]) ? 0.0f : std::exp(x[i] - m);
  for (float& q : p) q = float(q / total);
  return p;
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  LMX_CHECK(!logits.empty(), "sampler", "empty logits");
  if (opts_.temperature == 0) return argmax(process(logits, history));
  const std::vector<float> p = probabilities(logits, history);
  const double u = double(mix(seed_, draws_++) >> 11) * 0x1p-53;
  double cum = 0;
  int32_t last = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] <= 0) continue;
    last = int32_t(i);
    cum += p[i];
    if (u < cum) return int32_t(i);
  }
  return last;  // rounding left u just above the total
}

}  // namespace lmx
