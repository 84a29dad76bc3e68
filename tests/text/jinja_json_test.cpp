// tojson (HF's json.dumps override), Python-style printing and the JSON context.
#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "text/jinja/jinja.h"
#include "jinja_test_util.h"

namespace lmx::jinja {
namespace {

using testing::render;

TEST(JinjaToJson, PythonSeparatorsAndKeyOrder) {
  EXPECT_EQ(
      render("{{ d|tojson }}", R"({"d": {"z": 1, "a": [1, 2.5, "x"], "n": null, "t": true}})"),
      R"({"z": 1, "a": [1, 2.5, "x"], "n": null, "t": true})");
  EXPECT_EQ(render("{{ {'b': 1, 'a': 2}|tojson(sort_keys=true) }}"), R"({"a": 2, "b": 1})");
  EXPECT_EQ(render("{{ [] |tojson }} {{ {}|tojson }} {{ 'x'|tojson }} {{ 1.0|tojson }}"),
            R"([] {} "x" 1.0)");
  EXPECT_EQ(render("{{ (1, (2, 3))|tojson }} {{ {1: 2, none: 3}|tojson }}"),
            R"([1, [2, 3]] {"1": 2, "null": 3})");
}

TEST(JinjaToJson, IndentUsesNewlinesAndCommaSeparator) {
  EXPECT_EQ(render("{{ d|tojson(indent=4) }}", R"({"d": {"a": 1, "b": [1, {}], "c": []}})"),
            "{\n    \"a\": 1,\n    \"b\": [\n        1,\n        {}\n    ],\n    \"c\": []\n}");
  EXPECT_EQ(render("{{ [1]|tojson(indent=0) }}"), "[\n1\n]");
}

TEST(JinjaToJson, PythonEscapingKeepsUnicode) {
  EXPECT_EQ(
      render(R"({{ s|tojson }})",
             R"({"s": "caf\u00e9 \ud83d\ude00 \"q\" \\ \n\r\t\b\f \u001f \u007f \u2028"})"),
      "\"caf\xC3\xA9 \xF0\x9F\x98\x80 \\\"q\\\" \\\\ \\n\\r\\t\\b\\f \\u001f \x7f \xE2\x80\xA8\"");
  EXPECT_EQ(render(R"({{ s|tojson(ensure_ascii=true) }})", R"({"s": "\u00e9\ud83d\ude00"})"),
            R"("\u00e9\ud83d\ude00")");
}

TEST(JinjaToJson, UnserialisableValuesAreErrors) {
  EXPECT_THROW(render("{{ missing|tojson }}"), Error);
  EXPECT_THROW(render("{{ namespace(a=1)|tojson }}"), Error);
}

TEST(JinjaPrint, PythonReprOfValues) {
  EXPECT_EQ(render("{{ true }} {{ false }} {{ none }} {{ 1 }} {{ -0.0 }} {{ 1.0 }} {{ 2.5 }}"),
            "True False None 1 -0.0 1.0 2.5");
  EXPECT_EQ(
      render("{{ 1e20 }} {{ 1e16 }} {{ 1e15 }} {{ 1.5e-7 }} {{ 0.0001 }} {{ 1e300 * 1e300 }}"),
      "1e+20 1e+16 1000000000000000.0 1.5e-07 0.0001 inf");
  EXPECT_EQ(render("{{ d }}", R"({"d": {"a": [1, "b", null, false, 0.5], "c": {}}})"),
            "{'a': [1, 'b', None, False, 0.5], 'c': {}}");
  EXPECT_EQ(render("{{ ['\\x01', '\\\\'] }}"), "['\\x01', '\\\\']");
}

TEST(JinjaContext, FromJsonKeepsOrderAndTypes) {
  const Value v = from_json(nlohmann::ordered_json::parse(
      R"({"z": 1, "a": 2.0, "s": "x", "l": [true, null], "big": 18446744073709551615})"));
  ASSERT_TRUE(v.is_dict());
  const auto& items = v.dict_data().items;
  ASSERT_EQ(items.size(), 5u);
  EXPECT_EQ(items[0].first.as_string(), "z");
  EXPECT_TRUE(items[0].second.is_int());
  EXPECT_TRUE(items[1].second.is_float());
  EXPECT_TRUE(items[2].second.is_string());
  EXPECT_TRUE(items[3].second.is_list());
  EXPECT_TRUE(items[3].second.items()[1].is_none());
  EXPECT_TRUE(items[4].second.is_float());
  EXPECT_EQ(render("{{ a }}{{ b }}", R"({"b": 2, "a": 1})"), "12");
  EXPECT_THROW(Template("x").render(nlohmann::ordered_json::parse("[1]")), Error);
}

TEST(JinjaContext, DeeplyNestedValuesFailCleanly) {
  std::string deep = "{\"x\": " + std::string(400, '[') + std::string(400, ']') + "}";
  EXPECT_THROW(render("{{ x }}", deep.c_str()), Error);
  // Values built by the template may nest deeply; printing fails cleanly and destruction
  // does not recurse.
  EXPECT_THROW(render("{% set ns = namespace(x=[]) %}{% for i in range(100000) %}"
                      "{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}"),
               Error);
}

}  // namespace
}  // namespace lmx::jinja
