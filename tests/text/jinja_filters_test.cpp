// Filters, tests and str/dict/list methods of the Jinja engine.
#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "text/jinja/jinja.h"
#include "jinja_test_util.h"

namespace lmx::jinja {
namespace {

using testing::render;
using testing::throws;

TEST(JinjaFilters, StringFilters) {
  EXPECT_EQ(render("[{{ '  a b \n'|trim }}][{{ 'xxaxx'|trim('x') }}]"), "[a b][a]");
  EXPECT_EQ(render("{{ 'aB'|lower }} {{ 'aB'|upper }} {{ 'hELLO wORLD'|capitalize }}"),
            "ab AB Hello world");
  EXPECT_EQ(render("{{ \"they're bill's-friend\"|title }}"), "They're Bill's-Friend");
  EXPECT_EQ(render("{{ '\xC3\xA9t\xC3\xA9'|upper }}"), "\xC3\x89T\xC3\x89");
  EXPECT_EQ(render("{{ 'aaa'|replace('a', 'b', 2) }} {{ 123|string ~ '!' }}"), "bba 123!");
  EXPECT_EQ(render("{{ 'abc'|indent(2, true) }}|{{ 'a\nb\n\nc'|indent }}"),
            "  abc|a\n    b\n\n    c");
  EXPECT_EQ(render("{{ 'one two  three'|wordcount }} {{ '<a & b>'|escape }} {{ 'x'|safe }}"),
            "3 &lt;a &amp; b&gt; x");
  EXPECT_EQ(render("{{ '%s is %d'|format('x', 3) }} {{ '%s!' % 'hi' }}"), "x is 3 hi!");
}

TEST(JinjaFilters, LengthFirstLastList) {
  EXPECT_EQ(render("{{ [1,2,3]|length }} {{ 'h\xC3\xA9'|length }} {{ {'a': 1}|count }} "
                   "{{ missing|length }}"),
            "3 2 1 0");
  EXPECT_EQ(render("{{ [1,2,3]|first }} {{ [1,2,3]|last }} {{ 'abc'|first }} [{{ []|first }}]"),
            "1 3 a []");
  EXPECT_EQ(render("{{ 'ab'|list }} {{ {'k': 1}|list }}"), "['a', 'b'] ['k']");
}

TEST(JinjaFilters, DefaultAndConversions) {
  EXPECT_EQ(render("{{ missing|default('d') }} {{ ''|default('d') }} {{ ''|default('d', true) }} "
                   "{{ none|d('x') }}"),
            "d  d None");
  EXPECT_EQ(render("{{ '42'|int }} {{ '3.7'|int }} {{ 3.7|int }} {{ 'x'|int }} {{ 'x'|int(7) }}"),
            "42 3 3 0 7");
  EXPECT_EQ(render("{{ '2.5'|float }} {{ 3|float }} {{ 'x'|float }} {{ -3|abs }} {{ -2.5|abs }}"),
            "2.5 3.0 0.0 3 2.5");
  EXPECT_EQ(render("{{ 2.5|round }} {{ 3.5|round }} {{ 3.14159|round(2) }} "
                   "{{ 3.1|round(0, 'ceil') }} {{ 3.9|round(0, 'floor') }}"),
            "2.0 4.0 3.14 4.0 3.0");
}

TEST(JinjaFilters, ItemsJoinDictsort) {
  const char* ctx = R"({"d": {"b": 1, "A": 2, "c": 0}})";
  EXPECT_EQ(render("{{ d|items|list }}", ctx), "[('b', 1), ('A', 2), ('c', 0)]");
  EXPECT_EQ(render("{{ d|dictsort }}", ctx), "[('A', 2), ('b', 1), ('c', 0)]");
  EXPECT_EQ(render("{{ d|dictsort(by='value', reverse=true) }}", ctx),
            "[('A', 2), ('b', 1), ('c', 0)]");
  EXPECT_EQ(render("{{ [1, 'a', none]|join(', ') }} {{ ['x', 'y']|join }}"), "1, a, None xy");
  EXPECT_EQ(render("{{ [{'n': 'a'}, {'n': 'b'}]|join('-', attribute='n') }}"), "a-b");
  EXPECT_EQ(render("{{ missing|items|list }}"), "[]");
}

TEST(JinjaFilters, SelectRejectMap) {
  EXPECT_EQ(
      render("{{ ['a', 'code_interpreter', 'b']|reject('equalto', 'code_interpreter')|list }}"),
      "['a', 'b']");
  EXPECT_EQ(render("{{ [1, 2, 3, 4]|select('odd')|list }} {{ [0, 1, '', 'x']|select|list }} "
                   "{{ [1, 2, 3]|reject('gt', 1)|list }}"),
            "[1, 3] [1, 'x'] [1]");
  const char* ctx = R"({"ms": [{"role": "user", "n": 1}, {"role": "tool", "n": 2}, {"n": 3}]})";
  EXPECT_EQ(render("{{ ms|selectattr('role', 'equalto', 'tool')|map(attribute='n')|list }}", ctx),
            "[2]");
  EXPECT_EQ(render("{{ ms|rejectattr('role')|map(attribute='n')|list }}", ctx), "[3]");
  EXPECT_EQ(render("{{ ms|map(attribute='role', default='?')|list }}", ctx),
            "['user', 'tool', '?']");
  EXPECT_EQ(render("{{ [1, 2]|map('string')|join('+') }}"), "1+2");
}

TEST(JinjaFilters, SortUniqueReverseSumMinMax) {
  EXPECT_EQ(render("{{ ['b', 'A', 'a']|sort }} {{ ['b', 'A', 'a']|sort(case_sensitive=true) }} "
                   "{{ [3, 1, 2]|sort(reverse=true) }}"),
            "['A', 'a', 'b'] ['A', 'a', 'b'] [3, 2, 1]");
  EXPECT_EQ(render("{{ ['b', 'A', 'a', 'b']|unique|list }} {{ [1, 2]|reverse|list }} "
                   "{{ 'abc'|reverse }}"),
            "['b', 'A'] [2, 1] cba");
  EXPECT_EQ(render("{{ [1, 2, 3]|sum }} {{ [3, 1, 2]|min }} {{ [3, 1, 2]|max }}"), "6 1 3");
}

TEST(JinjaTests, TypeTests) {
  const char* ctx = R"({"s": "x", "i": 1, "f": 1.5, "b": true, "n": null, "l": [], "d": {}})";
  EXPECT_EQ(render("{{ s is string }}{{ i is string }}{{ i is number }}{{ f is number }}"
                   "{{ b is number }}{{ i is integer }}{{ b is integer }}{{ f is float }}",
                   ctx),
            "TrueFalseTrueTrueTrueTrueFalseTrue");
  EXPECT_EQ(render("{{ b is boolean }}{{ n is none }}{{ n is not none }}{{ d is mapping }}"
                   "{{ l is mapping }}{{ l is iterable }}{{ s is iterable }}{{ i is iterable }}",
                   ctx),
            "TrueTrueFalseTrueFalseTrueTrueFalse");
  EXPECT_EQ(render("{{ l is sequence }}{{ d is sequence }}{{ i is sequence }}{{ x is defined }}"
                   "{{ x is undefined }}{{ range is callable }}{{ s is callable }}",
                   ctx),
            "TrueTrueFalseFalseTrueTrueFalse");
  EXPECT_EQ(render("{{ b is true }}{{ b is false }}{{ 1 is true }}{{ false is false }}", ctx),
            "TrueFalseFalseTrue");
}

TEST(JinjaTests, ValueTests) {
  EXPECT_EQ(
      render("{{ 3 is odd }}{{ 3 is even }}{{ 9 is divisibleby 3 }}{{ 9 is divisibleby(2) }}"),
      "TrueFalseTrueFalse");
  EXPECT_EQ(render("{{ 'a' is equalto 'a' }}{{ 1 is eq 2 }}{{ 1 is ne 2 }}{{ 1 is lt 2 }}"
                   "{{ 1 is gt 2 }}{{ 2 is in [1, 2] }}{{ 'ab' is lower }}{{ 'AB' is upper }}"),
            "TrueFalseTrueTrueFalseTrueTrueTrue");
  EXPECT_EQ(render("{{ none is sameas none }}{{ 1 is not equalto 1 }}"), "TrueFalse");
}

TEST(JinjaMethods, StringMethods) {
  EXPECT_EQ(
      render("[{{ '\n x \n'.strip('\n') }}][{{ '\n\nx'.lstrip('\n') }}][{{ 'x  '.rstrip() }}]"),
      "[ x ][x][x]");
  EXPECT_EQ(render("{{ 'a b  c'.split() }} {{ 'a,b,,c'.split(',') }} {{ 'a,b,c'.split(',', 1) }}"),
            "['a', 'b', 'c'] ['a', 'b', '', 'c'] ['a', 'b,c']");
  EXPECT_EQ(render("{{ 'x</think>y</think>z'.split('</think>')[-1] }} "
                   "{{ 'a,b,c'.rsplit(',', 1) }} {{ '  a  b '.split(none, 1) }}"),
            "z ['a,b', 'c'] ['a', 'b ']");
  EXPECT_EQ(render("{{ 'hello'.startswith('he') }}{{ 'hello'.endswith('lo') }}"
                   "{{ 'hello'.endswith(('x', 'o')) }}{{ 'hello'.startswith('lo') }}"),
            "TrueTrueTrueFalse");
  EXPECT_EQ(render("{{ 'aXa'.replace('a', 'b') }} {{ 'ab'.upper() }} {{ 'AB'.lower() }} "
                   "{{ 'hello world'.title() }} {{ 'hELLO'.capitalize() }}"),
            "bXb AB ab Hello World Hello");
  EXPECT_EQ(render("{{ 'h\xC3\xA9llo'.find('l') }} {{ 'abc'.find('z') }} {{ 'aaa'.count('a') }} "
                   "{{ '-'.join(['a', 'b']) }} {{ '{} and {x}'.format(1, x=2) }}"),
            "2 -1 3 a-b 1 and 2");
  EXPECT_TRUE(throws("{{ 'a'.split('') }}"));
}

TEST(JinjaMethods, DictAndListMethods) {
  const char* ctx = R"({"d": {"a": 1, "b": 2}})";
  EXPECT_EQ(render("{{ d.keys()|list }} {{ d.values()|list }} {{ d.items()|list }}", ctx),
            "['a', 'b'] [1, 2] [('a', 1), ('b', 2)]");
  EXPECT_EQ(render("{{ d.get('a') }} {{ d.get('z') }} {{ d.get('z', 0) }}", ctx), "1 None 0");
  EXPECT_EQ(render("{% set l = [1] %}{% set _ = l.append(2) %}{{ l }} {{ l.count(1) }} "
                   "{{ l.index(2) }}"),
            "[1, 2] 1 1");
  EXPECT_TRUE(throws("{% set l = [1] %}{% set _ = l.append(l) %}"));
}

}  // namespace
}  // namespace lmx::jinja
