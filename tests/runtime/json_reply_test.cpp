// Replies held to one JSON object (GenerateOptions::json_object) or to a JSON Schema
// (json_schema): whatever the model and its draw, every reply is a prefix that a JSON parser
// could continue (text::JsonPrefix), and one that closes its object ends there ("complete")
// and parses as one (nlohmann's parser), with the schema's keys, types and values.
#include <gtest/gtest.h>

#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <utility>

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

// Rows for generate_rows' batch and for rows that join it (RowFeed).
struct HeldRow {
  std::vector<int32_t> prompt;
  GenerateOptions options;
};

std::map<size_t, BatchResult> run_held(TextModel& model, const std::vector<HeldRow>& first,
                                       const std::vector<HeldRow>& joining) {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<GenerateOptions> options;
  for (const HeldRow& r : first) prompts.push_back(r.prompt), options.push_back(r.options);
  std::map<size_t, BatchResult> done;
  bool joined = false;
  RowFeed feed;
  feed.max_rows = 8;
  feed.join = [&](size_t) {
    std::vector<RowRequest> out;
    if (!std::exchange(joined, true))
      for (const HeldRow& r : joining) out.push_back({r.prompt, r.options});
    return out;
  };
  feed.done = [&](size_t row, BatchResult r) { done[row] = std::move(r); };
  model.generate_rows(prompts, options, {}, &feed);
  return done;
}

void expect_lone(TextModel& model, const std::vector<HeldRow>& rows, const std::map<size_t, BatchResult>& got) {
  for (size_t r = 0; r < rows.size(); ++r) {
    std::vector<int32_t> ids;
    std::string text;
    for (const Token& t : model.generate_ids(rows[r].prompt, rows[r].options)) ids.push_back(t.id), text += t.text;
    ASSERT_TRUE(got.count(r)) << "row " << r;
    EXPECT_EQ(got.at(r).ids, ids) << "row " << r;
    EXPECT_EQ(got.at(r).text, text) << "row " << r;
    EXPECT_EQ(got.at(r).finish_reason, model.metrics().finish_reason) << "row " << r;
  }
}

// The batch of the tests below, drawn by `seed` (none: greedy): a row not held, one held to
// an object, and, joining, one held to kZoneSchema and another to an object. Checks that the
// held rows' texts are JSON prefixes, and the schema's a zone where it closed.
std::vector<HeldRow> held_rows(const TextModel& model, std::optional<uint64_t> seed, size_t first) {
  auto held = [&](int n, bool object, const char* schema, uint64_t offset) {
    GenerateOptions o = drawn(seed ? std::optional<uint64_t>(*seed + offset) : std::nullopt, n);
    o.logit_bias = structure_first(model);
    o.json_object = object;
    o.json_schema = schema;
    return o;
  };
  const std::vector<int32_t> prompt = model.tokenize("Give me a JSON object.", true);
  std::vector<HeldRow> rows = {{prompt, held(20, false, "", 0)},
                               {{5, 6, 7}, held(40, true, "", 1)},
                               {prompt, held(60, false, kZoneSchema, 2)},
                               {{8, 9}, held(30, true, "", 3)}};
  EXPECT_LE(first, rows.size());
  return rows;
}

std::map<size_t, BatchResult> run_held_rows(TextModel& model, const std::vector<HeldRow>& rows, size_t first) {
  const std::map<size_t, BatchResult> got = run_held(model, {rows.begin(), rows.begin() + long(first)},
                                                     {rows.begin() + long(first), rows.end()});
  EXPECT_EQ(got.size(), rows.size());
  if (got.size() != rows.size()) return got;
  EXPECT_EQ(got.at(0).ids.size(), 20u);
  for (size_t r : {size_t(1), size_t(3)}) EXPECT_TRUE(text::JsonPrefix().feed(got.at(r).text)) << got.at(r).text;
  const auto schema = std::make_shared<const text::JsonSchema>(text::JsonSchema::compile(kZoneSchema));
  EXPECT_TRUE(text::JsonPrefix(schema).feed(got.at(2).text)) << got.at(2).text;
  if (got.at(2).finish_reason == "complete") expect_zone(got.at(2).text);
  return got;
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
  // Rows of a batch (on the batched fused step): the device's draws for the held rows go
  // unused, and where the host's differ the next step takes them.
  for (const std::optional<uint64_t> seed : kDraws) {
    SCOPED_TRACE(seed ? "seed " + std::to_string(*seed) : "greedy");
    run_held_rows(*model, held_rows(*model, seed, 2), 2);
    EXPECT_EQ(model->metrics().decode_path.rfind("fused-", 0), 0u) << model->metrics().decode_path;
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

// A batch's rows held to JSON (generate_rows, rows that join it too) draw on the host from
// each step's logits as their lone streams do: the same tokens and end, beside a row that is
// not held. A schema the reader refuses fails its row alone.
TEST(JsonReplyTest, BatchRowsHoldItAsTheirStreamsDo) {
  auto model = cpu_model();
  const std::vector<int32_t> prompt = model->tokenize("Give me a JSON object.", true);
  for (const std::optional<uint64_t> seed : kDraws) {
    SCOPED_TRACE(seed ? "seed " + std::to_string(*seed) : "greedy");
    const std::vector<HeldRow> rows = held_rows(*model, seed, 2);
    expect_lone(*model, rows, run_held_rows(*model, rows, 2));
  }
  // A schema the reader refuses fails its row alone, named.
  GenerateOptions bad;
  bad.max_tokens = 4;
  bad.json_schema = R"({"type": "object", "properties": {"when": {"type": "string", "format": "date-time"}}})";
  GenerateOptions fine;
  fine.max_tokens = 4;
  const std::map<size_t, BatchResult> got = run_held(*model, {{prompt, fine}}, {{prompt, bad}});
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got.at(1).finish_reason, "error");
  EXPECT_NE(got.at(1).error.find("the keyword 'format'"), std::string::npos) << got.at(1).error;
  EXPECT_EQ(got.at(0).ids.size(), 4u);
  // So does a row that no token can continue (every one that may open an object biased to
  // -inf), at its first draw; the other row, with the same bias, goes on.
  GenerateOptions none = fine;
  for (int32_t id = 0; id < int32_t(model->info().vocab_size); ++id) {
    const std::string text = model->detokenize({&id, 1}, false);
    if (!text.empty() && std::string("{ \t\n\r").find(text[0]) != std::string::npos)
      none.logit_bias.emplace_back(id, -std::numeric_limits<float>::infinity());
  }
  GenerateOptions stuck = none;
  stuck.json_object = true;
  const std::map<size_t, BatchResult> held = run_held(*model, {{prompt, none}, {prompt, stuck}}, {});
  ASSERT_EQ(held.size(), 2u);
  EXPECT_EQ(held.at(1).finish_reason, "error");
  EXPECT_NE(held.at(1).error.find("no token of the vocabulary continues the JSON"), std::string::npos)
      << held.at(1).error;
  EXPECT_EQ(held.at(0).ids.size(), 4u);
  size_t streamed = 0;  // a stream ends so too, with the error
  for (const Token& t : model->generate_ids(prompt, stuck)) streamed += t.text.size();
  EXPECT_EQ(streamed, 0u);
  EXPECT_NE(model->err_message().find("no token of the vocabulary continues the JSON"), std::string::npos)
      << model->err_message();
}

}  // namespace
}  // namespace lmx
