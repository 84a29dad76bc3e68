#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <unordered_map>

#include "core/error.h"
#include "core/random.h"
#include "core/thread_pool.h"

namespace lmx {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The first of equal maxima, like torch; NaN never wins, and a row of nothing else gives -1,
// as the argmax op does.
int32_t argmax(std::span<const float> v) {
  int32_t best = -1;
  for (size_t i = 0; i < v.size(); ++i)
    if (!std::isnan(v[i]) && (best < 0 || v[i] > v[size_t(best)])) best = int32_t(i);
  return best;
}

// f folded over v from `init` in 8 running values, merged at the end: for max and min,
// where the order does not matter, so that each step need not wait for the one before.
// std::max_element tracks a position and took 0.46 ms over 152K values.
template <class F>
float fold8(const std::vector<float>& v, float init, F f) {
  float lane[8];
  std::fill(lane, lane + 8, init);
  size_t i = 0;
  for (; i + 8 <= v.size(); i += 8)
    for (int j = 0; j < 8; ++j) lane[j] = f(lane[j], v[i + size_t(j)]);
  for (; i < v.size(); ++i) lane[0] = f(lane[0], v[i]);
  for (int j = 1; j < 8; ++j) lane[0] = f(lane[0], lane[j]);
  return lane[0];
}

float largest(const std::vector<float>& v) {
  return fold8(v, kNegInf, [](float a, float b) { return std::max(a, b); });
}

// exp(x_i - max) / sum in f32, 0 where x_i is -inf (all 0 where every x_i is), the sum
// taken in f64. A vocabulary of 152K took a millisecond on one thread, once or twice a
// token, so chunks of kChunk values run on the pool's threads. Each chunk sums in order
// and the chunks' sums add in order: the result is the same for any count of threads.
std::vector<float> softmax(const std::vector<float>& x) {
  constexpr int64_t kChunk = 16384;
  const int64_t n = int64_t(x.size()), chunks = (n + kChunk - 1) / kChunk;
  const float m = largest(x);
  std::vector<float> p(x.size());
  std::vector<double> sums(static_cast<size_t>(chunks));
  parallel_for(chunks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      double s = 0;
      for (size_t i = size_t(c * kChunk); i < size_t(std::min(n, (c + 1) * kChunk)); ++i)
        s += p[i] = std::isinf(x[i]) ? 0.0f : std::exp(x[i] - m);
      sums[size_t(c)] = s;
    }
  });
  // A multiply by the reciprocal (a division per value cost as much as the exponentials).
  const double total = std::accumulate(sums.begin(), sums.end(), 0.0);
  const double inv = total > 0 ? 1.0 / total : 0.0;
  for (float& q : p) q = float(double(q) * inv);
  return p;
}

// HF TopP on the logits x with probabilities p: in ascending order (the lower id counts
// as more likely among equal logits, as argmax does), tokens go while the cumulative mass
// is <= 1 - top_p; the most likely token always stays. Only the tokens where the walk
// stops need an order (sorting all 152K took 20 ms a draw): the finite logits fall into
// kBuckets equal ranges of value, each a stretch of the ascending order. Whole buckets
// below the cut go; only the buckets that the walk enters are sorted.
void apply_top_p(std::vector<float>& x, const std::vector<float>& p, float top_p) {
  constexpr int kBuckets = 4096;
  const double cut = 1.0 - double(top_p);
  const float hi = largest(x);
  // The smallest finite logit.
  const float lo =
      fold8(x, hi, [&](float a, float b) { return std::min(a, b == kNegInf ? hi : b); });
  // The most likely token: the largest logit, the lowest id among equals.
  const size_t top = size_t(std::find(x.begin(), x.end(), hi) - x.begin());
  const float scale = hi > lo ? float(kBuckets) / (hi - lo) : 0.0f;
  std::vector<uint16_t> bucket(x.size());  // kBuckets for -inf: removed already
  std::vector<double> mass(kBuckets + 1, 0.0);
  for (size_t i = 0; i < x.size(); ++i) {
    bucket[i] = x[i] == kNegInf ? uint16_t(kBuckets)
                                : uint16_t(std::min(kBuckets - 1, int((x[i] - lo) * scale)));
    mass[bucket[i]] += p[i];
  }
  double cum = 0;
  int first = 0;  // the bucket the walk starts in; every token below it goes
  for (; first < kBuckets - 1 && cum + mass[size_t(first)] <= cut; ++first)
    cum += mass[size_t(first)];
  std::vector<int32_t> order;
  bool stopped = false;
  for (int b = first; !stopped && b < kBuckets; ++b) {  // past `first` only where sums round apart
    order.clear();
    for (size_t i = 0; i < x.size(); ++i) {
      if (b == first && bucket[i] < first) x[i] = kNegInf;
      if (bucket[i] == b) order.push_back(int32_t(i));
    }
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t c) {
      return x[size_t(a)] != x[size_t(c)] ? x[size_t(a)] < x[size_t(c)] : a > c;
    });
    for (int32_t i : order) {
      cum += p[size_t(i)];
      if (size_t(i) == top || cum > cut) {
        stopped = true;
        break;
      }
      x[size_t(i)] = kNegInf;
    }
  }
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

bool Sampler::penalised() const {
  return opts_.repetition_penalty != 1 || opts_.presence_penalty != 0 ||
         opts_.frequency_penalty != 0;
}

bool Sampler::needs_edits() const { return !opts_.logit_bias.empty() || penalised(); }

bool Sampler::greedy() const { return opts_.temperature == 0 && !needs_edits(); }

void Sampler::edits(std::span<const int32_t> history, int64_t vocab,
                    std::vector<fast::LogitEdit>& out) const {
  // The bias entries in their order and the counted tokens, then sorted by id, stably: the
  // entries of an id keep process()'s order.
  const size_t first = out.size();
  for (const auto& [id, bias] : opts_.logit_bias) {
    LMX_CHECK(id >= 0 && id < vocab, "sampler", "logit_bias token ", id,
              " is outside the vocabulary of ", vocab);
    out.push_back({id, 0, bias, true});
  }
  std::unordered_map<int32_t, int> counts;
  if (penalised())
    for (int32_t t : history)
      if (t >= 0 && t < vocab) ++counts[t];
  for (const auto& [t, n] : counts) out.push_back({t, n, 0.0f, false});
  const auto begin = out.begin() + std::ptrdiff_t(first);
  std::stable_sort(begin, out.end(),
                   [](const fast::LogitEdit& a, const fast::LogitEdit& b) { return a.id < b.id; });
  // Every entry of an id carries its count.
  for (auto it = begin; it != out.end();) {
    auto end = it;
    int32_t n = 0;
    for (; end != out.end() && end->id == it->id; ++end) n = std::max(n, end->count);
    for (; it != end; ++it) it->count = n;
  }
}

fast::Penalties Sampler::penalties() const {
  return {opts_.repetition_penalty, opts_.presence_penalty, opts_.frequency_penalty};
}

std::vector<float> Sampler::process(std::span<const float> logits, std::span<const int32_t> history) const {
  std::vector<float> x(logits.begin(), logits.end());
  const int64_t v = int64_t(x.size());
  for (const auto& [id, bias] : opts_.logit_bias) {
    LMX_CHECK(id >= 0 && id < v, "sampler", "logit_bias token ", id, " is outside the vocabulary of ", v);
    x[size_t(id)] += bias;
  }
  if (penalised()) {
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
  // NaN is never drawn (as fast::sample_tokens): it goes where removed tokens go.
  const float temperature = opts_.temperature;  // a local: the loop then vectorises
  for (float& l : x) l = std::isnan(l) ? kNegInf : l / temperature;
  if (opts_.top_k > 0 && opts_.top_k < v) {
    // HF TopK: keep everything >= the k-th largest value (ties at the threshold stay).
    std::vector<float> sorted = x;
    std::nth_element(sorted.begin(), sorted.begin() + (opts_.top_k - 1), sorted.end(), std::greater<>());
    const float kth = sorted[size_t(opts_.top_k - 1)];
    for (float& l : x)
      if (l < kth) l = kNegInf;
  }
  if (opts_.top_p < 1 || opts_.min_p > 0) {
    const std::vector<float> p = softmax(x);
    if (opts_.top_p < 1) apply_top_p(x, p, opts_.top_p);
    if (opts_.min_p > 0) {
      // HF MinP: drop tokens whose probability is below min_p times the top probability.
      const float top = largest(p);
      for (size_t i = 0; i < x.size(); ++i)
        if (p[i] < opts_.min_p * top) x[i] = kNegInf;
    }
  }
  return x;
}

std::vector<float> Sampler::probabilities(std::span<const float> logits, std::span<const int32_t> history) const {
  std::vector<float> x = process(logits, history);
  if (opts_.temperature == 0) {
    std::vector<float> p(x.size(), 0.0f);
    if (const int32_t top = argmax(x); top >= 0) p[size_t(top)] = 1;
    return p;
  }
  return softmax(x);
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  LMX_CHECK(!logits.empty(), "sampler", "empty logits");
  if (opts_.temperature == 0) return argmax(process(logits, history));
  return draw(probabilities(logits, history));
}

std::optional<fast::SampleFilter> Sampler::filter() const {
  if (opts_.temperature <= 0) return std::nullopt;
  return fast::SampleFilter{opts_.temperature, opts_.top_k, opts_.top_p, opts_.min_p};
}

uint64_t Sampler::take_word() { return counter_bits(seed_, draws_++); }

int32_t Sampler::draw(const std::vector<float>& p) {
  const double u = double(take_word() >> 11) * 0x1p-53;
  double cum = 0;
  int32_t last = -1;  // no token with mass: every logit NaN or -inf
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] <= 0) continue;
    last = int32_t(i);
    cum += p[i];
    if (u < cum) return int32_t(i);
  }
  return last;  // rounding left u just above the total
}

TokenLogprobs log_probabilities(std::span<const float> logits, int32_t chosen, int top) {
  LMX_CHECK(chosen >= 0 && size_t(chosen) < logits.size(), "logprobs", "token ", chosen,
            " is outside the logits' ", logits.size(), " entries");
  float most = kNegInf;
  for (float v : logits)
    if (v > most) most = v;  // NaN compares false: left out
  double sum = 0;
  for (float v : logits)
    if (!std::isnan(v)) sum += std::exp(double(v) - double(most));
  const double lse = double(most) + std::log(sum);
  auto logp = [&](int32_t id) {
    const float v = logits[size_t(id)];
    return std::isnan(v) ? kNegInf : float(double(v) - lse);
  };
  TokenLogprobs out;
  out.chosen = logp(chosen);
  // The `top` largest by one pass that keeps a sorted list of them: k is at most 20, V up to 262K.
  const size_t k = std::min(size_t(std::max(top, 0)), logits.size());
  auto before = [&](int32_t a, int32_t b) {  // a ranks above b
    const float x = logits[size_t(a)], y = logits[size_t(b)];
    return x > y || (x == y && a < b);
  };
  std::vector<int32_t> best;
  best.reserve(k + 1);
  for (int32_t id = 0; k > 0 && size_t(id) < logits.size(); ++id) {
    if (std::isnan(logits[size_t(id)])) continue;
    if (best.size() == k && !before(id, best.back())) continue;
    best.insert(std::upper_bound(best.begin(), best.end(), id, before), id);
    if (best.size() > k) best.pop_back();
  }
  for (int32_t id : best) out.top.emplace_back(id, logp(id));
  return out;
}

std::vector<TokenLogprobs> log_probabilities_rows(const Array& logits, std::span<const int32_t> chosen, int top) {
  const int64_t rows = int64_t(chosen.size());
  const Array f = astype(reshape(logits, {rows, -1}), Dtype::f32);  // [rows, V]
  const Array ids =
      to_device(from_vector(std::vector<int32_t>(chosen.begin(), chosen.end()), {rows, 1}), logits.device());
  const std::vector<float> lse = to_floats(logsumexp(f, {-1}));               // [rows]
  const std::vector<float> picked = to_floats(take_along_axis(f, ids, -1));   // [rows, 1]
  // More alternatives than tokens: all of them, as log_probabilities gives them.
  const size_t k = size_t(std::min<int64_t>(std::max(top, 0), f.shape(1)));
  std::vector<float> top_values;  // [rows, k]
  std::vector<int32_t> top_ids;   // [rows, k]
  if (k == 1) {  // as harnesses ask, to tell whether the text is the greedy one
    // A reduction, where topk sorts each row: 256 rows of 152K took most of a piece's time.
    const Array best = argmax(f, -1);  // [rows]; the lower id of a tie, as topk's
    top_ids = to_vector<int32_t>(best);
    top_values = to_floats(take_along_axis(f, reshape(best, {rows, 1}), -1));
  } else if (k > 1) {
    const auto [values, indices] = topk(f, int(k));
    top_values = to_floats(values);
    top_ids = to_vector<int32_t>(indices);
  }
  std::vector<TokenLogprobs> out(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const float sum = lse[size_t(r)];
    if (!std::isfinite(sum)) {
      out[size_t(r)] = log_probabilities(to_floats(slice_axis(f, 0, r, r + 1)), chosen[size_t(r)], top);
      continue;
    }
    out[size_t(r)].chosen = picked[size_t(r)] - sum;
    for (size_t j = 0; j < k; ++j)
      out[size_t(r)].top.emplace_back(top_ids[size_t(r) * k + j], top_values[size_t(r) * k + j] - sum);
  }
  return out;
}

}  // namespace lmx
