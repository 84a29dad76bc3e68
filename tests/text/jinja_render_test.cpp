// Statements, scoping, expressions and Python semantics of the Jinja renderer.
#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "text/jinja/jinja.h"
#include "jinja_test_util.h"

namespace lmx::jinja {
namespace {

using testing::render;
using testing::throws;

constexpr const char* kMessages = R"({"messages": [
  {"role": "system", "content": "sys"},
  {"role": "user", "content": "  hi  "},
  {"role": "assistant", "content": "yo"}]})";

TEST(JinjaFor, LoopVariables) {
  EXPECT_EQ(render("{% for x in ['a','b','c'] %}{{ loop.index }}{{ loop.index0 }}"
                   "{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.length }}"
                   "{{ loop.first|int }}{{ loop.last|int }} {% endfor %}"),
            "1032310 2121300 3210301 ");
  EXPECT_EQ(render("{% for x in [1,2,3] %}{{ loop.previtem }}-{{ loop.nextitem }},{% endfor %}"),
            "-2,1-3,2-,");
  EXPECT_EQ(render("{% for x in [1,2,3] %}{{ loop.cycle('a','b') }}{% endfor %}"), "aba");
}

TEST(JinjaFor, ElseFilterAndUnpacking) {
  EXPECT_EQ(render("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for x in [1,2,3,4] if x is even %}{{ x }}/{{ loop.length }} {% endfor %}"),
            "2/2 4/2 ");
  EXPECT_EQ(
      render("{% for k, v in d|items %}{{ k }}={{ v }};{% endfor %}", R"({"d": {"b": 1, "a": 2}})"),
      "b=1;a=2;");
  EXPECT_EQ(render("{% for (a, b) in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %}"), "37");
  EXPECT_TRUE(throws("{% for a, b in [[1, 2, 3]] %}{% endfor %}"));
}

TEST(JinjaFor, IteratesDictKeysStringsAndReversedLists) {
  EXPECT_EQ(render("{% for k in d %}{{ k }}{% endfor %}", R"({"d": {"z": 1, "a": 2}})"), "za");
  EXPECT_EQ(render("{% for c in 'h\xC3\xA9!' %}[{{ c }}]{% endfor %}"), "[h][\xC3\xA9][!]");
  EXPECT_EQ(render("{% for m in messages[::-1] %}{{ m.role[0] }}{% endfor %}", kMessages), "aus");
  EXPECT_EQ(render("{% for x in undefined_thing %}x{% endfor %}"), "");
}

TEST(JinjaFor, BreakAndContinue) {
  EXPECT_EQ(render("{% for i in range(10) %}{% if i == 3 %}{% break %}{% endif %}{{ i }}"
                   "{% endfor %}"),
            "012");
  EXPECT_EQ(render("{% for i in range(5) %}{% if i is odd %}{% continue %}{% endif %}{{ i }}"
                   "{% endfor %}"),
            "024");
  EXPECT_EQ(render("{% for i in [1,2] %}{% for j in [1,2,3] %}{% if j == 2 %}{% break %}"
                   "{% endif %}{{ i }}{{ j }} {% endfor %}{% endfor %}"),
            "11 21 ");
}

TEST(JinjaScope, SetInsideLoopDoesNotLeak) {
  EXPECT_EQ(render("{% set x = 1 %}{% for i in [5] %}{{ x }}{% set x = 2 %}{{ x }}{% endfor %}"
                   "{{ x }}"),
            "121");
  // Each iteration starts afresh.
  EXPECT_EQ(render("{% for i in [1,2] %}[{{ y }}]{% set y = i %}{% endfor %}[{{ y }}]"), "[][][]");
  // if blocks do not open a scope.
  EXPECT_EQ(render("{% if true %}{% set z = 3 %}{% endif %}{{ z }}"), "3");
}

TEST(JinjaScope, NamespaceCarriesStateOutOfLoops) {
  EXPECT_EQ(render("{% set ns = namespace(total=0, found=false) %}"
                   "{% for i in [1,2,3] %}{% set ns.total = ns.total + i %}"
                   "{% if i == 2 %}{% set ns.found = true %}{% endif %}{% endfor %}"
                   "{{ ns.total }} {{ ns.found }}"),
            "6 True");
  EXPECT_EQ(render("{% set ns = namespace({'a': 1}, b=2) %}{{ ns.a }}{{ ns['b'] }}{{ ns.c }}"),
            "12");
  EXPECT_TRUE(throws("{% set x = 1 %}{% set x.attr = 2 %}"));
  EXPECT_TRUE(throws("{% set ns = namespace() %}{% set ns.me = [ns] %}"));  // no cycles
}

TEST(JinjaScope, TopLevelSetShadowsContextAndSlices) {
  EXPECT_EQ(render("{% set messages = messages[1:] %}{{ messages|length }}"
                   "{{ messages[0]['role'] }}",
                   kMessages),
            "2user");
  EXPECT_EQ(render("{% set a, b = 1, 2 %}{{ b }}{{ a }}"), "21");
}

TEST(JinjaScope, BlockSet) {
  EXPECT_EQ(render("{% set x %}hello {{ 1 + 1 }}{% endset %}[{{ x }}]"), "[hello 2]");
  EXPECT_EQ(render("{% set x | upper %}abc{% endset %}{{ x }}"), "ABC");
  EXPECT_EQ(render("{% filter upper %}a{{ 'b' }}{% endfilter %}"), "AB");
}

TEST(JinjaMacro, ArgumentsDefaultsAndGlobals) {
  EXPECT_EQ(render("{% macro f(a, b='x') %}[{{ a }}{{ b }}{{ c }}]{% endmacro %}"
                   "{% set c = 5 %}{{ f(1) }}{{ f(1, b=2) }}{{ f(b=3, a=4) }}"),
            "[1x5][125][435]");
  EXPECT_EQ(render("{% macro f() %}{{ varargs|length }}{{ kwargs.k }}{% endmacro %}"
                   "{{ f(1, 2, k='v') }}"),
            "2v");
  EXPECT_EQ(render("{% macro wrap() %}<{{ caller() }}>{% endmacro %}"
                   "{% call wrap() %}body{% endcall %}"),
            "<body>");
  EXPECT_EQ(render("{% macro render_list(xs) %}{% for x in xs %}{{ x }}{% endfor %}"
                   "{% endmacro %}{{ render_list([1, 2]) }}"),
            "12");
}

TEST(JinjaIf, ElifElseAndTruthiness) {
  const char* t = "{% if x == 1 %}one{% elif x == 2 %}two{% else %}many{% endif %}";
  EXPECT_EQ(render(t, R"({"x": 1})"), "one");
  EXPECT_EQ(render(t, R"({"x": 2})"), "two");
  EXPECT_EQ(render(t, R"({"x": 9})"), "many");
  EXPECT_EQ(render("{% if '' or [] or {} or 0 or 0.0 or none or missing %}t{% else %}f{% endif %}"),
            "f");
  EXPECT_EQ(render("{% if 'a' and [0] and {'k': 0} and -1 %}t{% endif %}"), "t");
}

TEST(JinjaExpr, Arithmetic) {
  EXPECT_EQ(render("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 7 / 2 }} {{ 4 / 2 }} {{ 7 // 2 }}"),
            "7 9 3.5 2.0 3");
  EXPECT_EQ(render("{{ -7 // 2 }} {{ 7 // -2 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 7.5 // 2 }}"),
            "-4 -4 2 -2 3.0");
  EXPECT_EQ(render("{{ 2 ** 10 }} {{ 2 ** -1 }} {{ 2.0 ** 2 }} {{ -2 ** 2 }} {{ 2**3**2 }}"),
            "1024 0.5 4.0 4 64");
  EXPECT_EQ(render("{{ true + 1 }} {{ 1 + 1.5 }} {{ 0.1 + 0.2 }} {{ -(3) }} {{ +3 }}"),
            "2 2.5 0.30000000000000004 -3 3");
  EXPECT_EQ(render("{{ 'ab' * 2 }} {{ 2 * 'ab' }} {{ [1] * 2 }} {{ [1] + [2] }} {{ 'a' + 'b' }}"),
            "abab abab [1, 1] [1, 2] ab");
  EXPECT_EQ(render("{{ (messages|length - 1) - 1 }}", kMessages), "1");
  // Python float divmod: the remainder takes the divisor's sign, zero included.
  EXPECT_EQ(render("{{ 5 // 2.0 }} {{ -5 % 2.5 }} {{ 3 % -2.0 }} {{ -7.5 // 2 }} {{ 2 ** 0.5 }}"),
            "2.0 0.0 -1.0 -4.0 1.4142135623730951");
}

TEST(JinjaExpr, ConcatAndFilterPrecedence) {
  EXPECT_EQ(render("{{ 'a' ~ 1 ~ none ~ true ~ missing }}"), "a1NoneTrue");
  // Filters bind tighter than +: only x is trimmed.
  EXPECT_EQ(render("{{ ' [' + x | trim + '] ' }}", R"({"x": "  v  "})"), " [v] ");
  EXPECT_EQ(render("{{ -1|abs }} {{ [3, 1]|sort|first }}"), "1 1");
}

TEST(JinjaExpr, ComparisonsAndLogic) {
  EXPECT_EQ(render("{{ 1 == 1.0 }} {{ 1 != 2 }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'a' < 'b' }}"),
            "True True True False True");
  EXPECT_EQ(render("{{ [1, 2] == [1, 2] }} {{ [1, 2] < [1, 3] }} {{ none == none }}"),
            "True True True");
  EXPECT_EQ(render("{{ true != (0 % 2 == 0) }} {{ not 1 == 2 }} {{ not true or true }}"),
            "False True True");
  // and/or return an operand, like Python.
  EXPECT_EQ(render("{{ 0 or 'x' }} {{ 'a' and 'b' }} {{ '' and 'b' }}|"), "x b |");
}

TEST(JinjaExpr, Membership) {
  EXPECT_EQ(render("{{ 'ell' in 'hello' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} "
                   "{{ 'x' not in 'abc' }} {{ 'tool_calls' in m }} {{ 'a' in missing }}",
                   R"({"m": {"role": "user"}})"),
            "True True True True False False");
  EXPECT_TRUE(throws("{{ 1 in 'abc' }}"));
}

TEST(JinjaExpr, TernaryAndUndefined) {
  EXPECT_EQ(render("{{ 'y' if x else 'n' }}{{ 'only' if false }}|", R"({"x": 1})"), "y|");
  EXPECT_EQ(render("[{{ missing }}][{{ missing.attr }}][{{ missing['k'].x }}]"), "[][][]");
  EXPECT_EQ(render("{{ missing is defined }} {{ missing.attr is defined }} {{ x.y is defined }}",
                   R"({"x": {"y": null}})"),
            "False False True");
  EXPECT_EQ(render("{% if not m.tool_calls %}none{% endif %}", R"({"m": {}})"), "none");
  EXPECT_TRUE(throws("{{ missing + 1 }}"));
}

TEST(JinjaExpr, AttributeAndItemAccess) {
  const char* ctx = R"({"m": {"role": "user", "items": "key", "0": "zero"}, "l": [10, 20, 30]})";
  EXPECT_EQ(
      render("{{ m.role }} {{ m['role'] }} {{ l[0] }} {{ l[-1] }} {{ l.1 }} [{{ l[5] }}]", ctx),
      "user user 10 30 20 []");
  // getattr finds dict methods before keys; [] finds keys first.
  EXPECT_EQ(render("{{ m['items'] }} {{ m.items()|length }}", ctx), "key 3");
  EXPECT_EQ(render("{{ 'abc'[1] }} {{ 'abc'[-1] }}"), "b c");
}

TEST(JinjaExpr, Slicing) {
  EXPECT_EQ(render("{{ l[1:] }} {{ l[:2] }} {{ l[::-1] }} {{ l[::-2] }} {{ l[-2:] }} {{ l[5:] }}",
                   R"({"l": [1, 2, 3]})"),
            "[2, 3] [1, 2] [3, 2, 1] [3, 1] [2, 3] []");
  EXPECT_EQ(render("{{ 'h\xC3\xA9llo'[::-1] }} {{ 'hello'[1:3] }}"), "oll\xC3\xA9h el");
  EXPECT_TRUE(throws("{{ [1][::0] }}"));
}

TEST(JinjaExpr, Literals) {
  EXPECT_EQ(render("{{ [1, 'a', none, true, false, 1.0] }} {{ (1, 2) }} {{ (1,) }} {{ () }}"),
            "[1, 'a', None, True, False, 1.0] (1, 2) (1,) ()");
  EXPECT_EQ(render("{{ {'a': 1, 'b': [True, None]} }} {{ {} }} {{ [] }}"),
            "{'a': 1, 'b': [True, None]} {} []");
  EXPECT_EQ(render("{{ \"it's\" }} {{ [\"it's\", 'say \"x\"', 'a\\nb'] }}"),
            "it's [\"it's\", 'say \"x\"', 'a\\nb']");
}

TEST(JinjaExpr, CallsWithKeywordArguments) {
  EXPECT_EQ(render("{{ range(3)|list }} {{ range(1, 7, 2)|list }} {{ range(3, 0, -1)|list }}"),
            "[0, 1, 2] [1, 3, 5] [3, 2, 1]");
  EXPECT_EQ(render("{{ dict(a=1, b='x') }}"), "{'a': 1, 'b': 'x'}");
  EXPECT_TRUE(throws("{{ 'x'.nomethod() }}"));
  EXPECT_TRUE(throws("{{ (1)(2) }}"));
}

TEST(JinjaExpr, StrftimeNowIsAString) {
  const std::string year = render("{{ strftime_now('%Y') }}");
  ASSERT_EQ(year.size(), 4u);
  EXPECT_GE(std::stoi(year), 2024);
}

}  // namespace
}  // namespace lmx::jinja
