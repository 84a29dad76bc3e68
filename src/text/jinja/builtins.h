// Operators, attribute access, methods, filters, tests and globals: everything the renderer
// applies to values. Errors are lmx::Error("[jinja] ..."); the renderer adds the line.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "text/jinja/ast.h"
#include "text/jinja/value.h"

namespace lmx::jinja {

// Bounds on what one render may build, so that hostile templates fail instead of exhausting
// memory or time. Real chat templates stay far below each of them.
inline constexpr size_t kMaxStringBytes = size_t{64} << 20;
inline constexpr size_t kMaxListItems = size_t{1} << 22;

// Binds positional then keyword arguments to parameter names as Python does; missing ones
// are undefined. `fn` names the callee in errors.
std::vector<Value> bind_args(const CallArgs& args, std::initializer_list<std::string_view> names,
                             std::string_view fn);
// An int argument (bool counts); throws naming the callee otherwise.
int64_t int_arg(const Value& v, std::string_view fn);
// A str argument; throws naming the callee otherwise.
const std::string& string_arg(const Value& v, std::string_view fn);
void check_string_size(size_t bytes);
// Python int(x) for a float: truncates; throws for nan, inf and values outside int64.
int64_t float_to_int(double d);

// + - * / // % ** ~ with Python's int/float rules.
Value binary_op(Op op, const Value& a, const Value& b);
Value unary_op(Op op, const Value& v);
// Python "item in container".
bool contains(const Value& container, const Value& item);
// obj.name: methods first, then dict keys (Jinja's getattr-then-getitem).
Value get_attr(const Value& obj, const std::string& name);
// obj[key]: items first, then attributes.
Value get_item(const Value& obj, const Value& key);
// obj[start:stop:step] on lists, tuples and strings; undefined parts take Python's defaults.
Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step);
// "fmt % args" with %s, %r, %d, %i, %f and %%.
std::string percent_format(const std::string& fmt, const std::vector<Value>& args);

// Calls obj.name(args) when obj has such a method; nullopt otherwise.
std::optional<Value> call_method(const Value& obj, const std::string& name, CallArgs& args);
bool has_method(const Value& obj, const std::string& name);

Value apply_filter(const std::string& name, const Value& input, CallArgs& args);
bool apply_test(const std::string& name, const Value& v, CallArgs& args);

// raise_exception, strftime_now, namespace, range and dict.
std::vector<std::pair<std::string, Value>> make_globals();

}  // namespace lmx::jinja
