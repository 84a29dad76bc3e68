#include "text/jinja/value.h"

#include <utf8proc.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "text/jinja/strings.h"

namespace lmx::jinja {
namespace {

// Printing, comparing and serialising recurse into values; this bounds that recursion.
constexpr int kMaxValueDepth = 256;

void check_depth(int depth) {
  if (depth > kMaxValueDepth) fail("jinja", "value nested more than ", kMaxValueDepth, " deep");
}

bool is_container(const Value& v) {
  return v.is_list() || v.is_dict() || v.is_namespace() || v.is_function();
}

// Destroys uniquely owned nested containers one at a time instead of recursively, so that a
// deeply nested value built by a template cannot overflow the stack when it goes away.
void release_all(std::vector<Value>& stack) {
  while (!stack.empty()) {
    Value v = std::move(stack.back());
    stack.pop_back();
    release_children(v, stack);
  }
}

void append_hex(std::string& out, const char* prefix, uint32_t value, int digits) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%0*x", digits, value);
  out += prefix;
  out += buf;
}

bool is_printable(char32_t c) {
  if (c == ' ') return true;
  if (c >= 0xD800 && c <= 0xDFFF) return false;
  if (c < 0x20 || c == 0x7F) return false;
  if (c < 0x7F) return true;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
    case UTF8PROC_CATEGORY_ZS: return false;
    default: return true;
  }
}

std::string repr_string(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const bool has_double = s.find('"') != std::string::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (char32_t c : strings::decode(s)) {
    if (c == static_cast<char32_t>(quote) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (is_printable(c)) {
      strings::append_utf8(out, c);
    } else if (c < 0x100) {
      append_hex(out, "\\x", c, 2);
    } else if (c < 0x10000) {
      append_hex(out, "\\u", c, 4);
    } else {
      append_hex(out, "\\U", c, 8);
    }
  }
  out += quote;
  return out;
}

void repr_into(std::string& out, const Value& v, int depth);

void repr_dict_items(std::string& out, const DictData& d, int depth) {
  out += '{';
  bool first = true;
  for (const auto& [k, val] : d.items) {
    if (!first) out += ", ";
    first = false;
    repr_into(out, k, depth + 1);
    out += ": ";
    repr_into(out, val, depth + 1);
  }
  out += '}';
}

void repr_into(std::string& out, const Value& v, int depth) {
  check_depth(depth);
  switch (v.kind()) {
    case Value::Kind::kString: out += repr_string(v.as_string()); return;
    case Value::Kind::kList: {
      const bool tuple = v.is_tuple();
      out += tuple ? '(' : '[';
      const auto& items = v.items();
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += ", ";
        repr_into(out, items[i], depth + 1);
      }
      if (tuple && items.size() == 1) out += ',';
      out += tuple ? ')' : ']';
      return;
    }
    case Value::Kind::kDict: repr_dict_items(out, v.dict_data(), depth); return;
    case Value::Kind::kNamespace:
      out += "<Namespace ";
      repr_dict_items(out, v.dict_data(), depth);
      out += '>';
      return;
    case Value::Kind::kUndefined: return;
    default: out += to_str(v); return;
  }
}

bool equals_at(const Value& a, const Value& b, int depth) {
  check_depth(depth);
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) return a.to_double() == b.to_double();
    return a.to_int() == b.to_int();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone: return true;
    case Value::Kind::kString: return a.as_string() == b.as_string();
    case Value::Kind::kList: {
      if (a.is_tuple() != b.is_tuple()) return false;
      const auto &x = a.items(), &y = b.items();
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i)
        if (!equals_at(x[i], y[i], depth + 1)) return false;
      return true;
    }
    case Value::Kind::kDict: {
      const auto &x = a.dict_data(), &y = b.dict_data();
      if (x.items.size() != y.items.size()) return false;
      for (const auto& [k, val] : x.items) {
        const Value* other = y.find(k);
        if (!other || !equals_at(val, *other, depth + 1)) return false;
      }
      return true;
    }
    default: return a.container_id() == b.container_id();
  }
}

int compare_at(const Value& a, const Value& b, int depth) {
  check_depth(depth);
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) {
      const double x = a.to_double(), y = b.to_double();
      return x < y ? -1 : (y < x ? 1 : 0);
    }
    const int64_t x = a.to_int(), y = b.to_int();
    return x < y ? -1 : (y < x ? 1 : 0);
  }
  if (a.is_string() && b.is_string()) {
    // Byte order of UTF-8 is code point order, which is what Python compares.
    const int c = a.as_string().compare(b.as_string());
    return c < 0 ? -1 : (c > 0 ? 1 : 0);
  }
  if (a.is_list() && b.is_list()) {
    const auto &x = a.items(), &y = b.items();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (!equals_at(x[i], y[i], depth + 1)) return compare_at(x[i], y[i], depth + 1);
    }
    return x.size() < y.size() ? -1 : (x.size() > y.size() ? 1 : 0);
  }
  fail("jinja", "'<' not supported between instances of '", type_name(a), "' and '", type_name(b),
       "'");
}

bool contains_container(const Value& haystack, const void* target, int depth) {
  check_depth(depth);
  if (!is_container(haystack)) return false;
  if (haystack.container_id() == target) return true;
  switch (haystack.kind()) {
    case Value::Kind::kList:
      for (const auto& item : haystack.items())
        if (contains_container(item, target, depth + 1)) return true;
      return false;
    case Value::Kind::kDict:
    case Value::Kind::kNamespace:
      for (const auto& [k, v] : haystack.dict_data().items)
        if (contains_container(v, target, depth + 1)) return true;
      return false;
    case Value::Kind::kFunction:
      return contains_container(haystack.function_data().self, target, depth + 1);
    default: return false;
  }
}

void json_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  for (char32_t c : strings::decode(s)) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          append_hex(out, "\\u", c, 4);
        } else if (ensure_ascii && c >= 0x80) {
          if (c >= 0x10000) {
            const char32_t v = c - 0x10000;
            append_hex(out, "\\u", 0xD800 + (v >> 10), 4);
            append_hex(out, "\\u", 0xDC00 + (v & 0x3FF), 4);
          } else {
            append_hex(out, "\\u", c, 4);
          }
        } else {
          strings::append_utf8(out, c);
        }
    }
  }
  out += '"';
}

std::string json_float(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  return format_float(d);
}

// json.dumps turns non-string keys into strings; other key types are a TypeError there.
std::string json_key(const Value& k) {
  switch (k.kind()) {
    case Value::Kind::kString: return k.as_string();
    case Value::Kind::kBool: return k.as_bool() ? "true" : "false";
    case Value::Kind::kNone: return "null";
    case Value::Kind::kInt: return std::to_string(k.as_int());
    case Value::Kind::kFloat: return json_float(k.as_float());
    default: fail("jinja", "keys must be str, int, float, bool or None, not ", type_name(k));
  }
}

struct JsonWriter {
  const JsonOptions& opt;
  std::string indent_unit;
  bool pretty;
  std::string item_sep, key_sep;
  std::string out;

  void newline(int level) {
    out += '\n';
    for (int i = 0; i < level; ++i) out += indent_unit;
  }

  void write(const Value& v, int level) {
    check_depth(level);
    switch (v.kind()) {
      case Value::Kind::kNone: out += "null"; return;
      case Value::Kind::kBool: out += v.as_bool() ? "true" : "false"; return;
      case Value::Kind::kInt: out += std::to_string(v.as_int()); return;
      case Value::Kind::kFloat: out += json_float(v.as_float()); return;
      case Value::Kind::kString: json_string(out, v.as_string(), opt.ensure_ascii); return;
      case Value::Kind::kList: {
        const auto& items = v.items();
        if (items.empty()) {
          out += "[]";
          return;
        }
        out += '[';
        for (size_t i = 0; i < items.size(); ++i) {
          if (i) out += item_sep;
          if (pretty) newline(level + 1);
          write(items[i], level + 1);
        }
        if (pretty) newline(level);
        out += ']';
        return;
      }
      case Value::Kind::kDict: {
        std::vector<std::pair<std::string, const Value*>> entries;
        for (const auto& [k, val] : v.dict_data().items) entries.emplace_back(json_key(k), &val);
        if (opt.sort_keys)
          std::stable_sort(entries.begin(), entries.end(),
                           [](const auto& a, const auto& b) { return a.first < b.first; });
        if (entries.empty()) {
          out += "{}";
          return;
        }
        out += '{';
        for (size_t i = 0; i < entries.size(); ++i) {
          if (i) out += item_sep;
          if (pretty) newline(level + 1);
          json_string(out, entries[i].first, opt.ensure_ascii);
          out += key_sep;
          write(*entries[i].second, level + 1);
        }
        if (pretty) newline(level);
        out += '}';
        return;
      }
      default: fail("jinja", "Object of type ", type_name(v), " is not JSON serializable");
    }
  }
};

Value from_json_at(const nlohmann::ordered_json& j, int depth) {
  check_depth(depth);
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return Value::none();
    case nlohmann::ordered_json::value_t::boolean: return Value::boolean(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value::integer(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      const auto u = j.get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return Value::number(static_cast<double>(u));
      return Value::integer(static_cast<int64_t>(u));
    }
    case nlohmann::ordered_json::value_t::number_float: return Value::number(j.get<double>());
    case nlohmann::ordered_json::value_t::string: return Value::string(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      std::vector<Value> items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(from_json_at(e, depth + 1));
      return Value::list(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      Value d = Value::dict();
      auto& data = d.dict_data();
      data.items.reserve(j.size());
      // JSON object keys are unique, so append without a lookup.
      for (const auto& [k, e] : j.items())
        data.items.emplace_back(Value::string(k), from_json_at(e, depth + 1));
      return d;
    }
    default: return Value::none();  // binary and discarded values do not occur in JSON text
  }
}

}  // namespace

void release_children(Value& v, std::vector<Value>& out) {
  auto take = [&out](Value& child) {
    if (is_container(child)) out.push_back(std::move(child));
  };
  if (auto* l = std::get_if<std::shared_ptr<ListData>>(&v.data_)) {
    if (l->use_count() == 1)
      for (auto& item : (*l)->items) take(item);
  } else if (auto* d = std::get_if<std::shared_ptr<DictData>>(&v.data_)) {
    if (d->use_count() == 1)
      for (auto& [k, val] : (*d)->items) take(val);
  } else if (auto* n = std::get_if<std::shared_ptr<NamespaceData>>(&v.data_)) {
    if (n->use_count() == 1)
      for (auto& [k, val] : (*n)->items) take(val);
  } else if (auto* f = std::get_if<std::shared_ptr<Function>>(&v.data_)) {
    if (f->use_count() == 1) take((*f)->self);
  }
}

ListData::~ListData() {
  std::vector<Value> stack;
  for (auto& item : items)
    if (is_container(item)) stack.push_back(std::move(item));
  release_all(stack);
}

DictData::~DictData() {
  std::vector<Value> stack;
  for (auto& [k, v] : items)
    if (is_container(v)) stack.push_back(std::move(v));
  release_all(stack);
}

const Value* DictData::find(const Value& key) const {
  for (const auto& [k, v] : items)
    if (equals(k, key)) return &v;
  return nullptr;
}

Value* DictData::find(const Value& key) {
  return const_cast<Value*>(static_cast<const DictData*>(this)->find(key));
}

void DictData::set(Value key, Value value) {
  if (Value* slot = find(key)) {
    *slot = std::move(value);
  } else {
    items.emplace_back(std::move(key), std::move(value));
  }
}

Value Value::none() {
  Value v;
  v.data_ = nullptr;
  return v;
}
Value Value::boolean(bool b) {
  Value v;
  v.data_ = b;
  return v;
}
Value Value::integer(int64_t i) {
  Value v;
  v.data_ = i;
  return v;
}
Value Value::number(double d) {
  Value v;
  v.data_ = d;
  return v;
}
Value Value::string(std::string s) {
  Value v;
  v.data_ = std::move(s);
  return v;
}
Value Value::list(std::vector<Value> items) {
  Value v;
  auto data = std::make_shared<ListData>();
  data->items = std::move(items);
  v.data_ = std::move(data);
  return v;
}
Value Value::tuple(std::vector<Value> items) {
  Value v = list(std::move(items));
  v.list_data().tuple = true;
  return v;
}
Value Value::dict() {
  Value v;
  v.data_ = std::make_shared<DictData>();
  return v;
}
Value Value::make_namespace() {
  Value v;
  v.data_ = std::make_shared<NamespaceData>();
  return v;
}
Value Value::function(std::string name, std::function<Value(const Value& self, CallArgs&)> call,
                      Value self) {
  Value v;
  auto f = std::make_shared<Function>();
  f->name = std::move(name);
  f->call = std::move(call);
  f->self = std::move(self);
  v.data_ = std::move(f);
  return v;
}

double Value::to_double() const {
  if (is_float()) return as_float();
  return static_cast<double>(to_int());
}
bool Value::is_tuple() const { return is_list() && list_data().tuple; }
ListData& Value::list_data() const { return *std::get<std::shared_ptr<ListData>>(data_); }
const std::vector<Value>& Value::items() const { return list_data().items; }
const Function& Value::function_data() const { return *std::get<std::shared_ptr<Function>>(data_); }
DictData& Value::dict_data() const {
  if (is_namespace()) return *std::get<std::shared_ptr<NamespaceData>>(data_);
  return *std::get<std::shared_ptr<DictData>>(data_);
}
const void* Value::container_id() const {
  switch (kind()) {
    case Kind::kList: return std::get<std::shared_ptr<ListData>>(data_).get();
    case Kind::kDict: return std::get<std::shared_ptr<DictData>>(data_).get();
    case Kind::kNamespace: return std::get<std::shared_ptr<NamespaceData>>(data_).get();
    case Kind::kFunction: return std::get<std::shared_ptr<Function>>(data_).get();
    default: return nullptr;
  }
}

bool truthy(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone: return false;
    case Value::Kind::kBool: return v.as_bool();
    case Value::Kind::kInt: return v.as_int() != 0;
    case Value::Kind::kFloat: return v.as_float() != 0.0;
    case Value::Kind::kString: return !v.as_string().empty();
    case Value::Kind::kList: return !v.items().empty();
    case Value::Kind::kDict: return !v.dict_data().items.empty();
    default: return true;
  }
}

std::string type_name(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined: return "Undefined";
    case Value::Kind::kNone: return "NoneType";
    case Value::Kind::kBool: return "bool";
    case Value::Kind::kInt: return "int";
    case Value::Kind::kFloat: return "float";
    case Value::Kind::kString: return "str";
    case Value::Kind::kList: return v.is_tuple() ? "tuple" : "list";
    case Value::Kind::kDict: return "dict";
    case Value::Kind::kNamespace: return "Namespace";
    case Value::Kind::kFunction: return "function";
  }
  return "object";
}

std::string format_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  // Shortest round-trip digits in scientific form, then laid out the way Python's repr does:
  // positional for exponents in [-4, 16), scientific otherwise.
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  const size_t e = sci.find('e');
  std::string mant = sci.substr(0, e);
  const int exp = std::stoi(sci.substr(e + 1));
  const bool negative = !mant.empty() && mant[0] == '-';
  if (negative) mant.erase(0, 1);
  std::string digits;
  for (char c : mant)
    if (c != '.') digits += c;
  std::string out = negative ? "-" : "";
  if (exp >= -4 && exp < 16) {
    if (exp < 0) {
      out += "0." + std::string(-exp - 1, '0') + digits;
    } else if (static_cast<int>(digits.size()) <= exp + 1) {
      out += digits + std::string(exp + 1 - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, exp + 1) + "." + digits.substr(exp + 1);
    }
  } else {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char ebuf[16];
    std::snprintf(ebuf, sizeof(ebuf), "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    out += ebuf;
  }
  return out;
}

std::string to_str(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined: return "";
    case Value::Kind::kNone: return "None";
    case Value::Kind::kBool: return v.as_bool() ? "True" : "False";
    case Value::Kind::kInt: return std::to_string(v.as_int());
    case Value::Kind::kFloat: return format_float(v.as_float());
    case Value::Kind::kString: return v.as_string();
    case Value::Kind::kFunction: return "<function " + v.function_data().name + ">";
    default: {
      std::string out;
      repr_into(out, v, 0);
      return out;
    }
  }
}

std::string repr(const Value& v) {
  std::string out;
  repr_into(out, v, 0);
  return out;
}

bool equals(const Value& a, const Value& b) { return equals_at(a, b, 0); }

int compare(const Value& a, const Value& b) { return compare_at(a, b, 0); }

std::vector<Value> iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined: return {};
    case Value::Kind::kList: return v.items();
    case Value::Kind::kDict:
    case Value::Kind::kNamespace: {
      std::vector<Value> keys;
      for (const auto& [k, val] : v.dict_data().items) keys.push_back(k);
      return keys;
    }
    case Value::Kind::kString: {
      std::vector<Value> chars;
      for (char32_t c : strings::decode(v.as_string())) {
        std::string s;
        strings::append_utf8(s, c);
        chars.push_back(Value::string(std::move(s)));
      }
      return chars;
    }
    default: fail("jinja", "'", type_name(v), "' object is not iterable");
  }
}

int64_t length(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined: return 0;
    case Value::Kind::kString: return strings::code_point_count(v.as_string());
    case Value::Kind::kList: return static_cast<int64_t>(v.items().size());
    case Value::Kind::kDict:
    case Value::Kind::kNamespace: return static_cast<int64_t>(v.dict_data().items.size());
    default: fail("jinja", "object of type '", type_name(v), "' has no len()");
  }
}

void check_no_cycle(const Value& container, const Value& value) {
  if (contains_container(value, container.container_id(), 0))
    fail("jinja", "cannot store a ", type_name(container), " inside itself");
}

std::string to_json(const Value& v, const JsonOptions& options) {
  JsonWriter w{options,
               options.indent_string,
               options.indent >= 0 || !options.indent_string.empty(),
               options.item_separator,
               options.key_separator,
               {}};
  if (options.indent > 0) w.indent_unit = std::string(options.indent, ' ');
  if (w.item_sep.empty()) w.item_sep = w.pretty ? "," : ", ";
  if (w.key_sep.empty()) w.key_sep = ": ";
  w.write(v, 0);
  return std::move(w.out);
}

Value from_json(const nlohmann::ordered_json& json) { return from_json_at(json, 0); }

}  // namespace lmx::jinja
