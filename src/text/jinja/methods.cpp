// Methods of str, dict and list that templates call (message.content.strip(), d.items(), ...),
// and the global functions of HF's chat-template environment.
#include <utf8proc.h>

#include <ctime>
#include <unordered_map>

#include "core/error.h"
#include "text/jinja/builtins.h"
#include "text/jinja/strings.h"

namespace lmx::jinja {
namespace {

using Method = Value (*)(const Value& self, CallArgs& args);
using MethodTable = std::unordered_map<std::string_view, Method>;

std::optional<std::string> optional_string(const Value& v, std::string_view fn) {
  if (v.is_undefined() || v.is_none()) return std::nullopt;
  return string_arg(v, fn);
}

int64_t optional_int(const Value& v, int64_t fallback, std::string_view fn) {
  if (v.is_undefined() || v.is_none()) return fallback;
  return int_arg(v, fn);
}

Value string_list(std::vector<std::string> parts) {
  std::vector<Value> items;
  items.reserve(parts.size());
  for (auto& p : parts) items.push_back(Value::string(std::move(p)));
  return Value::list(std::move(items));
}

template <bool kLeft, bool kRight>
Value str_strip(const Value& self, CallArgs& args) {
  const auto a = bind_args(args, {"chars"}, "strip");
  return Value::string(
      strings::strip(self.as_string(), optional_string(a[0], "strip"), kLeft, kRight));
}

template <bool kFromRight>
Value str_split(const Value& self, CallArgs& args) {
  const auto a = bind_args(args, {"sep", "maxsplit"}, "split");
  const auto sep = optional_string(a[0], "split");
  if (sep && sep->empty()) fail("jinja", "split: empty separator");
  const int64_t maxsplit = optional_int(a[1], -1, "split");
  return string_list(kFromRight ? strings::rsplit(self.as_string(), sep, maxsplit)
                                : strings::split(self.as_string(), sep, maxsplit));
}

Value str_splitlines(const Value& self, CallArgs& args) {
  const auto a = bind_args(args, {"keepends"}, "splitlines");
  return string_list(strings::splitlines(self.as_string(), truthy(a[0])));
}

// startswith/endswith take a string or a tuple of strings.
template <bool kEnd>
Value str_affix(const Value& self, CallArgs& args) {
  const char* fn = kEnd ? "endswith" : "startswith";
  const auto a = bind_args(args, {kEnd ? "suffix" : "prefix"}, fn);
  const std::string& s = self.as_string();
  auto match = [&](const Value& v) {
    const std::string& affix = string_arg(v, fn);
    if (affix.size() > s.size()) return false;
    return kEnd ? s.compare(s.size() - affix.size(), affix.size(), affix) == 0
                : s.compare(0, affix.size(), affix) == 0;
  };
  if (a[0].is_list()) {
    for (const auto& v : a[0].items())
      if (match(v)) return Value::boolean(true);
    return Value::boolean(false);
  }
  return Value::boolean(match(a[0]));
}

Value str_replace(const Value& self, CallArgs& args) {
  const auto a = bind_args(args, {"old", "new", "count"}, "replace");
  std::string out =
      strings::replace(self.as_string(), string_arg(a[0], "replace"), string_arg(a[1], "replace"),
                       optional_int(a[2], -1, "replace"));
  check_string_size(out.size());
  return Value::string(std::move(out));
}

template <std::string (*kFn)(std::string_view)>
Value str_map(const Value& self, CallArgs& args) {
  bind_args(args, {}, "string method");
  return Value::string(kFn(self.as_string()));
}

template <int64_t (*kFn)(std::string_view, std::string_view)>
Value str_search(const Value& self, CallArgs& args) {
  const auto a = bind_args(args, {"sub"}, "find");
  return Value::integer(kFn(self.as_string(), string_arg(a[0], "find")));
}

Value str_join(const Value& self, CallArgs& args) {
  const auto a = bind_args(args, {"iterable"}, "join");
  std::string out;
  bool first = true;
  for (const auto& v : iterate(a[0])) {
    if (!first) out += self.as_string();
    first = false;
    out += string_arg(v, "join");
    check_string_size(out.size());
  }
  return Value::string(std::move(out));
}

// str.format with "{}", "{0}" and "{name}" fields; format specs are not supported.
Value str_format(const Value& self, CallArgs& args) {
  const std::string& fmt = self.as_string();
  std::string out;
  size_t auto_index = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    const char c = fmt[i];
    if ((c == '{' || c == '}') && i + 1 < fmt.size() && fmt[i + 1] == c) {
      out += c;
      ++i;
      continue;
    }
    if (c == '}') fail("jinja", "format: single '}' encountered");
    if (c != '{') {
      out += c;
      continue;
    }
    const size_t close = fmt.find('}', i);
    if (close == std::string::npos) fail("jinja", "format: single '{' encountered");
    const std::string field = fmt.substr(i + 1, close - i - 1);
    i = close;
    const Value* v = nullptr;
    if (field.empty() || std::isdigit(static_cast<unsigned char>(field[0]))) {
      size_t index = auto_index++;
      if (!field.empty()) {
        index = 0;
        for (char d : field) {
          if (!std::isdigit(static_cast<unsigned char>(d)) || index > 1000)
            fail("jinja", "format: unsupported field '", field, "'");
          index = index * 10 + static_cast<size_t>(d - '0');
        }
      }
      if (index >= args.positional.size()) fail("jinja", "format: index out of range");
      v = &args.positional[index];
    } else {
      for (const auto& [k, val] : args.keyword)
        if (k == field) v = &val;
      if (!v) fail("jinja", "format: missing argument '", field, "'");
    }
    out += to_str(*v);
    check_string_size(out.size());
  }
  return Value::string(std::move(out));
}

template <bool (*kPred)(char32_t)>
Value str_is(const Value& self, CallArgs& args) {
  bind_args(args, {}, "string test");
  const std::u32string cps = strings::decode(self.as_string());
  if (cps.empty()) return Value::boolean(false);
  for (char32_t c : cps)
    if (!kPred(c)) return Value::boolean(false);
  return Value::boolean(true);
}

utf8proc_category_t category(char32_t c) {
  if (c >= 0xD800 && c <= 0xDFFF) return UTF8PROC_CATEGORY_CS;
  return utf8proc_category(static_cast<utf8proc_int32_t>(c));
}
bool is_digit_cp(char32_t c) { return category(c) == UTF8PROC_CATEGORY_ND; }
bool is_alpha_cp(char32_t c) {
  const auto k = category(c);
  return k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
}
bool is_alnum_cp(char32_t c) { return is_alpha_cp(c) || is_digit_cp(c); }

const MethodTable& string_methods() {
  static const MethodTable table = {
      {"strip", str_strip<true, true>},
      {"lstrip", str_strip<true, false>},
      {"rstrip", str_strip<false, true>},
      {"split", str_split<false>},
      {"rsplit", str_split<true>},
      {"splitlines", str_splitlines},
      {"startswith", str_affix<false>},
      {"endswith", str_affix<true>},
      {"replace", str_replace},
      {"upper", str_map<strings::upper>},
      {"lower", str_map<strings::lower>},
      {"title", str_map<strings::title>},
      {"capitalize", str_map<strings::capitalize>},
      {"find", str_search<strings::find>},
      {"rfind", str_search<strings::rfind>},
      {"count", str_search<strings::count>},
      {"join", str_join},
      {"format", str_format},
      {"isdigit", str_is<is_digit_cp>},
      {"isalpha", str_is<is_alpha_cp>},
      {"isalnum", str_is<is_alnum_cp>},
      {"isspace", str_is<strings::is_space>},
  };
  return table;
}

Value dict_items(const Value& self, CallArgs& args) {
  bind_args(args, {}, "items");
  std::vector<Value> out;
  for (const auto& [k, v] : self.dict_data().items) out.push_back(Value::tuple({k, v}));
  return Value::list(std::move(out));
}

template <bool kKeys>
Value dict_keys_or_values(const Value& self, CallArgs& args) {
  bind_args(args, {}, kKeys ? "keys" : "values");
  std::vector<Value> out;
  for (const auto& [k, v] : self.dict_data().items) out.push_back(kKeys ? k : v);
  return Value::list(std::move(out));
}

Value dict_get(const Value& self, CallArgs& args) {
  const auto a = bind_args(args, {"key", "default"}, "get");
  if (const Value* v = self.dict_data().find(a[0])) return *v;
  return a[1].is_undefined() ? Value::none() : a[1];
}

const MethodTable& dict_methods() {
  static const MethodTable table = {
      {"items", dict_items},
      {"keys", dict_keys_or_values<true>},
      {"values", dict_keys_or_values<false>},
      {"get", dict_get},
  };
  return table;
}

Value list_append(const Value& self, CallArgs& args) {
  const auto a = bind_args(args, {"object"}, "append");
  if (self.is_tuple()) fail("jinja", "'tuple' object has no attribute 'append'");
  if (self.items().size() >= kMaxListItems)
    fail("jinja", "list longer than ", kMaxListItems, " items");
  check_no_cycle(self, a[0]);
  self.list_data().items.push_back(a[0]);
  return Value::none();
}

Value list_count(const Value& self, CallArgs& args) {
  const auto a = bind_args(args, {"value"}, "count");
  int64_t n = 0;
  for (const auto& v : self.items()) n += equals(v, a[0]) ? 1 : 0;
  return Value::integer(n);
}

Value list_index(const Value& self, CallArgs& args) {
  const auto a = bind_args(args, {"value"}, "index");
  const auto& items = self.items();
  for (size_t i = 0; i < items.size(); ++i)
    if (equals(items[i], a[0])) return Value::integer(static_cast<int64_t>(i));
  fail("jinja", repr(a[0]), " is not in list");
}

const MethodTable& list_methods() {
  static const MethodTable table = {
      {"append", list_append},
      {"count", list_count},
      {"index", list_index},
  };
  return table;
}

const MethodTable* methods_of(const Value& obj) {
  switch (obj.kind()) {
    case Value::Kind::kString: return &string_methods();
    case Value::Kind::kDict: return &dict_methods();
    case Value::Kind::kList: return &list_methods();
    default: return nullptr;
  }
}

Value global_raise_exception(const Value&, CallArgs& args) {
  const auto a = bind_args(args, {"message"}, "raise_exception");
  fail("jinja", to_str(a[0]));
}

Value global_strftime_now(const Value&, CallArgs& args) {
  const auto a = bind_args(args, {"format"}, "strftime_now");
  const std::string& fmt = string_arg(a[0], "strftime_now");
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  // strftime returns 0 both for "buffer too small" and for an empty result; grow a few times.
  for (size_t size = 256; size <= (size_t{1} << 20); size *= 16) {
    std::string buf(size + fmt.size() * 8, '\0');
    const size_t n = std::strftime(buf.data(), buf.size(), fmt.c_str(), &local);
    if (n > 0 || fmt.empty()) {
      buf.resize(n);
      return Value::string(std::move(buf));
    }
  }
  return Value::string("");
}

Value global_namespace(const Value&, CallArgs& args) {
  Value ns = Value::make_namespace();
  for (const auto& init : args.positional) {
    if (!init.is_dict()) fail("jinja", "namespace() takes dicts and keyword arguments");
    for (const auto& [k, v] : init.dict_data().items) ns.dict_data().set(k, v);
  }
  for (const auto& [k, v] : args.keyword) ns.dict_data().set(Value::string(k), v);
  return ns;
}

Value global_dict(const Value&, CallArgs& args) {
  if (!args.positional.empty()) fail("jinja", "dict() takes only keyword arguments");
  Value d = Value::dict();
  for (const auto& [k, v] : args.keyword) d.dict_data().set(Value::string(k), v);
  return d;
}

Value global_range(const Value&, CallArgs& args) {
  if (!args.keyword.empty()) fail("jinja", "range() takes no keyword arguments");
  const auto& p = args.positional;
  if (p.empty() || p.size() > 3) fail("jinja", "range() takes 1 to 3 arguments");
  int64_t start = 0, stop = 0, step = 1;
  if (p.size() == 1) {
    stop = int_arg(p[0], "range");
  } else {
    start = int_arg(p[0], "range");
    stop = int_arg(p[1], "range");
    if (p.size() == 3) step = int_arg(p[2], "range");
  }
  if (step == 0) fail("jinja", "range() arg 3 must not be zero");
  // Count first (in 128 bits: stop - start can overflow int64) so that a huge range fails fast.
  const __int128 span =
      step > 0 ? static_cast<__int128>(stop) - start : static_cast<__int128>(start) - stop;
  const __int128 count =
      span <= 0 ? 0 : (span - 1) / (step > 0 ? step : -static_cast<__int128>(step)) + 1;
  if (count > static_cast<__int128>(kMaxListItems))
    fail("jinja", "range longer than ", kMaxListItems, " items");
  std::vector<Value> out;
  out.reserve(static_cast<size_t>(count));
  for (__int128 k = 0; k < count; ++k)
    out.push_back(Value::integer(static_cast<int64_t>(start + k * step)));
  return Value::list(std::move(out));
}

}  // namespace

bool has_method(const Value& obj, const std::string& name) {
  const MethodTable* table = methods_of(obj);
  return table && table->count(name) > 0;
}

std::optional<Value> call_method(const Value& obj, const std::string& name, CallArgs& args) {
  const MethodTable* table = methods_of(obj);
  if (!table) return std::nullopt;
  auto it = table->find(name);
  if (it == table->end()) return std::nullopt;
  return it->second(obj, args);
}

std::vector<std::pair<std::string, Value>> make_globals() {
  return {
      {"raise_exception", Value::function("raise_exception", global_raise_exception)},
      {"strftime_now", Value::function("strftime_now", global_strftime_now)},
      {"namespace", Value::function("namespace", global_namespace)},
      {"dict", Value::function("dict", global_dict)},
      {"range", Value::function("range", global_range)},
  };
}

}  // namespace lmx::jinja
