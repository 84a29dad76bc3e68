// Samplers against reference distributions written here from HF's definitions, then
// seeded draws against those distributions (chi-square), and stop strings.
#include "runtime/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>

#include "core/error.h"
#include "lmx/lmx.h"
#include "ops/ops.h"
#include "runtime/stop_strings.h"
#include "test_util.h"

namespace lmx {
namespace {

const std::vector<float> kLogits = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f, 3.0f, 1.0f, -2.0f};

std::vector<double> softmax(const std::vector<double>& x) {
  const double m = *std::max_element(x.begin(), x.end());
  std::vector<double> p(x.size());
  double s = 0;
  for (size_t i = 0; i < x.size(); ++i) s += p[i] = std::isinf(x[i]) ? 0 : std::exp(x[i] - m);
  for (double& q : p) q /= s;
  return p;
}

void expect_distribution(const std::vector<float>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-6) << "token " << i;
}

// Draws 40000 samples and checks them against `want` with a chi-square test.
void expect_draws_follow(Sampler& s, const std::vector<double>& want, std::span<const int32_t> history = {}) {
  const int n = 40000;
  std::vector<int> count(want.size(), 0);
  for (int i = 0; i < n; ++i) ++count[size_t(s.sample(kLogits, history))];
  double chi2 = 0;
  int dof = -1;
  for (size_t i = 0; i < want.size(); ++i) {
    if (want[i] == 0) {
      EXPECT_EQ(count[i], 0) << "token " << i << " has probability 0";
      continue;
    }
    chi2 += std::pow(count[i] - n * want[i], 2) / (n * want[i]);
    ++dof;
  }
  // 0.999 quantile of chi-square with up to 7 degrees of freedom is 24.3.
  EXPECT_LT(chi2, 24.3) << "dof " << dof;
}

std::vector<double> as_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

TEST(SamplerTest, GreedyPicksTheFirstMaximum) {
  Sampler s(SamplingOptions{});
  EXPECT_EQ(s.sample(kLogits, {}), 5);
  EXPECT_EQ(s.sample(std::vector<float>{1, 3, 3}, {}), 1);
}

TEST(SamplerTest, TemperatureScalesLogits) {
  SamplingOptions o;
  o.temperature = 0.7f;
  o.seed = 1;
  Sampler s(o);
  std::vector<double> x = as_double(kLogits);
  for (double& v : x) v /= 0.7;
  const std::vector<double> want = softmax(x);
  expect_distribution(s.probabilities(kLogits, {}), want);
  expect_draws_follow(s, want);
}

TEST(SamplerTest, TopKKeepsTheKLargest) {
  SamplingOptions o;
  o.temperature = 1;
  o.top_k = 3;
  o.seed = 2;
  Sampler s(o);
  std::vector<double> x = as_double(kLogits);
  // The three largest are 3.0 (5), 2.0 (0), 1.0 (1 and 6: ties at the threshold stay).
  for (size_t i : {2u, 3u, 4u, 7u}) x[i] = -INFINITY;
  const std::vector<double> want = softmax(x);
  expect_distribution(s.probabilities(kLogits, {}), want);
  expect_draws_follow(s, want);
}

TEST(SamplerTest, TopPKeepsTheSmallestSetWithTheMass) {
  SamplingOptions o;
  o.temperature = 1;
  o.top_p = 0.8f;
  o.seed = 3;
  Sampler s(o);
  const std::vector<double> p = softmax(as_double(kLogits));
  // Reference: sort descending, keep tokens until the mass before them reaches top_p.
  std::vector<size_t> order(p.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p[a] > p[b]; });
  std::vector<double> x = as_double(kLogits);
  double before = 0;
  for (size_t i : order) {
    if (before >= 0.8) x[i] = -INFINITY;
    before += p[i];
  }
  const std::vector<double> want = softmax(x);
  expect_distribution(s.probabilities(kLogits, {}), want);
  expect_draws_follow(s, want);
}

// A vocabulary of Qwen3's size, where the sampler sorts only the tokens above a cut: the
// kept set and its distribution are the full sort's (HF's definition, in f64), for peaked
// and flat distributions, with ties, and after top-k.
TEST(SamplerTest, TopPOnALargeVocabularyMatchesTheFullSort) {
  std::vector<float> logits(151936);
  uint64_t z = 12345;
  for (float& l : logits) {  // a fixed pseudo-random stream, then every 97th value repeated
    z = z * 6364136223846793005ull + 1442695040888963407ull;
    l = float(int(z >> 40) % 20000) / 1000.0f - 10.0f;
  }
  for (size_t i = 97; i < logits.size(); i += 97) logits[i] = logits[i - 1];
  struct Case {
    float temperature, top_p;
    int top_k;
  };
  for (const Case c : {Case{0.3f, 0.9f, 0}, Case{1.0f, 0.5f, 0}, Case{3.0f, 0.95f, 0},
                       Case{50.0f, 0.99f, 0}, Case{1.0f, 0.8f, 5000}}) {
    SamplingOptions o;
    o.temperature = c.temperature, o.top_p = c.top_p, o.top_k = c.top_k;
    const std::vector<float> got = Sampler(o).probabilities(logits, {});
    std::vector<double> x(logits.begin(), logits.end());
    for (double& v : x) v = double(float(v) / c.temperature);  // the sampler divides in f32
    if (c.top_k > 0) {
      std::vector<double> sorted = x;
      std::sort(sorted.begin(), sorted.end(), std::greater<>());
      for (double& v : x)
        if (v < sorted[size_t(c.top_k - 1)]) v = -INFINITY;
    }
    const std::vector<double> p = softmax(x);
    std::vector<size_t> order(p.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return x[a] > x[b]; });
    double before = 0;
    int kept = 0;
    for (size_t i : order) {
      if (before >= c.top_p)
        x[i] = -INFINITY;
      else
        ++kept;
      before += p[i];
    }
    const std::vector<double> want = softmax(x);
    int got_kept = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i] > 0, want[i] > 0) << "token " << i << ", temperature " << c.temperature;
      got_kept += got[i] > 0;
      ASSERT_NEAR(got[i], want[i], 1e-6) << "token " << i;
    }
    EXPECT_EQ(got_kept, kept);
    EXPECT_GT(kept, 1) << "temperature " << c.temperature;
  }
}

uint64_t next_random(uint64_t& z) {  // a 64-bit LCG
  return z = z * 6364136223846793005ull + 1442695040888963407ull;
}

// n logits in [-5, 5) rounded to bf16: many ties.
std::vector<float> tied_logits(size_t n, uint64_t& z) {
  std::vector<float> logits(n);
  for (float& l : logits)
    l = bf16_to_f32(f32_to_bf16(float(int(next_random(z) >> 40) % 100000) / 10000.0f - 5.0f));
  return logits;
}

// fast::sample_tokens (here its CPU kernel, the reference for the device's) takes the
// draws sample() makes from the same random words, over 40,000 logits (more than one
// chunk of the sampler's sum) with many ties (values rounded to bf16), three rows at once.
TEST(SamplerTest, SampleTokensDrawsAsSample) {
  const int64_t v = 40000, rows = 3;
  uint64_t z = 777;
  const std::vector<float> logits = tied_logits(size_t(rows * v), z);
  const Array x = from_vector(logits, {rows, v});
  struct Case {
    float temperature, top_p, min_p;
    int top_k;
  };
  for (const Case c : {Case{0.7f, 1, 0, 0}, Case{1.0f, 0.9f, 0, 0}, Case{0.6f, 0.95f, 0, 20},
                       Case{0.8f, 0.3f, 0.05f, 40}, Case{1.5f, 1, 0.1f, 0},
                       Case{1.0f, 0.999f, 0, 0}, Case{2.0f, 1, 0, 3000}}) {
    SamplingOptions o;
    o.temperature = c.temperature, o.top_p = c.top_p, o.min_p = c.min_p, o.top_k = c.top_k;
    std::vector<Sampler> host, device;
    for (int64_t r = 0; r < rows; ++r) {
      o.seed = 21 + uint64_t(r);
      host.emplace_back(o), device.emplace_back(o);
    }
    const std::optional<fast::SampleFilter> f = device[0].filter();
    ASSERT_TRUE(f.has_value());
    for (int i = 0; i < 100; ++i) {
      std::vector<uint64_t> words;
      for (Sampler& s : device) words.push_back(s.take_word());
      const std::vector<int32_t> got = to_vector<int32_t>(fast::sample_tokens(x, words, *f));
      for (size_t r = 0; r < size_t(rows); ++r)
        ASSERT_EQ(got[r], host[r].sample({logits.data() + r * size_t(v), size_t(v)}, {}))
            << "draw " << i << ", row " << r << ", temperature " << c.temperature << ", top_p "
            << c.top_p << ", min_p " << c.min_p << ", top_k " << c.top_k;
    }
  }
  // Bad arguments: a clear error, no draw.
  const std::vector<uint64_t> two = {1, 2}, three = {1, 2, 3};
  EXPECT_THROW(fast::sample_tokens(x, two, {}), Error);  // a word per row
  EXPECT_THROW(fast::sample_tokens(x, three, {0.0f}), Error);
  EXPECT_THROW(fast::sample_tokens(x, three, {1.0f, -1}), Error);
  EXPECT_THROW(fast::sample_tokens(x, three, {1.0f, 0, 0.0f}), Error);
  EXPECT_THROW(fast::sample_tokens(x, three, {1.0f, 0, 1, 1.5f}), Error);
  EXPECT_THROW(fast::sample_tokens(reshape(x, {-1}), {two.data(), 1}, {}), Error);
  EXPECT_THROW(fast::sample_tokens(astype(x, Dtype::i32), three, {}), Error);
  // Options under which a draw needs the history or a bias (edits), or nothing random.
  SamplingOptions o;
  o.temperature = 1;
  EXPECT_FALSE(Sampler(o).needs_edits());
  o.repetition_penalty = 1.1f;
  EXPECT_TRUE(Sampler(o).needs_edits());
  o.repetition_penalty = 1, o.logit_bias = {{3, 0.0f}};
  EXPECT_TRUE(Sampler(o).needs_edits());
  o.logit_bias = {}, o.frequency_penalty = 0.5f;
  EXPECT_TRUE(Sampler(o).needs_edits());
  EXPECT_TRUE(Sampler(o).filter().has_value());
  o.frequency_penalty = 0, o.temperature = 0;
  EXPECT_FALSE(Sampler(o).filter().has_value());
}

// With a logit bias and the penalties, fast::edit_logits then fast::sample_tokens (or the
// argmax at temperature 0), the CPU kernels, draw what sample() draws: over 40,000 logits
// with ties, three rows with their own histories (repeated tokens, and one outside the
// vocabulary, which the penalties skip), a bias listed twice for one token, and negative
// logits under the repetition penalty.
TEST(SamplerTest, EditLogitsThenSampleTokensDrawAsSample) {
  const int64_t v = 40000, rows = 3;
  uint64_t z = 99;
  const std::vector<float> logits = tied_logits(size_t(rows * v), z);
  const Array x = from_vector(logits, {rows, v});
  std::vector<std::vector<int32_t>> history(rows);
  for (size_t r = 0; r < size_t(rows); ++r)
    for (int i = 0; i < 300; ++i) {
      history[r].push_back(
          int32_t((next_random(z) >> 33) % 500) *
          int32_t(r + 1));  // repeats, ids past 500  // repeats, and some ids > 500
    }
  history[0].push_back(int32_t(v) + 7);  // outside the vocabulary: no penalty
  struct Case {
    float temperature, repetition, presence, frequency, top_p;
  };
  for (const Case c :
       {Case{0.8f, 1.3f, 0, 0, 1}, Case{1.0f, 1, 0.5f, 0.1f, 0.9f},
        Case{0.7f, 1.2f, 0.3f, 0.05f, 1}, Case{0, 1.5f, 0, 0, 1}, Case{0, 1, 0, 0, 1}}) {
    SamplingOptions o;
    o.temperature = c.temperature, o.repetition_penalty = c.repetition,
    o.presence_penalty = c.presence, o.frequency_penalty = c.frequency, o.top_p = c.top_p;
    o.logit_bias = {{5, 2.5f}, {17, -100.0f}, {5, 0.75f}, {1234, 3.0f}};
    std::vector<Sampler> host, device;
    for (int64_t r = 0; r < rows; ++r) {
      o.seed = 7 + uint64_t(r);
      host.emplace_back(o), device.emplace_back(o);
    }
    ASSERT_TRUE(device[0].needs_edits());
    for (int i = 0; i < 50; ++i) {
      std::vector<int64_t> starts = {0};
      std::vector<fast::LogitEdit> edits;
      for (size_t r = 0; r < size_t(rows); ++r) {
        device[r].edits(history[r], v, edits);
        starts.push_back(int64_t(edits.size()));
      }
      const Array edited = fast::edit_logits(x, starts, edits, device[0].penalties());
      std::vector<int32_t> got;
      if (const std::optional<fast::SampleFilter> f = device[0].filter()) {
        std::vector<uint64_t> words;
        for (Sampler& s : device) words.push_back(s.take_word());
        got = to_vector<int32_t>(fast::sample_tokens(edited, words, *f));
      } else {
        got = to_vector<int32_t>(argmax(edited, -1));
      }
      for (size_t r = 0; r < size_t(rows); ++r) {
        const int32_t want = host[r].sample({logits.data() + r * size_t(v), size_t(v)}, history[r]);
        ASSERT_EQ(got[r], want) << "draw " << i << ", row " << r << ", temperature "
                                << c.temperature << ", repetition " << c.repetition;
        history[r].push_back(want);  // the draws move the penalties
      }
    }
  }
  // Bad edits: a clear error.
  const std::vector<fast::LogitEdit> outside = {{int32_t(v), 1, 0, false}},
                                     unsorted = {{9, 1, 0, false}, {3, 1, 0, false}};
  const std::vector<int64_t> one = {0, 1, 1, 1}, two = {0, 2, 2, 2};
  EXPECT_THROW(fast::edit_logits(x, one, outside, {}), Error);
  EXPECT_THROW(fast::edit_logits(x, two, unsorted, {}), Error);
  const std::vector<fast::LogitEdit> counts = {{3, 1, 0, false},
                                               {3, 2, 1.0f, true}};  // one id, two counts
  EXPECT_THROW(fast::edit_logits(x, two, counts, {}), Error);
  EXPECT_THROW(fast::edit_logits(x, std::vector<int64_t>{0, 1}, outside, {}), Error);
  SamplingOptions bad;
  bad.logit_bias = {{int32_t(v), 1.0f}};
  std::vector<fast::LogitEdit> e;
  EXPECT_THROW(Sampler(bad).edits({}, v, e), Error);
}

// NaN logits are never drawn, greedy or sampled, by the host sampler or by
// fast::sample_tokens; where no token can be (every logit NaN, or for a draw NaN or
// -inf) both give -1, which decoding turns into a clear error.
TEST(SamplerTest, NaNIsNeverDrawnAndARowWithoutATokenGivesMinusOne) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const std::vector<std::vector<float>> rows = {
      {nan, 0.5f, nan, 0.25f, nan, 0.5f, nan, 0},  // NaN where the mass would be
      {nan, nan, nan, nan, nan, nan, nan, nan},
      {-inf, nan, -inf, -inf, nan, -inf, -inf, -inf},
      {-inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf}};
  const std::vector<int32_t> greedy_want = {1, -1, 0, 0};  // -inf is a value, NaN none
  struct Case {
    float temperature, top_p, min_p;
    int top_k;
  };
  for (const Case c : {Case{0, 1, 0, 0}, Case{1.0f, 1, 0, 0}, Case{0.7f, 0.8f, 0, 0}, Case{1.0f, 1, 0, 3},
                       Case{1.0f, 0.9f, 0.1f, 5}}) {
    SamplingOptions o;
    o.temperature = c.temperature, o.top_p = c.top_p, o.min_p = c.min_p, o.top_k = c.top_k, o.seed = 5;
    Sampler host(o), device(o);
    const std::optional<fast::SampleFilter> f = device.filter();
    for (int i = 0; i < 200; ++i)
      for (size_t r = 0; r < rows.size(); ++r) {
        const int32_t got = host.sample(rows[r], {});
        SCOPED_TRACE("row " + std::to_string(r) + ", temperature " + std::to_string(c.temperature) +
                     ", top_k " + std::to_string(c.top_k));
        if (!f) {
          ASSERT_EQ(got, greedy_want[r]);
          continue;
        }
        const std::vector<uint64_t> word = {device.take_word()};
        ASSERT_EQ(got, to_vector<int32_t>(fast::sample_tokens(from_vector(rows[r], {1, 8}), word, *f))[0]);
        if (r == 0)
          ASSERT_TRUE(got == 1 || got == 3 || got == 5 || got == 7) << got;
        else
          ASSERT_EQ(got, -1);
      }
    if (!f) {
      EXPECT_EQ(host.probabilities(rows[1], {}), std::vector<float>(8, 0.0f));
    } else {
      const std::vector<float> p = host.probabilities(rows[0], {});
      EXPECT_TRUE(p[0] == 0 && p[2] == 0 && p[4] == 0 && p[6] == 0);
      EXPECT_EQ(host.probabilities(rows[3], {}), std::vector<float>(8, 0.0f));
    }
  }
}

TEST(SamplerTest, MinPDropsUnlikelyTokens) {
  SamplingOptions o;
  o.temperature = 1;
  o.min_p = 0.2f;
  o.seed = 4;
  Sampler s(o);
  const std::vector<double> p = softmax(as_double(kLogits));
  const double top = *std::max_element(p.begin(), p.end());
  std::vector<double> x = as_double(kLogits);
  for (size_t i = 0; i < p.size(); ++i)
    if (p[i] < 0.2 * top) x[i] = -INFINITY;
  const std::vector<double> want = softmax(x);
  expect_distribution(s.probabilities(kLogits, {}), want);
  expect_draws_follow(s, want);
}

TEST(SamplerTest, PenaltiesAndBiasFollowTheirDefinitions) {
  SamplingOptions o;
  o.temperature = 1;
  o.repetition_penalty = 1.5f;
  o.presence_penalty = 0.25f;
  o.frequency_penalty = 0.5f;
  o.logit_bias = {{3, 2.0f}};
  o.seed = 5;
  Sampler s(o);
  const std::vector<int32_t> history = {0, 0, 4, 5};
  std::vector<double> x = as_double(kLogits);
  x[3] += 2.0;
  std::map<int, int> counts{{0, 2}, {4, 1}, {5, 1}};
  for (auto [t, n] : counts) {
    x[size_t(t)] = x[size_t(t)] < 0 ? x[size_t(t)] * 1.5 : x[size_t(t)] / 1.5;  // HF: once per distinct token
    x[size_t(t)] -= 0.25 + 0.5 * n;
  }
  const std::vector<double> want = softmax(x);
  expect_distribution(s.probabilities(kLogits, history), want);
  expect_draws_follow(s, want, history);
}

TEST(SamplerTest, SeedMakesDrawsReproducible) {
  SamplingOptions o;
  o.temperature = 1;
  o.seed = 99;
  Sampler a(o), b(o);
  std::vector<int32_t> da, db;
  for (int i = 0; i < 50; ++i) da.push_back(a.sample(kLogits, {})), db.push_back(b.sample(kLogits, {}));
  EXPECT_EQ(da, db);
  o.seed = 100;
  Sampler c(o);
  std::vector<int32_t> dc;
  for (int i = 0; i < 50; ++i) dc.push_back(c.sample(kLogits, {}));
  EXPECT_NE(da, dc);
}

TEST(SamplerTest, RejectsBadOptions) {
  SamplingOptions o;
  o.top_p = 0;
  EXPECT_THROW(Sampler{o}, Error);
  o = {};
  o.temperature = -1;
  EXPECT_THROW(Sampler{o}, Error);
  o = {};
  o.logit_bias = {{99, 1.0f}};
  Sampler s(o);
  EXPECT_THROW(s.sample(kLogits, {}), Error);
}

TEST(SamplerTest, LogProbabilitiesAreTheLogSoftmaxInDouble) {
  // kLogits has a tie (ids 1 and 6 at 1.0): the lower id ranks first.
  const std::vector<double> p = softmax({kLogits.begin(), kLogits.end()});
  const TokenLogprobs lp = log_probabilities(kLogits, 4, 4);
  EXPECT_NEAR(lp.chosen, std::log(p[4]), 1e-6);
  const std::vector<int32_t> order = {5, 0, 1, 6};
  ASSERT_EQ(lp.top.size(), order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    EXPECT_EQ(lp.top[i].first, order[i]);
    EXPECT_NEAR(lp.top[i].second, std::log(p[size_t(order[i])]), 1e-6);
  }
  // More alternatives than tokens: all of them. None: the chosen token alone.
  EXPECT_EQ(log_probabilities(kLogits, 0, 20).top.size(), kLogits.size());
  EXPECT_TRUE(log_probabilities(kLogits, 0, 0).top.empty());
  // Large logits do not overflow; NaN is impossible and never listed; -inf is listed last.
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const std::vector<float> odd = {1000.0f, nan, 999.0f, -inf};
  const TokenLogprobs o = log_probabilities(odd, 2, 4);
  EXPECT_NEAR(o.chosen, -1.0 - std::log1p(std::exp(-1.0)), 1e-6);
  ASSERT_EQ(o.top.size(), 3u);
  EXPECT_EQ(o.top[0].first, 0);
  EXPECT_EQ(o.top[1].first, 2);
  EXPECT_EQ(o.top[2].first, 3);
  EXPECT_EQ(o.top[2].second, -inf);
  EXPECT_EQ(log_probabilities(odd, 1, 0).chosen, -inf);
  EXPECT_THROW(log_probabilities(odd, 4, 1), Error);
}

// Rows scored where their logits are (on the CPU here, and on CUDA where a GPU is
// visible): each row as log_probabilities scores it alone, ties to the lower id, and a
// row with NaN (whose sum is not finite) through the host's own path.
TEST(SamplerTest, LogProbabilitiesOfRowsAreEachRowsAlone) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const std::vector<float> odd = {1000.0f, nan, 999.0f, -inf, 0.0f, 0.0f, 0.0f, 0.0f};
  std::vector<float> flat(kLogits.begin(), kLogits.end());
  ASSERT_EQ(kLogits.size(), odd.size());
  flat.insert(flat.end(), odd.begin(), odd.end());
  std::vector<float> spread(kLogits.size());
  for (size_t i = 0; i < spread.size(); ++i) spread[i] = 40.0f - 7.0f * float(i);  // exp underflows in f32 past a few
  flat.insert(flat.end(), spread.begin(), spread.end());
  const std::vector<int32_t> chosen = {4, 2, 7};
  std::vector<Device> devices = {Device::cpu()};
  if (test::cuda_visible()) devices.push_back(Device::parse("cuda"));
  for (const Device& d : devices) {
    const Array logits = to_device(from_floats(flat, {3, int64_t(kLogits.size())}), d);
    for (int top : {0, 1, 4, 20}) {  // 20: more alternatives than the 8 tokens, so all of them
      const std::vector<TokenLogprobs> got = log_probabilities_rows(logits, chosen, top);
      ASSERT_EQ(got.size(), 3u);
      for (size_t r = 0; r < 3; ++r) {
        const TokenLogprobs want =
            log_probabilities({flat.data() + r * kLogits.size(), kLogits.size()}, chosen[r], top);
        const std::string at = d.str() + ", row " + std::to_string(r) + ", top " + std::to_string(top);
        EXPECT_NEAR(got[r].chosen, want.chosen, 1e-5) << at;
        ASSERT_EQ(got[r].top.size(), want.top.size()) << at;
        for (size_t j = 0; j < want.top.size(); ++j) {
          EXPECT_EQ(got[r].top[j].first, want.top[j].first) << at << ", alternative " << j;
          if (std::isinf(want.top[j].second))  // -inf listed last, as impossible as it gets
            EXPECT_EQ(got[r].top[j].second, want.top[j].second) << at << ", alternative " << j;
          else
            EXPECT_NEAR(got[r].top[j].second, want.top[j].second, 1e-5) << at << ", alternative " << j;
        }
      }
    }
  }
}

TEST(StopStringTest, HoldsBackPossibleStartsAcrossTokenBoundaries) {
  StopStringMatcher m({"</s>", "STOP"});
  std::string shown;
  for (const char* piece : {"Hello <", "/", "b> S", "TO", "P! more"}) {
    const auto r = m.push(piece);
    // Nothing emitted may ever be retracted: shown text is always a prefix of the input
    // that contains no stop string.
    shown += r.emit;
    if (r.stopped) break;
  }
  EXPECT_EQ(shown, "Hello </b> ");
}

TEST(StopStringTest, EmitsEverythingWhenNoStopMatches) {
  StopStringMatcher m({"xyz"});
  std::string shown;
  for (const char* piece : {"ab", "cx", "y", "w"}) shown += m.push(piece).emit;
  shown += m.flush();
  EXPECT_EQ(shown, "abcxyw");
}

TEST(StopStringTest, EarliestStopWins) {
  StopStringMatcher m({"bc", "abcd"});
  const auto r = m.push("xabcd");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.emit, "x");  // "abcd" starts first
}

}  // namespace
}  // namespace lmx
