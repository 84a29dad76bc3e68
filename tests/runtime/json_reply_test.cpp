// Replies held to one JSON object (GenerateOptions::json_object) or to a JSON Schema
// (json_schema): whatever the model and its draw, every reply is a prefix that a JSON parser
// could continue (text::JsonPrefix), and one that closes its object ends there ("complete")
// and parses as one (nlohmann's parser), with the schema's keys, types and values.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "lmx/lmx.h"
#include "test_util.h"
#include "text/json_prefix.h"

namespace lmx {
namespace {

const std::filesystem::path kModel = std::filesystem::path(LMX_FIXTURES_DIR) / "models" / "qwen3-f32";

std::unique_ptr<TextModel> cpu_model() {
  LoadOptions lo;
  lo.backend = "cpu";
  return load_model(kModel, lo);
}

// The one id of a one-character text.
int32_t id_of(const TextModel& model, const std::string& c) {
  const std::vector<int32_t> ids = model.tokenize(c, false);
  EXPECT_EQ(ids.size(), 1u) << c;
  return ids.at(0);
}

// A held reply whose bias ranks the characters (quote, colon, closing brace, opening brace)
// above the model's own choices; the hold decides which may come: {"":""}.
GenerateOptions ranked_characters(const TextModel& model) {
  GenerateOptions o;
  o.max_tokens = 40;
  o.json_object = true;
  o.logit_bias = {{id_of(model, "\""), 20.f}, {id_of(model, ":"), 19.f}, {id_of(model, "}"), 18.f},
                  {id_of(model, "{"), 17.f}};
  return o;
}

// Greedy, then three seeded draws.
const std::vector<std::optional<uint64_t>> kDraws = {std::nullopt, 1, 2, 3};

GenerateOptions drawn(std::optional<uint64_t> seed, int max_tokens) {
  GenerateOptions o;
  o.max_tokens = max_tokens;
  if (seed) {
    o.temperature = 1.0f;
    o.top_k = 50;
    o.seed = seed;
  }
  return o;
}

// The structure's characters ranked above a random model's own choices and whitespace
// below, so that its replies reach the end of a schema's object within a few dozen tokens.
std::vector<std::pair<int32_t, float>> structure_first(const TextModel& model) {
  std::vector<std::pair<int32_t, float>> bias;
  for (const char* c : {"\"", ":", ",", "}", "]"}) bias.emplace_back(id_of(model, c), 8.f);
  bias.emplace_back(id_of(model, " "), -50.f);
  return bias;
}

const char* kZoneSchema = R"({"type": "object", "properties": {
    "zone": {"enum": ["north", "south"]}, "n": {"const": 3}, "ok": {"type": "boolean"},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2}},
    "required": ["zone", "n", "ok"], "additionalProperties": false})";

// A reply held to kZoneSchema that closed: the keys in the schema's order, the values of
// their types.
void expect_zone(const std::string& text) {
  const auto v = nlohmann::ordered_json::parse(text);
  ASSERT_TRUE(v.is_object()) << text;
  std::vector<std::string> keys;
  for (const auto& [k, value] : v.items()) keys.push_back(k);
  ASSERT_GE(keys.size(), 3u) << text;
  EXPECT_EQ((std::vector<std::string>(keys.begin(), keys.begin() + 3)), (std::vector<std::string>{"zone", "n", "ok"}));
  EXPECT_TRUE(v["zone"] == "north" || v["zone"] == "south") << text;
  EXPECT_EQ(v["n"], 3) << text;
  EXPECT_TRUE(v["ok"].is_boolean()) << text;
  if (v.contains("tags")) {
    ASSERT_TRUE(v["tags"].is_array() && v["tags"].size() <= 2) << text;
    for (const auto& t : v["tags"]) EXPECT_TRUE(t.is_string() && t.get<std::string>().size() <= 3) << text;
  }
}

TEST(JsonReplyTest, EveryDrawContinuesTheJson) {
  auto model = cpu_model();
  const std::vector<Message> chat{{"user", "Give me a JSON object."}};
  for (const std::optional<uint64_t> seed : kDraws) {
    GenerateOptions o = drawn(seed, 40);
    o.json_object = true;
    const std::string text = model->chat(chat, o).text();
    ASSERT_FALSE(model->err()) << model->err_message();
    text::JsonPrefix json;
    EXPECT_TRUE(json.feed(text)) << "'" << text << "'";
    const std::string why = model->metrics().finish_reason;
    EXPECT_EQ(why == "complete", json.complete()) << why << ": '" << text << "'";
    if (why == "complete") {
      EXPECT_TRUE(nlohmann::json::parse(text).is_object()) << text;
    }
    // Without the hold the same draws write no JSON: the hold is what made it.
    GenerateOptions free = o;
    free.json_object = false;
    EXPECT_FALSE(text::JsonPrefix().accepts(model->chat(chat, free).text()));
  }
}

TEST(JsonReplyTest, AnObjectThatClosesEndsTheReply) {
  auto model = cpu_model();
  const std::vector<Message> chat{{"user", "Give me a JSON object."}};
  GenerateOptions o = ranked_characters(*model);
  std::vector<Token> tokens;
  for (const Token& t : model->chat(chat, o)) tokens.push_back(t);
  std::string text;
  for (const Token& t : tokens) text += t.text;
  EXPECT_EQ(text, "{\"\":\"\"}");
  EXPECT_EQ(model->metrics().finish_reason, "complete");
  EXPECT_EQ(model->metrics().generated_tokens, int(tokens.size()));
  EXPECT_EQ(nlohmann::json::parse(text), nlohmann::json({{"", ""}}));
  // With scores: the model's own distribution, as for any stream.
  o.logprobs = 2;
  std::string again;
  for (const Token& t : model->chat(chat, o)) {
    again += t.text;
    EXPECT_LE(t.logprob, 0.f);
    EXPECT_EQ(t.top_logprobs.size(), 2u);
  }
  EXPECT_EQ(again, text);
}

// On a GPU the held reply runs the fused step a token at a time and reads its logits back.
TEST(JsonReplyTest, CudaHoldsItToo) {
  if (!test::cuda_visible()) GTEST_SKIP() << "no CUDA device visible";
  auto model = load_model(kModel, test::cuda_bf16());
  const std::vector<Message> chat{{"user", "Give me a JSON object."}};
  GenerateOptions o = ranked_characters(*model);
  EXPECT_EQ(model->chat(chat, o).text(), "{\"\":\"\"}");
  EXPECT_EQ(model->metrics().finish_reason, "complete");
  EXPECT_EQ(model->metrics().decode_path.rfind("fused-", 0), 0u) << model->metrics().decode_path;
  o.logit_bias.clear();
  o.temperature = 1.0f;
  for (uint64_t seed : {1, 2, 3}) {
    o.seed = seed;
    const std::string text = model->chat(chat, o).text();
    ASSERT_FALSE(model->err()) << model->err_message();
    EXPECT_TRUE(text::JsonPrefix().feed(text)) << text;
  }
  // Held to a schema: the same path, each step's logits read on the host.
  const auto schema = std::make_shared<const text::JsonSchema>(text::JsonSchema::compile(kZoneSchema));
  o.json_object = false;
  o.json_schema = kZoneSchema;
  o.max_tokens = 60;
  o.logit_bias = structure_first(*model);
  for (uint64_t seed : {1, 2, 3}) {
    o.seed = seed;
    const std::string text = model->chat(chat, o).text();
    ASSERT_FALSE(model->err()) << model->err_message();
    EXPECT_TRUE(text::JsonPrefix(schema).feed(text)) << text;
    if (model->metrics().finish_reason == "complete") expect_zone(text);
  }
}

TEST(JsonReplyTest, EveryDrawMeetsTheSchema) {
  auto model = cpu_model();
  const auto schema = std::make_shared<const text::JsonSchema>(text::JsonSchema::compile(kZoneSchema));
  const std::vector<Message> chat{{"user", "Give me a JSON object."}};
  int closed = 0;
  for (const std::optional<uint64_t> seed : kDraws) {
    GenerateOptions o = drawn(seed, 60);
    o.json_schema = kZoneSchema;
    o.logit_bias = structure_first(*model);
    const std::string text = model->chat(chat, o).text();
    ASSERT_FALSE(model->err()) << model->err_message();
    text::JsonPrefix json(schema);
    EXPECT_TRUE(json.feed(text)) << "'" << text << "'";
    const std::string why = model->metrics().finish_reason;
    EXPECT_EQ(why == "complete", json.complete()) << why << ": '" << text << "'";
    if (why == "complete") {
      ++closed;
      expect_zone(text);
    }
    // The same draws held to an object alone, or not held, do not meet the schema.
    GenerateOptions object = o;
    object.json_schema.clear();
    object.json_object = true;
    const std::string loose = model->chat(chat, object).text();
    EXPECT_FALSE(text::JsonPrefix(schema).feed(loose)) << "'" << loose << "' against '" << text << "'";
  }
  EXPECT_GE(closed, 2) << "most of the replies should close";
}

TEST(JsonReplyTest, ASchemaRefusedChangesNothing) {
  auto model = cpu_model();
  const std::vector<Message> chat{{"user", "Give me a JSON object."}};
  GenerateOptions o;
  o.max_tokens = 5;
  const std::string before = model->chat(chat, o).text();
  o.json_schema = R"({"type": "object", "properties": {"when": {"type": "string", "format": "date-time"}}})";
  try {
    model->chat(chat, o);
    ADD_FAILURE() << "expected a refusal";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[json_schema] at '/properties/when': the keyword 'format'"),
              std::string::npos)
        << e.what();
  }
  o.json_schema.clear();
  EXPECT_EQ(model->chat(chat, o).text(), before);
  EXPECT_EQ(model->metrics().finish_reason, "length");
}

TEST(JsonReplyTest, BatchesRefuseIt) {
  auto model = cpu_model();
  GenerateOptions o;
  o.json_object = true;
  const std::vector<std::vector<int32_t>> prompts{{5, 6, 7}};
  try {
    model->generate_rows(prompts, std::vector<GenerateOptions>{o});
    ADD_FAILURE() << "expected a refusal";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("runs as a stream"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lmx
