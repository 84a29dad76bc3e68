// The dynamic value of the Jinja engine and the Python semantics it follows:
// truthiness, str()/repr() printing, equality, ordering and json.dumps.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace lmx::jinja {

class Value;

struct CallArgs;
struct Function;
struct ListData;
struct DictData;
struct NamespaceData;

class Value {
 public:
  enum class Kind : uint8_t {
    kUndefined,
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kList,
    kDict,
    kNamespace,
    kFunction
  };

  Value() = default;  // undefined
  static Value none();
  static Value boolean(bool b);
  static Value integer(int64_t i);
  static Value number(double d);
  static Value string(std::string s);
  static Value list(std::vector<Value> items = {});
  static Value tuple(std::vector<Value> items);
  static Value dict();
  static Value make_namespace();
  static Value function(std::string name, std::function<Value(const Value& self, CallArgs&)> call,
                        Value self = Value());

  Kind kind() const { return static_cast<Kind>(data_.index()); }
  bool is_undefined() const { return kind() == Kind::kUndefined; }
  bool is_none() const { return kind() == Kind::kNone; }
  bool is_bool() const { return kind() == Kind::kBool; }
  bool is_int() const { return kind() == Kind::kInt; }
  bool is_float() const { return kind() == Kind::kFloat; }
  // Python's numbers.Number: bool counts, as in Python.
  bool is_number() const { return is_bool() || is_int() || is_float(); }
  bool is_string() const { return kind() == Kind::kString; }
  bool is_list() const { return kind() == Kind::kList; }
  bool is_tuple() const;
  bool is_dict() const { return kind() == Kind::kDict; }
  bool is_namespace() const { return kind() == Kind::kNamespace; }
  bool is_function() const { return kind() == Kind::kFunction; }

  bool as_bool() const { return std::get<bool>(data_); }
  int64_t as_int() const { return std::get<int64_t>(data_); }
  double as_float() const { return std::get<double>(data_); }
  // bool and int as int64 (Python: bool is an int).
  int64_t to_int() const { return is_bool() ? static_cast<int64_t>(as_bool()) : as_int(); }
  double to_double() const;
  const std::string& as_string() const { return std::get<std::string>(data_); }
  ListData& list_data() const;
  const std::vector<Value>& items() const;  // list or tuple
  DictData& dict_data() const;              // dict or namespace
  const Function& function_data() const;
  // Identity of a shared container, for cycle checks; null for scalars.
  const void* container_id() const;

 private:
  friend void release_children(Value& v, std::vector<Value>& out);
  std::variant<std::monostate, std::nullptr_t, bool, int64_t, double, std::string,
               std::shared_ptr<ListData>, std::shared_ptr<DictData>, std::shared_ptr<NamespaceData>,
               std::shared_ptr<Function>>
      data_;
};

// Arguments of a call: positional first, then keyword arguments in source order.
struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

// A callable: a global such as raise_exception, a bound method, or a macro. Any value the
// callable keeps (the object of a bound method) lives in `self`, never inside `call`, so that
// cycle checks and destruction can see it.
struct Function {
  std::string name;
  std::function<Value(const Value& self, CallArgs&)> call;
  Value self;
};

// Lists and tuples share one representation; tuples only print differently.
struct ListData {
  std::vector<Value> items;
  bool tuple = false;
  ~ListData();
};

// Insertion-ordered mapping with linear lookup: chat-template dicts hold a few keys.
struct DictData {
  std::vector<std::pair<Value, Value>> items;
  const Value* find(const Value& key) const;
  Value* find(const Value& key);
  void set(Value key, Value value);
  ~DictData();
};

// The object made by namespace(...): the one mutable thing that outlives a loop scope.
struct NamespaceData : DictData {};

// Python bool(x); undefined is falsy.
bool truthy(const Value& v);
// Python type names, used in error messages.
std::string type_name(const Value& v);
// str(x) as Jinja prints it: undefined renders as empty.
std::string to_str(const Value& v);
// repr(x), used for items inside printed lists and dicts.
std::string repr(const Value& v);
// Python float repr: shortest round-trip digits, "1.0", "1e+20", "inf".
std::string format_float(double d);
// Python ==, with Jinja's "undefined == undefined".
bool equals(const Value& a, const Value& b);
// Python <, >: -1, 0 or 1; throws for types Python cannot order.
int compare(const Value& a, const Value& b);
// What a for loop walks: list items, dict keys, string characters; undefined is empty.
std::vector<Value> iterate(const Value& v);
// Python len(); throws for scalars.
int64_t length(const Value& v);
// Throws if storing `value` into `container` would make the container reach itself.
void check_no_cycle(const Value& container, const Value& value);

struct JsonOptions {
  int indent = -1;            // < 0: one line
  std::string indent_string;  // used when indent was given as a string
  bool sort_keys = false;
  bool ensure_ascii = false;
  std::string item_separator;  // empty: Python's default for the indent mode
  std::string key_separator;
};
// json.dumps(v, ensure_ascii=False) with Python's separators and escaping.
std::string to_json(const Value& v, const JsonOptions& options = {});

// Builds a context value; object key order is kept. Throws lmx::Error("[jinja] ...").
Value from_json(const nlohmann::ordered_json& json);

}  // namespace lmx::jinja
