// Chats that offer tools or continue a reply: the library's messages (ToolCall,
// tool_call_id), GenerateOptions::tools and continue_final_message rendered by the real
// templates as transformers renders the same conversation (tests/fixtures/tokenizers/*.json,
// from make_tokenizer_goldens.py); the template's call format in ModelInfo; and what cannot
// be rendered refused by name.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "fixture_copy.h"
#include "lmx/lmx.h"
#include "runtime/text_model.h"
#include "text/tokenizer.h"

namespace lmx {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;  // as the goldens were written: tools and arguments keep their key order

// The qwen3-f32 fixture with a chat template that lists tools.
class ToolModel : public test::FixtureCopy {
 public:
  ToolModel() : FixtureCopy("qwen3-f32", "tools") {
    set_json("tokenizer_config.json", json::json_pointer("/chat_template"), test::kHermesToolTemplate);
  }
};

// An OpenAI-style message (as the goldens hold them: arguments as objects, content maybe
// null) as the library's.
Message message_of(const json& m) {
  Message out{m.at("role").get<std::string>(), m.at("content").is_null() ? "" : m.at("content").get<std::string>()};
  for (const json& c : m.value("tool_calls", json::array()))
    out.tool_calls.push_back({c.value("id", ""), c.at("function").at("name").get<std::string>(),
                              c.at("function").at("arguments").dump()});
  out.tool_call_id = m.value("tool_call_id", "");
  return out;
}

// chat_ids' lmx::Error, whose text must hold each of `words`.
void expect_refused(const TextModel& model, std::span<const Message> chat, const GenerateOptions& o,
                    std::initializer_list<const char*> words) {
  try {
    model.chat_ids(chat, o);
    ADD_FAILURE() << "expected a refusal";
  } catch (const Error& e) {
    for (const char* w : words) EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << e.what();
  }
}

// The golden chats of `family` (tests/fixtures/tokenizers/<family>.json) that `pick` takes,
// rendered through the library's messages and options; returns how many were compared.
int expect_goldens(const std::string& family, const std::function<bool(const json& kwargs)>& pick) {
  const fs::path data = fs::path(LMX_TEST_DATA_DIR) / family;
  if (!fs::exists(data / "tokenizer.json")) return -1;
  const Tokenizer tok = Tokenizer::from_dir(data);
  std::ifstream in(fs::path(LMX_FIXTURES_DIR) / "tokenizers" / (family + ".json"));
  const json golden = json::parse(in);
  int checked = 0;
  for (const json& chat : golden.at("chats")) {
    const json& kwargs = chat.at("kwargs");
    if (!pick(kwargs) || chat.at("rendered").is_null()) continue;
    std::vector<Message> messages;
    for (const json& m : chat.at("messages")) messages.push_back(message_of(m));
    GenerateOptions o;
    for (const auto& [key, value] : kwargs.items()) {
      if (key == "tools")
        o.tools = value.dump();
      else if (key == "add_generation_prompt")
        o.add_generation_prompt = value.get<bool>();
      else if (key == "continue_final_message")
        o.continue_final_message = value.get<bool>();
      else
        o.template_vars.emplace_back(key, value.dump());
    }
    EXPECT_EQ(runtime::render_chat(tok, messages, o, family), chat.at("rendered").get<std::string>())
        << family << ": " << chat.dump();
    ++checked;
  }
  return checked;
}

std::string missing_data() { return "no real tokenizer files: run scripts/fetch-test-data.sh"; }

TEST(ChatTools, RenderedAsTransformersRendersThem) {
  const int checked = expect_goldens("qwen3", [](const json& kwargs) { return kwargs.contains("tools"); });
  if (checked < 0) GTEST_SKIP() << missing_data();
  EXPECT_GE(checked, 5) << "the goldens hold Qwen3's tool chats (make_tokenizer_goldens.py)";
}

// A reply begun for the model: the rendered chat cut after the last message's text, as
// apply_chat_template(continue_final_message=True) cuts it, whether the template keeps the
// text's spacing or trims it (Gemma 3's), and a tool call begun (Qwen3's).
TEST(ChatTools, AContinuedLastMessageIsCutAsTransformersCutsIt) {
  for (const std::string family : {"llama3", "qwen3", "gemma3"}) {
    const int checked =
        expect_goldens(family, [](const json& kwargs) { return kwargs.value("continue_final_message", false); });
    if (checked < 0) GTEST_SKIP() << missing_data();
    EXPECT_GE(checked, 2) << family << ": the goldens hold continued chats (make_tokenizer_goldens.py)";
  }
  // Whitespace is Python's: Gemma 3's template trims a trailing no-break space, and the cut
  // follows the trimmed text (apply_chat_template strips with str.strip).
  const Tokenizer gemma = Tokenizer::from_dir(fs::path(LMX_TEST_DATA_DIR) / "gemma3");
  GenerateOptions go_on;
  go_on.add_generation_prompt = false;
  go_on.continue_final_message = true;
  const std::vector<Message> nbsp{{"user", "hi"}, {"assistant", "Hello\u00a0"}};
  const std::string cut = runtime::render_chat(gemma, nbsp, go_on, "gemma3");
  EXPECT_TRUE(cut.ends_with("<start_of_turn>model\nHello")) << cut;
  const ToolModel copy;
  auto model = load_model(copy.dir());
  GenerateOptions o;
  o.continue_final_message = true;
  const std::vector<Message> chat{{"user", "hi"}, {"assistant", "Hello, "}};
  expect_refused(*model, chat, o, {"add_generation_prompt must be false"});
  o.add_generation_prompt = false;
  EXPECT_EQ(model->chat_ids(chat, o),
            model->tokenize("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nHello, ", false));
}

TEST(ChatTools, TheTemplateNamesTheCallFormat) {
  const ToolModel copy;
  EXPECT_EQ(load_model(copy.dir())->info().tool_call_format, "hermes");
  // The fixture's own template lists no tools.
  EXPECT_EQ(load_model(test::kFixtureModels / "qwen3-f32")->info().tool_call_format, "");
}

TEST(ChatTools, ToolsAndCallsReachTheTemplate) {
  const ToolModel copy;
  auto model = load_model(copy.dir());
  GenerateOptions o;
  o.tools = R"([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])";
  std::vector<Message> chat{{"user", "hi"}, {"assistant", ""}, {"tool", "42"}};
  chat[1].tool_calls.push_back({"call_9", "f", R"({"x": [1, 2]})"});
  chat[2].tool_call_id = "call_9";
  const std::string expected =
      "<|im_start|>system\nf: {\"type\": \"object\"}\nCall one as <tool_call>{\"name\": ..., \"arguments\": ...}"
      "</tool_call>.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
      "<|im_start|>assistant\n<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": [1, 2]}}</tool_call><|im_end|>\n"
      "<|im_start|>tool\n42 (call_9)<|im_end|>\n<|im_start|>assistant\n";
  EXPECT_EQ(model->chat_ids(chat, o), model->tokenize(expected, false));
}

TEST(ChatTools, WhatCannotBeRenderedIsRefusedByName) {
  const ToolModel copy;
  auto model = load_model(copy.dir());
  std::vector<Message> chat{{"user", "hi"}};
  GenerateOptions o;
  o.tools = R"({"name": "f"})";  // not a list
  expect_refused(*model, chat, o, {"[chat]", "tools must be a JSON list"});
  o.tools = "[{]";
  expect_refused(*model, chat, o, {"tools must be a JSON list"});
  o.tools = "";
  chat.push_back({"assistant", ""});
  chat[1].tool_calls.push_back({"", "get_weather", "{city: Paris}"});
  expect_refused(*model, chat, o, {"message 1's tool call 0 (get_weather)", "arguments must be a JSON object"});
  chat[1].tool_calls[0].arguments = "[1]";
  expect_refused(*model, chat, o, {"arguments must be a JSON object"});
  // A template that never names tools would drop them silently.
  auto plain = load_model(test::kFixtureModels / "qwen3-f32");
  GenerateOptions with_tools;
  with_tools.tools = R"([{"type": "function", "function": {"name": "f"}}])";
  expect_refused(*plain, std::vector<Message>{{"user", "hi"}}, with_tools, {"does not list tools"});
}

}  // namespace
}  // namespace lmx
