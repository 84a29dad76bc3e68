// Whitespace control, comments, raw blocks and syntax errors of the Jinja engine.
#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "text/jinja/jinja.h"
#include "jinja_test_util.h"

namespace lmx::jinja {
namespace {

using testing::render;

// The message of the lmx::Error thrown by parsing `source`, or "" if it parses.
std::string parse_error(const std::string& source) {
  try {
    Template t(source);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string render_error(const std::string& source, const char* context = "{}") {
  try {
    render(source, context);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(JinjaWhitespace, TrimBlocksRemovesOneNewlineAfterBlockTags) {
  EXPECT_EQ(render("{% if true %}\nyes\n{% endif %}\nafter"), "yes\nafter");
  EXPECT_EQ(render("{% if true %}\n\nyes{% endif %}"), "\nyes");
  // Expression tags are not block tags.
  EXPECT_EQ(render("{{ 'a' }}\nb"), "a\nb");
}

TEST(JinjaWhitespace, LstripBlocksOnlyAtLineStart) {
  EXPECT_EQ(render("a\n    {% if true %}x{% endif %}"), "a\nx");
  EXPECT_EQ(render("a\n \t {% if true %}x{% endif %}"), "a\nx");
  EXPECT_EQ(render("a  {% if true %}x{% endif %}"), "a  x");
  EXPECT_EQ(render("    {{ 'x' }}"), "    x");
  EXPECT_EQ(render("{{ 1 }}  {% if true %}x{% endif %}"), "1  x");
}

TEST(JinjaWhitespace, PlusDisablesLstripAndTrim) {
  EXPECT_EQ(render("a\n  {%+ if true %}b{% endif %}"), "a\n  b");
  EXPECT_EQ(render("a\n  {% if true +%}\nb{% endif %}"), "a\n\nb");
}

TEST(JinjaWhitespace, MinusStripsAllAdjacentWhitespace) {
  EXPECT_EQ(render("x {%- if true %} y {% endif -%}   z"), "x y z");
  EXPECT_EQ(render("a\n\n  {{- 'b' -}}  \n\n c"), "abc");
  EXPECT_EQ(render("a \n{#- comment -#}\n b"), "ab");
  EXPECT_EQ(render("{%- if true -%}\n\t  x  \n{%- endif -%}\n"), "x");
}

TEST(JinjaWhitespace, CommentsFollowBlockRules) {
  EXPECT_EQ(render("  {# note #}\nx"), "x");
  EXPECT_EQ(render("a{# {{ not rendered }} {% if %} #}b"), "ab");
}

TEST(JinjaWhitespace, TrailingNewlineIsDroppedAndCrlfNormalised) {
  EXPECT_EQ(render("a\n"), "a");
  EXPECT_EQ(render("a\n\n"), "a\n");
  EXPECT_EQ(render("a\r\nb\rc"), "a\nb\nc");
}

TEST(JinjaWhitespace, RawBlocksAreNotInterpreted) {
  EXPECT_EQ(render("{% raw %}{{ x }}{% if %}{% endraw %}"), "{{ x }}{% if %}");
  EXPECT_EQ(render("{%- raw -%}  {{ x }}  {%- endraw %}!"), "{{ x }}!");
}

TEST(JinjaWhitespace, GenerationBlockRendersItsBody) {
  EXPECT_EQ(render("{% generation %}answer {{ 1 }}{% endgeneration %}"), "answer 1");
}

TEST(JinjaSyntax, StringLiteralEscapes) {
  EXPECT_EQ(render(R"({{ 'a\nb\t\'\"\\' }})"), "a\nb\t'\"\\");
  EXPECT_EQ(render(R"({{ "\x41\u00e9\U0001F600" }})"), "A\xC3\xA9\xF0\x9F\x98\x80");
  EXPECT_EQ(render(R"({{ '\d' }})"), "\\d");  // unknown escapes stay, as in Python
  EXPECT_EQ(render(R"({{ 'a' "b" 'c' }})"), "abc");
}

TEST(JinjaSyntax, NumberLiterals) {
  EXPECT_EQ(render("{{ 1_000 }} {{ 2.5 }} {{ 1e3 }} {{ 1.5e-7 }} {{ 0.1 }}"),
            "1000 2.5 1000.0 1.5e-07 0.1");
}

TEST(JinjaSyntax, DictLiteralClosingBracesInsideTag) {
  EXPECT_EQ(render("{{ {'a': {'b': 1}} }}"), "{'a': {'b': 1}}");
}

TEST(JinjaSyntax, ErrorsCarryLineAndColumn) {
  EXPECT_EQ(parse_error("Hello\n{{ 1 + }}"),
            "[jinja] line 2, column 8: unexpected end of print statement");
  EXPECT_EQ(parse_error("{% if x %}\n  ok\n"),
            "[jinja] line 2, column 5: unexpected end of template, expected 'endif'");
  const std::string unknown = parse_error("a\nb {% frobnicate %}");
  EXPECT_EQ(unknown.rfind("[jinja] line 2, column 6: ", 0), 0u) << unknown;
  const std::string unterminated = parse_error("{{ 'abc }}");
  EXPECT_EQ(unterminated.rfind("[jinja] line 1, column 4: unterminated string", 0), 0u)
      << unterminated;
  EXPECT_NE(parse_error("{{ x ").find("line 1, column 1"), std::string::npos);
  EXPECT_NE(parse_error("{# never closed").find("line 1, column 1"), std::string::npos);
  EXPECT_NE(parse_error("{{ a $ b }}").find("line 1, column 6: unexpected character '$'"),
            std::string::npos);
}

TEST(JinjaSyntax, MisplacedTagsAreErrors) {
  EXPECT_NE(parse_error("{% break %}").find("'break' outside loop"), std::string::npos);
  EXPECT_NE(parse_error("{% for x in y %}{% endif %}").find("[jinja] line 1"), std::string::npos);
  EXPECT_NE(parse_error("{% endfor %}").find("[jinja] line 1"), std::string::npos);
  EXPECT_NE(parse_error("{% for x in y %}{% macro m() %}{% break %}{% endmacro %}{% endfor %}")
                .find("outside loop"),
            std::string::npos);
  EXPECT_NE(parse_error("{% set %}").find("[jinja] line 1"), std::string::npos);
}

TEST(JinjaSyntax, DeepNestingIsAnErrorNotACrash) {
  const std::string parens = "{{ " + std::string(200, '(') + "1" + std::string(200, ')') + " }}";
  EXPECT_NE(parse_error(parens).find("nested too deeply"), std::string::npos);
  std::string lists = "{{ " + std::string(200, '[') + std::string(200, ']') + " }}";
  EXPECT_NE(parse_error(lists).find("nested too deeply"), std::string::npos);
  std::string nots = "{{ ";
  for (int i = 0; i < 200; ++i) nots += "not ";
  EXPECT_NE(parse_error(nots + "x }}").find("nested too deeply"), std::string::npos);
  std::string ifs;
  for (int i = 0; i < 200; ++i) ifs += "{% if true %}";
  EXPECT_NE(parse_error(ifs).find("nested too deeply"), std::string::npos);
  std::string chain = "{{ 1";
  for (int i = 0; i < 5000; ++i) chain += " + 1";
  EXPECT_NE(parse_error(chain + " }}").find("nested too deeply"), std::string::npos);
  // Moderate nesting still works.
  EXPECT_EQ(render("{{ " + std::string(20, '(') + "1" + std::string(20, ')') + " }}"), "1");
}

TEST(JinjaSyntax, RuntimeErrorsCarryTheLine) {
  EXPECT_EQ(render_error("a\n\n{{ 1 < 'x' }}"),
            "[jinja] line 3: '<' not supported between instances of 'int' and 'str'");
  EXPECT_EQ(render_error("{{ nope(1) }}"), "[jinja] line 1: 'nope' is undefined");
  EXPECT_EQ(render_error("{{ 1 // 0 }}"), "[jinja] line 1: integer division or modulo by zero");
  EXPECT_NE(render_error("{{ 'a' + 1 }}").find("unsupported operand"), std::string::npos);
  EXPECT_NE(render_error("{{ x|nofilter }}").find("no filter named 'nofilter'"), std::string::npos);
  EXPECT_NE(render_error("{{ x is notatest }}").find("no test named 'notatest'"),
            std::string::npos);
  EXPECT_NE(render_error("{% for x in none %}{% endfor %}").find("not iterable"),
            std::string::npos);
}

TEST(JinjaSyntax, RaiseExceptionCarriesTheMessage) {
  const std::string message =
      render_error("line one\n{{ raise_exception('Conversation roles must alternate') }}");
  EXPECT_EQ(message, "[jinja] line 2: Conversation roles must alternate");
  try {
    render("{% if true %}{{ raise_exception('boom ' ~ 42) }}{% endif %}");
    FAIL() << "expected an exception";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("boom 42"), std::string::npos);
  }
}

TEST(JinjaSyntax, RecursionAndLoopsAreBounded) {
  EXPECT_NE(
      render_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").find("recursion"),
      std::string::npos);
  EXPECT_NE(render_error("{{ 'ab' * 100000000 }}").find("longer than"), std::string::npos);
  EXPECT_NE(render_error("{{ range(100000000)|length }}").find("longer than"), std::string::npos);
  EXPECT_NE(render_error("{{ 2 ** 64 }}").find("overflow"), std::string::npos);
}

}  // namespace
}  // namespace lmx::jinja
