// The public API on the fixture models (tiny random weights, a tiny byte-level BPE
// tokenizer and a ChatML template): streaming, cancellation, prompt-cache reuse,
// classify and batch_generate against one-at-a-time runs, memory limits, discovery.
#include <gtest/gtest.h>

#include <fstream>
#include <optional>
#include <thread>
#include <utility>

#include "fixture_copy.h"
#include "scoped_env.h"
#include "test_util.h"
#include "io/safetensors.h"
#include "lmx/lmx.h"
#include "ops/ops.h"

namespace lmx {
namespace {

namespace fs = std::filesystem;
const fs::path kModels = fs::path(LMX_FIXTURES_DIR) / "models";

std::unique_ptr<TextModel> load(const std::string& name) {
  LoadOptions o;
  o.backend = "cpu";
  return load_model(kModels / name, o);
}

std::vector<int32_t> ids_of(Stream s) {
  std::vector<int32_t> out;
  for (const Token& t : s) out.push_back(t.id);
  return out;
}

using test::cuda_bf16;
using test::cuda_visible;

// The CPU, and where a GPU is visible CUDA in bf16 with deterministic steps (tokens that
// compare across runs).
std::vector<LoadOptions> cpu_and_cuda() {
  std::vector<LoadOptions> loads(1);
  loads[0].backend = "cpu";
  if (cuda_visible()) {
    loads.push_back(cuda_bf16());
    loads.back().deterministic = true;
  }
  return loads;
}

using test::greedy;

TEST(ApiTest, BackendsAreRegistered) {
  const auto names = list_backends();
  EXPECT_NE(std::find(names.begin(), names.end(), "cpu"), names.end());
  ASSERT_NE(get_backend("cpu"), nullptr);
  EXPECT_TRUE(get_backend("cpu")->available());
  EXPECT_EQ(get_backend("nope"), nullptr);
  LoadOptions o;
  o.backend = "nope";
  EXPECT_THROW(load_model(kModels / "qwen3-f32", o), Error);
}

TEST(ApiTest, GenerateIdsMatchesTransformersGreedyTokens) {
  for (const char* name : {"llama-f32", "qwen3-f32", "gemma3_text-f32"}) {
    const io::SafetensorsFile g = io::SafetensorsFile::open(kModels / name / "golden.safetensors");
    auto read_ids = [&](const char* t) {
      const auto* info = g.find(t);
      std::vector<int32_t> v(size_t(info->shape[0]));
      std::memcpy(v.data(), g.data(*info).data(), v.size() * 4);
      return v;
    };
    auto model = load(name);
    EXPECT_EQ(ids_of(model->generate_ids(read_ids("greedy_prompt"), greedy(20))), read_ids("greedy_ids")) << name;
    EXPECT_EQ(model->metrics().generated_tokens, 20);
    EXPECT_EQ(model->metrics().finish_reason, "length");
    EXPECT_FALSE(model->err());
  }
}

TEST(ApiTest, StreamedTextEqualsDecodingAllIds) {
  auto model = load("qwen3-f32");
  std::string text;
  std::vector<int32_t> ids;
  for (const Token& t : model->generate("the quick brown fox", greedy(30))) {
    text += t.text;
    ids.push_back(t.id);
  }
  EXPECT_EQ(text, model->detokenize(ids, true));
}

TEST(ApiTest, StopTokenAndStopStringEndTheStream) {
  auto model = load("qwen3-f32");
  const std::vector<int32_t> all = ids_of(model->generate("hello world", greedy(12)));
  GenerateOptions o = greedy(12);
  o.stop_tokens = {all[4]};
  const std::vector<int32_t> stopped = ids_of(model->generate("hello world", o));
  const size_t first = size_t(std::find(all.begin(), all.end(), all[4]) - all.begin());
  EXPECT_EQ(stopped, std::vector<int32_t>(all.begin(), all.begin() + long(first) + 1));
  EXPECT_EQ(model->metrics().finish_reason, "stop_token");
  // A stop string made of the text of tokens 3 and 4, spanning a token boundary.
  const std::string text = model->detokenize(all, true);
  const std::string stop = model->detokenize(std::vector<int32_t>(all.begin() + 3, all.begin() + 5), true);
  o = greedy(12);
  o.stop_strings = {stop};
  const std::string got = model->generate("hello world", o).text();
  EXPECT_EQ(got, text.substr(0, text.find(stop)));
  EXPECT_EQ(model->metrics().finish_reason, "stop_string");
}

TEST(ApiTest, StopTokenCancelsWithinOneStep) {
  auto model = load("gemma3_text-f32");
  std::stop_source src;
  int n = 0;
  for (const Token& t : model->generate_ids({1, 2, 3}, greedy(200), src.get_token())) {
    (void)t;
    if (++n == 3) src.request_stop();
  }
  EXPECT_EQ(n, 3);
  EXPECT_EQ(model->err(), make_error_code(Errc::cancelled));
  EXPECT_EQ(model->metrics().finish_reason, "cancelled");
  // Breaking out of the loop cancels too, and the model stays usable.
  for (const Token& t : model->generate_ids({1, 2, 3}, greedy(200))) {
    (void)t;
    break;
  }
  EXPECT_EQ(model->err(), make_error_code(Errc::cancelled));
  EXPECT_EQ(ids_of(model->generate_ids({1, 2, 3}, greedy(5))).size(), 5u);
  EXPECT_FALSE(model->err());
}

TEST(ApiTest, PromptCacheReuseGivesTheTokensOfAFreshRun) {
  for (const char* name : {"qwen3-f32", "gemma3_text-f32"}) {
    auto warm = load(name);
    std::vector<Message> chat{{"user", "hello there"}};
    const std::string first = warm->chat(chat, greedy(8)).text();
    chat.push_back({"assistant", first});
    chat.push_back({"user", "and the lazy dog"});
    const std::vector<int32_t> reused = ids_of(warm->chat(chat, greedy(8)));
    EXPECT_GT(warm->metrics().cached_prompt_tokens, 0) << name;
    auto cold = load(name);
    EXPECT_EQ(reused, ids_of(cold->chat(chat, greedy(8)))) << name;
    EXPECT_EQ(cold->metrics().cached_prompt_tokens, 0);
  }
}

TEST(ApiTest, ClassifyEqualsOneAtATime) {
  auto model = load("llama-f32");
  const std::vector<std::string> prompts = {"the", "hello world, this is longer", "a b c", "lazy dog!", "x"};
  GenerateOptions o;
  o.return_logits = true;
  const auto together = model->classify(prompts, o);
  ASSERT_EQ(together.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto alone = model->classify(std::span<const std::string>(&prompts[i], 1), o);
    EXPECT_EQ(together[i].token, alone[0].token) << prompts[i];
    EXPECT_NEAR(together[i].logit, alone[0].logit, 1e-4);
    // The greedy first token of generate() is the same argmax.
    EXPECT_EQ(ids_of(model->generate(prompts[i], greedy(1)))[0], alone[0].token);
  }
}

TEST(ApiTest, BatchGenerateEqualsOneAtATime) {
  for (const char* name : {"qwen3-f32", "gemma3_text-f32"}) {
    auto model = load(name);
    const std::vector<std::string> prompts = {"hello", "the quick brown fox jumps", "over the lazy dog. hello world"};
    const auto batch = model->batch_generate(prompts, greedy(12));
    ASSERT_EQ(batch.size(), prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ(batch[i].ids, ids_of(model->generate(prompts[i], greedy(12)))) << name << ": " << prompts[i];
      EXPECT_EQ(batch[i].finish_reason, "length");
    }
  }
}

// Sampled rows take the host sampler over each row's logits (greedy ones take the argmax
// on the device): row r draws as generate() does with seed + r.
TEST(ApiTest, BatchGenerateSamplesEachRowAsGenerateDoes) {
  auto model = load("qwen3-f32");
  const std::vector<std::string> prompts = {"hello", "the quick brown fox jumps",
                                            "over the lazy dog. hello world"};
  GenerateOptions o = greedy(10);
  o.temperature = 1.5f;  // flat enough that the rows' draws differ from the argmax
  o.seed = 11;
  const auto batch = model->batch_generate(prompts, o);
  ASSERT_EQ(batch.size(), prompts.size());
  bool differs_from_greedy = false;
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerateOptions one = o;
    one.seed = *o.seed + i;
    EXPECT_EQ(batch[i].ids, ids_of(model->generate(prompts[i], one))) << prompts[i];
    differs_from_greedy |= batch[i].ids != ids_of(model->generate(prompts[i], greedy(10)));
  }
  EXPECT_TRUE(differs_from_greedy) << "the sampled rows should not all be the greedy ones";
}

// LoadOptions::deterministic: the same tokens on every run. On the CPU it changes nothing;
// on CUDA the one-sequence step still runs fused and persistent, and three runs agree.
TEST(ApiTest, DeterministicLoadsRepeatTheirTokens) {
  LoadOptions cpu;
  cpu.backend = "cpu";
  cpu.deterministic = true;
  const std::string prompt = "the quick brown fox";
  EXPECT_EQ(ids_of(load_model(kModels / "qwen3-f32", cpu)->generate(prompt, greedy(16))),
            ids_of(load("qwen3-f32")->generate(prompt, greedy(16))));
  if (!cuda_visible()) GTEST_SKIP() << "no CUDA device visible";
  LoadOptions lo = cuda_bf16();
  lo.deterministic = true;
  for (const char* name : {"llama-f32", "qwen3-f32", "gemma3_text-f32"}) {
    auto model = load_model(kModels / name, lo);
    const std::vector<int32_t> first = ids_of(model->generate(prompt, greedy(48)));
    EXPECT_EQ(model->metrics().decode_path, "fused-persistent") << name;
    for (int run = 0; run < 2; ++run) EXPECT_EQ(ids_of(model->generate(prompt, greedy(48))), first) << name;
  }
}

// On CUDA every draw is made on the device (the ops' tests hold the device's draws to the
// host sampler's). generate() feeds each drawn token to the next fused step on the device
// and runs a step ahead, with a logit bias and penalties too (the decoder keeps the
// history's counts). A logit bias of 0 changes nothing but takes the edits: both must
// draw the same tokens, in generate() and in batch_generate(): with 10 rows through the
// batched step on GEMMs (the decoder keeps each row's counts), and through the plain ops
// (LMX_FUSED=0), where each draw's edits come from the host. With up to 8 rows, sampled
// batch_generate takes the batched step on tensor-core GEMVs: reproducible for a seed,
// and not greedy. A repetition penalty changes the draws. The model is loaded
// deterministic: its fused down projections otherwise add f32 partials in whatever order
// the blocks finish, and two generations can then draw apart where a draw falls near a
// boundary (this test failed once in seven runs that way).
TEST(ApiTest, CudaSamplingOnTheDeviceDrawsAsTheHostSampler) {
  if (!cuda_visible()) GTEST_SKIP() << "no CUDA device visible";
  LoadOptions lo = cuda_bf16();
  lo.deterministic = true;
  std::vector<std::string> prompts;
  for (int i = 0; i < 10; ++i)
    prompts.push_back("prompt " + std::to_string(i) + " the quick brown fox");
  for (const char* name : {"llama-f32", "qwen3-f32"}) {
    auto model = load_model(kModels / name, lo);
    GenerateOptions o = greedy(24);
    o.seed = 5;
    std::vector<int32_t> unpenalised;
    for (int variant = 0; variant < 4; ++variant) {
      if (variant == 0) o.temperature = 1.2f, o.top_k = 20, o.top_p = 0.95f;
      if (variant == 1) o.temperature = 0.8f, o.top_k = 0, o.top_p = 1;
      if (variant == 2) o.temperature = 1.0f, o.top_p = 0.9f, o.min_p = 0.05f;
      if (variant == 3) o.repeat_penalty = 1.5f;
      GenerateOptions every = o;
      every.logit_bias = {{0, 0.0f}};
      const std::vector<int32_t> got = ids_of(model->generate(prompts[0], o));
      EXPECT_EQ(model->metrics().decode_path, "fused-persistent") << name;
      if (variant == 2) unpenalised = got;
      if (variant == 3) {
        EXPECT_NE(got, unpenalised) << name << ": the penalty should change the draws";
      }
      EXPECT_EQ(got, ids_of(model->generate(prompts[0], every))) << name << ", variant " << variant;
      EXPECT_NE(got, ids_of(model->generate(prompts[0], greedy(24))))
          << name << ": the draws should not be greedy";
      const auto rows = model->batch_generate(prompts, o),
                 rows_every = model->batch_generate(prompts, every);
      EXPECT_EQ(model->metrics().decode_path, "fused-gemm-graph") << name;
      std::optional<test::ScopedEnv> plain_ops(std::in_place, "LMX_FUSED", "0");
      const auto plain_rows = model->batch_generate(prompts, o),
                 plain_every = model->batch_generate(prompts, every);
      EXPECT_EQ(model->metrics().decode_path, "plain") << name;
      plain_ops.reset();
      for (size_t i = 0; i < prompts.size(); ++i) {
        EXPECT_EQ(rows[i].ids, rows_every[i].ids)
            << name << " row " << i << ", variant " << variant;
        EXPECT_EQ(plain_rows[i].ids, plain_every[i].ids)
            << name << " row " << i << ", variant " << variant << ", plain ops";
      }
      const std::vector<BatchResult> one =
          model->batch_generate(std::span<const std::string>(prompts.data(), 1), o);
      EXPECT_EQ(one[0].ids.size(), 24u)
          << name;  // one row: the single-sequence step, its logits [V]
      const std::span<const std::string> few(prompts.data(), 5);
      const auto fused = model->batch_generate(few, o);
      EXPECT_EQ(model->metrics().decode_path, "fused-graph") << name;
      const auto again = model->batch_generate(few, o),
                 plain = model->batch_generate(few, greedy(24));
      for (size_t i = 0; i < few.size(); ++i) {
        EXPECT_EQ(fused[i].ids, again[i].ids) << name << " row " << i << ", variant " << variant;
        EXPECT_NE(fused[i].ids, plain[i].ids)
            << name << " row " << i << ": the draws should not be greedy";
      }
    }
  }
}

// On CUDA in bf16, greedy batch_generate takes the batched fused step (the prefill stays
// on the plain ops): tensor-core GEMVs, or GEMMs for Gemma 3's sandwich norms. What the
// runtime adds to the step is checked here: every row decodes to its length, and a stop
// token ends each row exactly where it first appears, the other rows unchanged. The step's
// numbers are FusedBatchTest's (each row's logits against the plain ops, left padding
// included); its tokens are not compared with the plain ops' here, since the fixtures'
// weights (initializer_range 0.02) leave near-ties that bf16 rounding differences flip.
TEST(ApiTest, CudaBatchGenerateRunsOnTheFusedStepAndStopsRowsAtTheirStopToken) {
  if (!cuda_visible()) GTEST_SKIP() << "no CUDA device visible";
  const LoadOptions lo = cuda_bf16();
  const std::vector<std::string> prompts = {"hello", "the quick brown fox jumps", "over the lazy dog. hello world",
                                            "a", "b c d e f"};
  for (const char* name : {"llama-f32", "qwen3-f32", "gemma3_text-f32"}) {
    auto model = load_model(kModels / name, lo);
    const auto full = model->batch_generate(prompts, greedy(20));
    EXPECT_EQ(model->metrics().decode_path,
              std::string(name) == "gemma3_text-f32" ? "fused-gemm-graph" : "fused-graph") << name;
    ASSERT_EQ(full.size(), prompts.size());
    GenerateOptions o = greedy(20);
    o.stop_tokens = {full[1].ids[6]};
    const auto stopped = model->batch_generate(prompts, o);
    for (size_t i = 0; i < prompts.size(); ++i) {
      ASSERT_EQ(full[i].ids.size(), 20u) << name << ": " << prompts[i];
      EXPECT_EQ(full[i].finish_reason, "length");
      const auto at = std::find(full[i].ids.begin(), full[i].ids.end(), o.stop_tokens[0]);
      const std::vector<int32_t> want(full[i].ids.begin(), at == full[i].ids.end() ? at : at + 1);
      EXPECT_EQ(stopped[i].ids, want) << name << ": " << prompts[i];
      EXPECT_EQ(stopped[i].finish_reason, at == full[i].ids.end() ? "length" : "stop_token") << name;
    }
    EXPECT_LE(stopped[1].ids.size(), 7u);
    // The plain ops still serve it when asked to.
    const test::ScopedEnv plain_ops("LMX_FUSED", "0");
    EXPECT_EQ(model->batch_generate(prompts, greedy(3)).size(), prompts.size());
    EXPECT_EQ(model->metrics().decode_path, "plain") << name;
  }
}

TEST(ApiTest, OverTheMemoryLimitEndsTheStreamCleanly) {
  auto model = load("qwen3-f32");
  const std::vector<int32_t> want = ids_of(model->generate_ids({5, 6, 7}, greedy(6)));
  set_memory_limit(active_memory("cpu") + 1, "cpu");  // the first allocation of the step fails
  const std::vector<int32_t> got = ids_of(model->generate_ids({5, 6, 7}, greedy(6)));
  set_memory_limit(0, "cpu");
  EXPECT_TRUE(got.empty());
  EXPECT_EQ(model->err(), make_error_code(Errc::out_of_memory));
  EXPECT_NE(model->err_message().find("[memory]"), std::string::npos) << model->err_message();
  EXPECT_EQ(model->metrics().finish_reason, "error");
  EXPECT_EQ(ids_of(model->generate_ids({5, 6, 7}, greedy(6))), want);  // still usable
}

// With every logit NaN, no token can be chosen. The stream ends at once with an error that
// says why, greedy or sampled, and classify refuses. The plain paths took token 0 (the argmax
// op) or the last id (the host's draw) there, and went on with tokens that meant nothing.
TEST(ApiTest, NaNLogitsEndTheStreamWithAClearError) {
  const test::FixtureCopy copy("qwen3-f32", "nan");
  copy.fill_nan("model.norm.weight");
  for (const LoadOptions& lo : cpu_and_cuda()) {
    SCOPED_TRACE(lo.backend);
    auto model = load_model(copy.dir(), lo);
    GenerateOptions sampled = greedy(6);
    sampled.temperature = 0.8f;
    sampled.top_p = 0.9f;
    sampled.seed = 3;
    for (const GenerateOptions& o : {greedy(6), sampled}) {
      EXPECT_TRUE(ids_of(model->generate_ids({5, 6, 7}, o)).empty());
      EXPECT_EQ(model->err(), make_error_code(Errc::failed));
      EXPECT_NE(model->err_message().find("no token can be chosen: every logit is NaN"), std::string::npos)
          << model->err_message();
      EXPECT_EQ(model->metrics().finish_reason, "error");
    }
    const std::vector<std::string> prompts = {"hello", "world"};
    try {
      (void)model->classify(prompts);
      ADD_FAILURE() << "classify returned tokens from NaN logits";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("[classify] no token can be chosen"), std::string::npos) << e.what();
    }
  }
}

// A TextModel runs one request at a time. A new request ends the stream still open (as
// cancelled), so that two streams never share the model's cache, and a stream that outlives
// its model ends, where it read freed memory before.
TEST(ApiTest, ANewRequestEndsTheOpenStreamAndAStreamOutlivingItsModelEnds) {
  for (const LoadOptions& lo : cpu_and_cuda()) {  // on CUDA a fused step is in flight when a stream ends
    SCOPED_TRACE(lo.backend);
    auto model = load_model(kModels / "qwen3-f32", lo);
    const std::vector<int32_t> want = ids_of(model->generate_ids({5, 6, 7}, greedy(6)));
    const std::vector<int32_t> other = ids_of(model->generate_ids({9, 8}, greedy(6)));
    for (const bool classify_between : {false, true}) {
      Stream first = model->generate_ids({5, 6, 7}, greedy(6));
      const std::optional<Token> t = first.next();
      ASSERT_TRUE(t.has_value());
      EXPECT_EQ(t->id, want[0]);
      if (classify_between) {
        const std::vector<std::string> prompts = {"hello"};
        (void)model->classify(prompts);
      } else {
        EXPECT_EQ(ids_of(model->generate_ids({9, 8}, greedy(6))), other);
      }
      EXPECT_FALSE(first.next().has_value()) << "the open stream goes on after another request";
      EXPECT_EQ(ids_of(model->generate_ids({5, 6, 7}, greedy(6))), want);
    }
    Stream orphan = model->generate_ids({5, 6, 7}, greedy(6));
    ASSERT_TRUE(orphan.next().has_value());
    model.reset();
    EXPECT_FALSE(orphan.next().has_value());
  }
}

TEST(ApiTest, PromptPastTheContextIsRejected) {
  LoadOptions o;
  o.backend = "cpu";
  o.context_len = 8;
  auto model = load_model(kModels / "qwen3-f32", o);
  EXPECT_THROW(model->generate_ids(std::vector<int32_t>(9, 1), greedy(2)), Error);
  EXPECT_EQ(model->err(), make_error_code(Errc::invalid_input));
  const auto ids = ids_of(model->generate_ids(std::vector<int32_t>(6, 1), greedy(10)));
  EXPECT_EQ(ids.size(), 2u);
  EXPECT_EQ(model->metrics().finish_reason, "context_length");
}

TEST(ApiTest, InfoDescribesTheModel) {
  auto model = load("gemma3_text-bf16");
  const ModelInfo i = model->info();
  EXPECT_EQ(i.model_type, "gemma3_text");
  EXPECT_EQ(i.num_layers, 7);
  EXPECT_EQ(i.vocab_size, 512);
  EXPECT_EQ(i.dtype, "bfloat16");
  EXPECT_TRUE(i.has_tokenizer);
  EXPECT_TRUE(i.has_chat_template);
  EXPECT_EQ(i.quant_bits, 0);
}

TEST(ApiTest, InfoOfAQuantizedModelCountsItsPackedBytes) {
  const ModelInfo q = load("qwen3-mlx-q8")->info(), f = load("qwen3-bf16")->info();
  EXPECT_EQ(q.quant_bits, 8);
  EXPECT_EQ(q.quant_group_size, 64);
  EXPECT_EQ(q.dtype, "bfloat16");  // the scales' dtype
  EXPECT_EQ(q.parameters, f.parameters);
  // Every matrix at one byte a weight plus two bf16 values per 64; the norms as they are.
  EXPECT_LT(q.weight_bytes, f.weight_bytes * 6 / 10);
  EXPECT_GT(q.weight_bytes, f.weight_bytes / 2);
}

TEST(DiscoverTest, ListsModelsAndExplainsBrokenFolders) {
  const fs::path root = fs::temp_directory_path() / ("lmx_discover_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root / "org" / "good");
  fs::create_directories(root / "broken");
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json"})
    fs::copy_file(kModels / "llama-f32" / f, root / "org" / "good" / f);
  std::ofstream(root / "broken" / "config.json") << "{not json";
  const auto found = discover(root);
  ASSERT_EQ(found.size(), 2u);
  EXPECT_EQ(found[0].path, root / "broken");
  EXPECT_FALSE(found[0].error.empty());
  EXPECT_EQ(found[1].model_type, "llama");
  EXPECT_EQ(found[1].num_files, 1);
  EXPECT_TRUE(found[1].has_tokenizer);
  EXPECT_GT(found[1].total_bytes, 100000u);
  EXPECT_TRUE(found[1].error.empty());
  fs::remove_all(root);
}

}  // namespace
}  // namespace lmx
