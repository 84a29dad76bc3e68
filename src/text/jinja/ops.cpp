// Python operator semantics on Jinja values, and attribute/item access.
#include <cmath>
#include <utility>

#include "core/error.h"
#include "text/jinja/builtins.h"
#include "text/jinja/strings.h"

namespace lmx::jinja {
namespace {

const char* op_symbol(Op op) {
  switch (op) {
    case Op::kAdd: return "+";
    case Op::kSub: return "-";
    case Op::kMul: return "*";
    case Op::kDiv: return "/";
    case Op::kFloorDiv: return "//";
    case Op::kMod: return "%";
    case Op::kPow: return "**";
    case Op::kNeg: return "unary -";
    case Op::kPos: return "unary +";
    default: return "?";
  }
}

[[noreturn]] void unsupported(Op op, const Value& a, const Value& b) {
  fail("jinja", "unsupported operand type(s) for ", op_symbol(op), ": '", type_name(a), "' and '",
       type_name(b), "'");
}

[[noreturn]] void overflow() { fail("jinja", "integer overflow"); }

int64_t checked_pow(int64_t base, int64_t exp) {
  int64_t result = 1;
  while (exp > 0) {
    if (exp & 1) {
      if (__builtin_mul_overflow(result, base, &result)) overflow();
    }
    exp >>= 1;
    if (exp > 0 && __builtin_mul_overflow(base, base, &base)) overflow();
  }
  return result;
}

Value int_op(Op op, int64_t x, int64_t y) {
  int64_t r = 0;
  switch (op) {
    case Op::kAdd:
      if (__builtin_add_overflow(x, y, &r)) overflow();
      return Value::integer(r);
    case Op::kSub:
      if (__builtin_sub_overflow(x, y, &r)) overflow();
      return Value::integer(r);
    case Op::kMul:
      if (__builtin_mul_overflow(x, y, &r)) overflow();
      return Value::integer(r);
    case Op::kDiv:
      if (y == 0) fail("jinja", "division by zero");
      return Value::number(static_cast<double>(x) / static_cast<double>(y));
    case Op::kFloorDiv: {
      if (y == 0) fail("jinja", "integer division or modulo by zero");
      if (x == INT64_MIN && y == -1) overflow();
      int64_t q = x / y;
      if ((x % y != 0) && ((x < 0) != (y < 0))) --q;
      return Value::integer(q);
    }
    case Op::kMod: {
      if (y == 0) fail("jinja", "integer division or modulo by zero");
      if (y == -1) return Value::integer(0);
      int64_t m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) m += y;
      return Value::integer(m);
    }
    case Op::kPow:
      if (y < 0) return Value::number(std::pow(static_cast<double>(x), static_cast<double>(y)));
      return Value::integer(checked_pow(x, y));
    default: fail("jinja", "bad integer operator");
  }
}

// CPython's float divmod: the remainder has the sign of the divisor, and the quotient is
// corrected for the rounding of (x - mod) / y.
std::pair<double, double> python_float_divmod(double x, double y) {
  double mod = std::fmod(x, y);
  double div = (x - mod) / y;
  if (mod != 0) {
    if ((y < 0) != (mod < 0)) {
      mod += y;
      div -= 1.0;
    }
  } else {
    mod = std::copysign(0.0, y);
  }
  double floordiv;
  if (div != 0) {
    floordiv = std::floor(div);
    if (div - floordiv > 0.5) floordiv += 1.0;
  } else {
    floordiv = std::copysign(0.0, x / y);
  }
  return {floordiv, mod};
}

Value float_op(Op op, double x, double y) {
  switch (op) {
    case Op::kAdd: return Value::number(x + y);
    case Op::kSub: return Value::number(x - y);
    case Op::kMul: return Value::number(x * y);
    case Op::kDiv:
      if (y == 0) fail("jinja", "float division by zero");
      return Value::number(x / y);
    case Op::kFloorDiv:
      if (y == 0) fail("jinja", "float floor division by zero");
      return Value::number(python_float_divmod(x, y).first);
    case Op::kMod:
      if (y == 0) fail("jinja", "float modulo");
      return Value::number(python_float_divmod(x, y).second);
    case Op::kPow:
      if (x == 0 && y < 0) fail("jinja", "0.0 cannot be raised to a negative power");
      return Value::number(std::pow(x, y));
    default: fail("jinja", "bad float operator");
  }
}

Value repeat(const Value& seq, int64_t times) {
  if (times < 0) times = 0;
  if (seq.is_string()) {
    const std::string& s = seq.as_string();
    if (!s.empty() && static_cast<uint64_t>(times) > kMaxStringBytes / s.size())
      check_string_size(kMaxStringBytes + 1);
    std::string out;
    out.reserve(s.size() * static_cast<size_t>(times));
    for (int64_t i = 0; i < times; ++i) out += s;
    return Value::string(std::move(out));
  }
  const auto& items = seq.items();
  if (!items.empty() && static_cast<uint64_t>(times) > kMaxListItems / items.size())
    fail("jinja", "list longer than ", kMaxListItems, " items");
  std::vector<Value> out;
  for (int64_t i = 0; i < times; ++i) out.insert(out.end(), items.begin(), items.end());
  return seq.is_tuple() ? Value::tuple(std::move(out)) : Value::list(std::move(out));
}

// Python's slice.indices(): clamps one bound for a sequence of length n.
int64_t clamp_bound(const Value& v, int64_t n, int64_t step, bool is_start) {
  if (v.is_undefined() || v.is_none()) {
    if (step > 0) return is_start ? 0 : n;
    return is_start ? n - 1 : -1;
  }
  int64_t i = int_arg(v, "slice");
  if (i < 0) {
    i += n;
    if (i < 0) i = step < 0 ? -1 : 0;
  } else if (i >= n) {
    i = step < 0 ? n - 1 : n;
  }
  return i;
}

}  // namespace

std::vector<Value> bind_args(const CallArgs& args, std::initializer_list<std::string_view> names,
                             std::string_view fn) {
  std::vector<Value> out(names.size());
  std::vector<bool> given(names.size(), false);
  if (args.positional.size() > names.size())
    fail("jinja", fn, "() takes at most ", names.size(), " arguments (", args.positional.size(),
         " given)");
  for (size_t i = 0; i < args.positional.size(); ++i) {
    out[i] = args.positional[i];
    given[i] = true;
  }
  for (const auto& [key, value] : args.keyword) {
    size_t index = 0;
    for (auto name : names) {
      if (name == key) break;
      ++index;
    }
    if (index == names.size())
      fail("jinja", fn, "() got an unexpected keyword argument '", key, "'");
    if (given[index]) fail("jinja", fn, "() got multiple values for argument '", key, "'");
    out[index] = value;
    given[index] = true;
  }
  return out;
}

int64_t int_arg(const Value& v, std::string_view fn) {
  if (v.is_int() || v.is_bool()) return v.to_int();
  fail("jinja", fn, ": expected an integer, got ", type_name(v));
}

const std::string& string_arg(const Value& v, std::string_view fn) {
  if (!v.is_string()) fail("jinja", fn, ": expected a string, got ", type_name(v));
  return v.as_string();
}

int64_t float_to_int(double d) {
  // 2^63 is exact in double; anything outside (-2^63, 2^63) would not fit.
  if (!(d > -9223372036854775808.0 && d < 9223372036854775808.0))
    fail("jinja", "cannot convert float ", format_float(d), " to integer");
  return static_cast<int64_t>(d);
}

void check_string_size(size_t bytes) {
  if (bytes > kMaxStringBytes) fail("jinja", "string longer than ", kMaxStringBytes, " bytes");
}

Value binary_op(Op op, const Value& a, const Value& b) {
  if (op == Op::kConcat) {
    std::string s = to_str(a);
    s += to_str(b);
    check_string_size(s.size());
    return Value::string(std::move(s));
  }
  if (a.is_undefined() || b.is_undefined())
    fail("jinja", "undefined value used with '", op_symbol(op), "'");
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) return float_op(op, a.to_double(), b.to_double());
    return int_op(op, a.to_int(), b.to_int());
  }
  switch (op) {
    case Op::kAdd:
      if (a.is_string() && b.is_string()) {
        check_string_size(a.as_string().size() + b.as_string().size());
        return Value::string(a.as_string() + b.as_string());
      }
      if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
        if (a.items().size() + b.items().size() > kMaxListItems)
          fail("jinja", "list longer than ", kMaxListItems, " items");
        std::vector<Value> items = a.items();
        items.insert(items.end(), b.items().begin(), b.items().end());
        return a.is_tuple() ? Value::tuple(std::move(items)) : Value::list(std::move(items));
      }
      break;
    case Op::kMul:
      if ((a.is_string() || a.is_list()) && (b.is_int() || b.is_bool()))
        return repeat(a, b.to_int());
      if ((b.is_string() || b.is_list()) && (a.is_int() || a.is_bool()))
        return repeat(b, a.to_int());
      break;
    case Op::kMod:
      if (a.is_string()) {
        std::vector<Value> args = b.is_tuple() ? b.items() : std::vector<Value>{b};
        return Value::string(percent_format(a.as_string(), args));
      }
      break;
    default: break;
  }
  unsupported(op, a, b);
}

Value unary_op(Op op, const Value& v) {
  if (op == Op::kNot) return Value::boolean(!truthy(v));
  if (v.is_float()) return Value::number(op == Op::kNeg ? -v.as_float() : v.as_float());
  if (v.is_int() || v.is_bool()) {
    const int64_t i = v.to_int();
    if (op == Op::kPos) return Value::integer(i);
    if (i == INT64_MIN) overflow();
    return Value::integer(-i);
  }
  fail("jinja", "bad operand type for ", op_symbol(op), ": '", type_name(v), "'");
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::kUndefined: return false;
    case Value::Kind::kString:
      if (!item.is_string())
        fail("jinja", "'in <string>' requires string as left operand, not ", type_name(item));
      return container.as_string().find(item.as_string()) != std::string::npos;
    case Value::Kind::kList:
      for (const auto& v : container.items())
        if (equals(v, item)) return true;
      return false;
    case Value::Kind::kDict:
    case Value::Kind::kNamespace: return container.dict_data().find(item) != nullptr;
    default: fail("jinja", "argument of type '", type_name(container), "' is not iterable");
  }
}

Value get_attr(const Value& obj, const std::string& name) {
  if (has_method(obj, name)) {
    return Value::function(
        name, [name](const Value& self, CallArgs& args) { return *call_method(self, name, args); },
        obj);
  }
  if (obj.is_dict() || obj.is_namespace()) {
    if (const Value* v = obj.dict_data().find(Value::string(name))) return *v;
  }
  return Value();
}

Value get_item(const Value& obj, const Value& key) {
  switch (obj.kind()) {
    case Value::Kind::kDict:
    case Value::Kind::kNamespace:
      if (const Value* v = obj.dict_data().find(key)) return *v;
      break;
    case Value::Kind::kList:
      if (key.is_int() || key.is_bool()) {
        const auto& items = obj.items();
        int64_t i = key.to_int();
        const auto n = static_cast<int64_t>(items.size());
        if (i < 0) i += n;
        if (i >= 0 && i < n) return items[static_cast<size_t>(i)];
        return Value();
      }
      break;
    case Value::Kind::kString:
      if (key.is_int() || key.is_bool()) {
        const std::u32string cps = strings::decode(obj.as_string());
        int64_t i = key.to_int();
        const auto n = static_cast<int64_t>(cps.size());
        if (i < 0) i += n;
        if (i < 0 || i >= n) return Value();
        std::string s;
        strings::append_utf8(s, cps[static_cast<size_t>(i)]);
        return Value::string(std::move(s));
      }
      break;
    default: return Value();
  }
  if (key.is_string()) return get_attr(obj, key.as_string());
  return Value();
}

Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step_value) {
  int64_t step = 1;
  if (!step_value.is_undefined() && !step_value.is_none()) step = int_arg(step_value, "slice");
  if (step == 0) fail("jinja", "slice step cannot be zero");
  auto pick = [&](int64_t n, auto&& take) {
    const int64_t lo = clamp_bound(start, n, step, true);
    const int64_t hi = clamp_bound(stop, n, step, false);
    if (step > 0) {
      for (int64_t i = lo; i < hi; i += step) take(static_cast<size_t>(i));
    } else {
      for (int64_t i = lo; i > hi; i += step) take(static_cast<size_t>(i));
    }
  };
  if (obj.is_string()) {
    const std::u32string cps = strings::decode(obj.as_string());
    std::u32string out;
    pick(static_cast<int64_t>(cps.size()), [&](size_t i) { out.push_back(cps[i]); });
    return Value::string(strings::encode(out));
  }
  if (obj.is_list()) {
    const auto& items = obj.items();
    std::vector<Value> out;
    pick(static_cast<int64_t>(items.size()), [&](size_t i) { out.push_back(items[i]); });
    return obj.is_tuple() ? Value::tuple(std::move(out)) : Value::list(std::move(out));
  }
  if (obj.is_undefined()) return Value();
  fail("jinja", "'", type_name(obj), "' object is not subscriptable");
}

std::string percent_format(const std::string& fmt, const std::vector<Value>& args) {
  std::string out;
  size_t next = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') {
      out += fmt[i];
      continue;
    }
    if (++i >= fmt.size()) fail("jinja", "incomplete format");
    const char spec = fmt[i];
    if (spec == '%') {
      out += '%';
      continue;
    }
    if (next >= args.size()) fail("jinja", "not enough arguments for format string");
    const Value& v = args[next++];
    switch (spec) {
      case 's': out += to_str(v); break;
      case 'r': out += repr(v); break;
      case 'd':
      case 'i':
        if (v.is_float()) {
          out += std::to_string(float_to_int(v.as_float()));
        } else {
          out += std::to_string(int_arg(v, "%d format"));
        }
        break;
      case 'f': {
        if (!v.is_number()) fail("jinja", "%f format: a real number is required");
        char buf[64];
        std::snprintf(buf, sizeof(buf), "%.6f", v.to_double());
        out += buf;
        break;
      }
      default: fail("jinja", "unsupported format character '", spec, "'");
    }
    check_string_size(out.size());
  }
  if (next < args.size()) fail("jinja", "not all arguments converted during string formatting");
  return out;
}

}  // namespace lmx::jinja
