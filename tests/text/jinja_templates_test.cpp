// The real chat templates of Llama 3, Qwen3 and Gemma 3, rendered for a short conversation.
// Expected strings are derived by hand from the template texts. The tokenizer_config.json
// files come from scripts/fetch-test-data.sh; without them these tests are skipped.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.h"
#include "text/jinja/jinja.h"

namespace lmx::jinja {
namespace {

using Json = nlohmann::ordered_json;

struct ChatTemplate {
  std::string source;
  Json config;
};

// Loads LMX_TEST_DATA_DIR/<family>/tokenizer_config.json, or skips the calling test.
bool load(const std::string& family, ChatTemplate& out) {
  const std::filesystem::path path =
      std::filesystem::path(LMX_TEST_DATA_DIR) / family / "tokenizer_config.json";
  std::ifstream in(path);
  if (!in) return false;
  out.config = Json::parse(in);
  const Json& t = out.config.at("chat_template");
  if (t.is_string()) {
    out.source = t.get<std::string>();
  } else {
    for (const auto& entry : t)
      if (entry.value("name", "") == "default")
        out.source = entry.at("template").get<std::string>();
  }
  return !out.source.empty();
}

std::string missing(const std::string& family) {
  return std::string(LMX_TEST_DATA_DIR) + "/" + family +
         "/tokenizer_config.json is missing; run scripts/fetch-test-data.sh";
}

// Special tokens may be plain strings or {"content": ...} objects in older configs.
std::string token(const Json& config, const char* name) {
  if (!config.contains(name) || config[name].is_null()) return "";
  const Json& t = config[name];
  return t.is_string() ? t.get<std::string>() : t.at("content").get<std::string>();
}

Json conversation() {
  return Json::parse(R"([
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi there. How can I help?"},
    {"role": "user", "content": "What is 2+2?"}])");
}

Json context(const ChatTemplate& t) {
  Json ctx;
  ctx["messages"] = conversation();
  ctx["add_generation_prompt"] = true;
  for (const char* name : {"bos_token", "eos_token", "pad_token", "unk_token"}) {
    if (t.config.contains(name) && !t.config[name].is_null()) ctx[name] = token(t.config, name);
  }
  return ctx;
}

TEST(JinjaTemplates, Llama3) {
  ChatTemplate t;
  if (!load("llama3", t)) GTEST_SKIP() << missing("llama3");
  Json ctx = context(t);
  ctx["date_string"] = "26 Jul 2024";
  const std::string bos = token(t.config, "bos_token");
  const std::string out = Template(t.source).render(ctx);
  std::string expected;
  if (t.source.find("Today Date") != std::string::npos) {
    // Llama 3.1/3.2: a system header with the knowledge and current dates.
    if (t.source.find("bos_token") != std::string::npos) expected += bos;
    expected +=
        "<|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "You are a helpful assistant.<|eot_id|>";
  } else {
    // Llama 3: the system message is an ordinary turn and the first turn gets the bos token.
    expected += bos +
                "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant."
                "<|eot_id|>";
  }
  expected +=
      "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\nHi there. How can I help?<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n";
  EXPECT_EQ(out, expected);
}

TEST(JinjaTemplates, Qwen3) {
  ChatTemplate t;
  if (!load("qwen3", t)) GTEST_SKIP() << missing("qwen3");
  const Template tmpl(t.source);
  Json ctx = context(t);
  const std::string turns =
      "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
      "<|im_start|>user\nHello!<|im_end|>\n"
      "<|im_start|>assistant\nHi there. How can I help?<|im_end|>\n"
      "<|im_start|>user\nWhat is 2+2?<|im_end|>\n";
  EXPECT_EQ(tmpl.render(ctx), turns + "<|im_start|>assistant\n");
  ctx["enable_thinking"] = false;
  EXPECT_EQ(tmpl.render(ctx), turns + "<|im_start|>assistant\n<think>\n\n</think>\n\n");
  ctx["enable_thinking"] = true;
  EXPECT_EQ(tmpl.render(ctx), turns + "<|im_start|>assistant\n");
  ctx["add_generation_prompt"] = false;
  EXPECT_EQ(tmpl.render(ctx), turns);
}

TEST(JinjaTemplates, Qwen3ToolsAndThinking) {
  ChatTemplate t;
  if (!load("qwen3", t)) GTEST_SKIP() << missing("qwen3");
  Json ctx = context(t);
  ctx["add_generation_prompt"] = false;
  ctx["messages"] = Json::parse(R"([
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "<think>\nNeed a tool.\n</think>\n\n",
     "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "{\"temp\": 20}"},
    {"role": "assistant", "content": "<think>\nGot it.\n</think>\n\nIt is 20 \u00b0C."}])");
  ctx["tools"] = Json::parse(R"([{"type": "function", "function": {"name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])");
  const std::string expected =
      "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions to assist "
      "with the user query.\n\nYou are provided with function signatures within <tools></tools> "
      "XML tags:\n<tools>\n"
      R"({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})"
      "\n</tools>\n\nFor each function call, return a json object with function name and "
      "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
      R"({"name": <function-name>, "arguments": <args-json-object>})"
      "\n</tool_call><|im_end|>\n"
      "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
      // After the last user query, so the reasoning is kept; content is empty after </think>.
      "<|im_start|>assistant\n<think>\nNeed a tool.\n</think>\n\n<tool_call>\n"
      R"({"name": "get_weather", "arguments": {"city": "Paris"}})"
      "\n</tool_call><|im_end|>\n"
      "<|im_start|>user\n<tool_response>\n{\"temp\": 20}\n</tool_response><|im_end|>\n"
      "<|im_start|>assistant\n<think>\nGot it.\n</think>\n\nIt is 20 \xC2\xB0"
      "C.<|im_end|>\n";
  EXPECT_EQ(Template(t.source).render(ctx), expected);
}

TEST(JinjaTemplates, Gemma3) {
  ChatTemplate t;
  if (!load("gemma3", t)) GTEST_SKIP() << missing("gemma3");
  const Template tmpl(t.source);
  Json ctx = context(t);
  const std::string bos = token(t.config, "bos_token");
  // The system message is merged into the first user turn; assistant becomes model.
  EXPECT_EQ(tmpl.render(ctx), bos +
                                  "<start_of_turn>user\nYou are a helpful assistant.\n\nHello!"
                                  "<end_of_turn>\n"
                                  "<start_of_turn>model\nHi there. How can I help?<end_of_turn>\n"
                                  "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n"
                                  "<start_of_turn>model\n");
  ctx["messages"] = Json::parse(R"([{"role": "user", "content": [
    {"type": "image"}, {"type": "text", "text": "  Describe this.  "}]}])");
  EXPECT_EQ(tmpl.render(ctx),
            bos +
                "<start_of_turn>user\n<start_of_image>Describe this.<end_of_turn>\n"
                "<start_of_turn>model\n");
  ctx["messages"] = Json::parse(R"([{"role": "user", "content": "a"},
                                    {"role": "user", "content": "b"}])");
  try {
    tmpl.render(ctx);
    FAIL() << "expected raise_exception";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Conversation roles must alternate"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace lmx::jinja
