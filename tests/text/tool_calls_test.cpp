// Tool calls read from replies in the two forms the supported chat templates ask for, and
// what a streamed reply may show before it ends.
#include <gtest/gtest.h>

#include <string>

#include "lmx/lmx.h"
#include "text/tool_calls.h"

namespace lmx {
namespace {

// What a client shown a streamed reply piece by piece ends up with: each time, the content
// that tool_call_free_prefix frees; at the end, parse_tool_calls' content past it.
std::string streamed_content(const std::string& reply, std::string_view format, size_t piece) {
  std::string shown;
  size_t sent = 0;
  for (size_t end = piece; end < reply.size() + piece; end += piece) {
    const std::string so_far = reply.substr(0, std::min(end, reply.size()));
    const size_t free = tool_call_free_prefix(so_far, format);
    EXPECT_GE(free, sent) << "a free prefix never shrinks: '" << so_far << "'";
    if (free > sent) {
      shown += so_far.substr(sent, free - sent);
      sent = free;
    }
  }
  const std::string content = parse_tool_calls(reply, format).content;
  EXPECT_LE(sent, content.size()) << "more was shown than the content holds: '" << reply << "'";
  EXPECT_EQ(shown, content.substr(0, sent)) << reply;
  return shown + content.substr(sent);
}

TEST(ToolCalls, HermesCallsAfterText) {
  const std::string reply =
      "Let me look.\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n"
      "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"CET\", \"24h\": true}}\n</tool_call>";
  const ToolCallReply r = parse_tool_calls(reply, "hermes");
  EXPECT_EQ(r.content, "Let me look.");
  ASSERT_EQ(r.calls.size(), 2u);
  EXPECT_EQ(r.calls[0].name, "get_weather");
  EXPECT_EQ(r.calls[0].arguments, R"({"city":"Paris"})");
  EXPECT_EQ(r.calls[1].name, "get_time");
  EXPECT_EQ(r.calls[1].arguments, R"({"zone":"CET","24h":true})");  // keys in the order written
  EXPECT_TRUE(r.calls[0].id.empty());
  for (size_t piece : {1, 3, 7, 1000}) EXPECT_EQ(streamed_content(reply, "hermes", piece), "Let me look.");
}

TEST(ToolCalls, HermesArgumentsAsTextAnUnclosedLastCallAndNoArguments) {
  // Arguments written as a JSON text holding the object; the reply ended before the last tag.
  ToolCallReply r = parse_tool_calls(
      "<tool_call>\n{\"name\": \"f\", \"arguments\": \"{\\\"x\\\": 1}\"}\n</tool_call>\n<tool_call>{\"name\": \"g\"}",
      "hermes");
  EXPECT_EQ(r.content, "");
  ASSERT_EQ(r.calls.size(), 2u);
  EXPECT_EQ(r.calls[0].arguments, R"({"x":1})");
  EXPECT_EQ(r.calls[1].name, "g");
  EXPECT_EQ(r.calls[1].arguments, "{}");
  // Unicode and braces inside strings survive.
  r = parse_tool_calls("<tool_call>{\"name\": \"say\", \"arguments\": {\"text\": \"}{ caf\xC3\xA9\"}}</tool_call>",
                       "hermes");
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].arguments, "{\"text\":\"}{ caf\xC3\xA9\"}");
}

TEST(ToolCalls, MalformedCallsAreContent) {
  for (const std::string reply : {
           "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}\n</tool_call>",  // a brace short
           "<tool_call>\n{\"arguments\": {}}\n</tool_call>",                       // no name
           "<tool_call>\n{\"name\": 3, \"arguments\": {}}\n</tool_call>",          // a name not a string
           "<tool_call>\n{\"name\": \"f\", \"arguments\": [1]}\n</tool_call>",     // arguments not an object
           "ok <tool_call>{\"name\": \"f\"}</tool_call> then <tool_call>oops</tool_call>",  // one bad: all text
       }) {
    const ToolCallReply r = parse_tool_calls(reply, "hermes");
    EXPECT_TRUE(r.calls.empty()) << reply;
    EXPECT_EQ(r.content, reply);
    EXPECT_EQ(streamed_content(reply, "hermes", 2), reply);
  }
}

TEST(ToolCalls, HermesReasoningMayNameTheTagWithoutCalling) {
  // Qwen3's thinking: a "<tool_call>" inside it is not a call, and is shown as it streams.
  const std::string thought = "<think>\nI could emit <tool_call> here.\n</think>\n\n";
  ToolCallReply r = parse_tool_calls(thought + "No tool needed.", "hermes");
  EXPECT_TRUE(r.calls.empty());
  EXPECT_EQ(r.content, thought + "No tool needed.");
  const std::string calling = thought + "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>";
  r = parse_tool_calls(calling, "hermes");
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.content, "<think>\nI could emit <tool_call> here.\n</think>");
  const std::string thinking = "<think>\nI could emit <tool_";
  EXPECT_EQ(tool_call_free_prefix(thinking, "hermes"), thinking.size());  // all of it: still thinking
  // A reply that ends still reasoning made no call, whatever it holds.
  const std::string unclosed = "<think>\nmaybe <tool_call>{\"name\": \"f\"}</tool_call>";
  EXPECT_TRUE(parse_tool_calls(unclosed, "hermes").calls.empty());
  EXPECT_EQ(streamed_content(unclosed, "hermes", 3), unclosed);
  for (size_t piece : {1, 5}) EXPECT_EQ(streamed_content(calling, "hermes", piece), r.content);
}

TEST(ToolCalls, HermesHoldsBackWhatMayBeginATag) {
  EXPECT_EQ(tool_call_free_prefix("Hello", "hermes"), 5u);
  EXPECT_EQ(tool_call_free_prefix("Hello <tool_c", "hermes"), 5u);  // the tag's start and the space before
  EXPECT_EQ(tool_call_free_prefix("Hello\n\n", "hermes"), 5u);
  EXPECT_EQ(tool_call_free_prefix("a < b", "hermes"), 5u);          // "<" then " ": not a tag
  EXPECT_EQ(tool_call_free_prefix("Hi <tool_call>{", "hermes"), 2u);
  // Without calls, whatever was held comes out as content at the end.
  EXPECT_EQ(streamed_content("Hello <tool_c\n", "hermes", 4), "Hello <tool_c\n");
}

TEST(ToolCalls, Llama3JsonWholeReply) {
  const std::string reply = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}";
  ToolCallReply r = parse_tool_calls(reply, "llama3-json");
  EXPECT_EQ(r.content, "");
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].name, "get_weather");
  EXPECT_EQ(r.calls[0].arguments, R"({"city":"Paris"})");
  // Several, joined by ";", after the python tag where special tokens are shown.
  r = parse_tool_calls("<|python_tag|>{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"arguments\": {\"k\": "
                       "\"v\"}}",
                       "llama3-json");
  ASSERT_EQ(r.calls.size(), 2u);
  EXPECT_EQ(r.calls[1].name, "b");
  EXPECT_EQ(r.calls[1].arguments, R"({"k":"v"})");
  EXPECT_EQ(streamed_content(reply, "llama3-json", 3), "");
  // Text is text; so is JSON that is not a call, or a call with text after it.
  for (const std::string text : {"The weather is fine.", "{\"temp\": 20}", "{\"name\": \"a\", \"parameters\": {}} ok",
                                 "{\"name\": \"a\", \"parameters\": {"}) {
    r = parse_tool_calls(text, "llama3-json");
    EXPECT_TRUE(r.calls.empty()) << text;
    EXPECT_EQ(r.content, text);
    EXPECT_EQ(streamed_content(text, "llama3-json", 2), text);
  }
  EXPECT_EQ(tool_call_free_prefix("  ", "llama3-json"), 0u);
  EXPECT_EQ(tool_call_free_prefix("<|python", "llama3-json"), 0u);
  EXPECT_EQ(tool_call_free_prefix("<|python_tag|> ", "llama3-json"), 0u);
  EXPECT_EQ(tool_call_free_prefix("The", "llama3-json"), 3u);
}

TEST(ToolCalls, NoFormatReadsNoCalls) {
  const std::string reply = "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>";
  EXPECT_TRUE(parse_tool_calls(reply, "").calls.empty());
  EXPECT_EQ(parse_tool_calls(reply, "").content, reply);
  EXPECT_EQ(tool_call_free_prefix(reply, ""), reply.size());
}

TEST(ToolCalls, FormatFromTheTemplate) {
  EXPECT_EQ(text::tool_call_format("{{ tools }} <tool_call>\n{\"name\": ...}\n</tool_call>"), "hermes");
  EXPECT_EQ(text::tool_call_format("{%- if tools %}<|python_tag|>{% endif %}"), "llama3-json");
  EXPECT_EQ(text::tool_call_format("{{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary "
                                   "of argument name and its value}.' }}"),
            "llama3-json");  // Llama 3.2's words
  EXPECT_EQ(text::tool_call_format("{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"), "");
}

}  // namespace
}  // namespace lmx
