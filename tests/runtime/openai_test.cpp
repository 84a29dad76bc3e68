// The server's reading of OpenAI's tool fields and its replies that carry calls, on their
// own: no model can be made to call a tool on demand, so the reply shapes are held here and
// the path from a request to the template in serve_test.cpp.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <regex>

#include "openai.h"

namespace lmx::cli::openai {
namespace {

using nlohmann::json;

const json kTools = json::parse(R"([{"type": "function", "function": {"name": "get_weather",
  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])");

Request chat_request(const json& body) { return parse_request(body.dump(), true, {}).at(0); }

// The ApiError's param and a word of its message.
void expect_refused(const json& body, bool chat, const std::string& param, const std::string& word) {
  try {
    parse_request(body.dump(), chat, {});
    ADD_FAILURE() << "expected a refusal of " << body.dump();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, param) << e.message;
    EXPECT_NE(e.message.find(word), std::string::npos) << e.message;
  }
}

TEST(OpenAiTools, ToolsAndTheirChoiceAreRead) {
  const json hi = {{"role", "user"}, {"content", "hi"}};
  Request r = chat_request({{"messages", {hi}}, {"tools", kTools}});
  EXPECT_TRUE(r.tools);
  EXPECT_TRUE(r.parallel_tool_calls);
  EXPECT_EQ(json::parse(r.options.tools), kTools);
  r = chat_request({{"messages", {hi}}, {"tools", kTools}, {"tool_choice", "auto"}, {"parallel_tool_calls", false}});
  EXPECT_TRUE(r.tools);
  EXPECT_FALSE(r.parallel_tool_calls);
  // "none": the model is not told of the tools, and the reply is not read for calls.
  r = chat_request({{"messages", {hi}}, {"tools", kTools}, {"tool_choice", "none"}});
  EXPECT_FALSE(r.tools);
  EXPECT_TRUE(r.options.tools.empty());
  r = chat_request({{"messages", {hi}}, {"tools", json::array()}});
  EXPECT_FALSE(r.tools);

  // "required" and a named function: a call is begun (begin_call, below).
  r = chat_request({{"messages", {hi}}, {"tools", kTools}, {"tool_choice", "required"}});
  EXPECT_TRUE(r.tools);
  EXPECT_EQ(r.forced_tool, "");
  r = chat_request({{"messages", {hi}}, {"tools", kTools},
                    {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_weather"}}}}}});
  EXPECT_EQ(r.forced_tool, "get_weather");
  expect_refused({{"messages", {hi}}, {"tools", kTools},
                  {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_time"}}}}}},
                 true, "tool_choice", "not among the tools");
  expect_refused({{"messages", {hi}}, {"tool_choice", "required"}}, true, "tool_choice", "needs \"tools\"");
  expect_refused({{"messages", {hi}}, {"tools", json::array()}, {"tool_choice", "required"}}, true, "tool_choice",
                 "needs \"tools\"");
  expect_refused({{"messages", {hi}}, {"tools", kTools}, {"tool_choice", {{"type", "function"}}}}, true,
                 "tool_choice", "must be \"auto\"");
  expect_refused({{"messages", {hi}}, {"tools", kTools}, {"response_format", {{"type", "json_object"}}}}, true,
                 "response_format", "not both");
  const json schema_format = {{"type", "json_schema"},
                              {"json_schema", {{"name", "w"}, {"schema", {{"type", "object"}}}}}};
  expect_refused({{"messages", {hi}}, {"tools", kTools}, {"response_format", schema_format}}, true, "response_format",
                 "not both");
  EXPECT_EQ(chat_request({{"messages", {hi}}, {"response_format", schema_format}}).options.json_schema,
            R"({"type":"object"})");
  expect_refused({{"messages", {hi}}, {"response_format", {{"type", "json_schema"}, {"json_schema", {{"name", "w"}}}}}},
                 true, "response_format", "has no \"schema\"");
  expect_refused({{"messages", {hi}},
                  {"response_format", {{"type", "json_schema"}, {"json_schema", {{"schema", {{"type", "string"}}}}}}}},
                 true, "response_format", "root must be an object or an array");
  expect_refused({{"messages", {hi}}, {"tools", kTools}, {"tool_choice", "always"}}, true, "tool_choice",
                 "must be \"auto\", \"none\", \"required\"");
  expect_refused({{"messages", {hi}}, {"tools", {{{"type", "function"}}}}}, true, "tools[0]", "\"function\"");
  expect_refused({{"messages", {hi}}, {"tools", {{{"type", "retrieval"}, {"function", {{"name", "f"}}}}}}}, true,
                 "tools[0]", "\"type\": \"function\"");
  expect_refused({{"messages", {hi}}, {"tools", {{{"type", "function"}, {"function", {{"name", ""}}}}}}}, true,
                 "tools[0]", "\"name\"");
  expect_refused({{"messages", {hi}},
                  {"tools", {{{"type", "function"}, {"function", {{"name", "f"}, {"parameters", "x"}}}}}}},
                 true, "tools[0].function.parameters", "JSON schema");
  expect_refused({{"messages", {hi}}, {"tools", "get_weather"}}, true, "tools", "must be a list");
  expect_refused({{"messages", {hi}}, {"functions", kTools}}, true, "functions", "send \"tools\"");
  expect_refused({{"prompt", "hi"}, {"tools", kTools}}, false, "tools", "chat field");
}

TEST(OpenAiTools, MessagesCarryCallsAndTheirAnswers) {
  const json messages = json::parse(R"([
    {"role": "user", "content": "Weather?"},
    {"role": "assistant", "content": null, "tool_calls": [
      {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
      {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Lyon"}}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "21"},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "19"}]}])");
  const Request r = chat_request({{"messages", messages}});
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[1].content, "");
  ASSERT_EQ(r.messages[1].tool_calls.size(), 2u);
  EXPECT_EQ(r.messages[1].tool_calls[0].id, "call_1");
  EXPECT_EQ(r.messages[1].tool_calls[0].name, "get_weather");
  EXPECT_EQ(json::parse(r.messages[1].tool_calls[0].arguments), json({{"city", "Paris"}}));
  EXPECT_EQ(json::parse(r.messages[1].tool_calls[1].arguments), json({{"city", "Lyon"}}));
  EXPECT_EQ(r.messages[2].tool_call_id, "call_1");
  EXPECT_EQ(r.messages[3].content, "19");

  // The second message of a chat, as JSON text.
  auto with = [](const std::string& m) {
    return json{{"messages", {json{{"role", "user"}, {"content", "x"}}, json::parse(m)}}};
  };
  expect_refused(with(R"({"role": "assistant", "content": null})"), true, "messages[1].content", "missing");
  expect_refused(with(R"({"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]})"), true,
                 "messages[1].tool_calls[0]", "\"name\"");
  expect_refused(with(R"({"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]})"),
                 true, "messages[1].tool_calls[0].function.arguments", "JSON object");
  expect_refused(with(R"({"role": "user", "content": "y", "tool_calls": []})"), true, "messages[1].tool_calls",
                 "only an assistant");
  expect_refused(with(R"({"role": "tool", "content": "y", "tool_call_id": 7})"), true, "messages[1].tool_call_id",
                 "string");
}

TEST(OpenAiTools, ARequiredOrNamedCallIsHeldToItsSchema) {
  const json user = {{"role", "user"}, {"content", "Weather?"}};
  Request named = chat_request({{"messages", {user}}, {"tools", kTools},
                                {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_weather"}}}}}});
  Request any = chat_request({{"messages", {user}}, {"tools", kTools}, {"tool_choice", "required"}});
  Request llama = named, plain = chat_request({{"messages", {user}}, {"tools", kTools}});
  begin_call(named, "hermes");
  begin_call(any, "hermes");
  begin_call(llama, "llama3-json");
  begin_call(plain, "hermes");
  // The call's JSON: its name, and its arguments held to the tool's parameters.
  const json args = kTools[0]["function"]["parameters"];
  EXPECT_EQ(json::parse(named.options.json_schema),
            json({{"type", "object"},
                  {"properties", {{"name", {{"const", "get_weather"}}}, {"arguments", args}}},
                  {"required", {"name", "arguments"}},
                  {"additionalProperties", false}}));
  EXPECT_EQ(any.options.json_schema, named.options.json_schema);  // the one tool
  EXPECT_EQ(json::parse(llama.options.json_schema)["properties"]["parameters"], args);
  for (const Request* r : {&named, &any}) {
    EXPECT_EQ(r->reply_start, "<tool_call>\n");
    ASSERT_EQ(r->messages.size(), 2u);
    EXPECT_EQ(r->messages[1].role, "assistant");
    EXPECT_EQ(r->messages[1].content, r->reply_start);  // the model goes on from it
    EXPECT_TRUE(r->options.continue_final_message);
    EXPECT_FALSE(r->options.add_generation_prompt);
  }
  EXPECT_TRUE(llama.reply_start.empty());  // Llama's call is the reply's JSON itself
  EXPECT_EQ(llama.messages.size(), 1u);
  EXPECT_TRUE(plain.reply_start.empty());  // "auto" leaves the reply to the model
  EXPECT_EQ(plain.messages.size(), 1u);
  EXPECT_TRUE(plain.options.json_schema.empty());
  // Two tools: either call, told apart by its name.
  json two = kTools;
  two.push_back({{"type", "function"}, {"function", {{"name", "get_time"}}}});
  const json both_calls = json::parse(call_schema(two.dump(), "", true));
  ASSERT_EQ(both_calls["anyOf"].size(), 2u);
  EXPECT_EQ(both_calls["anyOf"][1]["properties"]["name"]["const"], "get_time");
  EXPECT_EQ(both_calls["anyOf"][1]["properties"]["arguments"], json({{"type", "object"}}));
  // Parameters with a keyword the schema reader refuses: the call is begun for the model
  // instead (steered, not held).
  json formatted = kTools;
  formatted[0]["function"]["parameters"]["properties"]["city"]["format"] = "city-name";
  Request steered = chat_request({{"messages", {user}}, {"tools", formatted},
                                  {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_weather"}}}}}});
  Request steered_any = chat_request({{"messages", {user}}, {"tools", formatted}, {"tool_choice", "required"}});
  Request steered_llama = steered;
  begin_call(steered, "hermes");
  begin_call(steered_any, "hermes");
  begin_call(steered_llama, "llama3-json");
  EXPECT_TRUE(steered.options.json_schema.empty());
  EXPECT_EQ(steered.reply_start, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": ");
  EXPECT_EQ(steered_any.reply_start, "<tool_call>\n{\"name\": \"");
  EXPECT_EQ(steered_llama.reply_start, "{\"name\": \"get_weather\", \"parameters\": ");
  EXPECT_EQ(steered_llama.messages.back().content, steered_llama.reply_start);
  // A reply the caller began already cannot be begun again.
  Request both = chat_request({{"messages", {user, {{"role", "assistant"}, {"content", "Sure"}}}},
                               {"tools", kTools},
                               {"tool_choice", "required"},
                               {"add_generation_prompt", false},
                               {"continue_final_message", true}});
  EXPECT_THROW(begin_call(both, "hermes"), ApiError);
  expect_refused({{"messages", {user}}, {"continue_final_message", true}}, true, "continue_final_message",
                 "\"add_generation_prompt\": false");
  expect_refused({{"prompt", "x"}, {"continue_final_message", true}}, false, "continue_final_message",
                 "chat fields");
}

TEST(OpenAiTools, RepliesWithCallsAsOpenAIsDo) {
  GenerateMetrics m;
  m.finish_reason = "eos";
  m.prompt_tokens = 5;
  m.generated_tokens = 9;
  std::vector<Choice> choices(2);
  choices[0] = {"", m, nullptr, {{"call_a", "get_weather", R"({"city":"Paris"})"}}};
  choices[1] = {"Let me check.", m, nullptr, {{"call_b", "f", "{}"}, {"call_c", "g", R"({"k":1})"}}};
  const json reply = completion({"chatcmpl-1", "m", 0}, true, choices);
  const json& first = reply["choices"][0];
  EXPECT_EQ(first["finish_reason"], "tool_calls");
  EXPECT_TRUE(first["message"]["content"].is_null());
  EXPECT_EQ(first["message"]["tool_calls"],
            json::parse(R"([{"id": "call_a", "type": "function",
                             "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}])"));
  const json& second = reply["choices"][1];
  EXPECT_EQ(second["message"]["content"], "Let me check.");
  EXPECT_EQ(second["message"]["tool_calls"].size(), 2u);
  EXPECT_EQ(second["message"]["tool_calls"][1]["function"]["arguments"], R"({"k":1})");
  EXPECT_EQ(reply["usage"]["completion_tokens"], 18);
  // Without calls the message is as before: content text, the generator's finish reason.
  choices[0].calls.clear();
  EXPECT_EQ(completion({"chatcmpl-1", "m", 0}, true, choices)["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(completion({"chatcmpl-1", "m", 0}, true, choices)["choices"][0]["message"]["content"], "");

  // Streamed, each call whole with its index.
  const std::vector<ToolCall> calls = choices[1].calls;
  const json delta = tool_calls(calls, true);
  ASSERT_EQ(delta.size(), 2u);
  EXPECT_EQ(delta[0]["index"], 0);
  EXPECT_EQ(delta[1]["index"], 1);
  EXPECT_EQ(delta[1]["id"], "call_c");
  EXPECT_EQ(delta[1]["function"]["name"], "g");

  const std::string a = call_id(), b = call_id();
  EXPECT_TRUE(std::regex_match(a, std::regex("call_[0-9A-Za-z]{24}"))) << a;
  EXPECT_NE(a, b);
}

}  // namespace
}  // namespace lmx::cli::openai
