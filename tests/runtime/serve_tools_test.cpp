// `lmx serve` with tools and JSON replies: the tools and a conversation's calls reach the
// template as the library renders them, and a reply that calls comes back as OpenAI's
// tool_calls, whole and streamed. A random model calls no tool on its own, so one test gives
// the token it picks first the text of a call (an added token of the same id in the copy's
// tokenizer.json). response_format json_object and json_schema, and a named or required
// tool_choice, hold the reply as the library holds it.
#include <fstream>

#include "fixture_copy.h"
#include "openai.h"
#include "serve_util.h"

namespace lmx {
namespace {

using namespace test;

const json kTools = json::parse(R"([{"type": "function", "function": {"name": "get_weather",
  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])");

// The fixture with a template that lists tools and writes calls as <tool_call>.
class ToolModel : public FixtureCopy {
 public:
  explicit ToolModel(const std::string& tag) : FixtureCopy("qwen3-f32", tag) {
    set_json("tokenizer_config.json", json::json_pointer("/chat_template"), kHermesToolTemplate);
  }
  // A context past the fixture's 256 tokens: the tools' listing takes many of the tiny vocabulary's.
  std::unique_ptr<TextModel> load() const {
    LoadOptions lo;
    lo.backend = "cpu";
    lo.context_len = 2048;
    return load_model(dir(), lo);
  }
  std::string serve_args() const { return "'" + dir().string() + "' --device cpu --context 2048"; }

  // Makes the token the model picks first for `chat` under `o` read as `text` (an added
  // token of its id, which decoding prefers to its own piece); returns the id. The prompts
  // stay as they were: none holds the text.
  int32_t first_token_reads(const std::vector<Message>& chat, const GenerateOptions& o, const std::string& text) const {
    int32_t first = -1;
    auto model = load();
    for (const Token& t : model->chat(chat, o)) {
      first = t.id;
      break;
    }
    EXPECT_GE(first, 0);
    std::ifstream in(file("tokenizer.json"));
    json tok = json::parse(in);
    tok["added_tokens"].push_back({{"id", first}, {"content", text}, {"single_word", false}, {"lstrip", false},
                                   {"rstrip", false}, {"normalized", false}, {"special", false}});
    std::ofstream(file("tokenizer.json")) << tok.dump();
    return first;
  }
};

// A reply's content: streamed deltas joined, or the whole message's (null: "").
std::string streamed_content(const std::vector<json>& ev) {
  std::string text;
  for (const json& e : ev)
    if (!e["choices"].empty() && e["choices"][0]["delta"].contains("content"))
      text += e["choices"][0]["delta"]["content"].get<std::string>();
  return text;
}

TEST(ServeToolsTest, ToolsAndCallsReachTheTemplateAsTheLibraryRendersThem) {
  const ToolModel copy("serve_tools");
  Served server(copy.serve_args());
  ASSERT_GT(server.port(), 0) << server.log();
  httplib::Client c = server.client();
  auto model = copy.load();

  // A conversation that has called a tool and holds its answer.
  std::vector<Message> chat{{"user", "Weather in Paris?"}, {"assistant", ""}, {"tool", "{\"temp\": 21}"}};
  chat[1].tool_calls.push_back({"call_1", "get_weather", R"({"city": "Paris"})"});
  chat[2].tool_call_id = "call_1";
  const json messages = json::parse(R"([{"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
      "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"}])");
  GenerateOptions o;
  o.max_tokens = 8;
  o.tools = kTools.dump();
  const std::string want = model->chat(chat, o).text();
  const int prompt_tokens = model->metrics().prompt_tokens;
  ASSERT_TRUE(parse_tool_calls(want, "hermes").calls.empty()) << "the fixture called a tool: " << want;

  const json request = {{"messages", messages}, {"tools", kTools}, {"max_tokens", 8}};
  const Reply whole = post(c, "/v1/chat/completions", request.dump());
  ASSERT_EQ(whole.status, 200) << whole.body.dump();
  const json& choice = whole.body["choices"][0];
  EXPECT_EQ(choice["message"]["content"], want);
  EXPECT_FALSE(choice["message"].contains("tool_calls"));
  EXPECT_NE(choice["finish_reason"], "tool_calls");
  EXPECT_EQ(whole.body["usage"]["prompt_tokens"], prompt_tokens);  // the tools and the call were in the prompt

  json streamed = request;
  streamed["stream"] = true;
  EXPECT_EQ(streamed_content(events(c, "/v1/chat/completions", streamed)), want);

  // "none": the template is not told of the tools.
  GenerateOptions without = o;
  without.tools.clear();
  const std::string plain = model->chat(chat, without).text();
  json none = request;
  none["tool_choice"] = "none";
  const Reply r = post(c, "/v1/chat/completions", none.dump());
  ASSERT_EQ(r.status, 200) << r.body.dump();
  EXPECT_EQ(r.body["choices"][0]["message"]["content"], plain);
  EXPECT_EQ(r.body["usage"]["prompt_tokens"], model->metrics().prompt_tokens);
  EXPECT_LT(model->metrics().prompt_tokens, prompt_tokens);
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST(ServeToolsTest, AReplyThatCallsComesBackAsToolCalls) {
  const ToolModel copy("serve_calls");
  const std::vector<Message> chat{{"user", "Weather in Paris?"}};
  GenerateOptions o;
  o.max_tokens = 4;
  o.tools = kTools.dump();
  o.ignore_eos = true;
  // The token the model picks first, made to read as a call.
  const std::string call =
      R"(<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}</tool_call>)";
  const int32_t first = copy.first_token_reads(chat, o, call);
  auto model = copy.load();
  ASSERT_EQ(model->detokenize({&first, 1}, true), call);
  const std::string want = model->chat(chat, o).text();
  ASSERT_EQ(want.rfind(call, 0), 0u) << want;
  const ToolCallReply read = parse_tool_calls(want, "hermes");  // the model may pick the token again
  ASSERT_GE(read.calls.size(), 1u);

  Served server(copy.serve_args());
  ASSERT_GT(server.port(), 0) << server.log();
  httplib::Client c = server.client();
  const json request = {{"messages", {{{"role", "user"}, {"content", "Weather in Paris?"}}}},
                        {"tools", kTools},
                        {"max_tokens", 4},
                        {"ignore_eos", true}};
  const Reply whole = post(c, "/v1/chat/completions", request.dump());
  ASSERT_EQ(whole.status, 200) << whole.body.dump();
  const json& choice = whole.body["choices"][0];
  EXPECT_EQ(choice["finish_reason"], "tool_calls");
  EXPECT_EQ(choice["message"]["content"], read.content.empty() ? json(nullptr) : json(read.content));
  const json& made = choice["message"]["tool_calls"];
  ASSERT_EQ(made.size(), read.calls.size()) << whole.body.dump();
  for (size_t i = 0; i < made.size(); ++i) {
    EXPECT_EQ(made[i]["type"], "function");
    EXPECT_EQ(made[i]["function"]["name"], "get_weather");
    EXPECT_EQ(made[i]["function"]["arguments"], R"({"city":"Paris","days":2})");
    EXPECT_EQ(made[i]["id"].get<std::string>().rfind("call_", 0), 0u);
  }
  EXPECT_EQ(whole.body["usage"]["completion_tokens"], 4);

  // Streamed: the content (none of the call's text), then the call whole, then the reason.
  json streamed = request;
  streamed["stream"] = true;
  const std::vector<json> ev = events(c, "/v1/chat/completions", streamed);
  ASSERT_GE(ev.size(), 3u);
  EXPECT_EQ(streamed_content(ev), read.content);
  const json& calls = ev[ev.size() - 2]["choices"][0]["delta"]["tool_calls"];
  ASSERT_EQ(calls.size(), read.calls.size()) << ev[ev.size() - 2].dump();
  for (size_t i = 0; i < calls.size(); ++i) {
    EXPECT_EQ(calls[i]["index"], i);
    EXPECT_EQ(calls[i]["function"]["name"], "get_weather");
    EXPECT_EQ(calls[i]["function"]["arguments"], made[i]["function"]["arguments"]);
  }
  EXPECT_EQ(ev.back()["choices"][0]["finish_reason"], "tool_calls");

  // One call at a time where the request asks so.
  json single = request;
  single["parallel_tool_calls"] = false;
  const Reply one = post(c, "/v1/chat/completions", single.dump());
  ASSERT_EQ(one.status, 200) << one.body.dump();
  EXPECT_EQ(one.body["choices"][0]["message"]["tool_calls"].size(), 1u);

  // A named tool_choice: the reply begun with the tag and its call held to the call's
  // schema, as the library holds a reply to it. The structure's characters are ranked
  // high and whitespace low, so that the random model's strings end and its gaps stay short.
  std::vector<Message> begun = chat;
  begun.push_back({"assistant", "<tool_call>\n"});
  GenerateOptions held = o;
  held.add_generation_prompt = false;
  held.continue_final_message = true;
  held.max_tokens = 40;
  held.json_schema = cli::openai::call_schema(kTools.dump(), "get_weather", true);
  ASSERT_FALSE(held.json_schema.empty());
  const int32_t quote = model->tokenize("\"", false).at(0), brace = model->tokenize("}", false).at(0);
  held.logit_bias = {{quote, 8.f}, {brace, 8.f}};
  for (const char* blank : {" ", "\n", "\t", "\r"})
    held.logit_bias.emplace_back(model->tokenize(blank, false).at(0), -50.f);
  const std::string lib_text = model->chat(begun, held).text();
  const ToolCallReply lib = parse_tool_calls("<tool_call>\n" + lib_text, "hermes");
  ASSERT_EQ(model->metrics().finish_reason, "complete") << lib_text;
  ASSERT_EQ(lib.calls.size(), 1u);
  EXPECT_EQ(lib.calls[0].name, "get_weather");
  const json args = json::parse(lib.calls[0].arguments);
  EXPECT_TRUE(args.is_object() && args.size() <= 1 && (args.empty() || args["city"].is_string())) << args;
  json named = request;
  named["tool_choice"] = {{"type", "function"}, {"function", {{"name", "get_weather"}}}};
  named["max_tokens"] = 40;
  for (const auto& [id, bias] : held.logit_bias) named["logit_bias"][std::to_string(id)] = bias;
  const Reply forced = post(c, "/v1/chat/completions", named.dump());
  ASSERT_EQ(forced.status, 200) << forced.body.dump();
  const json& message = forced.body["choices"][0]["message"];
  ASSERT_EQ(message["tool_calls"].size(), 1u) << forced.body.dump();
  EXPECT_EQ(message["tool_calls"][0]["function"]["name"], "get_weather");
  EXPECT_EQ(message["tool_calls"][0]["function"]["arguments"], lib.calls[0].arguments);
  EXPECT_TRUE(message["content"].is_null());
  EXPECT_EQ(forced.body["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_EQ(forced.body["usage"]["prompt_tokens"], int(model->chat_ids(begun, held).size()));
  named["stream"] = true;
  const std::vector<json> forced_ev = events(c, "/v1/chat/completions", named);
  ASSERT_GE(forced_ev.size(), 3u);
  EXPECT_EQ(streamed_content(forced_ev), "");
  EXPECT_EQ(forced_ev[forced_ev.size() - 2]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
            lib.calls[0].arguments);
  // "required", with one tool: the same call.
  named["tool_choice"] = "required";
  named["stream"] = false;
  const Reply any = post(c, "/v1/chat/completions", named.dump());
  ASSERT_EQ(any.status, 200) << any.body.dump();
  EXPECT_EQ(any.body["choices"][0]["message"]["tool_calls"][0]["function"], message["tool_calls"][0]["function"]);

  EXPECT_EQ(server.stop(), 0) << server.log();
}

// response_format json_object and json_schema: the reply the library gives under the same
// options, whole and streamed. The schema goes to the library with its keys in the order
// the request wrote them, and the reply writes the properties in that order.
TEST(ServeToolsTest, JsonRepliesAsTheLibraryHoldsThem) {
  Served server("'" + kModel.string() + "' --device cpu");
  ASSERT_GT(server.port(), 0) << server.log();
  httplib::Client c = server.client();
  auto model = cpu_model();
  const std::vector<Message> chat{{"user", "Give me a JSON object."}};
  // The request as text, so that a schema inside it keeps its keys' order (json sorts them).
  const json request = {{"messages", {{{"role", "user"}, {"content", "Give me a JSON object."}}}},
                        {"max_tokens", 30},
                        {"temperature", 0.8},
                        {"seed", 11}};
  auto with_format = [&](const std::string& format) {
    std::string body = request.dump();
    return body.insert(body.size() - 1, ",\"response_format\":" + format);
  };
  // The library's seeded reply held by `hold`, against the server's to `body`; returns it.
  auto same_as_library = [&](void (*hold)(GenerateOptions&, const std::string&), const std::string& schema,
                             const std::string& body) {
    GenerateOptions o;
    o.max_tokens = 30;
    o.temperature = 0.8f;
    o.seed = 11;
    hold(o, schema);
    const std::string want = model->chat(chat, o).text();
    const std::string why = model->metrics().finish_reason;
    const Reply whole = post(c, "/v1/chat/completions", body);
    EXPECT_EQ(whole.status, 200) << whole.body.dump();
    EXPECT_EQ(whole.body["choices"][0]["message"]["content"], want);
    EXPECT_EQ(whole.body["choices"][0]["finish_reason"], why == "complete" ? "stop" : "length");
    const std::string streamed = body.substr(0, body.size() - 1) + ",\"stream\":true}";
    EXPECT_EQ(streamed_content(events(c, "/v1/chat/completions", streamed)), want);
    return std::pair(want, why);
  };
  same_as_library([](GenerateOptions& o, const std::string&) { o.json_object = true; }, "",
                  with_format(R"({"type": "json_object"})"));
  const std::string schema = R"({"type": "object", "properties": {"zone": {"enum": ["north", "south"]},
      "count": {"type": "integer"}, "a": {"type": "boolean"}}, "required": ["zone", "count", "a"],
      "additionalProperties": false})";
  const std::string format = R"({"type": "json_schema", "json_schema": {"name": "zone", "schema": )" + schema + "}}";
  const auto [text, why] =
      same_as_library([](GenerateOptions& o, const std::string& s) { o.json_schema = s; }, schema, with_format(format));
  if (why == "complete") {
    const auto parsed = nlohmann::ordered_json::parse(text);
    EXPECT_EQ(parsed.begin().key(), "zone") << text;  // the schema's order, not the sorted one
  }

  const json pattern = json::parse(R"({"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}})");
  for (const auto& [format, says] :
       {std::pair<json, std::string>{{{"type", "json_schema"}}, "'json_schema' must be an object"},
        {{{"type", "json_schema"}, {"json_schema", {{"name", "x"}, {"schema", pattern}}}},
         "at '/properties/a': the keyword 'pattern' is not supported"},
        {{{"type", "xml"}}, "must be {\"type\": \"text\"}"}}) {
    const Reply r = post(c, "/v1/chat/completions", with_format(format.dump()));
    EXPECT_EQ(r.status, 400);
    EXPECT_EQ(r.body["error"]["param"], "response_format");
    EXPECT_NE(r.body["error"]["message"].get<std::string>().find(says), std::string::npos) << r.body.dump();
  }
  EXPECT_EQ(server.stop(), 0) << server.log();
}

}  // namespace
}  // namespace lmx
