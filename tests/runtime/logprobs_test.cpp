// GenerateOptions::logprobs and TextModel::score_ids / score_batch: each token's log-probability and the
// most likely alternatives, against transformers' logits for the fixture models
// (log-softmax taken here in double), across decode steps, and under sampling options
// they must not see.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "fixture_copy.h"
#include "io/safetensors.h"
#include "lmx/lmx.h"
#include "models/loader.h"
#include "runtime/text_model.h"
#include "test_util.h"

namespace lmx {
namespace {

namespace fs = std::filesystem;
const fs::path kModels = fs::path(LMX_FIXTURES_DIR) / "models";
const char* const kF32Models[] = {"llama-f32", "qwen3-f32", "gemma3_text-f32"};

// The f32 fixtures on the CPU, and where a GPU is visible on CUDA in f32 too (there every
// step's logits come back to the host: the plain decode step).
std::vector<LoadOptions> f32_loads() {
  std::vector<LoadOptions> loads(1);
  loads[0].backend = "cpu";
  if (test::cuda_visible()) {
    loads.push_back(loads[0]);
    loads.back().backend = "cuda";
    loads.back().dtype = "f32";
  }
  return loads;
}

// The allowed difference from transformers' f32 logprobs: the same math in another order.
double tolerance(const LoadOptions& lo) { return lo.backend == "cuda" ? 1e-3 : 1e-4; }

struct Golden {
  std::vector<int32_t> input_ids, greedy_prompt, greedy_ids;  // input_ids [rows, len]
  std::vector<float> logits;                                  // [rows, len, V]
  int64_t rows = 0, len = 0, vocab = 0;
};

Golden read_golden(const std::string& name) {
  const io::SafetensorsFile g = io::SafetensorsFile::open(kModels / name / "golden.safetensors");
  auto read = [&]<class T>(const char* tensor, std::vector<T>& out) {
    const auto* info = g.find(tensor);
    const auto bytes = g.data(*info);
    out.resize(bytes.size() / sizeof(T));
    std::memcpy(out.data(), bytes.data(), bytes.size());
    return info->shape;
  };
  Golden out;
  const auto shape = read("logits", out.logits);
  out.rows = shape[0], out.len = shape[1], out.vocab = shape[2];
  read("input_ids", out.input_ids);
  read("greedy_prompt", out.greedy_prompt);
  read("greedy_ids", out.greedy_ids);
  return out;
}

std::vector<double> log_softmax(std::span<const float> x) {
  const double m = *std::max_element(x.begin(), x.end());
  double s = 0;
  for (float v : x) s += std::exp(double(v) - m);
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = double(x[i]) - m - std::log(s);
  return out;
}

GenerateOptions scored(int max_tokens, int top) {
  GenerateOptions o;
  o.max_tokens = max_tokens;
  o.ignore_eos = true;
  o.logprobs = top;
  return o;
}

std::vector<Token> tokens_of(Stream s) {
  std::vector<Token> out;
  for (const Token& t : s) out.push_back(t);
  return out;
}

// The token's logprob and its list against `want` (log-softmax over the vocabulary): each
// listed id carries its own logprob, and the list holds the largest ones in order (compared
// by value, so that a near tie may list either id).
void expect_scores(const Token& t, const std::vector<double>& want, size_t top, double tol, const std::string& at) {
  std::vector<double> sorted = want;
  std::sort(sorted.begin(), sorted.end(), std::greater<>());
  EXPECT_NEAR(t.logprob, want[size_t(t.id)], tol) << at;
  ASSERT_EQ(t.top_logprobs.size(), top) << at;
  for (size_t i = 0; i < top; ++i) {
    const auto [id, lp] = t.top_logprobs[i];
    EXPECT_NEAR(lp, want[size_t(id)], tol) << at << ", alternative " << i;
    EXPECT_NEAR(lp, sorted[i], tol) << at << ", alternative " << i;
    if (i > 0) {
      EXPECT_GE(t.top_logprobs[i - 1].second, lp) << at;
    }
  }
}

TEST(LogprobsTest, FirstTokensMatchTransformersLogSoftmax) {
  for (const LoadOptions& lo : f32_loads()) {
    for (const char* name : kF32Models) {
      const Golden g = read_golden(name);
      auto model = load_model(kModels / name, lo);
      // Every prefix of both rows: the last position's logits score the token after it.
      for (int64_t r = 0; r < g.rows; ++r) {
        for (int64_t k = 1; k <= g.len; ++k) {
          const auto row = g.input_ids.begin() + r * g.len;
          const std::vector<Token> got = tokens_of(model->generate_ids({row, row + k}, scored(1, 5)));
          ASSERT_EQ(got.size(), 1u);
          const std::span<const float> hf(g.logits.data() + (r * g.len + k - 1) * g.vocab, size_t(g.vocab));
          const std::vector<double> want = log_softmax(hf);
          const std::string at = std::string(name) + " on " + lo.backend + ", row " + std::to_string(r) +
                                 ", prefix " + std::to_string(k);
          expect_scores(got[0], want, 5, tolerance(lo), at);
          // Greedy: the token is the most likely one (up to a tie within the tolerance).
          EXPECT_NEAR(want[size_t(got[0].id)], *std::max_element(want.begin(), want.end()), tolerance(lo)) << at;
        }
      }
    }
  }
}

TEST(LogprobsTest, DecodeStepsScoreAsAFreshPrefillDoes) {
  for (const LoadOptions& lo : f32_loads()) {
    for (const char* name : kF32Models) {
      const Golden g = read_golden(name);
      auto model = load_model(kModels / name, lo);
      const std::vector<Token> run = tokens_of(model->generate_ids(g.greedy_prompt, scored(20, 3)));
      EXPECT_EQ(model->metrics().decode_path, "plain") << "logprobs read every step's logits";
      ASSERT_EQ(run.size(), g.greedy_ids.size());
      for (size_t i = 0; i < run.size(); ++i) {
        const std::string at = std::string(name) + " on " + lo.backend + ", step " + std::to_string(i);
        EXPECT_EQ(run[i].id, g.greedy_ids[i]) << at;
        ASSERT_EQ(run[i].top_logprobs.size(), 3u) << at;
        EXPECT_EQ(run[i].top_logprobs[0].first, run[i].id) << at;
        EXPECT_EQ(run[i].top_logprobs[0].second, run[i].logprob) << at;
        EXPECT_LE(run[i].logprob, 0.0f) << at;
      }
      // The steps read from the cache; a fresh run prefills the same tokens.
      for (size_t i : {size_t(1), size_t(9), size_t(19)}) {
        std::vector<int32_t> prefix = g.greedy_prompt;
        prefix.insert(prefix.end(), g.greedy_ids.begin(), g.greedy_ids.begin() + long(i));
        const std::vector<Token> fresh = tokens_of(model->generate_ids(prefix, scored(1, 3)));
        ASSERT_EQ(fresh.size(), 1u);
        EXPECT_EQ(fresh[0].id, run[i].id);
        EXPECT_NEAR(fresh[0].logprob, run[i].logprob, tolerance(lo) / 10) << name << ", step " << i;
        for (size_t j = 0; j < 3; ++j)
          EXPECT_NEAR(fresh[0].top_logprobs[j].second, run[i].top_logprobs[j].second, tolerance(lo) / 10);
      }
    }
  }
}

TEST(LogprobsTest, AreTheModelsOwnWhateverTheDraw) {
  // A sampled run's scores must be those of the raw logits, as a greedy run reads them at
  // the same prefix: temperature, top-k, penalties and bias change only the draw.
  LoadOptions lo;
  lo.backend = "cpu";
  auto model = load_model(kModels / "qwen3-f32", lo);
  GenerateOptions o = scored(12, 20);
  o.temperature = 1.7f;
  o.top_k = 4;
  o.repeat_penalty = 1.4f;
  o.presence_penalty = 0.5f;
  o.logit_bias = {{7, 4.0f}, {11, -3.0f}};
  o.seed = 5;
  const std::vector<int32_t> prompt = {1, 2, 3, 4, 5};
  const std::vector<Token> run = tokens_of(model->generate_ids(prompt, o));
  ASSERT_EQ(run.size(), 12u);
  std::vector<int32_t> prefix = prompt;
  int listed = 0;
  for (size_t i = 0; i < run.size(); ++i) {
    const std::vector<Token> fresh = tokens_of(model->generate_ids(prefix, scored(1, 20)));
    ASSERT_EQ(fresh.size(), 1u);
    ASSERT_EQ(fresh[0].top_logprobs.size(), 20u);
    for (size_t j = 0; j < 20; ++j) {
      EXPECT_EQ(run[i].top_logprobs[j].first, fresh[0].top_logprobs[j].first) << "step " << i;
      EXPECT_NEAR(run[i].top_logprobs[j].second, fresh[0].top_logprobs[j].second, 1e-5) << "step " << i;
      if (run[i].top_logprobs[j].first == run[i].id) {
        EXPECT_EQ(run[i].top_logprobs[j].second, run[i].logprob);
        ++listed;
      }
    }
    prefix.push_back(run[i].id);
  }
  EXPECT_GE(listed, 6) << "most sampled tokens should be among the model's 20 most likely";
}

TEST(LogprobsTest, ScoreIdsMatchTransformersAtEveryPosition) {
  for (const LoadOptions& lo : f32_loads()) {
    for (const char* name : kF32Models) {
      const Golden g = read_golden(name);
      auto model = load_model(kModels / name, lo);
      for (int64_t r = 0; r < g.rows; ++r) {
        const std::span<const int32_t> row(g.input_ids.data() + r * g.len, size_t(g.len));
        const std::vector<Token> got = model->score_ids(row, 4);
        ASSERT_EQ(got.size(), size_t(g.len - 1));
        for (int64_t p = 0; p + 1 < g.len; ++p) {
          const std::string at = std::string(name) + " on " + lo.backend + ", row " + std::to_string(r) +
                                 ", token " + std::to_string(p + 1);
          EXPECT_EQ(got[size_t(p)].id, row[size_t(p + 1)]) << at;
          EXPECT_TRUE(got[size_t(p)].text.empty()) << at;
          const std::span<const float> hf(g.logits.data() + (r * g.len + p) * g.vocab, size_t(g.vocab));
          expect_scores(got[size_t(p)], log_softmax(hf), 4, tolerance(lo), at);
        }
      }
      EXPECT_EQ(model->metrics().prompt_tokens, g.len);
    }
  }
}

// Texts of several lengths scored in one batch: each text's scores are transformers' at
// its positions (a prefix of a golden row sees what the whole row sees there, under the
// causal mask), whatever the padding its batch gave it.
TEST(LogprobsTest, ScoreBatchMatchesTransformersForTextsOfManyLengths) {
  for (const LoadOptions& lo : f32_loads()) {
    for (const char* name : kF32Models) {
      const Golden g = read_golden(name);
      auto model = load_model(kModels / name, lo);
      struct Text {
        int64_t row, len;
      };
      const std::vector<Text> texts = {{0, g.len}, {1, 2}, {1, g.len - 3}, {0, 1}, {0, 5}, {1, g.len}};
      std::vector<std::vector<int32_t>> ids;
      for (const Text& t : texts)
        ids.emplace_back(g.input_ids.begin() + t.row * g.len, g.input_ids.begin() + t.row * g.len + t.len);
      for (int top : {1, 3}) {  // one alternative takes a path of its own (argmax)
        const std::vector<std::vector<Token>> got = model->score_batch(ids, top);
        ASSERT_EQ(got.size(), texts.size());
        for (size_t i = 0; i < texts.size(); ++i) {
          ASSERT_EQ(got[i].size(), size_t(texts[i].len - 1)) << "text " << i;
          for (int64_t p = 0; p + 1 < texts[i].len; ++p) {
            const std::string at = std::string(name) + " on " + lo.backend + ", text " + std::to_string(i) +
                                   ", token " + std::to_string(p + 1) + ", top " + std::to_string(top);
            EXPECT_EQ(got[i][size_t(p)].id, ids[i][size_t(p + 1)]) << at;
            const std::span<const float> hf(g.logits.data() + (texts[i].row * g.len + p) * g.vocab,
                                            size_t(g.vocab));
            expect_scores(got[i][size_t(p)], log_softmax(hf), size_t(top), tolerance(lo), at);
          }
        }
      }
      int64_t total = 0;
      for (const Text& t : texts) total += t.len;
      EXPECT_EQ(model->metrics().prompt_tokens, total);
    }
  }
}

TEST(LogprobsTest, ScoreBatchNamesTheTextItRefuses) {
  LoadOptions lo;
  lo.backend = "cpu";
  lo.context_len = 8;
  auto model = load_model(kModels / "qwen3-f32", lo);
  const std::vector<std::vector<int32_t>> fine = {{1, 2}, {3, 4, 5}};
  auto refused = [&](std::vector<int32_t> bad, const std::string& says) {
    std::vector<std::vector<int32_t>> texts = fine;
    texts.push_back(std::move(bad));
    try {
      model->score_batch(texts);
      ADD_FAILURE() << "accepted; expected: " << says;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
    EXPECT_EQ(model->err(), make_error_code(Errc::invalid_input));
  };
  refused({}, "text 2 is empty");
  refused({1, 99999}, "text 2: token 99999 is outside the vocabulary");
  refused(std::vector<int32_t>(9, 1), "text 2 has 9 tokens, more than the context length of 8");
  EXPECT_TRUE(model->score_batch({}).empty());
  const std::vector<std::vector<Token>> ok = model->score_batch(fine, 1);
  EXPECT_EQ(ok[0].size(), 1u);
  EXPECT_EQ(ok[1].size(), 2u);
  EXPECT_FALSE(model->err());
}

// NaN logits count as impossible, in scores as in a generation's logprobs: a model whose
// logits are all NaN scores every token -inf, with no alternatives.
TEST(LogprobsTest, NaNLogitsScoreAsImpossible) {
  const test::FixtureCopy copy("qwen3-f32", "logprobs_nan");
  copy.fill_nan("model.norm.weight");
  for (LoadOptions lo : f32_loads()) {
    auto model = load_model(copy.dir(), lo);
    const std::vector<std::vector<int32_t>> texts = {{1, 2, 3}, {4, 5}};
    const std::vector<std::vector<Token>> got = model->score_batch(texts, 2);
    for (size_t i = 0; i < texts.size(); ++i) {
      ASSERT_EQ(got[i].size(), texts[i].size() - 1);
      for (const Token& t : got[i]) {
        EXPECT_EQ(t.logprob, -std::numeric_limits<float>::infinity()) << lo.backend;
        EXPECT_TRUE(t.top_logprobs.empty()) << lo.backend;
      }
    }
  }
}

// On CUDA in bf16 a stream with logprobs takes the fused one-sequence step, a token at a
// time, and scores that step's own logits: its tokens are the stream's without logprobs,
// each greedy token is its own most likely, and its scores are those a prefill of the same
// text gives, within bf16's rounding (the two paths sum in other orders).
TEST(LogprobsTest, CudaFusedStepScoresItsOwnLogits) {
  if (!test::cuda_visible()) GTEST_SKIP() << "no CUDA device visible";
  LoadOptions lo = test::cuda_bf16();
  lo.deterministic = true;
  for (const char* name : kF32Models) {
    auto model = load_model(kModels / name, lo);
    const std::vector<int32_t> prompt = {1, 2, 3, 4, 5};
    const std::vector<Token> want = tokens_of(model->generate_ids(prompt, scored(24, -1)));
    const std::vector<Token> got = tokens_of(model->generate_ids(prompt, scored(24, 3)));
    EXPECT_EQ(model->metrics().decode_path.rfind("fused-", 0), 0u) << name << ": " << model->metrics().decode_path;
    ASSERT_EQ(got.size(), want.size()) << name;
    std::vector<int32_t> text = prompt;
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].id, want[i].id) << name << ", token " << i;
      text.push_back(got[i].id);
    }
    const std::vector<Token> prefill = model->score_ids(text, 3);
    for (size_t i = 0; i < got.size(); ++i) {
      const std::string at = std::string(name) + ", token " + std::to_string(i);
      ASSERT_EQ(got[i].top_logprobs.size(), 3u) << at;
      EXPECT_EQ(got[i].top_logprobs[0].first, got[i].id) << at;
      EXPECT_NEAR(got[i].logprob, got[i].top_logprobs[0].second, 1e-6) << at;
      const Token& p = prefill[prompt.size() - 1 + i];
      EXPECT_EQ(p.id, got[i].id) << at;
      EXPECT_NEAR(got[i].logprob, p.logprob, 0.02 + 0.02 * std::abs(p.logprob)) << at;
    }
  }
}

TEST(LogprobsTest, ScoresInPassesAsInOne) {
  // Passes of 5 positions continue the cache: past Gemma 3's sliding window of 8 the
  // rotating caches of its local layers wrap.
  for (const char* name : kF32Models) {
    const Golden g = read_golden(name);
    const auto model = models::load_causal_lm(kModels / name);
    const std::span<const int32_t> row(g.input_ids.data(), size_t(g.len));
    for (int64_t budget : {1, 5, 23}) {
      const std::vector<Token> got = runtime::score_tokens(*model, row, 3, Device::cpu(), budget);
      ASSERT_EQ(got.size(), size_t(g.len - 1));
      for (int64_t p = 0; p + 1 < g.len; ++p) {
        const std::span<const float> hf(g.logits.data() + p * g.vocab, size_t(g.vocab));
        expect_scores(got[size_t(p)], log_softmax(hf), 3, 1e-4,
                      std::string(name) + ", passes of " + std::to_string(budget) + ", token " + std::to_string(p + 1));
      }
    }
  }
}

TEST(LogprobsTest, LongTextsScoreAsGenerationSeesThem) {
  // 600 tokens: three pieces of logits (256 rows each) in one pass, and passes of 100 that
  // split them otherwise. Each position's distribution is the one a generation reads there.
  // (Past the fixture's 256 positions, which a random model does not mind.)
  LoadOptions lo;
  lo.backend = "cpu";
  lo.context_len = 600;
  auto model = load_model(kModels / "qwen3-f32", lo);
  const auto causal = models::load_causal_lm(kModels / "qwen3-f32");
  std::vector<int32_t> ids(600);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 7919 + 13) % 500);
  const std::vector<Token> one = model->score_ids(ids, 3);
  const std::vector<Token> passes = runtime::score_tokens(*causal, ids, 3, Device::cpu(), 100);
  ASSERT_EQ(one.size(), 599u);
  ASSERT_EQ(passes.size(), 599u);
  for (size_t p : {0, 99, 100, 255, 256, 511, 512, 598}) {
    const std::vector<Token> gen =
        tokens_of(model->generate_ids({ids.begin(), ids.begin() + long(p) + 1}, scored(1, 3)));
    ASSERT_EQ(gen.size(), 1u);
    for (const std::vector<Token>* run : {&one, &passes}) {
      const Token& t = (*run)[p];
      EXPECT_EQ(t.id, ids[p + 1]);
      for (size_t j = 0; j < 3; ++j) {
        EXPECT_EQ(t.top_logprobs[j].first, gen[0].top_logprobs[j].first) << "position " << p;
        EXPECT_NEAR(t.top_logprobs[j].second, gen[0].top_logprobs[j].second, 1e-4) << "position " << p;
      }
    }
  }
}

TEST(LogprobsTest, ScoreIdsRefusesBadIdsAndServesOn) {
  LoadOptions lo;
  lo.backend = "cpu";
  auto model = load_model(kModels / "qwen3-f32", lo);
  EXPECT_TRUE(model->score_ids(std::vector<int32_t>{7}).empty());  // one token: nothing before it to score by
  const std::vector<std::vector<int32_t>> bad = {{}, {1, 99999}, {1, -1}};
  for (const auto& ids : bad) {
    EXPECT_THROW(model->score_ids(ids), Error);
    EXPECT_EQ(model->err(), make_error_code(Errc::invalid_input));
  }
  EXPECT_THROW(model->score_ids(std::vector<int32_t>{1, 2}, 21), Error);
  LoadOptions short_context = lo;
  short_context.context_len = 8;
  auto small = load_model(kModels / "qwen3-f32", short_context);
  try {
    small->score_ids(std::vector<int32_t>(9, 1));
    ADD_FAILURE() << "9 tokens past a context of 8 were scored";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("context length"), std::string::npos) << e.what();
  }
  // A stream open on the model is ended, and the model goes on.
  Stream open = model->generate_ids({1, 2, 3}, scored(5, 0));
  ASSERT_TRUE(open.next());
  EXPECT_EQ(model->score_ids(std::vector<int32_t>{1, 2, 3, 4}, 2).size(), 3u);
  EXPECT_FALSE(open.next());
  EXPECT_FALSE(model->err());
  EXPECT_EQ(tokens_of(model->generate_ids({1, 2, 3}, scored(2, 1))).size(), 2u);
}

TEST(LogprobsTest, OffByDefaultAndOutOfRangeIsRefused) {
  LoadOptions lo;
  lo.backend = "cpu";
  auto model = load_model(kModels / "llama-f32", lo);
  for (const Token& t : tokens_of(model->generate_ids({1, 2, 3}, scored(3, -1)))) {
    EXPECT_EQ(t.logprob, 0.0f);
    EXPECT_TRUE(t.top_logprobs.empty());
  }
  const std::vector<Token> bare = tokens_of(model->generate_ids({1, 2, 3}, scored(2, 0)));
  ASSERT_EQ(bare.size(), 2u);
  EXPECT_LT(bare[0].logprob, 0.0f);
  EXPECT_TRUE(bare[0].top_logprobs.empty());
  for (int bad : {-2, 21}) {
    try {
      model->generate_ids({1, 2, 3}, scored(2, bad));
      ADD_FAILURE() << "logprobs " << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("logprobs"), std::string::npos) << e.what();
    }
    EXPECT_EQ(model->err(), make_error_code(Errc::invalid_input));
  }
  // The model still serves the next request.
  EXPECT_EQ(tokens_of(model->generate_ids({1, 2, 3}, scored(2, 1))).size(), 2u);
}

}  // namespace
}  // namespace lmx
