// JSON Schema holds (text::JsonSchema read by text::JsonPrefix): what a schema allows is
// taken byte by byte, the first byte that breaks it is refused, and texts written by
// random walks through what the recognizer allows are checked afterwards by a validator
// of their own (a tree walk over the parsed value, as jsonschema validates), not by the
// recognizer that wrote them.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "core/error.h"
#include "text/json_prefix.h"

namespace lmx::text {
namespace {

using json = nlohmann::ordered_json;

std::shared_ptr<const JsonSchema> schema(const std::string& text) {
  return std::make_shared<const JsonSchema>(JsonSchema::compile(text));
}

// How many of s's bytes are taken one at a time; s.size() if all are.
size_t taken(const std::shared_ptr<const JsonSchema>& sc, const std::string& s, bool* complete = nullptr) {
  JsonPrefix p(sc);
  size_t at = 0;
  while (at < s.size() && p.feed(s.substr(at, 1))) ++at;
  if (complete) *complete = p.complete();
  return at;
}

// Characters, as JSON Schema counts a string's length: code points.
size_t code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << path;
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The validator: the keywords JsonSchema reads, over a parsed value.
bool valid(const json& v, const json& s, const json& doc);

bool valid_typed(const json& v, const json& s, const json& doc, const std::string& type) {
  if (type == "null") return v.is_null();
  if (type == "boolean") return v.is_boolean();
  // An integer past 64 bits parses as a double: still an integer, if it has no fraction.
  if (type == "integer") return v.is_number_integer() || (v.is_number_float() && v == std::floor(v.get<double>()));
  if (type == "number") return v.is_number();
  if (type == "string") {
    if (!v.is_string()) return false;
    const size_t n = code_points(v.get<std::string>());
    return n >= s.value("minLength", size_t(0)) && n <= s.value("maxLength", size_t(-1));
  }
  if (type == "array") {
    if (!v.is_array()) return false;
    if (v.size() < s.value("minItems", size_t(0)) || v.size() > s.value("maxItems", size_t(-1))) return false;
    for (const json& item : v)
      if (s.contains("items") && !valid(item, s["items"], doc)) return false;
    return true;
  }
  if (!v.is_object()) return false;
  for (const json& r : s.value("required", json::array()))
    if (!v.contains(r.get<std::string>())) return false;
  for (const auto& [key, value] : v.items()) {
    if (s.contains("properties") && s["properties"].contains(key)) {
      if (!valid(value, s["properties"][key], doc)) return false;
    } else if (s.contains("additionalProperties") && !valid(value, s["additionalProperties"], doc)) {
      return false;
    }
  }
  return true;
}

bool valid(const json& v, const json& s, const json& doc) {
  if (s.is_boolean()) return s.get<bool>();
  if (s.contains("$ref")) return valid(v, doc.at(json::json_pointer(s["$ref"].get<std::string>().substr(1))), doc);
  if (s.contains("allOf")) return valid(v, s["allOf"][0], doc);
  if (s.contains("anyOf")) {
    for (const json& b : s["anyOf"])
      if (valid(v, b, doc)) return true;
    return false;
  }
  if (s.contains("oneOf")) {
    int matched = 0;
    for (const json& b : s["oneOf"]) matched += valid(v, b, doc);
    return matched == 1;
  }
  if (s.contains("const")) return v == s["const"];
  if (s.contains("enum")) {
    for (const json& e : s["enum"])
      if (v == e) return true;
    return false;
  }
  std::vector<std::string> types;
  if (s.contains("type")) {
    for (const json& t : s["type"].is_array() ? s["type"] : json::array({s["type"]})) types.push_back(t);
  } else if (s.contains("properties") || s.contains("additionalProperties") || s.contains("required")) {
    types = {"object"};
  } else if (s.contains("items")) {
    types = {"array"};
  } else {
    return true;
  }
  for (const std::string& t : types)
    if (valid_typed(v, s, doc, t)) return true;
  return false;
}

// A random walk through the bytes the recognizer allows, until the value closes: mostly
// printable ASCII, with a lean towards ending strings, items and containers so that walks
// finish. Empty if it did not within `limit` bytes.
std::string walk(const std::shared_ptr<const JsonSchema>& sc, std::mt19937& rng, size_t limit = 600) {
  JsonPrefix p(sc);
  std::string out;
  const std::string enders = "}],\"";
  while (!p.complete() && out.size() < limit) {
    std::string allowed, ending;
    for (int b = 0x20; b < 0x7F; ++b) {
      const char c = char(b);
      if (c == ' ' || !p.accepts(std::string_view(&c, 1))) continue;
      allowed += c;
      if (enders.find(c) != std::string::npos) ending += c;
    }
    for (const char* utf8 : {"\xC3\xA9", "\xE4\xB8\xAD"})
      if (p.accepts(utf8)) allowed += '\x01';  // stands for a multi-byte character
    if (allowed.empty()) return "";
    const bool end = !ending.empty() && rng() % 4 == 0;
    const char c = end ? ending[rng() % ending.size()] : allowed[rng() % allowed.size()];
    const std::string piece = c == '\x01' ? std::string(rng() % 2 ? "\xC3\xA9" : "\xE4\xB8\xAD") : std::string(1, c);
    EXPECT_TRUE(p.feed(piece));
    out += piece;
  }
  return p.complete() ? out : "";
}

const char* kWeather = R"({
  "type": "object",
  "properties": {
    "city": {"type": "string", "minLength": 1, "maxLength": 8},
    "days": {"type": "integer"},
    "unit": {"enum": ["c", "f", 1, 12, null]},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "minItems": 1, "maxItems": 2},
    "note": {"type": ["string", "null"]}
  },
  "required": ["city", "unit"],
  "additionalProperties": false
})";

TEST(JsonSchema, TakesEveryPrefixOfAValidInstance) {
  const auto sc = schema(kWeather);
  for (const std::string s : {
           R"({"city": "Paris", "unit": "c"})",
           R"({"city":"Oslo","days":-3,"unit":12,"tags":["a","b\u00e9c"],"note":null})",
           R"( { "city" : "caf\u00e9" , "unit" : null , "note" : "x" } )",
           "{\"city\": \"\xE4\xB8\xAD\xE4\xB8\xAD\", \"unit\": 1, \"tags\": [\"\"]}",
       }) {
    bool complete = false;
    EXPECT_EQ(taken(sc, s, &complete), s.size()) << s;
    EXPECT_TRUE(complete) << s;
    EXPECT_TRUE(valid(json::parse(s), json::parse(kWeather), json::parse(kWeather))) << s;
  }
}

TEST(JsonSchema, RefusesTheFirstByteThatBreaksIt) {
  const auto sc = schema(kWeather);
  struct Case {
    std::string text;
    size_t refused_at;
  };
  for (const Case& c : std::vector<Case>{
           {R"([1])", 0},                                      // the root is an object
           {R"({"unit": "c"})", 2},                            // "city" is required first
           {R"({"city": "a", "zip": 1})", 15},                 // a key the schema does not list
           {R"({"city": "a", "unit": "c", "days": 1})", 28},   // days comes before unit
           {R"({"city": "a"})", 12},                           // unit is required
           {R"({"city": ""})", 10},                             // minLength 1
           {R"({"city": "abcdefghi"})", 18},                   // maxLength 8
           {R"({"city": "a", "days": 1.5})", 23},              // an integer
           {R"({"city": "a", "days": 1e3})", 23},
           {R"({"city": "a", "unit": "g"})", 23},              // not in the enum
           {R"({"city": "a", "unit": 123})", 24},              // 12, then a byte no value goes on with
           {R"({"city": "a", "unit": 1, "tags": []})", 34},    // minItems 1
           {R"({"city": "a", "unit": 1, "tags": ["a", "b", "c"]})", 42},  // maxItems 2
           {R"({"city": "a", "unit": 1, "tags": ["abcd"]})", 38},          // an item's maxLength
           {R"({"city": "a", "unit": 1, "note": 3})", 33},     // a string or null
       }) {
    EXPECT_EQ(taken(sc, c.text), c.refused_at) << c.text;
  }
}

// Escaped UTF-16: a surrogate pair is one character, and a half alone is refused (parsers
// refuse it) where it first shows, so that nothing taken is a dead end.
TEST(JsonSchema, SurrogatePairsAreOneCharacterAndHalvesAreRefused) {
  const auto sc = schema(R"({"type": "array", "items": {"type": "string", "maxLength": 1}})");
  bool complete = false;
  EXPECT_EQ(taken(sc, R"(["\uD83D\uDE00", "\ud83d\ude00", "\u00e9"])", &complete), 42u);
  EXPECT_TRUE(complete);
  EXPECT_EQ(taken(sc, R"(["\uDE00"])", &complete), 5u);   // a low half alone: its second digit
  EXPECT_EQ(taken(sc, R"(["\uD83D"])", &complete), 8u);   // a high half, then no escape
  EXPECT_EQ(taken(sc, R"(["\uD83D\n"])", &complete), 9u);
  EXPECT_EQ(taken(sc, R"(["\uD83D\u0041"])", &complete), 10u);
  EXPECT_EQ(taken(sc, R"(["\u00e9\u00e9"])", &complete), 8u);  // maxLength 1
  EXPECT_TRUE(JsonPrefix(false).feed(R"("\uD83D\uDE00 \u00e9")"));
  EXPECT_FALSE(JsonPrefix(false).feed(R"("\uDE00")"));
}


// Whether `text` has an exponent of three digits or more (e999), outside strings or in.
bool long_exponent(const std::string& text) {
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != 'e' && text[i] != 'E') continue;
    size_t d = i + 1;
    if (d < text.size() && (text[d] == '+' || text[d] == '-')) ++d;
    size_t n = 0;
    while (d + n < text.size() && text[d + n] >= '0' && text[d + n] <= '9') ++n;
    if (n >= 3) return true;
  }
  return false;
}

TEST(JsonSchema, RandomWalksAreValidInstances) {
  std::vector<std::string> schemas = {
      kWeather,
      // A tree through $ref, with a list of nodes.
      R"({"$defs": {"node": {"type": "object", "properties": {"v": {"type": "number"},
          "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}}, "required": ["v"]}},
          "$ref": "#/$defs/node"})",
      // anyOf over objects that share a key, and a map with typed values.
      R"({"type": "object", "properties": {"shape": {"anyOf": [
          {"type": "object", "properties": {"r": {"type": "integer"}}, "required": ["r"]},
          {"type": "object", "properties": {"r": {"type": "string"}, "s": {"const": [1, {"a": "b"}]}},
           "required": ["r", "s"]}]},
          "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
          "either": {"oneOf": [{"type": "string", "maxLength": 2}, {"type": "boolean"}, {"type": "array"}]},
          "free": {}}, "required": ["shape", "counts", "either", "free"]})",
      // An array at the root, of enums and numbers.
      R"({"type": "array", "items": {"anyOf": [{"enum": [1, 12, -3.5, "x", true]}, {"type": "number"}]},
          "minItems": 2, "maxItems": 4})",
  };
  // Schemas as clients send them: pydantic's, and OpenAI's strict form (fixtures/json_schema).
  const std::filesystem::path dir = std::filesystem::path(LMX_FIXTURES_DIR) / "json_schema";
  for (const char* name : {"weather", "tree", "math", "strict"})
    schemas.push_back(read_file(dir / (name + std::string(".json"))));
  std::mt19937 rng(7);
  for (const std::string& text : schemas) {
    const auto sc = schema(text);
    const json s = json::parse(text);
    int finished = 0;
    for (int i = 0; i < 400; ++i) {
      const std::string out = walk(sc, rng);
      if (out.empty()) continue;
      ++finished;
      // The parser also refuses a number past a double's range (1e999), which the grammar allows.
      if (long_exponent(out)) continue;
      ASSERT_TRUE(json::accept(out)) << out;
      EXPECT_TRUE(valid(json::parse(out), s, s)) << text << "\n  wrote " << out;
    }
    EXPECT_GT(finished, 100) << text;
  }
}

TEST(JsonSchema, RefusesWhatItCannotHoldByName) {
  struct Case {
    std::string schema, says;
  };
  for (const Case& c : std::vector<Case>{
           {R"({"type": "object", "properties": {"email": {"type": "string", "format": "email"}}})",
            "at '/properties/email': the keyword 'format' is not supported"},
           {R"({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}})", "'minimum'"},
           {R"({"type": "string"})", "root must be an object or an array"},
           {R"({"type": "object", "required": ["a"]})", "'a' is required but not in 'properties'"},
           {R"({"type": "object", "properties": {"a": {"$ref": "#/$defs/none"}}})", "names nothing"},
           {R"({"$ref": "#"})", "leads back to itself"},
           {R"({"type": "object", "properties": {"a": false}})", "allows no value"},
           {R"({"type": "object", "properties": {"a": {"oneOf": [{"type": "object"}, {"type": "object",
               "properties": {"b": {}}}]}}})", "use 'anyOf'"},
           {R"({"type": "objekt"})", "unknown type 'objekt'"},
           {R"({"type": "array", "minItems": 3, "maxItems": 2})", "no value is valid"},
           {R"({"type": "object", "properties": {"a": {"type": "string", "maxLength": -1}}})",
            "'maxLength' must be a non-negative integer"},
           {R"({"type": "object", )", "not valid JSON"},
           {R"({"type": "object", "properties": {"a": {"const": 1e999}}})", "not valid JSON"},
       }) {
    try {
      JsonSchema::compile(c.schema);
      ADD_FAILURE() << "compiled: " << c.schema;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.says), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("json_schema"), std::string::npos) << e.what();
    }
  }
}

// The vocabulary's mask against each token read through on its own, in every state a
// schema's instance passes through (its shortcut for plain string text holds only where
// the string's length is not bounded).
TEST(JsonSchema, TheMaskIsEachTokenReadThrough) {
  const std::vector<std::string> pieces = {"{", "}", "\"", "\":", " \"", "city", "\"city", "\"c", "ity\"", "a",
                                           "abcdefgh", "ab c", "1", "12", "2", "-", ".5", ",", "]", "[", " ", "null",
                                           "n", "\"unit\": ", "\"x\"", ":", "\xC3\xA9", "\"}", "\\u00", "days\""};
  const JsonTokens tokens(pieces);
  const auto sc = schema(kWeather);
  const std::string text = R"({"city": "abc", "days": 12, "unit": 1, "tags": ["a"], "note": "ab c"})";
  JsonPrefix json(sc);
  for (size_t i = 0; i <= text.size(); ++i) {
    std::vector<float> logits(pieces.size(), 1.0f);
    tokens.mask(json, logits);
    for (int32_t id = 0; id < int32_t(logits.size()); ++id)
      EXPECT_EQ(logits[size_t(id)] == 1.0f, tokens.allowed(json, id)) << "after '" << text.substr(0, i) << "': " << id;
    if (i == text.size()) break;
    ASSERT_TRUE(json.feed(text.substr(i, 1))) << text.substr(0, i + 1);
  }
  EXPECT_TRUE(json.complete());
}

// The masks kept by state (JsonPrefix::state_key): along random walks through two schemas,
// where states recur within and across walks, every kept mask still equals each token read
// through in the state at hand.
TEST(JsonSchema, KeptMasksAreEachTokenReadThrough) {
  std::vector<std::string> pieces = {"{", "}", "[", "]", "\"", ",", ":", " ", "\n", "  ", "\"city\": \"", "\"unit",
                                     "\": ", "\", \"", "null", "12", "1", "-3", ".5", "e", "ab", "abcdefghij", "\\n",
                                     "\\u00", "e9", "\xC3\xA9", "\"c\"", "\"f\"}", "}]", "]}", "{\"v\":", "true",
                                     "\"kids\": [", "\"days", "\"tags\": [\"", "x\"", "\"\"", ",\"", "0", "9"};
  const JsonTokens tokens(pieces);
  std::mt19937 rng(3);
  for (const std::string& text : {std::string(kWeather), std::string(R"({"$defs": {"n": {"type": "object",
      "properties": {"v": {"type": ["integer", "null"]}, "kids": {"type": "array", "items": {"$ref": "#/$defs/n"},
      "minItems": 1, "maxItems": 3}}, "required": ["v"]}}, "$ref": "#/$defs/n"})")}) {
    const auto sc = schema(text);
    for (int walk = 0; walk < 40; ++walk) {
      JsonPrefix json(sc);
      for (int step = 0; step < 60 && !json.complete(); ++step) {
        std::vector<float> logits(pieces.size(), 1.0f);
        tokens.mask(json, logits);
        std::vector<int32_t> allowed;
        for (int32_t id = 0; id < int32_t(pieces.size()); ++id) {
          ASSERT_EQ(logits[size_t(id)] == 1.0f, tokens.allowed(json, id)) << "piece '" << pieces[size_t(id)] << "'";
          if (logits[size_t(id)] == 1.0f) allowed.push_back(id);
        }
        if (allowed.empty()) break;
        ASSERT_TRUE(json.feed(pieces[size_t(allowed[rng() % allowed.size()])]));
      }
    }
  }
}

}  // namespace
}  // namespace lmx::text
