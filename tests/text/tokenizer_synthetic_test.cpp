// Small hand-made tokenizers that cover the components the real families do not use,
// against HF tokenizers' own output (tools/reference/make_synthetic_tokenizer_goldens.js).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "text/tokenizer.h"

namespace {

const nlohmann::json& synthetic() {
  static const nlohmann::json j = [] {
    std::ifstream in(LMX_FIXTURES_DIR "/tokenizers/synthetic.json");
    return in ? nlohmann::json::parse(in) : nlohmann::json();
  }();
  return j;
}

std::vector<std::string> names() {
  std::vector<std::string> out;
  if (synthetic().is_null()) return {"missing"};
  for (const auto& t : synthetic().at("tokenizers")) out.push_back(t.at("name"));
  return out;
}

class TokenizerSynthetic : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerSynthetic, MatchesHfTokenizers) {
  if (synthetic().is_null()) GTEST_SKIP() << "tests/fixtures/tokenizers/synthetic.json is missing";
  const nlohmann::json* entry = nullptr;
  for (const auto& t : synthetic().at("tokenizers"))
    if (t.at("name") == GetParam()) entry = &t;
  ASSERT_NE(entry, nullptr);
  const lmx::Tokenizer tok = lmx::Tokenizer::from_json(entry->at("tokenizer").dump());
  for (const auto& c : entry->at("cases")) {
    const std::string text = c.at("text");
    const std::string shown = nlohmann::json(text).dump();
    const auto ids = c.at("ids").get<std::vector<int32_t>>();
    EXPECT_EQ(tok.encode(text, true), ids) << GetParam() << " " << shown;
    EXPECT_EQ(tok.encode(text, false), c.at("ids_no_special").get<std::vector<int32_t>>()) << GetParam() << " " << shown;
    EXPECT_EQ(tok.decode(ids, false), c.at("decoded").get<std::string>()) << GetParam() << " " << shown;
    EXPECT_EQ(tok.decode(ids, true), c.at("decoded_skip").get<std::string>()) << GetParam() << " " << shown;
    for (bool skip : {false, true}) {
      lmx::StreamDecoder stream(tok, skip);
      std::string streamed;
      for (int32_t id : ids) streamed += stream.push(id);
      streamed += stream.flush();
      EXPECT_EQ(streamed, tok.decode(ids, skip)) << GetParam() << " streamed, skip=" << skip << " " << shown;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, TokenizerSynthetic, ::testing::ValuesIn(names()),
                         [](const auto& info) { return info.param; });

}  // namespace
