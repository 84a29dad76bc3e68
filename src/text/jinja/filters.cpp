// Jinja's built-in filters and tests, with HF's tojson override.
#include <algorithm>
#include <cfenv>
#include <cmath>
#include <cstdlib>
#include <unordered_map>

#include "core/error.h"
#include "text/jinja/builtins.h"
#include "text/jinja/strings.h"

namespace lmx::jinja {
namespace {

using Filter = Value (*)(const Value& input, CallArgs& args);
using Test = bool (*)(const Value& v, CallArgs& args);

bool flag(const Value& v) { return !v.is_undefined() && truthy(v); }

// Jinja's make_attrgetter: "a.b.0" walks items (and attributes) one part at a time.
Value attr_path(const Value& v, const Value& attribute) {
  if (attribute.is_int()) return get_item(v, attribute);
  Value cur = v;
  for (const auto& part :
       strings::split(string_arg(attribute, "attribute"), std::string("."), -1)) {
    const bool digits =
        !part.empty() && part.size() < 18 &&
        std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    cur = digits ? get_item(cur, Value::integer(std::stoll(part)))
                 : get_item(cur, Value::string(part));
  }
  return cur;
}

// Sort key for Jinja's case-insensitive comparisons: strings are lowered.
Value fold(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value::string(strings::lower(v.as_string()));
  return v;
}

CallArgs rest_args(const CallArgs& args, size_t skip) {
  CallArgs out;
  for (size_t i = skip; i < args.positional.size(); ++i)
    out.positional.push_back(args.positional[i]);
  out.keyword = args.keyword;
  return out;
}

// select/reject/selectattr/rejectattr share this: keep items whose test result equals `keep`.
Value select_impl(const Value& input, CallArgs& args, bool keep, bool by_attribute) {
  size_t next = 0;
  Value attribute;
  if (by_attribute) {
    if (args.positional.empty()) fail("jinja", "selectattr/rejectattr need an attribute");
    attribute = args.positional[next++];
  }
  std::string test;
  if (next < args.positional.size()) test = string_arg(args.positional[next++], "select");
  std::vector<Value> out;
  for (const auto& item : iterate(input)) {
    const Value subject = by_attribute ? attr_path(item, attribute) : item;
    bool ok;
    if (test.empty()) {
      ok = truthy(subject);
    } else {
      CallArgs test_args = rest_args(args, next);
      ok = apply_test(test, subject, test_args);
    }
    if (ok == keep) out.push_back(item);
  }
  return Value::list(std::move(out));
}

Value f_select(const Value& in, CallArgs& a) { return select_impl(in, a, true, false); }
Value f_reject(const Value& in, CallArgs& a) { return select_impl(in, a, false, false); }
Value f_selectattr(const Value& in, CallArgs& a) { return select_impl(in, a, true, true); }
Value f_rejectattr(const Value& in, CallArgs& a) { return select_impl(in, a, false, true); }

Value f_map(const Value& input, CallArgs& args) {
  std::vector<Value> out;
  Value attribute, fallback;
  for (const auto& [k, v] : args.keyword) {
    if (k == "attribute")
      attribute = v;
    else if (k == "default")
      fallback = v;
  }
  if (!attribute.is_undefined()) {
    for (const auto& item : iterate(input)) {
      Value v = attr_path(item, attribute);
      out.push_back(v.is_undefined() && !fallback.is_undefined() ? fallback : v);
    }
    return Value::list(std::move(out));
  }
  if (args.positional.empty()) fail("jinja", "map needs a filter name or attribute=");
  const std::string name = string_arg(args.positional[0], "map");
  for (const auto& item : iterate(input)) {
    CallArgs filter_args = rest_args(args, 1);
    out.push_back(apply_filter(name, item, filter_args));
  }
  return Value::list(std::move(out));
}

Value f_trim(const Value& input, CallArgs& args) {
  const auto a = bind_args(args, {"chars"}, "trim");
  std::optional<std::string> chars;
  if (!a[0].is_undefined() && !a[0].is_none()) chars = string_arg(a[0], "trim");
  return Value::string(strings::strip(to_str(input), chars, true, true));
}

Value f_length(const Value& input, CallArgs& args) {
  bind_args(args, {}, "length");
  return Value::integer(length(input));
}

Value f_tojson(const Value& input, CallArgs& args) {
  const auto a = bind_args(args, {"ensure_ascii", "indent", "separators", "sort_keys"}, "tojson");
  JsonOptions opt;
  opt.ensure_ascii = flag(a[0]);
  if (a[1].is_string()) {
    opt.indent_string = a[1].as_string();
    opt.indent = 0;
  } else if (!a[1].is_undefined() && !a[1].is_none()) {
    opt.indent = static_cast<int>(std::clamp<int64_t>(int_arg(a[1], "tojson"), 0, 64));
  }
  if (a[2].is_list()) {
    if (a[2].items().size() != 2) fail("jinja", "tojson: separators must be a pair");
    opt.item_separator = string_arg(a[2].items()[0], "tojson");
    opt.key_separator = string_arg(a[2].items()[1], "tojson");
  }
  opt.sort_keys = flag(a[3]);
  return Value::string(to_json(input, opt));
}

Value f_items(const Value& input, CallArgs& args) {
  bind_args(args, {}, "items");
  if (input.is_undefined()) return Value::list();
  if (!input.is_dict()) fail("jinja", "items: expected a mapping, got ", type_name(input));
  std::vector<Value> out;
  for (const auto& [k, v] : input.dict_data().items) out.push_back(Value::tuple({k, v}));
  return Value::list(std::move(out));
}

Value f_join(const Value& input, CallArgs& args) {
  const auto a = bind_args(args, {"d", "attribute"}, "join");
  const std::string sep = a[0].is_undefined() ? "" : to_str(a[0]);
  std::string out;
  bool first = true;
  for (const auto& item : iterate(input)) {
    if (!first) out += sep;
    first = false;
    out += to_str(a[1].is_undefined() ? item : attr_path(item, a[1]));
    check_string_size(out.size());
  }
  return Value::string(std::move(out));
}

Value f_string(const Value& input, CallArgs& args) {
  bind_args(args, {}, "string");
  return Value::string(to_str(input));
}

template <std::string (*kFn)(std::string_view)>
Value f_case(const Value& input, CallArgs& args) {
  bind_args(args, {}, "case filter");
  return Value::string(kFn(to_str(input)));
}

// Jinja's title filter upper-cases the first letter after "-", whitespace or an opening
// bracket, unlike str.title() which also restarts after apostrophes.
std::string jinja_title(std::string_view s) {
  std::string out;
  bool word_start = true;
  for (char32_t c : strings::decode(s)) {
    const bool boundary =
        c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || strings::is_space(c);
    std::string one;
    strings::append_utf8(one, c);
    out += boundary ? one : (word_start ? strings::upper(one) : strings::lower(one));
    word_start = boundary;
  }
  return out;
}

Value f_first(const Value& input, CallArgs& args) {
  bind_args(args, {}, "first");
  if (input.is_list()) return input.items().empty() ? Value() : input.items().front();
  auto items = iterate(input);
  return items.empty() ? Value() : items.front();
}

Value f_last(const Value& input, CallArgs& args) {
  bind_args(args, {}, "last");
  if (input.is_list()) return input.items().empty() ? Value() : input.items().back();
  auto items = iterate(input);
  return items.empty() ? Value() : items.back();
}

Value f_default(const Value& input, CallArgs& args) {
  const auto a = bind_args(args, {"default_value", "boolean"}, "default");
  const bool use_default = input.is_undefined() || (flag(a[1]) && !truthy(input));
  if (!use_default) return input;
  return a[0].is_undefined() ? Value::string("") : a[0];
}

Value f_list(const Value& input, CallArgs& args) {
  bind_args(args, {}, "list");
  return Value::list(iterate(input));
}

Value f_replace(const Value& input, CallArgs& args) {
  const auto a = bind_args(args, {"old", "new", "count"}, "replace");
  const int64_t count = a[2].is_undefined() || a[2].is_none() ? -1 : int_arg(a[2], "replace");
  std::string out = strings::replace(to_str(input), to_str(a[0]), to_str(a[1]), count);
  check_string_size(out.size());
  return Value::string(std::move(out));
}

std::optional<double> parse_float(const std::string& text) {
  const std::string s = strings::strip(text, std::nullopt, true, true);
  if (s.empty()) return std::nullopt;
  char* end = nullptr;
  const double d = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size()) return std::nullopt;
  return d;
}

std::optional<int64_t> parse_int(const std::string& text, int base) {
  std::string s;
  for (char c : strings::strip(text, std::nullopt, true, true))
    if (c != '_') s += c;
  if (s.empty() || base < 2 || base > 36) return std::nullopt;
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, base);
  if (errno != 0 || end != s.c_str() + s.size()) return std::nullopt;
  return static_cast<int64_t>(v);
}

Value f_int(const Value& input, CallArgs& args) {
  const auto a = bind_args(args, {"default", "base"}, "int");
  const Value fallback = a[0].is_undefined() ? Value::integer(0) : a[0];
  if (input.is_int() || input.is_bool()) return Value::integer(input.to_int());
  std::optional<double> d;
  if (input.is_float()) d = input.as_float();
  if (input.is_string()) {
    const int base = a[1].is_undefined()
                         ? 10
                         : static_cast<int>(std::clamp<int64_t>(int_arg(a[1], "int"), 0, 36));
    if (auto i = parse_int(input.as_string(), base)) return Value::integer(*i);
    d = parse_float(input.as_string());
  }
  if (d && std::isfinite(*d) && *d > -9.2e18 && *d < 9.2e18)
    return Value::integer(float_to_int(*d));
  return fallback;
}

Value f_float(const Value& input, CallArgs& args) {
  const auto a = bind_args(args, {"default"}, "float");
  if (input.is_number()) return Value::number(input.to_double());
  if (input.is_string())
    if (auto d = parse_float(input.as_string())) return Value::number(*d);
  return a[0].is_undefined() ? Value::number(0.0) : a[0];
}

Value f_abs(const Value& input, CallArgs& args) {
  bind_args(args, {}, "abs");
  if (input.is_float()) return Value::number(std::fabs(input.as_float()));
  const int64_t i = int_arg(input, "abs");
  return i < 0 ? unary_op(Op::kNeg, Value::integer(i)) : Value::integer(i);
}

Value f_unique(const Value& input, CallArgs& args) {
  const auto a = bind_args(args, {"case_sensitive", "attribute"}, "unique");
  std::vector<Value> out, seen;
  for (const auto& item : iterate(input)) {
    const Value key = fold(a[1].is_undefined() ? item : attr_path(item, a[1]), flag(a[0]));
    if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return equals(s, key); })) {
      seen.push_back(key);
      out.push_back(item);
    }
  }
  return Value::list(std::move(out));
}

Value f_dictsort(const Value& input, CallArgs& args) {
  const auto a = bind_args(args, {"case_sensitive", "by", "reverse"}, "dictsort");
  if (!input.is_dict()) fail("jinja", "dictsort: expected a mapping, got ", type_name(input));
  const bool by_value = a[1].is_string() && a[1].as_string() == "value";
  if (a[1].is_string() && !by_value && a[1].as_string() != "key")
    fail("jinja", "dictsort: 'by' must be 'key' or 'value'");
  const bool case_sensitive = flag(a[0]);
  std::vector<Value> out;
  for (const auto& [k, v] : input.dict_data().items) out.push_back(Value::tuple({k, v}));
  std::stable_sort(out.begin(), out.end(), [&](const Value& x, const Value& y) {
    const size_t i = by_value ? 1 : 0;
    return compare(fold(x.items()[i], case_sensitive), fold(y.items()[i], case_sensitive)) < 0;
  });
  if (flag(a[2])) std::reverse(out.begin(), out.end());
  return Value::list(std::move(out));
}

Value f_sort(const Value& input, CallArgs& args) {
  const auto a = bind_args(args, {"reverse", "case_sensitive", "attribute"}, "sort");
  std::vector<Value> out = iterate(input);
  const bool case_sensitive = flag(a[1]);
  auto key = [&](const Value& v) {
    return fold(a[2].is_undefined() ? v : attr_path(v, a[2]), case_sensitive);
  };
  std::stable_sort(out.begin(), out.end(),
                   [&](const Value& x, const Value& y) { return compare(key(x), key(y)) < 0; });
  if (flag(a[0])) std::reverse(out.begin(), out.end());
  return Value::list(std::move(out));
}

Value f_reverse(const Value& input, CallArgs& args) {
  bind_args(args, {}, "reverse");
  if (input.is_string()) {
    std::u32string cps = strings::decode(input.as_string());
    std::reverse(cps.begin(), cps.end());
    return Value::string(strings::encode(cps));
  }
  std::vector<Value> out = iterate(input);
  std::reverse(out.begin(), out.end());
  return Value::list(std::move(out));
}

Value f_sum(const Value& input, CallArgs& args) {
  const auto a = bind_args(args, {"attribute", "start"}, "sum");
  Value total = a[1].is_undefined() ? Value::integer(0) : a[1];
  for (const auto& item : iterate(input))
    total = binary_op(Op::kAdd, total, a[0].is_undefined() ? item : attr_path(item, a[0]));
  return total;
}

template <bool kMax>
Value f_extreme(const Value& input, CallArgs& args) {
  const auto a = bind_args(args, {"case_sensitive", "attribute"}, kMax ? "max" : "min");
  const bool case_sensitive = flag(a[0]);
  Value best, best_key;
  for (const auto& item : iterate(input)) {
    Value key = fold(a[1].is_undefined() ? item : attr_path(item, a[1]), case_sensitive);
    if (best.is_undefined() || (kMax ? compare(key, best_key) > 0 : compare(key, best_key) < 0)) {
      best = item;
      best_key = std::move(key);
    }
  }
  return best;
}

Value f_round(const Value& input, CallArgs& args) {
  const auto a = bind_args(args, {"precision", "method"}, "round");
  if (!input.is_number()) fail("jinja", "round: expected a number, got ", type_name(input));
  const int64_t precision =
      a[0].is_undefined() ? 0 : std::clamp<int64_t>(int_arg(a[0], "round"), -300, 300);
  const std::string method = a[1].is_undefined() ? "common" : string_arg(a[1], "round");
  const double scale = std::pow(10.0, static_cast<double>(precision));
  const double x = input.to_double() * scale;
  double r;
  if (method == "common") {
    r = x - std::floor(x) == 0.5 ? 2.0 * std::round(x / 2.0) : std::round(x);  // half to even
  } else if (method == "ceil") {
    r = std::ceil(x);
  } else if (method == "floor") {
    r = std::floor(x);
  } else {
    fail("jinja", "round: method must be 'common', 'ceil' or 'floor'");
  }
  return Value::number(r / scale);
}

Value f_indent(const Value& input, CallArgs& args) {
  const auto a = bind_args(args, {"width", "first", "blank"}, "indent");
  std::string unit;
  if (a[0].is_string()) {
    unit = a[0].as_string();
  } else {
    unit.assign(static_cast<size_t>(
                    std::clamp<int64_t>(a[0].is_undefined() ? 4 : int_arg(a[0], "indent"), 0, 256)),
                ' ');
  }
  // Jinja appends a newline before splitting so that a trailing newline is kept.
  const auto lines = strings::splitlines(to_str(input) + "\n", false);
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i > 0) out += '\n';
    const bool indent_line = (i == 0 ? flag(a[1]) : true) && (flag(a[2]) || !lines[i].empty());
    if (indent_line) out += unit;
    out += lines[i];
    check_string_size(out.size());
  }
  return Value::string(std::move(out));
}

Value f_wordcount(const Value& input, CallArgs& args) {
  bind_args(args, {}, "wordcount");
  int64_t words = 0;
  bool in_word = false;
  for (char32_t c : strings::decode(to_str(input))) {
    const bool word_char =
        c == '_' || (c < 0x80 ? std::isalnum(static_cast<int>(c)) != 0 : !strings::is_space(c));
    if (word_char && !in_word) ++words;
    in_word = word_char;
  }
  return Value::integer(words);
}

Value f_escape(const Value& input, CallArgs& args) {
  bind_args(args, {}, "escape");
  std::string out;
  for (char c : to_str(input)) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return Value::string(std::move(out));
}

Value f_safe(const Value& input, CallArgs& args) {
  bind_args(args, {}, "safe");
  return input;
}

Value f_attr(const Value& input, CallArgs& args) {
  const auto a = bind_args(args, {"name"}, "attr");
  return get_attr(input, string_arg(a[0], "attr"));
}

Value f_format(const Value& input, CallArgs& args) {
  if (!args.keyword.empty()) fail("jinja", "format: keyword arguments are not supported");
  return Value::string(percent_format(to_str(input), args.positional));
}

Value f_center(const Value& input, CallArgs& args) {
  const auto a = bind_args(args, {"width"}, "center");
  const std::string s = to_str(input);
  const int64_t width =
      std::min<int64_t>(a[0].is_undefined() ? 80 : int_arg(a[0], "center"), 1 << 20);
  const int64_t n = strings::code_point_count(s);
  if (width <= n) return Value::string(s);
  const int64_t pad = width - n;
  // Python's str.center puts the odd space on the right for even-length strings.
  const int64_t left = pad / 2 + (pad & width & 1);
  return Value::string(std::string(static_cast<size_t>(left), ' ') + s +
                       std::string(static_cast<size_t>(pad - left), ' '));
}

const std::unordered_map<std::string_view, Filter>& filters() {
  static const std::unordered_map<std::string_view, Filter> table = {
      {"abs", f_abs},
      {"attr", f_attr},
      {"capitalize", f_case<strings::capitalize>},
      {"center", f_center},
      {"count", f_length},
      {"d", f_default},
      {"default", f_default},
      {"dictsort", f_dictsort},
      {"e", f_escape},
      {"escape", f_escape},
      {"first", f_first},
      {"float", f_float},
      {"format", f_format},
      {"indent", f_indent},
      {"int", f_int},
      {"items", f_items},
      {"join", f_join},
      {"last", f_last},
      {"length", f_length},
      {"list", f_list},
      {"lower", f_case<strings::lower>},
      {"map", f_map},
      {"max", f_extreme<true>},
      {"min", f_extreme<false>},
      {"reject", f_reject},
      {"rejectattr", f_rejectattr},
      {"replace", f_replace},
      {"reverse", f_reverse},
      {"round", f_round},
      {"safe", f_safe},
      {"select", f_select},
      {"selectattr", f_selectattr},
      {"sort", f_sort},
      {"string", f_string},
      {"sum", f_sum},
      {"title", f_case<jinja_title>},
      {"tojson", f_tojson},
      {"trim", f_trim},
      {"unique", f_unique},
      {"upper", f_case<strings::upper>},
      {"wordcount", f_wordcount},
  };
  return table;
}

// ---- tests ----

Value one_arg(CallArgs& args, const char* name) { return bind_args(args, {"other"}, name)[0]; }

bool t_defined(const Value& v, CallArgs&) { return !v.is_undefined(); }
bool t_undefined(const Value& v, CallArgs&) { return v.is_undefined(); }
bool t_none(const Value& v, CallArgs&) { return v.is_none(); }
bool t_boolean(const Value& v, CallArgs&) { return v.is_bool(); }
bool t_true(const Value& v, CallArgs&) { return v.is_bool() && v.as_bool(); }
bool t_false(const Value& v, CallArgs&) { return v.is_bool() && !v.as_bool(); }
bool t_integer(const Value& v, CallArgs&) { return v.is_int(); }
bool t_float(const Value& v, CallArgs&) { return v.is_float(); }
bool t_number(const Value& v, CallArgs&) { return v.is_number(); }
bool t_string(const Value& v, CallArgs&) { return v.is_string(); }
bool t_mapping(const Value& v, CallArgs&) { return v.is_dict(); }
bool t_iterable(const Value& v, CallArgs&) {
  return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict();
}
bool t_sequence(const Value& v, CallArgs&) { return v.is_string() || v.is_list() || v.is_dict(); }
bool t_callable(const Value& v, CallArgs&) { return v.is_function(); }
bool t_eq(const Value& v, CallArgs& a) { return equals(v, one_arg(a, "equalto")); }
bool t_ne(const Value& v, CallArgs& a) { return !equals(v, one_arg(a, "ne")); }
bool t_lt(const Value& v, CallArgs& a) { return compare(v, one_arg(a, "lt")) < 0; }
bool t_le(const Value& v, CallArgs& a) { return compare(v, one_arg(a, "le")) <= 0; }
bool t_gt(const Value& v, CallArgs& a) { return compare(v, one_arg(a, "gt")) > 0; }
bool t_ge(const Value& v, CallArgs& a) { return compare(v, one_arg(a, "ge")) >= 0; }
bool t_in(const Value& v, CallArgs& a) { return contains(bind_args(a, {"seq"}, "in")[0], v); }
bool t_odd(const Value& v, CallArgs&) {
  return equals(binary_op(Op::kMod, v, Value::integer(2)), Value::integer(1));
}
bool t_even(const Value& v, CallArgs&) {
  return equals(binary_op(Op::kMod, v, Value::integer(2)), Value::integer(0));
}
bool t_divisibleby(const Value& v, CallArgs& a) {
  return equals(binary_op(Op::kMod, v, bind_args(a, {"num"}, "divisibleby")[0]), Value::integer(0));
}
bool t_lower(const Value& v, CallArgs&) {
  return v.is_string() && strings::lower(v.as_string()) == v.as_string();
}
bool t_upper(const Value& v, CallArgs&) {
  return v.is_string() && strings::upper(v.as_string()) == v.as_string();
}
bool t_sameas(const Value& v, CallArgs& a) {
  const Value other = one_arg(a, "sameas");
  if (v.kind() != other.kind()) return false;
  if (v.container_id()) return v.container_id() == other.container_id();
  return equals(v, other);
}
bool t_escaped(const Value&, CallArgs&) { return false; }

const std::unordered_map<std::string_view, Test>& tests() {
  static const std::unordered_map<std::string_view, Test> table = {
      {"defined", t_defined},
      {"undefined", t_undefined},
      {"none", t_none},
      {"boolean", t_boolean},
      {"true", t_true},
      {"false", t_false},
      {"integer", t_integer},
      {"float", t_float},
      {"number", t_number},
      {"string", t_string},
      {"mapping", t_mapping},
      {"iterable", t_iterable},
      {"sequence", t_sequence},
      {"callable", t_callable},
      {"equalto", t_eq},
      {"eq", t_eq},
      {"==", t_eq},
      {"ne", t_ne},
      {"!=", t_ne},
      {"lt", t_lt},
      {"<", t_lt},
      {"lessthan", t_lt},
      {"le", t_le},
      {"<=", t_le},
      {"gt", t_gt},
      {">", t_gt},
      {"greaterthan", t_gt},
      {"ge", t_ge},
      {">=", t_ge},
      {"in", t_in},
      {"odd", t_odd},
      {"even", t_even},
      {"divisibleby", t_divisibleby},
      {"lower", t_lower},
      {"upper", t_upper},
      {"sameas", t_sameas},
      {"escaped", t_escaped},
  };
  return table;
}

}  // namespace

Value apply_filter(const std::string& name, const Value& input, CallArgs& args) {
  auto it = filters().find(name);
  if (it == filters().end()) fail("jinja", "no filter named '", name, "'");
  return it->second(input, args);
}

bool apply_test(const std::string& name, const Value& v, CallArgs& args) {
  auto it = tests().find(name);
  if (it == tests().end()) fail("jinja", "no test named '", name, "'");
  return it->second(v, args);
}

}  // namespace lmx::jinja
