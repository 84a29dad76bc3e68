// Tokenizer behaviour that the goldens do not pin down: errors, invalid UTF-8, the
// tokenizer_config forms, streaming, concurrent use.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "text/tokenizer.h"
#include "text/unicode.h"

namespace fs = std::filesystem;

namespace {

// The byte-level BPE tokenizer of the fixture models (Qwen3-style pipeline, 512 ids).
const fs::path kFixtureDir = fs::path(LMX_FIXTURES_DIR) / "models" / "qwen3-f32";

// A minimal tokenizer.json whose `field` is replaced by `value`.
std::string tiny_tokenizer(const std::string& field, const nlohmann::json& value) {
  nlohmann::json j = {
      {"added_tokens", nlohmann::json::array()},
      {"normalizer", nullptr},
      {"pre_tokenizer", nullptr},
      {"post_processor", nullptr},
      {"decoder", nullptr},
      {"model", {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}, {"ab", 2}}}, {"merges", {"a b"}}}}};
  j[field] = value;
  return j.dump();
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const lmx::Error& e) {
    return e.what();
  }
  return "";
}

TEST(TokenizerErrors, UnknownComponentTypesNameTheType) {
  EXPECT_EQ(error_of([] { lmx::Tokenizer::from_json(tiny_tokenizer("normalizer", {{"type", "Foo"}})); })
                .rfind("[tokenizer] tokenizer.json: unknown normalizer type 'Foo'", 0),
            0u);
  EXPECT_NE(error_of([] { lmx::Tokenizer::from_json(tiny_tokenizer("pre_tokenizer", {{"type", "Bar"}})); })
                .find("unknown pre_tokenizer type 'Bar'"),
            std::string::npos);
  EXPECT_NE(error_of([] { lmx::Tokenizer::from_json(tiny_tokenizer("decoder", {{"type", "Baz"}})); })
                .find("unknown decoder type 'Baz'"),
            std::string::npos);
  EXPECT_NE(error_of([] { lmx::Tokenizer::from_json(tiny_tokenizer("model", {{"type", "WordPiece"}})); })
                .find("model type 'WordPiece' is not supported"),
            std::string::npos);
}

TEST(TokenizerErrors, BadFilesSayWhichFile) {
  EXPECT_NE(error_of([] { lmx::Tokenizer::from_dir("/nonexistent/dir"); }).find("[tokenizer] /nonexistent/dir/tokenizer.json"),
            std::string::npos);
  EXPECT_NE(error_of([] { lmx::Tokenizer::from_json("{not json"); }).find("not valid JSON"), std::string::npos);
  EXPECT_NE(error_of([] {
              lmx::Tokenizer::from_json(tiny_tokenizer(
                  "model", {{"type", "BPE"}, {"vocab", {{"a", 0}}}, {"merges", {"a zz"}}}));
            }).find("not in the vocab"),
            std::string::npos);
}

TEST(TokenizerBpe, MergesAndUnknownCharacters) {
  const auto tok = lmx::Tokenizer::from_json(tiny_tokenizer("normalizer", nullptr));
  EXPECT_EQ(tok.encode("abab"), (std::vector<int32_t>{2, 2}));
  EXPECT_EQ(tok.encode("ba"), (std::vector<int32_t>{1, 0}));
  // Without an unk_token the unknown character is dropped and its neighbours may merge.
  EXPECT_EQ(tok.encode("axb"), (std::vector<int32_t>{2}));
  EXPECT_EQ(tok.decode(std::vector<int32_t>{2, 1, 99}), "ab b");  // no decoder: joined by spaces
  EXPECT_EQ(tok.token_to_id("ab"), 2);
  EXPECT_EQ(tok.id_to_token(1), "b");
  EXPECT_EQ(tok.id_to_token(7), "");
  EXPECT_EQ(tok.vocab_size(), 3u);
}

TEST(TokenizerUtf8, InvalidInputIsReplacedLikePython) {
  using lmx::detail::to_valid_utf8;
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(to_valid_utf8("\xE4\xB8"), r);
  EXPECT_EQ(to_valid_utf8("\xE4\xB8x"), r + "x");
  EXPECT_EQ(to_valid_utf8("\xC0\x80"), r + r);
  EXPECT_EQ(to_valid_utf8("\xED\xA0\x80"), r + r + r);
  EXPECT_EQ(to_valid_utf8("\xF0\x9F\x98"), r);
  EXPECT_EQ(to_valid_utf8("\xF4\x90\x80\x80"), r + r + r + r);
  EXPECT_EQ(to_valid_utf8("a\xFF" "b"), "a" + r + "b");
  EXPECT_EQ(to_valid_utf8("ok \xE4\xB8\xAD"), "ok \xE4\xB8\xAD");

  const auto tok = lmx::Tokenizer::from_dir(kFixtureDir);
  EXPECT_EQ(tok.encode("x\xFF y\xE4\xB8"), tok.encode("x" + r + " y" + r));
  EXPECT_NO_THROW(tok.encode(std::string("\0\x80\xBF\xFE", 4)));
}

TEST(TokenizerConfigFile, TokenFormsAndTemplates) {
  const nlohmann::json j = {{"bos_token", {{"content", "<s>"}, {"lstrip", false}}},
                            {"eos_token", "</s>"},
                            {"pad_token", nullptr},
                            {"add_bos_token", true},
                            {"clean_up_tokenization_spaces", true},
                            {"chat_template",
                             {{{"name", "tool_use"}, {"template", "T"}}, {{"name", "default"}, {"template", "D"}}}}};
  const lmx::TokenizerConfig c = lmx::TokenizerConfig::parse(j, "tokenizer_config.json");
  EXPECT_EQ(c.bos_token, "<s>");
  EXPECT_EQ(c.eos_token, "</s>");
  EXPECT_FALSE(c.pad_token.has_value());
  EXPECT_EQ(c.add_bos_token, true);
  EXPECT_FALSE(c.add_eos_token.has_value());
  EXPECT_TRUE(c.clean_up_tokenization_spaces);
  EXPECT_EQ(c.chat_template, "D");
  EXPECT_EQ(c.named_chat_templates.at("tool_use"), "T");
  const auto strings = c.special_token_strings();
  ASSERT_EQ(strings.size(), 2u);
  EXPECT_EQ(strings[0], (std::pair<std::string, std::string>{"bos_token", "<s>"}));
  EXPECT_FALSE(c.mask_token.has_value());

  const lmx::TokenizerConfig extra = lmx::TokenizerConfig::parse(
      {{"additional_special_tokens", {"<a>", {{"content", "<b>"}}}}, {"extra_special_tokens", {{"image_token", "<img>"}}},
       {"tokenizer_class", "GemmaTokenizer"}},
      "tokenizer_config.json");
  EXPECT_EQ(extra.extra_special_tokens, (std::vector<std::string>{"<a>", "<b>", "<img>"}));
  EXPECT_EQ(extra.mask_token, "<mask>");

  EXPECT_NE(error_of([] { lmx::TokenizerConfig::parse({{"bos_token", 5}}, "cfg.json"); }).find("[tokenizer] cfg.json: bos_token"),
            std::string::npos);
}

TEST(TokenizerConfigFile, ChatTemplateFileWinsAndFlagsAddBos) {
  const fs::path dir = fs::temp_directory_path() / "lmx_tokenizer_unit_test";
  fs::create_directories(dir);
  fs::copy_file(kFixtureDir / "tokenizer.json", dir / "tokenizer.json", fs::copy_options::overwrite_existing);
  std::ofstream(dir / "tokenizer_config.json")
      << R"({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": true, "chat_template": "old"})";
  std::ofstream(dir / "chat_template.jinja") << "{{ messages }}";
  const auto tok = lmx::Tokenizer::from_dir(dir);
  EXPECT_EQ(tok.config().chat_template, "{{ messages }}");
  ASSERT_TRUE(tok.config().bos_token_id.has_value());
  EXPECT_EQ(tok.config().eos_token_id, tok.token_to_id("<|im_end|>"));
  const auto ids = tok.encode("hi", true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), *tok.config().bos_token_id);
  EXPECT_EQ(tok.encode("hi", false).size() + 1, ids.size());
  EXPECT_TRUE(tok.is_special(*tok.config().bos_token_id));
  fs::remove_all(dir);
}

TEST(TokenizerStream, HoldsPartialCharactersAndCleanupPrefixes) {
  const auto tok = lmx::Tokenizer::from_dir(kFixtureDir);
  // Byte-level BPE splits a 4-byte emoji over several ids: nothing comes out until it is whole.
  const std::string text = "go \xF0\x9F\x98\x80 now";
  const auto ids = tok.encode(text, false);
  lmx::StreamDecoder stream(tok);
  std::string out;
  for (int32_t id : ids) {
    const std::string piece = stream.push(id);
    EXPECT_TRUE(lmx::detail::is_valid_utf8(piece));
    EXPECT_EQ(piece.find("\xEF\xBF\xBD"), std::string::npos);
    out += piece;
  }
  out += stream.flush();
  EXPECT_EQ(out, text);
  EXPECT_EQ(stream.flush(), "");
}

TEST(TokenizerThreads, ConcurrentEncodeMatchesSerial) {
  const auto tok = lmx::Tokenizer::from_dir(kFixtureDir);
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i) texts.push_back("text number " + std::to_string(i * 7919) + " with words " + std::to_string(i));
  std::vector<std::vector<int32_t>> serial;
  for (const auto& t : texts) serial.push_back(tok.encode(t));
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 5; ++rep)
        for (size_t i = 0; i < texts.size(); ++i) failures[size_t(t)] += tok.encode(texts[i]) != serial[i];
    });
  for (auto& th : threads) th.join();
  for (int f : failures) EXPECT_EQ(f, 0);
}

TEST(TokenizerMove, MovedTokenizerStillWorks) {
  auto a = lmx::Tokenizer::from_dir(kFixtureDir);
  const auto ids = a.encode("hello there");
  lmx::Tokenizer b = std::move(a);
  EXPECT_EQ(b.encode("hello there"), ids);
  EXPECT_EQ(b.decode(ids), "hello there");
}

}  // namespace
