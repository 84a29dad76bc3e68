// TextModel::generate_rows: prompts decoded in one batch, each row with its own lengths,
// seeds and stop conditions, streamed through a callback. On the CPU every row must be the
// lone generation of the same request (the fixtures' f32 rows give the same tokens alone and
// in a batch); on CUDA, where a batch's step sums otherwise than a lone one's, each row must
// keep its own limits and its streamed text must be its result.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "lmx/lmx.h"
#include "test_util.h"

namespace lmx {
namespace {

namespace fs = std::filesystem;
const fs::path kModels = fs::path(LMX_FIXTURES_DIR) / "models";

std::unique_ptr<TextModel> load(const std::string& name, int context_len = 0) {
  LoadOptions o;
  o.backend = "cpu";
  o.context_len = context_len;
  return load_model(kModels / name, o);
}

struct Lone {
  std::vector<int32_t> ids;
  std::string text, finish_reason;
};

Lone lone(TextModel& model, const std::vector<int32_t>& prompt, const GenerateOptions& o) {
  Lone out;
  for (const Token& t : model.generate_ids(prompt, o)) {
    out.ids.push_back(t.id);
    out.text += t.text;
  }
  out.finish_reason = model.metrics().finish_reason;
  return out;
}

using test::greedy;

// Runs generate_rows and checks that each row's streamed tokens make its result.
std::vector<BatchResult> run_rows(TextModel& model, const std::vector<std::vector<int32_t>>& prompts,
                                  const std::vector<GenerateOptions>& options,
                                  const TextModel::RowCallback& also = {}) {
  std::map<size_t, std::vector<int32_t>> ids;
  std::map<size_t, std::string> text;
  const std::vector<BatchResult> out = model.generate_rows(prompts, options, [&](size_t row, const Token& t) {
    ids[row].push_back(t.id);
    text[row] += t.text;
    return also ? also(row, t) : true;
  });
  EXPECT_EQ(out.size(), prompts.size());
  for (size_t r = 0; r < out.size(); ++r) {
    EXPECT_EQ(ids[r], out[r].ids) << "row " << r;
    EXPECT_EQ(text[r], out[r].text) << "row " << r;
  }
  return out;
}

TEST(RowsTest, EachRowIsItsLoneGeneration) {
  for (const char* name : {"qwen3-f32", "llama-f32", "gemma3_text-f32"}) {
    auto model = load(name);
    const std::vector<std::vector<int32_t>> prompts = {
        {5, 17, 42}, {9, 8, 7, 6, 5, 4, 3, 2, 1, 11, 12}, {300, 301}, {44, 45, 46, 47, 48}, {12, 13, 14, 15}};
    std::vector<GenerateOptions> o(prompts.size(), greedy(10));
    o[1].max_tokens = 4;
    o[3].max_tokens = 0;
    // A stop string from row 2's own text, and a stop id from row 4's own tokens.
    const Lone free2 = lone(*model, prompts[2], greedy(12)), free4 = lone(*model, prompts[4], greedy(12));
    ASSERT_GE(free2.text.size(), 6u);
    o[2].max_tokens = 12;
    o[2].stop_strings = {free2.text.substr(free2.text.size() / 2, 2)};
    o[4].stop_tokens = {free4.ids[5]};
    const std::vector<BatchResult> got = run_rows(*model, prompts, o);
    for (size_t r = 0; r < prompts.size(); ++r) {
      const Lone want = lone(*model, prompts[r], o[r]);
      EXPECT_EQ(got[r].ids, want.ids) << name << ", row " << r;
      EXPECT_EQ(got[r].text, want.text) << name << ", row " << r;
      EXPECT_EQ(got[r].finish_reason, want.finish_reason) << name << ", row " << r;
    }
    EXPECT_EQ(got[1].ids.size(), 4u);
    EXPECT_TRUE(got[3].ids.empty());
    EXPECT_EQ(got[3].finish_reason, "length");
    EXPECT_EQ(got[2].finish_reason, "stop_string");
    EXPECT_EQ(got[4].finish_reason, "stop_token");
  }
}

TEST(RowsTest, SeededRowsDrawAsTheirLoneStreams) {
  auto model = load("qwen3-f32");
  const std::vector<std::vector<int32_t>> prompts = {{5, 17, 42}, {9, 8, 7, 6, 5}, {300, 301, 302, 303}};
  std::vector<GenerateOptions> o(prompts.size(), greedy(9));
  for (size_t r = 0; r < o.size(); ++r) {
    o[r].temperature = 1.3f;
    o[r].top_k = 40;
    o[r].seed = 100 + 7 * r;
  }
  o[2].seed.reset();  // an unseeded row among seeded ones: its own draws
  const std::vector<BatchResult> got = run_rows(*model, prompts, o);
  for (size_t r = 0; r < 2; ++r) EXPECT_EQ(got[r].ids, lone(*model, prompts[r], o[r]).ids) << "row " << r;
  EXPECT_EQ(got[2].ids.size(), 9u);
}

TEST(RowsTest, ARowTheCallerLeavesEndsAlone) {
  auto model = load("qwen3-f32");
  const std::vector<std::vector<int32_t>> prompts = {{5, 17, 42}, {9, 8, 7}, {1, 2, 3, 4}};
  const std::vector<GenerateOptions> o(prompts.size(), greedy(8));
  int seen = 0;
  const std::vector<BatchResult> got =
      run_rows(*model, prompts, o, [&](size_t row, const Token&) { return row != 1 || ++seen < 3; });
  EXPECT_EQ(got[1].ids.size(), 3u);
  EXPECT_EQ(got[1].finish_reason, "cancelled");
  for (size_t r : {size_t(0), size_t(2)}) {
    EXPECT_EQ(got[r].ids, lone(*model, prompts[r], o[r]).ids);
    EXPECT_EQ(got[r].finish_reason, "length");
  }
}

TEST(RowsTest, RowsEndAtTheContextAsStreamsDo) {
  auto model = load("qwen3-f32", 16);
  const std::vector<std::vector<int32_t>> prompts = {std::vector<int32_t>(10, 3), {4, 5}};
  const std::vector<GenerateOptions> o(prompts.size(), greedy(20));
  const std::vector<BatchResult> got = run_rows(*model, prompts, o);
  for (size_t r = 0; r < prompts.size(); ++r) {
    const Lone want = lone(*model, prompts[r], o[r]);
    EXPECT_EQ(got[r].ids, want.ids) << "row " << r;
    EXPECT_EQ(got[r].finish_reason, want.finish_reason) << "row " << r;
  }
  EXPECT_EQ(got[0].ids.size(), 6u);
  EXPECT_EQ(got[0].finish_reason, "context_length");
  EXPECT_EQ(got[1].ids.size(), 14u);
}

TEST(RowsTest, RowsThatCannotShareABatchAreRefused) {
  auto model = load("qwen3-f32", 16);
  const std::vector<int32_t> fine = {1, 2, 3};
  auto refused = [&](const std::vector<std::vector<int32_t>>& prompts, const std::vector<GenerateOptions>& o,
                     const std::string& says) {
    try {
      model->generate_rows(prompts, o);
      ADD_FAILURE() << "accepted; expected: " << says;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
    EXPECT_EQ(model->err(), make_error_code(Errc::invalid_input));
  };
  GenerateOptions hot = greedy(4), logprobs = greedy(4);
  hot.temperature = 0.8f;
  hot.seed = 1;
  logprobs.logprobs = kMaxTopLogprobs + 1;
  refused({fine, fine}, {greedy(4), hot}, "draws otherwise than row 0");
  refused({fine, fine}, {greedy(4), logprobs}, "logprobs must be -1 (off) or 0 to 20");
  refused({fine}, {greedy(4), greedy(4)}, "need as many options");
  GenerateOptions negative = greedy(4);
  negative.max_tokens = -1;
  refused({fine, fine}, {greedy(4), negative}, "max_tokens must be at least 0");
  EXPECT_TRUE(model->generate_rows({}, {}).empty());
  const std::vector<std::vector<int32_t>> one = {fine};
  const std::vector<GenerateOptions> three = {greedy(3)};
  EXPECT_EQ(model->generate_rows(one, three)[0].ids.size(), 3u);  // and the model goes on
}

// Rows with logprobs carry their scores, as their lone streams do, each with its own
// count of alternatives; a row without them carries none. Seeded sampling too, whose
// scores are the model's own distribution whatever the draw.
TEST(RowsTest, RowsCarryTheirOwnLogprobs) {
  auto model = load("llama-f32");
  const std::vector<std::vector<int32_t>> prompts = {{1, 2, 3}, {7, 8}, {4, 5, 6, 9}};
  for (float temperature : {0.0f, 0.9f}) {
    std::vector<GenerateOptions> o(prompts.size(), greedy(6));
    const int counts[] = {3, -1, 0};
    for (size_t r = 0; r < o.size(); ++r) {
      o[r].logprobs = counts[r];
      o[r].temperature = temperature;
      o[r].top_k = temperature > 0 ? 40 : 0;
      o[r].seed = 11 + r;
    }
    std::map<size_t, std::vector<Token>> got;
    run_rows(*model, prompts, o, [&](size_t row, const Token& t) {
      got[row].push_back(t);
      return true;
    });
    for (size_t r = 0; r < prompts.size(); ++r) {
      std::vector<Token> want;
      for (const Token& t : model->generate_ids(prompts[r], o[r])) want.push_back(t);
      ASSERT_EQ(got[r].size(), want.size()) << "row " << r;
      for (size_t i = 0; i < want.size(); ++i) {
        const std::string at = "T " + std::to_string(temperature) + ", row " + std::to_string(r) + ", token " +
                               std::to_string(i);
        EXPECT_EQ(got[r][i].id, want[i].id) << at;
        if (counts[r] < 0) {
          EXPECT_EQ(got[r][i].logprob, 0.0f) << at;  // unset, as a stream leaves it
          EXPECT_TRUE(got[r][i].top_logprobs.empty()) << at;
          continue;
        }
        EXPECT_NEAR(got[r][i].logprob, want[i].logprob, 1e-4) << at;
        ASSERT_EQ(got[r][i].top_logprobs.size(), size_t(counts[r])) << at;
        for (size_t j = 0; j < size_t(counts[r]); ++j) {
          EXPECT_EQ(got[r][i].top_logprobs[j].first, want[i].top_logprobs[j].first) << at;
          EXPECT_NEAR(got[r][i].top_logprobs[j].second, want[i].top_logprobs[j].second, 1e-4) << at;
        }
      }
    }
  }
}

// A prompt that cannot run fails its own row; the others run as they would alone. A
// prompt that fills the context runs no step and ends as a stream of it ends.
TEST(RowsTest, APromptThatCannotRunFailsItsRowAlone) {
  auto model = load("qwen3-f32", 16);
  const std::vector<int32_t> fine = {1, 2, 3}, full(16, 5);
  const std::vector<std::vector<int32_t>> prompts = {{}, fine, {1, 100000}, std::vector<int32_t>(17, 1), full};
  const std::vector<GenerateOptions> o(prompts.size(), greedy(4));
  const std::vector<BatchResult> got = run_rows(*model, prompts, o);
  EXPECT_FALSE(model->err()) << model->err_message();
  const char* says[] = {"prompt 0 is empty", "", "prompt 2: token 100000 is outside the vocabulary",
                        "prompt 3 has 17 tokens, more than the context length of 16", ""};
  for (size_t r : {size_t(0), size_t(2), size_t(3)}) {
    EXPECT_EQ(got[r].finish_reason, "error") << "row " << r;
    EXPECT_TRUE(got[r].ids.empty()) << "row " << r;
    EXPECT_NE(got[r].error.find(says[r]), std::string::npos) << "row " << r << ": " << got[r].error;
  }
  const Lone alone = lone(*model, fine, o[1]);
  EXPECT_EQ(got[1].ids, alone.ids);
  EXPECT_EQ(got[1].finish_reason, "length");
  EXPECT_TRUE(got[1].error.empty());
  const Lone filled = lone(*model, full, o[4]);
  EXPECT_TRUE(got[4].ids.empty());
  EXPECT_TRUE(filled.ids.empty());
  EXPECT_EQ(got[4].finish_reason, "context_length");
  EXPECT_EQ(filled.finish_reason, "context_length");

  // Rows that all fail: no batch runs.
  const std::vector<std::vector<int32_t>> bad = {{}, {-1}};
  for (const BatchResult& b : model->generate_rows(bad, std::vector<GenerateOptions>(2, greedy(4))))
    EXPECT_EQ(b.finish_reason, "error");
  // The library's check, public for servers that refuse a request before its batch.
  EXPECT_THROW(check_prompt(model->info(), std::vector<int32_t>(17, 1)), Error);
  EXPECT_NO_THROW(check_prompt(model->info(), full));
}

// Continuous batching: generate_rows with a RowFeed whose join calls give the lists of
// `joins` in turn, each cut to the room offered (the rest at the next call), then nothing.
// Checks that each row's streamed tokens make its result, that each row's result comes to
// done once, and that no call offers more room than max_rows leaves. Returns every row's
// result by its number.
std::vector<BatchResult> run_fed(TextModel& model, const std::vector<std::vector<int32_t>>& prompts,
                                 const std::vector<GenerateOptions>& options,
                                 std::vector<std::vector<RowRequest>> joins, size_t max_rows) {
  std::map<size_t, std::vector<int32_t>> ids;
  std::map<size_t, std::string> text;
  std::map<size_t, BatchResult> done;
  size_t calls = 0, rows = prompts.size();
  RowFeed feed;
  feed.max_rows = max_rows;
  feed.join = [&](size_t room) {
    EXPECT_GE(room, 1u);
    EXPECT_LE(room, max_rows);
    if (calls >= joins.size()) return std::vector<RowRequest>();
    std::vector<RowRequest>& next = joins[calls];
    const size_t n = std::min(room, next.size());
    std::vector<RowRequest> out(next.begin(), next.begin() + long(n));
    next.erase(next.begin(), next.begin() + long(n));
    if (next.empty()) ++calls;
    rows += out.size();
    return out;
  };
  feed.done = [&](size_t row, BatchResult r) {
    EXPECT_FALSE(done.count(row)) << "row " << row << " ended twice";
    EXPECT_LT(row, rows);
    done[row] = std::move(r);
  };
  const std::vector<BatchResult> first = model.generate_rows(prompts, options, [&](size_t row, const Token& t) {
    ids[row].push_back(t.id);
    text[row] += t.text;
    return true;
  }, &feed);
  EXPECT_EQ(calls, joins.size()) << "every list should have joined";
  std::vector<BatchResult> out;
  for (size_t r = 0; r < rows; ++r) {
    EXPECT_TRUE(done.count(r)) << "row " << r << " never ended";
    out.push_back(done[r]);
    EXPECT_EQ(ids[r], out[r].ids) << "row " << r;
    EXPECT_EQ(text[r], out[r].text) << "row " << r;
    if (r < first.size()) {
      EXPECT_EQ(first[r].ids, out[r].ids) << "row " << r;
    }
  }
  return out;
}

// Rows that join a batch under way decode as they would alone: a prompt longer than the
// batch's slots (the rows are shifted), rows that end at their first token or before it,
// rows refused alone, rows that join after half the batch has ended (regrouped), and a
// row that joins once every other has ended.
TEST(RowsTest, RowsThatJoinTheBatchDecodeAsTheirLoneGenerations) {
  auto model = load("qwen3-f32", 64);
  GenerateOptions hot = greedy(4);
  hot.temperature = 0.9f;
  hot.seed = 3;
  const std::vector<std::vector<int32_t>> first = {{1, 2, 3}, {4, 5}};
  const std::vector<GenerateOptions> first_o = {greedy(10), greedy(3)};
  std::vector<std::vector<RowRequest>> joins = {
      {{{9, 8, 7, 6, 5, 4, 3, 2, 1, 9, 8, 7}, greedy(6)}},
      {{{7}, greedy(1)}, {{}, greedy(3)}},
      {{{11, 12}, hot}, {{13}, greedy(0)}, {{14, 15, 16}, greedy(5)}},
      {{{17, 18, 19, 20, 21}, greedy(8)}},
      {},
      {{{22, 23}, greedy(2)}},
  };
  std::vector<RowRequest> all;  // by row number
  for (size_t r = 0; r < first.size(); ++r) all.push_back({first[r], first_o[r]});
  for (const auto& list : joins) all.insert(all.end(), list.begin(), list.end());
  const std::vector<BatchResult> got = run_fed(*model, first, first_o, joins, 3);
  EXPECT_EQ(model->metrics().generated_tokens, 10 + 3 + 6 + 1 + 5 + 8 + 2);
  ASSERT_EQ(got.size(), all.size());
  for (size_t r = 0; r < all.size(); ++r) {
    if (all[r].prompt.empty() || all[r].options.temperature > 0) {
      EXPECT_EQ(got[r].finish_reason, "error") << "row " << r;
      EXPECT_NE(got[r].error.find(all[r].prompt.empty() ? "is empty" : "draws otherwise"), std::string::npos)
          << "row " << r << ": " << got[r].error;
      continue;
    }
    const Lone want = lone(*model, all[r].prompt, all[r].options);
    EXPECT_EQ(got[r].ids, want.ids) << "row " << r;
    EXPECT_EQ(got[r].text, want.text) << "row " << r;
    EXPECT_EQ(got[r].finish_reason, want.finish_reason) << "row " << r;
    EXPECT_EQ(got[r].ids.size(), size_t(all[r].options.max_tokens)) << "row " << r;
  }
  // One row at most: the next joins once the first has ended.
  const std::vector<RowRequest> next = {{{3, 4, 5, 6, 7}, greedy(3)}};
  const std::vector<BatchResult> one_by_one = run_fed(*model, {{1, 2}}, {greedy(2)}, {next}, 1);
  ASSERT_EQ(one_by_one.size(), 2u);
  EXPECT_EQ(one_by_one[0].ids, lone(*model, {1, 2}, greedy(2)).ids);
  EXPECT_EQ(one_by_one[1].ids, lone(*model, next[0].prompt, next[0].options).ids);
}

// Seeded draws with penalties: a joining row's sampler draws as its lone stream's does.
TEST(RowsTest, SeededRowsThatJoinDrawAsTheirLoneStreams) {
  auto model = load("qwen3-f32", 64);
  auto drawn = [](uint64_t seed, int n) {
    GenerateOptions o = greedy(n);
    o.temperature = 0.8f;
    o.top_k = 20;
    o.repeat_penalty = 1.3f;
    o.seed = seed;
    return o;
  };
  const std::vector<std::vector<int32_t>> first = {{1, 2, 3, 4}};
  const std::vector<GenerateOptions> first_o = {drawn(1, 9)};
  const std::vector<std::vector<RowRequest>> joins = {{{{5, 6}, drawn(2, 7)}}, {{{7, 8, 9, 10, 11, 12}, drawn(3, 5)}}};
  const std::vector<BatchResult> got = run_fed(*model, first, first_o, joins, 4);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].ids, lone(*model, first[0], first_o[0]).ids);
  for (size_t j = 0; j < 2; ++j)
    EXPECT_EQ(got[1 + j].ids, lone(*model, joins[j][0].prompt, joins[j][0].options).ids) << "joined row " << j;
}

// A row that joins where memory cannot hold the batch with it fails alone ("[memory]"),
// and the batch goes on as it was: a regroup changes nothing where memory runs out.
TEST(RowsTest, ARowThatMemoryCannotHoldFailsAloneAndTheBatchGoesOn) {
  auto model = load("qwen3-f32", 256);
  const std::vector<std::vector<int32_t>> first = {{1, 2, 3}, {4, 5}};
  const std::vector<GenerateOptions> first_o = {greedy(12), greedy(9)};
  // Longer than the batch's slots, so the batch is regrouped, into a cache with room for its
  // 200 tokens: 3 rows x 241 slots a layer, of keys and values of 2 heads x 32 f32 (370 KB).
  // The limit below lets the prefill and one layer's new cache through, not the second's.
  const RowRequest big{std::vector<int32_t>(40, 7), greedy(200)};
  const RowRequest small{{8, 9}, greedy(3)};
  size_t calls = 0;
  std::map<size_t, BatchResult> done;
  RowFeed feed;
  feed.max_rows = 4;
  feed.join = [&](size_t) -> std::vector<RowRequest> {
    if (++calls == 2) {
      set_memory_limit(active_memory("cpu") + 3 * 241 * 2 * 2 * 32 * 4 * 3 / 2, "cpu");
      return {big};
    }
    if (calls == 3) set_memory_limit(0, "cpu");
    if (calls == 4) return {small};  // and the batch takes rows again
    return {};
  };
  feed.done = [&](size_t row, BatchResult r) { done[row] = std::move(r); };
  model->generate_rows(first, first_o, {}, &feed);
  set_memory_limit(0, "cpu");
  ASSERT_EQ(done.size(), 4u);
  EXPECT_EQ(done[2].finish_reason, "error");
  EXPECT_EQ(done[2].error.rfind("[memory]", 0), 0u) << done[2].error;
  for (size_t r : {size_t(0), size_t(1)}) EXPECT_EQ(done[r].ids, lone(*model, first[r], first_o[r]).ids) << "row " << r;
  EXPECT_EQ(done[3].ids, lone(*model, small.prompt, small.options).ids);
  // Without the limit it runs.
  EXPECT_EQ(lone(*model, big.prompt, big.options).ids.size(), 200u);
}

TEST(RowsTest, CudaRowsKeepTheirOwnLimitsAndScores) {
  if (!test::cuda_visible()) GTEST_SKIP() << "no CUDA device visible";
  auto model = load_model(kModels / "qwen3-f32", test::cuda_bf16());
  // 2-8 rows take the batched fused step, more the GEMM step: both, with rows of several lengths.
  for (size_t rows : {size_t(3), size_t(12)}) {
    std::vector<std::vector<int32_t>> prompts;
    std::vector<GenerateOptions> o;
    for (size_t r = 0; r < rows; ++r) {
      prompts.push_back(std::vector<int32_t>(1 + r % 5, int32_t(10 + r)));
      o.push_back(greedy(int(3 + 2 * r)));
    }
    const std::vector<BatchResult> got = run_rows(*model, prompts, o);
    for (size_t r = 0; r < rows; ++r) {
      EXPECT_EQ(got[r].ids.size(), size_t(o[r].max_tokens)) << rows << " rows, row " << r;
      EXPECT_EQ(got[r].finish_reason, "length");
    }
  }
  // Rows with logprobs take the batched fused step a token at a time, their scores summed
  // on the device from its logits; a greedy row's token is its own most likely one, and
  // its scores are those a prefill of the row's text gives, within bf16's rounding.
  const std::vector<std::vector<int32_t>> scored = {{10, 11}, {12}, {13, 14, 15}};
  std::vector<GenerateOptions> o(scored.size(), greedy(5));
  for (GenerateOptions& x : o) x.logprobs = 2;
  size_t tokens = 0;
  std::map<size_t, std::vector<Token>> rows_got;
  run_rows(*model, scored, o, [&](size_t row, const Token& t) {
    ++tokens;
    rows_got[row].push_back(t);
    EXPECT_EQ(t.top_logprobs.size(), 2u) << "row " << row;
    if (t.top_logprobs.size() == 2) {
      EXPECT_EQ(t.top_logprobs[0].first, t.id) << "row " << row;
      EXPECT_NEAR(t.logprob, t.top_logprobs[0].second, 1e-6) << "row " << row;
      EXPECT_GE(t.top_logprobs[0].second, t.top_logprobs[1].second) << "row " << row;
    }
    EXPECT_LE(t.logprob, 0.0f) << "row " << row;
    return true;
  });
  EXPECT_EQ(tokens, 15u);
  EXPECT_EQ(model->metrics().decode_path.rfind("fused-", 0), 0u) << model->metrics().decode_path;
  for (size_t r = 0; r < scored.size(); ++r) {
    std::vector<int32_t> text = scored[r];
    for (const Token& t : rows_got[r]) text.push_back(t.id);
    const std::vector<Token> prefill = model->score_ids(text, 2);
    for (size_t i = 0; i < rows_got[r].size(); ++i) {
      const Token& p = prefill[scored[r].size() - 1 + i];
      EXPECT_NEAR(rows_got[r][i].logprob, p.logprob, 0.02 + 0.02 * std::abs(p.logprob)) << "row " << r << ", " << i;
    }
  }
}

// On CUDA, rows that join the batched fused step (steps queued ahead of their reads, then
// drained to regroup) stay on their own text: each greedy row's every token is the most
// likely one that a prefill of the row's text gives, up to bf16's rounding between near
// ties. A row placed in the wrong slots, or a step read twice, would break it.
TEST(RowsTest, CudaRowsThatJoinKeepToTheirOwnText) {
  if (!test::cuda_visible()) GTEST_SKIP() << "no CUDA device visible";
  auto model = load_model(kModels / "qwen3-f32", test::cuda_bf16());
  for (int logprobs : {-1, 2}) {
    auto o = [&](int n) {
      GenerateOptions x = greedy(n);
      x.logprobs = logprobs;
      return x;
    };
    const std::vector<std::vector<int32_t>> first = {{1, 2, 3}, {4, 5}};
    const std::vector<GenerateOptions> first_o = {o(24), o(6)};
    const std::vector<std::vector<RowRequest>> joins = {
        {{{9, 8, 7, 6, 5, 4, 3, 2, 1, 9, 8, 7}, o(12)}}, {}, {}, {{{7}, o(1)}, {{14, 15, 16}, o(9)}},
        {{{17, 18, 19, 20, 21}, o(16)}}, {{{22, 23}, o(5)}, {{24, 25, 26, 27}, o(7)}}};
    std::vector<RowRequest> all;
    for (size_t r = 0; r < first.size(); ++r) all.push_back({first[r], first_o[r]});
    for (const auto& list : joins) all.insert(all.end(), list.begin(), list.end());
    const std::vector<BatchResult> got = run_fed(*model, first, first_o, joins, 4);
    EXPECT_EQ(model->metrics().decode_path.rfind("fused-", 0), 0u) << model->metrics().decode_path;
    ASSERT_EQ(got.size(), all.size());
    for (size_t r = 0; r < all.size(); ++r) {
      const std::string at = "logprobs " + std::to_string(logprobs) + ", row " + std::to_string(r);
      ASSERT_EQ(got[r].ids.size(), size_t(all[r].options.max_tokens)) << at;
      std::vector<int32_t> text = all[r].prompt;
      text.insert(text.end(), got[r].ids.begin(), got[r].ids.end());
      const std::vector<Token> prefill = model->score_ids(text, 1);
      for (size_t i = 0; i < got[r].ids.size(); ++i) {
        const Token& p = prefill[all[r].prompt.size() - 1 + i];  // the score of the row's token i
        EXPECT_NEAR(p.logprob, p.top_logprobs[0].second, 0.05) << at << ", token " << i;
      }
    }
  }
}

}  // namespace
}  // namespace lmx
