#include "text/json_schema.h"

#include <algorithm>
#include <bitset>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"

namespace lmx::text {

using json = nlohmann::ordered_json;  // properties keep the order the schema writes them in

JsonSchema::JsonSchema() {
  nodes_.resize(2);
  nodes_[kAnyLiteral].kind = SchemaNode::Kind::literals;
  nodes_[kAnyLiteral].texts = {"false", "null", "true"};
}

const JsonSchema& JsonSchema::any_value() {
  static const JsonSchema s;
  return s;
}

const JsonSchema& JsonSchema::any_object() {
  static const JsonSchema s = [] {
    JsonSchema o;
    SchemaNode n;
    n.kind = SchemaNode::Kind::object;
    n.free_keys = true;
    n.items = kAny;
    o.root_ = int32_t(o.nodes_.size());
    o.nodes_.push_back(std::move(n));
    return o;
  }();
  return s;
}

namespace {

using Kind = SchemaNode::Kind;

// Keywords that say nothing about which texts are valid.
const std::set<std::string, std::less<>> kAnnotations = {
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "$defs", "definitions",
    "deprecated", "readOnly", "writeOnly", "discriminator"};
// Keywords read here, by the type they apply to.
const std::set<std::string, std::less<>> kObjectWords = {"properties", "required", "additionalProperties"};
const std::set<std::string, std::less<>> kArrayWords = {"items", "minItems", "maxItems"};
const std::set<std::string, std::less<>> kStringWords = {"minLength", "maxLength"};

bool in(const std::set<std::string, std::less<>>& s, std::string_view k) { return s.find(k) != s.end(); }

}  // namespace

// Builds the nodes of one schema document; $refs resolve inside it.
class SchemaCompiler {
 public:
  SchemaCompiler(const json& doc, JsonSchema& out) : doc_(doc), out_(out) {}

  int32_t compile(const json& s, const std::string& at) {
    if (s.is_boolean()) {
      if (s.get<bool>()) return JsonSchema::kAny;
      refuse(at, "a schema of false allows no value");
    }
    if (!s.is_object()) refuse(at, "a schema must be an object or a boolean, got " + s.dump());
    for (const auto& [key, value] : s.items()) {
      if (!in(kAnnotations, key) && !in(kObjectWords, key) && !in(kArrayWords, key) && !in(kStringWords, key) &&
          key != "type" && key != "enum" && key != "const" && key != "$ref" && key != "anyOf" && key != "oneOf" &&
          key != "allOf")
        refuse(at, "the keyword '" + key + "' is not supported (a reply could break it); supported: type, " +
                       "properties, required, additionalProperties, items, minItems, maxItems, minLength, " +
                       "maxLength, enum, const, anyOf, oneOf, allOf of one schema, $ref");
    }
    // Keywords that stand alone: everything else beside them must be an annotation.
    for (const char* alone : {"$ref", "anyOf", "oneOf", "allOf"}) {
      if (!s.contains(alone)) continue;
      for (const auto& [key, value] : s.items())
        if (key != alone && !in(kAnnotations, key))
          refuse(at, std::string("'") + alone + "' beside '" + key + "' is not supported; put them in one schema");
    }
    if (s.contains("$ref")) return reference(s["$ref"], at);
    if (s.contains("allOf")) {
      const json& all = s["allOf"];
      if (!all.is_array() || all.size() != 1) refuse(at + "/allOf", "'allOf' is supported with one schema only");
      return compile(all[0], at + "/allOf/0");
    }
    for (const char* word : {"anyOf", "oneOf"}) {
      if (!s.contains(word)) continue;
      const json& list = s[word];
      const std::string where = at + "/" + word;
      if (!list.is_array() || list.empty()) refuse(where, "must be a non-empty array of schemas");
      SchemaNode n;
      n.kind = Kind::any_of;
      for (size_t i = 0; i < list.size(); ++i) n.branches.push_back(compile(list[i], where + "/" + std::to_string(i)));
      const int32_t id = add(std::move(n));
      if (std::string_view(word) == "oneOf") one_of_.emplace_back(id, where);
      return id;
    }
    const std::vector<std::string> types = types_of(s, at);
    if (s.contains("enum") || s.contains("const")) return literals(s, types, at);
    if (types.empty()) return JsonSchema::kAny;
    if (types.size() == 1) return typed(s, types[0], at);
    SchemaNode n;
    n.kind = Kind::any_of;
    for (const std::string& t : types) n.branches.push_back(typed(s, t, at));
    return add(std::move(n));
  }

  // oneOf asks that exactly one branch match. Its branches are read as anyOf's, so that
  // holds only where no text could match two: here, where no two may start with the same byte.
  void check_one_of() const {
    for (const auto& [id, where] : one_of_) {
      std::bitset<256> seen;
      for (int32_t b : out_.nodes_[size_t(id)].branches) {
        const std::bitset<256> first = first_bytes(b);
        if ((seen & first).any())
          refuse(where, "branches that one value could match both (two objects, say) are not supported in "
                        "'oneOf'; use 'anyOf'");
        seen |= first;
      }
    }
  }

  // An alias that leads back to itself through aliases alone would never start a value.
  void check_cycles() const {
    for (size_t i = 0; i < out_.nodes_.size(); ++i) {
      std::vector<int32_t> todo = {int32_t(i)};
      std::set<int32_t> seen;
      while (!todo.empty()) {
        const SchemaNode& n = out_.nodes_[size_t(todo.back())];
        todo.pop_back();
        if (n.kind != Kind::any_of) continue;
        for (int32_t b : n.branches) {
          if (size_t(b) == i) refuse("", "a $ref or anyOf leads back to itself before any value starts");
          if (seen.insert(b).second) todo.push_back(b);
        }
      }
    }
  }

 private:
  [[noreturn]] static void refuse(const std::string& at, const std::string& what) {
    fail("json_schema", "at '", at.empty() ? std::string("/") : at, "': ", what);
  }

  int32_t add(SchemaNode n) {
    out_.nodes_.push_back(std::move(n));
    return int32_t(out_.nodes_.size() - 1);
  }

  // "#", "#/$defs/Name", or any JSON pointer into the document. Each target is built once,
  // behind an alias made first, so that a schema may refer to itself (a tree, a list).
  int32_t reference(const json& ref, const std::string& at) {
    if (!ref.is_string()) refuse(at + "/$ref", "'$ref' must be a string");
    const std::string r = ref.get<std::string>();
    if (r.empty() || r[0] != '#') refuse(at + "/$ref", "'" + r + "': only references inside the schema (#/...)");
    if (auto it = refs_.find(r); it != refs_.end()) return it->second;
    const json* target = &doc_;
    if (r.size() > 1) {
      try {
        target = &doc_.at(json::json_pointer(r.substr(1)));
      } catch (const json::exception&) {
        refuse(at + "/$ref", "'" + r + "' names nothing in the schema");
      }
    }
    SchemaNode alias;
    alias.kind = Kind::any_of;
    const int32_t id = add(std::move(alias));
    refs_[r] = id;
    const int32_t body = compile(*target, r.substr(1));
    out_.nodes_[size_t(id)].branches = {body};
    return id;
  }

  std::vector<std::string> types_of(const json& s, const std::string& at) const {
    std::vector<std::string> types;
    if (const auto it = s.find("type"); it != s.end()) {
      for (const json& t : it->is_array() ? *it : json::array({*it})) {
        if (!t.is_string()) refuse(at + "/type", "'type' must be a name or a list of names");
        types.push_back(t.get<std::string>());
      }
      if (types.empty()) refuse(at + "/type", "'type' lists no type");
      return types;
    }
    // No type: the keywords tell it, where they name one.
    auto has = [&](const std::set<std::string, std::less<>>& words) {
      return std::any_of(s.items().begin(), s.items().end(), [&](const auto& kv) { return in(words, kv.key()); });
    };
    if (has(kObjectWords)) types.push_back("object");
    if (has(kArrayWords)) types.push_back("array");
    if (has(kStringWords)) types.push_back("string");
    if (types.size() > 1) refuse(at, "keywords of several types and no 'type'; say which type");
    return types;
  }

  static uint32_t count(const json& s, const char* word, uint32_t otherwise, const std::string& at) {
    const auto it = s.find(word);
    if (it == s.end()) return otherwise;
    if (!it->is_number_integer() || it->get<int64_t>() < 0)
      refuse(at + "/" + word, std::string("'") + word + "' must be a non-negative integer");
    return uint32_t(std::min<int64_t>(it->get<int64_t>(), SchemaNode::kUnbounded - 1));
  }

  int32_t typed(const json& s, const std::string& type, const std::string& at) {
    SchemaNode n;
    if (type == "object") {
      n.kind = Kind::object;
      object(s, n, at);
    } else if (type == "array") {
      n.kind = Kind::array;
      if (const auto it = s.find("items"); it != s.end()) {
        if (it->is_array()) refuse(at + "/items", "'items' as a list (a tuple) is not supported");
        n.items = compile(*it, at + "/items");
      }
      n.min = count(s, "minItems", 0, at);
      n.max = count(s, "maxItems", SchemaNode::kUnbounded, at);
    } else if (type == "string") {
      n.kind = Kind::string;
      n.min = count(s, "minLength", 0, at);
      n.max = count(s, "maxLength", SchemaNode::kUnbounded, at);
    } else if (type == "number" || type == "integer") {
      n.kind = Kind::number;
      n.integer = type == "integer";
    } else if (type == "boolean" || type == "null") {
      n.kind = Kind::literals;
      n.texts = type == "null" ? std::vector<std::string>{"null"} : std::vector<std::string>{"false", "true"};
    } else {
      refuse(at + "/type", "unknown type '" + type + "'");
    }
    if (n.min > n.max) refuse(at, "its least count is above its greatest: no value is valid");
    return add(std::move(n));
  }

  void object(const json& s, SchemaNode& n, const std::string& at) {
    const auto props = s.find("properties");
    if (props != s.end() && !props->is_object()) refuse(at + "/properties", "'properties' must be an object");
    std::set<std::string> required;
    if (const auto it = s.find("required"); it != s.end()) {
      if (!it->is_array()) refuse(at + "/required", "'required' must be a list of names");
      for (const json& r : *it) {
        if (!r.is_string()) refuse(at + "/required", "'required' must be a list of names");
        if (props == s.end() || !props->contains(r.get<std::string>()))
          refuse(at + "/required", "'" + r.get<std::string>() + "' is required but not in 'properties'");
        required.insert(r.get<std::string>());
      }
    }
    if (props != s.end()) {
      for (const auto& [name, schema] : props->items()) {
        const int32_t node = compile(schema, at + "/properties/" + name);
        n.properties.push_back({json(name).dump(), node, required.count(name) > 0});
      }
    }
    const auto extra = s.find("additionalProperties");
    if (!n.properties.empty()) return;  // only the listed keys are written
    n.free_keys = extra == s.end() || *extra != json(false);
    if (n.free_keys && extra != s.end()) n.items = compile(*extra, at + "/additionalProperties");
  }

  int32_t literals(const json& s, const std::vector<std::string>& types, const std::string& at) {
    for (const auto& [key, value] : s.items())
      if (key != "enum" && key != "const" && key != "type" && !in(kAnnotations, key))
        refuse(at, "'" + key + "' beside 'enum' or 'const' is not supported");
    std::vector<json> values;
    if (const auto it = s.find("const"); it != s.end()) values.push_back(*it);
    if (const auto it = s.find("enum"); it != s.end()) {
      if (!it->is_array() || it->empty()) refuse(at + "/enum", "'enum' must be a non-empty list");
      if (s.contains("const")) refuse(at, "'enum' and 'const' together are not supported");
      values.assign(it->begin(), it->end());
    }
    SchemaNode n;
    n.kind = Kind::literals;
    for (const json& v : values)
      if (types.empty() || std::any_of(types.begin(), types.end(), [&](const std::string& t) { return is(v, t); }))
        n.texts.push_back(v.dump());
    if (n.texts.empty()) refuse(at, "no value of 'enum' or 'const' has the schema's type");
    std::sort(n.texts.begin(), n.texts.end());
    n.texts.erase(std::unique(n.texts.begin(), n.texts.end()), n.texts.end());
    return add(std::move(n));
  }

  static bool is(const json& v, const std::string& type) {
    if (type == "integer")
      return v.is_number_integer() || (v.is_number_float() && v.get<double>() == std::floor(v.get<double>()));
    return (type == "object" && v.is_object()) || (type == "array" && v.is_array()) ||
           (type == "string" && v.is_string()) || (type == "number" && v.is_number()) ||
           (type == "boolean" && v.is_boolean()) || (type == "null" && v.is_null());
  }

  // The bytes a value of node i may start with.
  std::bitset<256> first_bytes(int32_t i) const {
    const SchemaNode& n = out_.nodes_[size_t(i)];
    std::bitset<256> b;
    switch (n.kind) {
      case Kind::any:
        b.set();
        break;
      case Kind::object:
        b.set('{');
        break;
      case Kind::array:
        b.set('[');
        break;
      case Kind::string:
        b.set('"');
        break;
      case Kind::number:
        b.set('-');
        for (char d = '0'; d <= '9'; ++d) b.set(size_t(d));
        break;
      case Kind::literals:
        for (const std::string& t : n.texts) b.set(static_cast<unsigned char>(t[0]));
        break;
      case Kind::any_of:
        for (int32_t x : n.branches) b |= first_bytes(x);  // no alias cycles (check_cycles)
        break;
    }
    return b;
  }

  const json& doc_;
  JsonSchema& out_;
  std::map<std::string, int32_t> refs_;
  std::vector<std::pair<int32_t, std::string>> one_of_;  // oneOf's nodes, and where they stand
};

JsonSchema JsonSchema::compile(std::string_view text) {
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::exception& e) {  // malformed, or a number past a double's range
    fail("json_schema", "the schema is not valid JSON: ", e.what());
  }
  JsonSchema out;
  SchemaCompiler c(doc, out);
  out.root_ = c.compile(doc, "");
  c.check_cycles();
  c.check_one_of();
  // The reply ends when its value closes; a number or a string at the root has no such end
  // that the generation could stop at.
  std::vector<int32_t> todo = {out.root_};
  std::set<int32_t> seen;
  while (!todo.empty()) {
    const SchemaNode& n = out.node(todo.back());
    todo.pop_back();
    if (n.kind == SchemaNode::Kind::any_of) {
      for (int32_t b : n.branches)
        if (seen.insert(b).second) todo.push_back(b);
    } else if (n.kind != SchemaNode::Kind::object && n.kind != SchemaNode::Kind::array) {
      fail("json_schema", "the schema's root must be an object or an array (\"type\": \"object\"), so that the "
                          "reply ends when it closes");
    }
  }
  return out;
}

}  // namespace lmx::text
