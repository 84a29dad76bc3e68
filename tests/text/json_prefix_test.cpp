// The JSON prefix recognizer against nlohmann::json's parser, an independent one: every
// prefix of a valid text is taken, a whole text is complete, and over many random strings
// the two agree on which are JSON.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "text/json_prefix.h"

namespace lmx::text {
namespace {

// Whether `s` is taken byte by byte, and then complete.
bool whole(const std::string& s, bool object_only) {
  JsonPrefix p(object_only);
  for (char c : s)
    if (!p.feed(std::string_view(&c, 1))) return false;
  return p.complete();
}

// Whether s holds an exponent of three digits or more (some are past a double's range).
bool long_exponent(const std::string& s) {
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != 'e' && s[i] != 'E') continue;
    size_t from = i + 1 < s.size() && (s[i + 1] == '+' || s[i + 1] == '-') ? i + 2 : i + 1, to = from;
    while (to < s.size() && s[to] >= '0' && s[to] <= '9') ++to;
    if (to - from >= 3) return true;
  }
  return false;
}

TEST(JsonPrefix, TakesEveryPrefixOfValidObjects) {
  for (const std::string s : {
           R"({})",
           R"( {"a": 1} )",
           R"({"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2.5, -3e+2, 0, -0.0E-1]}})",
           R"({"s": "esc \" \\ \/ \b \f \n \r \t \u00e9 caf\u00E9", "t": true, "f": false, "n": null})",
           "{\"utf8\": \"caf\xC3\xA9 \xE4\xB8\xAD\"}",
           R"({"nested": [[], [{}], [[[{"x": [true]}]]]], "e": ""})",
       }) {
    ASSERT_TRUE(nlohmann::json::accept(s)) << s;
    JsonPrefix p;
    for (size_t i = 0; i < s.size(); ++i) {
      EXPECT_TRUE(p.accepts(s.substr(i))) << s << " from byte " << i;
      EXPECT_FALSE(p.complete()) << s << " before byte " << i;
      ASSERT_TRUE(p.feed(s.substr(i, 1))) << s << " at byte " << i;
      if (s.find_first_not_of(' ', i + 1) == std::string::npos) break;  // the object has closed
    }
    EXPECT_TRUE(p.complete()) << s;
    EXPECT_TRUE(p.feed("  \n")) << "whitespace after the object";
    EXPECT_FALSE(p.feed("x")) << "nothing else after it";
  }
}

TEST(JsonPrefix, RefusesTheFirstByteThatNoJsonContinues) {
  struct Case {
    std::string text;
    size_t refused_at;
  };
  for (const Case& c : std::vector<Case>{
           {"[1]", 0},              // an object is asked for
           {"\"a\"", 0},
           {"{a", 1},               // keys are strings
           {"{\"a\" 1", 5},         // the colon is missing
           {"{\"a\": 01", 7},       // no leading zeros
           {"{\"a\": 1.}", 8},      // a digit after the point
           {"{\"a\": tru}", 9},
           {"{\"a\": \"\x01\"}", 7},  // a control character in a string
           {"{\"a\": \"\\x\"}", 8},  // an unknown escape
           {"{\"a\": \"\\u12G4\"}", 11},
           {"{\"a\": 1,}", 8},      // a key after the comma
           {"{\"a\": [1,]}", 9},
           {"{\"a\": [1}", 8},      // the wrong bracket
           {"{} {}", 3},
       }) {
    JsonPrefix p;
    size_t at = 0;
    while (at < c.text.size() && p.feed(c.text.substr(at, 1))) ++at;
    EXPECT_EQ(at, c.refused_at) << c.text;
    if (c.refused_at > 0) {  // not merely a value that is no object
      EXPECT_FALSE(nlohmann::json::accept(c.text)) << c.text;
    }
  }
}

TEST(JsonPrefix, AFailedFeedChangesNothing) {
  JsonPrefix p;
  ASSERT_TRUE(p.feed("{\"a\": [1, 2"));
  EXPECT_FALSE(p.feed("3}"));  // '}' would close the array
  EXPECT_TRUE(p.accepts("3]}"));
  EXPECT_TRUE(p.feed("3]}"));
  EXPECT_TRUE(p.complete());
}

// Random strings over JSON's own characters: the recognizer takes a string whole (and is
// then complete) exactly where nlohmann's parser accepts it. Any top-level value here; a
// space after it ends a top-level number.
TEST(JsonPrefix, AgreesWithAParserOnRandomStrings) {
  const std::string alphabet = "{}[]:,\" a01-.eE+tfrulsn\\/x";
  std::mt19937 rng(1234);
  int json_count = 0;
  for (int i = 0; i < 300000; ++i) {
    std::string s;
    const int n = 1 + int(rng() % 12);
    for (int k = 0; k < n; ++k) s += alphabet[rng() % alphabet.size()];
    // Bias towards structure: start most strings as a container or a value would.
    if (i % 3 == 0) s = "{\"" + s;
    if (i % 3 == 1) s = "[" + s;
    // The parser also refuses a number past a double's range (1e1111), which the grammar allows.
    if (long_exponent(s)) continue;
    const bool parser = nlohmann::json::accept(s + " ");
    ASSERT_EQ(whole(s + " ", false), parser) << "'" << s << "'";
    json_count += parser;
  }
  EXPECT_GT(json_count, 1000) << "the strings should hold a fair share of JSON";
}

// The vocabulary's mask, with its shortcuts (first bytes, plain string text), against each
// token read through on its own, in every state the prefixes of a JSON text pass through.
TEST(JsonPrefix, TheMaskIsEachTokenReadThrough) {
  std::vector<std::string> pieces = {"", "{", "}", "\"", "\":", " \"", "a", "ab c", "\\", "\\n", "1", "-",
                                     ".5", "e+", "true", "tr", "null,", ",", "]", "[", " ", "\n", "\x01", ":",
                                     "\xC3\xA9", "\"}", "0", "00", "\\u00", "{\"", "}}"};
  const JsonTokens tokens(pieces);
  const std::string text = R"({"ab c": [1, -0.5e+2, "x\n\u00e9", true, null, {}], "": {"k": []}})";
  JsonPrefix json;
  for (size_t i = 0; i <= text.size(); ++i) {
    std::vector<float> logits(pieces.size() + 2, 1.0f);  // two ids past the pieces: never allowed
    tokens.mask(json, logits);
    for (int32_t id = 0; id < int32_t(logits.size()); ++id)
      EXPECT_EQ(logits[size_t(id)] == 1.0f, tokens.allowed(json, id)) << "after '" << text.substr(0, i) << "': " << id;
    if (i == text.size()) break;
    ASSERT_TRUE(json.feed(text.substr(i, 1)));
  }
}

}  // namespace
}  // namespace lmx::text
