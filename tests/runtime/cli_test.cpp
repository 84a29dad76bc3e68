// The lmx command line, run as a user runs it: every command's --help, the errors for bad
// model folders (each names the file and says what to do, on stderr, with nothing on
// stdout and a failing exit status), and generate/tokenize agreeing with the library.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <sys/wait.h>

#include "fixture_copy.h"
#include "lmx/lmx.h"
#include "test_util.h"

namespace lmx {
namespace {

namespace fs = std::filesystem;

struct Result {
  int status = -1;  // the exit status
  std::string out, err;
};

using test::read_all;

// `lmx ARGS` through /bin/sh (ARGS quoted as a shell would take them), stdin from `input`.
Result lmx(const std::string& args, const std::string& input = "") {
  const fs::path base = fs::temp_directory_path() / ("lmx_cli_" + std::to_string(::getpid()));
  std::ofstream(base.string() + ".in", std::ios::binary) << input;
  const std::string cmd = std::string("'") + LMX_CLI + "' " + args + " < '" + base.string() + ".in' > '" +
                          base.string() + ".out' 2> '" + base.string() + ".err'";
  const int raw = std::system(cmd.c_str());
  Result r{WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, read_all(base.string() + ".out"), read_all(base.string() + ".err")};
  for (const char* ext : {".in", ".out", ".err"}) fs::remove(base.string() + ext);
  return r;
}

TEST(CliTest, EveryCommandsHelpTeaches) {
  const Result top = lmx("--help");
  EXPECT_EQ(top.status, 0);
  for (const char* cmd : {"selfcheck", "tokenize", "detokenize", "template", "logits", "generate", "random-model",
                          "chat", "bench", "classify", "discover", "info", "lora", "eval", "fuse", "serve"}) {
    EXPECT_NE(top.out.find(cmd), std::string::npos) << cmd << " is missing from lmx --help";
    const Result r = lmx(std::string(cmd) + " --help");
    EXPECT_EQ(r.status, 0) << cmd;
    EXPECT_NE(r.out.find("Usage:"), std::string::npos) << cmd << ":\n" << r.out;
  }
  const Result wrong = lmx("generate --no-such-flag");
  EXPECT_NE(wrong.status, 0);
  EXPECT_NE(wrong.err.find("--help"), std::string::npos) << wrong.err;
}

// Each broken folder: the exit status fails, stdout stays empty, and stderr has one line
// that names the file and the way out.
TEST(CliTest, BadModelFoldersGetAnErrorThatNamesTheFileAndTheRemedy) {
  struct Case {
    std::string what;
    std::function<void(const test::FixtureCopy&)> breakage;
    std::string file, remedy;  // file "": the folder is named
  };
  const Case cases[] = {
      {"truncated weights", [](const test::FixtureCopy& c) { fs::resize_file(c.file("model.safetensors"), 5000); },
       "model.safetensors", "truncated or corrupt; re-download it"},
      {"malformed config", [](const test::FixtureCopy& c) { std::ofstream(c.file("config.json")) << "{oops"; },
       "config.json", "malformed JSON"},
      {"unknown model_type",
       [](const test::FixtureCopy& c) {
         auto j = nlohmann::json::parse(read_all(c.file("config.json")));
         j["model_type"] = "mamba";
         std::ofstream(c.file("config.json")) << j.dump();
       },
       "config.json", "unknown model_type 'mamba'; this build of lmx runs"},
      {"missing config", [](const test::FixtureCopy& c) { fs::remove(c.file("config.json")); }, "config.json",
       "not found"},
      {"missing weights", [](const test::FixtureCopy& c) { fs::remove(c.file("model.safetensors")); },
       "", "no weights found: expected model.safetensors"},
  };
  for (const Case& c : cases) {
    const test::FixtureCopy copy("qwen3-f32", "cli_bad");
    c.breakage(copy);
    const Result r = lmx("generate '" + copy.dir().string() + "' --device cpu --prompt hi --max-tokens 2");
    EXPECT_EQ(r.status, 1) << c.what;
    EXPECT_TRUE(r.out.empty()) << c.what << ": " << r.out;
    EXPECT_EQ(r.err.rfind("lmx: error: [", 0), 0u) << c.what << ": " << r.err;
    const fs::path named = c.file.empty() ? copy.dir() : copy.dir() / c.file;  // the file, or the folder
    EXPECT_NE(r.err.find(named.string()), std::string::npos) << c.what << ": " << r.err;
    EXPECT_NE(r.err.find(c.remedy), std::string::npos) << c.what << ": " << r.err;
  }
}

TEST(CliTest, GenerateJsonGivesTheLibrarysTokens) {
  const fs::path dir = test::kFixtureModels / "qwen3-f32";
  const Result r =
      lmx("generate '" + dir.string() + "' --device cpu --prompt-ids 5,6,7 --max-tokens 8 --ignore-eos --json");
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  LoadOptions o;
  o.backend = "cpu";
  GenerateOptions g;
  g.max_tokens = 8;
  g.ignore_eos = true;
  const auto model = load_model(dir, o);  // a stream needs its model alive
  std::vector<int32_t> want;
  for (const Token& t : model->generate_ids({5, 6, 7}, g)) want.push_back(t.id);
  EXPECT_EQ(j.at("ids").get<std::vector<int32_t>>(), want);
  EXPECT_EQ(j.at("finish_reason"), "length");
  EXPECT_FALSE(j.contains("error"));
  EXPECT_FALSE(j.contains("logprobs"));

  // --logprobs: the library's scores for the same tokens.
  const Result scored = lmx("generate '" + dir.string() +
                            "' --device cpu --prompt-ids 5,6,7 --max-tokens 4 --ignore-eos --json --logprobs 2");
  ASSERT_EQ(scored.status, 0) << scored.err;
  const auto lp = nlohmann::json::parse(scored.out).at("logprobs");
  g.max_tokens = 4;
  g.logprobs = 2;
  std::vector<Token> tokens;
  for (const Token& t : model->generate_ids({5, 6, 7}, g)) tokens.push_back(t);
  ASSERT_EQ(lp.size(), tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    EXPECT_EQ(lp[i].at("id"), tokens[i].id);
    // (The library's model reuses its prompt cache here, so the last bits may differ.)
    EXPECT_NEAR(lp[i].at("logprob").get<double>(), tokens[i].logprob, 1e-5);
    ASSERT_EQ(lp[i].at("top").size(), 2u);
    EXPECT_EQ(lp[i].at("top")[0][0], tokens[i].top_logprobs[0].first);
  }
  const Result without_json =
      lmx("generate '" + dir.string() + "' --device cpu --prompt-ids 5,6,7 --max-tokens 2 --logprobs 2");
  EXPECT_NE(without_json.status, 0);
  EXPECT_NE(without_json.err.find("add --json"), std::string::npos) << without_json.err;
}

// `lmx bench --lora` times training steps and reports a row for each batch, and a dtype
// that is not a float is refused before anything runs.
TEST(CliTest, BenchTimesLoraStepsAndRefusesAnIntegerDtype) {
  const std::string dir = (test::kFixtureModels / "qwen3-f32").string();
  const Result r = lmx("bench '" + dir + "' --device cpu --lora --lora-rank 4 --batch 1 --batch 2 --prompt-len 6 " +
                       "--warmup 0 --repeat 2 --json");
  ASSERT_EQ(r.status, 0) << r.err;
  const auto rows = nlohmann::json::parse(r.out).at("results");
  ASSERT_EQ(rows.size(), 2u) << "only the --lora workload: " << r.out;
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i].at("workload"), "lora_train");
    EXPECT_EQ(rows[i].at("batch"), int(i + 1));
    EXPECT_EQ(rows[i].at("rank"), 4);
    EXPECT_GT(rows[i].at("lmx_tok_per_s").get<double>(), 0);
    const double loss = rows[i].at("loss").get<double>();
    EXPECT_TRUE(std::isfinite(loss) && loss > 0) << loss;
  }
  const Result bad = lmx("bench '" + dir + "' --device cpu --lora --dtype i32");
  EXPECT_NE(bad.status, 0);
  EXPECT_TRUE(bad.out.empty()) << bad.out;
  EXPECT_NE(bad.err.find("dtype must be f32, bf16 or f16, got 'i32'"), std::string::npos) << bad.err;
}

// `lmx bench --score` runs only the scoring workload: texts and their tokens a second.
TEST(CliTest, BenchScoresTexts) {
  const std::string dir = (test::kFixtureModels / "qwen3-f32").string();
  const Result r =
      lmx("bench '" + dir + "' --device cpu --score --prompts 6 --prompt-len 9 --warmup 0 --repeat 1 --json");
  ASSERT_EQ(r.status, 0) << r.err;
  const auto rows = nlohmann::json::parse(r.out).at("results");
  ASSERT_EQ(rows.size(), 1u) << "only the --score workload: " << r.out;
  EXPECT_EQ(rows[0].at("workload"), "score");
  EXPECT_EQ(rows[0].at("batch"), 6);
  EXPECT_EQ(rows[0].at("prompt_len"), 9);
  const double tok = rows[0].at("lmx_tok_per_s").get<double>(), texts = rows[0].at("lmx_prompts_per_s").get<double>();
  EXPECT_GT(texts, 0);
  EXPECT_NEAR(tok, texts * 9, 1e-6 * tok);
}

// `lmx lora` trains adapters whose loss falls; `generate --adapter` gives the library's
// tokens with LoadOptions::adapter_path; `lmx fuse` writes a model that generates them too.
TEST(CliTest, LoraTrainsAdaptersThatGenerateAndFuseAlike) {
  const fs::path model = test::kFixtureModels / "qwen3-f32";
  const fs::path work = fs::temp_directory_path() / ("lmx_cli_lora_" + std::to_string(::getpid()));
  fs::remove_all(work);
  fs::create_directories(work);
  {
    std::ofstream data(work / "train.jsonl");
    for (int i = 0; i < 6; ++i) data << R"({"text": "The answer number )" << i << R"( is always forty two."})" << "\n";
  }
  const Result trained = lmx("lora '" + model.string() + "' --data '" + (work / "train.jsonl").string() +
                             "' --iters 30 --batch-size 3 --learning-rate 1e-2 --dropout 0.05 --report-every 10 "
                             "--test --test-data '" + (work / "train.jsonl").string() + "' --adapter-path '" +
                             (work / "ad").string() + "'");
  ASSERT_EQ(trained.status, 0) << trained.err;
  EXPECT_NE(trained.out.find("LoRA r 8, alpha 16, dropout 0.05: "), std::string::npos) << trained.out;
  std::vector<double> losses;
  std::istringstream lines(trained.out);
  for (std::string line; std::getline(lines, line);)
    if (const size_t at = line.find(" loss "); line.rfind("step", 0) == 0 && at != std::string::npos)
      losses.push_back(std::stod(line.substr(at + 6)));
  ASSERT_EQ(losses.size(), 3u) << trained.out;
  EXPECT_LT(losses.back(), 0.6 * losses.front()) << trained.out;
  ASSERT_TRUE(fs::exists(work / "ad" / "adapter_model.safetensors"));
  std::ifstream config(work / "ad" / "adapter_config.json");
  EXPECT_FLOAT_EQ(nlohmann::json::parse(config).at("lora_dropout").get<float>(), 0.05f);

  // --test scored the data with the trained adapters, as `lmx eval` does; the bare model
  // scores it worse.
  const size_t tested = trained.out.find("train.jsonl: 6 examples, ");
  ASSERT_NE(tested, std::string::npos) << trained.out;
  const std::string score = " --data '" + (work / "train.jsonl").string() + "' --device cpu --json";
  const Result with_adapter = lmx("eval '" + model.string() + "' --adapter '" + (work / "ad").string() + "'" + score);
  const Result bare = lmx("eval '" + model.string() + "'" + score);
  ASSERT_EQ(with_adapter.status, 0) << with_adapter.err;
  ASSERT_EQ(bare.status, 0) << bare.err;
  const auto adapted_score = nlohmann::json::parse(with_adapter.out), bare_score = nlohmann::json::parse(bare.out);
  const double loss = adapted_score.at("loss").get<double>();
  char line[64];
  std::snprintf(line, sizeof line, "loss %.4f, perplexity", loss);
  EXPECT_NE(trained.out.find(line, tested), std::string::npos) << "--test and lmx eval agree: " << trained.out
                                                                << with_adapter.out;
  EXPECT_EQ(adapted_score.at("targets"), bare_score.at("targets"));
  EXPECT_LT(loss, 0.5 * bare_score.at("loss").get<double>());
  EXPECT_NEAR(adapted_score.at("perplexity").get<double>(), std::exp(loss), 1e-9 * std::exp(loss));
  const Result no_test = lmx("lora '" + model.string() + "' --data '" + (work / "train.jsonl").string() + "' --test");
  EXPECT_EQ(no_test.status, 1);
  EXPECT_NE(no_test.err.find("--test needs test data"), std::string::npos) << no_test.err;

  // The last layer only (of 2), then a count past the model's layers.
  const std::string one_layer = "lora '" + model.string() + "' --data '" + (work / "train.jsonl").string() +
                                "' --iters 1 --batch-size 3 --adapter-path '" + (work / "last").string() + "'";
  const Result last = lmx(one_layer + " --num-layers 1");
  ASSERT_EQ(last.status, 0) << last.err;
  std::ifstream last_config(work / "last" / "adapter_config.json");
  EXPECT_EQ(nlohmann::json::parse(last_config).at("layers_to_transform"), nlohmann::json::array({1}));
  const Result past = lmx(one_layer + " --num-layers 3");
  EXPECT_EQ(past.status, 1);
  EXPECT_NE(past.err.find("num_layers 3 is not between 0 (all) and the model's 2 decoder layers"), std::string::npos)
      << past.err;

  const std::string gen = " --device cpu --prompt-ids 5,6,7 --max-tokens 8 --ignore-eos --json";
  const Result with = lmx("generate '" + model.string() + "' --adapter '" + (work / "ad").string() + "'" + gen);
  ASSERT_EQ(with.status, 0) << with.err;
  LoadOptions o;
  o.backend = "cpu";
  o.adapter_path = (work / "ad").string();
  GenerateOptions g;
  g.max_tokens = 8;
  g.ignore_eos = true;
  std::vector<int32_t> want;
  {
    const auto m = load_model(model, o);
    for (const Token& t : m->generate_ids({5, 6, 7}, g)) want.push_back(t.id);
  }
  const auto ids = nlohmann::json::parse(with.out).at("ids").get<std::vector<int32_t>>();
  EXPECT_EQ(ids, want);
  const Result plain = lmx("generate '" + model.string() + "'" + gen);
  const auto plain_ids = nlohmann::json::parse(plain.out).at("ids").get<std::vector<int32_t>>();
  EXPECT_NE(plain_ids, want) << "the adapter changed nothing";

  const Result fused = lmx("fuse '" + model.string() + "' --adapter '" + (work / "ad").string() + "' --out '" +
                           (work / "fused").string() + "'");
  ASSERT_EQ(fused.status, 0) << fused.err;
  const Result from_fused = lmx("generate '" + (work / "fused").string() + "'" + gen);
  ASSERT_EQ(from_fused.status, 0) << from_fused.err;
  EXPECT_EQ(nlohmann::json::parse(from_fused.out).at("ids").get<std::vector<int32_t>>(), want);
  EXPECT_TRUE(fs::exists(work / "fused" / "model.safetensors"));

  // In shards of at most 100 kB, with save_pretrained's index: the same model.
  const Result sharded = lmx("fuse '" + model.string() + "' --adapter '" + (work / "ad").string() + "' --out '" +
                             (work / "sharded").string() + "' --max-shard-size 100kb");
  ASSERT_EQ(sharded.status, 0) << sharded.err;
  EXPECT_TRUE(fs::exists(work / "sharded" / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(work / "sharded" / "model.safetensors"));
  const Result from_sharded = lmx("generate '" + (work / "sharded").string() + "'" + gen);
  ASSERT_EQ(from_sharded.status, 0) << from_sharded.err;
  EXPECT_EQ(nlohmann::json::parse(from_sharded.out).at("ids").get<std::vector<int32_t>>(), want);
  fs::remove_all(work);
}

// A prompt past the context, and a model whose logits are all NaN: the exit status fails
// and the error says why; with --json the object carries it too.
TEST(CliTest, GenerationErrorsFailTheCommandAndSayWhy) {
  const fs::path dir = test::kFixtureModels / "qwen3-f32";
  const Result past = lmx("generate '" + dir.string() + "' --device cpu --prompt-ids 1,2,3,4,5,6,7,8,9 --context 8");
  EXPECT_EQ(past.status, 1);
  EXPECT_NE(past.err.find("lmx: error: [generate] the prompt has 9 tokens, more than the context length of 8; "
                          "shorten it or raise the context length"),
            std::string::npos)
      << past.err;
  const test::FixtureCopy copy("qwen3-f32", "cli_nan");
  copy.fill_nan("model.norm.weight");
  const Result nan = lmx("generate '" + copy.dir().string() + "' --device cpu --prompt hi --json");
  EXPECT_EQ(nan.status, 1);
  EXPECT_NE(nan.err.find("lmx: error: [generate] no token can be chosen: every logit is NaN"), std::string::npos)
      << nan.err;
  const auto j = nlohmann::json::parse(nan.out);
  EXPECT_EQ(j.at("finish_reason"), "error");
  EXPECT_NE(j.at("error").get<std::string>().find("every logit is NaN"), std::string::npos) << nan.out;
}

// Invalid UTF-8 is read as HF reads it (U+FFFD), and the command says so on stderr.
TEST(CliTest, InvalidUtf8IsReadAsReplacementCharactersWithAWarning) {
  const fs::path dir = test::kFixtureModels / "qwen3-f32";
  const std::string bad = "\"$(printf 'caf\\303(')\"", good = "'caf\xEF\xBF\xBD('";
  const Result tok_bad = lmx("tokenize '" + dir.string() + "' " + bad);
  const Result tok_good = lmx("tokenize '" + dir.string() + "' " + good);
  ASSERT_EQ(tok_bad.status, 0) << tok_bad.err;
  EXPECT_EQ(tok_bad.out, tok_good.out);
  EXPECT_NE(tok_bad.err.find("lmx: warning: the text is not valid UTF-8"), std::string::npos) << tok_bad.err;
  EXPECT_EQ(tok_good.err, "");
  const Result gen = lmx("generate '" + dir.string() + "' --device cpu --max-tokens 2 --prompt " + bad);
  EXPECT_EQ(gen.status, 0) << gen.err;
  EXPECT_NE(gen.err.find("lmx: warning: the prompt is not valid UTF-8"), std::string::npos) << gen.err;
}

TEST(CliTest, TokenizeAndDetokenizeAgreeWithTheLibrary) {
  const fs::path dir = test::kFixtureModels / "qwen3-f32";
  const Result tok = lmx("tokenize '" + dir.string() + "' 'Hello, world'");
  ASSERT_EQ(tok.status, 0) << tok.err;
  LoadOptions o;
  o.backend = "cpu";
  const auto model = load_model(dir, o);
  const std::vector<int32_t> ids = model->tokenize("Hello, world");
  EXPECT_EQ(nlohmann::json::parse(tok.out).get<std::vector<int32_t>>(), ids);
  const Result detok = lmx("detokenize '" + dir.string() + "'", nlohmann::json(ids).dump() + "\n");
  ASSERT_EQ(detok.status, 0) << detok.err;
  EXPECT_EQ(nlohmann::json::parse(detok.out).get<std::string>(), model->detokenize(ids));
}

// classify reads JSONL (a string or {"prompt": ...} a line) and writes one result a prompt,
// in order, as the library classifies; a malformed line is an error that names its line,
// and no output file is made.
TEST(CliTest, ClassifyWritesTheLibrarysResultsAndRefusesABadLineWithoutOutput) {
  const fs::path dir = test::kFixtureModels / "qwen3-f32";
  const fs::path tmp = fs::temp_directory_path() / ("lmx_cli_classify_" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  std::ofstream(tmp / "in.jsonl") << "\"The sky is\"\n{\"prompt\": \"2+2=\"}\n\n\"hello\"\n";
  const Result r = lmx("classify '" + dir.string() + "' --device cpu --input '" + (tmp / "in.jsonl").string() +
                       "' --output '" + (tmp / "out.jsonl").string() + "'");
  ASSERT_EQ(r.status, 0) << r.err;
  LoadOptions o;
  o.backend = "cpu";
  const std::vector<std::string> prompts = {"The sky is", "2+2=", "hello"};
  const std::vector<ClassifyResult> want = load_model(dir, o)->classify(prompts);
  std::ifstream out(tmp / "out.jsonl");
  std::string line;
  size_t n = 0;
  for (; std::getline(out, line); ++n) {
    ASSERT_LT(n, want.size()) << line;
    EXPECT_EQ(nlohmann::json::parse(line).at("token").get<int32_t>(), want[n].token) << "prompt " << n;
  }
  EXPECT_EQ(n, want.size());
  std::ofstream(tmp / "bad.jsonl") << "\"ok\"\nnot json\n";
  const Result bad = lmx("classify '" + dir.string() + "' --device cpu --input '" + (tmp / "bad.jsonl").string() +
                         "' --output '" + (tmp / "bad_out.jsonl").string() + "'");
  EXPECT_EQ(bad.status, 1);
  EXPECT_NE(bad.err.find("bad.jsonl:2: expected a JSON string or {\"prompt\": ...} per line"), std::string::npos)
      << bad.err;
  EXPECT_FALSE(fs::exists(tmp / "bad_out.jsonl"));
  fs::remove_all(tmp);
}

// info describes the model; chat takes lines on stdin until /quit and answers each.
TEST(CliTest, InfoAndChatOnTheFixture) {
  const fs::path dir = test::kFixtureModels / "qwen3-f32";
  const Result info = lmx("info '" + dir.string() + "' --device cpu");
  ASSERT_EQ(info.status, 0) << info.err;
  EXPECT_NE(info.out.find("Qwen3ForCausalLM"), std::string::npos) << info.out;
  const Result chat = lmx("chat '" + dir.string() + "' --device cpu --max-tokens 3", "hello\n/quit\n");
  EXPECT_EQ(chat.status, 0) << chat.err;
  EXPECT_EQ(chat.out.rfind("lmx chat: qwen3 (float32 on cpu).", 0), 0u) << chat.out;
  EXPECT_NE(chat.err.find("| length]"), std::string::npos) << "a reply of --max-tokens tokens: " << chat.err;
}

}  // namespace
}  // namespace lmx
