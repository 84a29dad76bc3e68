// The tree-walking renderer: Jinja scoping, loops, macros and expression evaluation.
#include <string_view>

#include "core/error.h"
#include "text/jinja/builtins.h"
#include "text/jinja/jinja.h"
#include "text/jinja/parser.h"

namespace lmx::jinja {
namespace {

// Bounds that make any template finish: recursion (expressions, blocks and macro calls share
// one counter), macro nesting, total loop iterations and output size.
constexpr int kMaxRenderDepth = 600;
constexpr int kMaxMacroDepth = 64;
constexpr int64_t kMaxLoopIterations = int64_t{1} << 24;
constexpr size_t kMaxOutputBytes = size_t{256} << 20;

// Variables of one level: the globals, the template's top level, one loop iteration or one
// macro call. Lookups walk outwards; assignments always go to the innermost scope, which is
// why a set inside a loop body does not leak out of the loop.
struct Scope {
  const Scope* parent = nullptr;
  std::vector<std::pair<std::string, Value>> vars;

  const Value* find(std::string_view name) const {
    for (const Scope* s = this; s; s = s->parent)
      for (const auto& [k, v] : s->vars)
        if (k == name) return &v;
    return nullptr;
  }
  void set(const std::string& name, Value v) {
    for (auto& [k, old] : vars) {
      if (k == name) {
        old = std::move(v);
        return;
      }
    }
    vars.emplace_back(name, std::move(v));
  }
};

enum class Flow { kNormal, kBreak, kContinue };

class Renderer {
 public:
  explicit Renderer(const Value& context) {
    for (auto& [name, value] : make_globals()) globals_.set(name, std::move(value));
    root_.parent = &globals_;
    if (context.is_dict())
      for (const auto& [k, v] : context.dict_data().items) root_.set(to_str(k), v);
    scope_ = &root_;
  }

  std::string run(const Body& body) {
    std::string out;
    out_ = &out;
    exec_body(body);
    return out;
  }

  int line() const { return line_; }

 private:
  class DepthGuard {
   public:
    DepthGuard(int& depth, int limit) : depth_(depth) {
      if (++depth_ > limit) fail("jinja", "template recursion deeper than ", limit);
    }
    ~DepthGuard() { --depth_; }
    DepthGuard(const DepthGuard&) = delete;
    DepthGuard& operator=(const DepthGuard&) = delete;

   private:
    int& depth_;
  };

  void emit(std::string_view s) {
    out_->append(s);
    if (out_->size() > kMaxOutputBytes)
      fail("jinja", "output longer than ", kMaxOutputBytes, " bytes");
  }

  void count_iteration() {
    if (++iterations_ > kMaxLoopIterations)
      fail("jinja", "more than ", kMaxLoopIterations, " loop iterations");
  }

  // Renders `body` into a fresh string with `scope` as the innermost scope.
  std::string capture(const Body& body, Scope* scope) {
    std::string text;
    std::string* saved_out = out_;
    Scope* saved_scope = scope_;
    out_ = &text;
    scope_ = scope;
    exec_body(body);
    out_ = saved_out;
    scope_ = saved_scope;
    return text;
  }

  // ---- statements ----

  Flow exec_body(const Body& body) {
    for (const auto& s : body) {
      const Flow f = exec(*s);
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }

  Flow exec(const Stmt& s) {
    DepthGuard guard(depth_, kMaxRenderDepth);
    line_ = s.line;
    switch (s.kind) {
      case Stmt::Kind::kText: emit(s.text); break;
      case Stmt::Kind::kOutput: emit(to_str(eval(*s.expr))); break;
      case Stmt::Kind::kIf:
        for (const auto& [cond, body] : s.branches)
          if (!cond || truthy(eval(*cond))) return exec_body(body);
        break;
      case Stmt::Kind::kFor: return exec_for(s);
      case Stmt::Kind::kSet: assign(*s.target, eval(*s.expr)); break;
      case Stmt::Kind::kSetBlock: {
        Value text = Value::string(capture(s.body, scope_));
        assign(*s.target, s.filter ? eval_filter(*s.filter, &text) : text);
        break;
      }
      case Stmt::Kind::kFilterBlock: {
        const Value text = Value::string(capture(s.body, scope_));
        emit(to_str(eval_filter(*s.filter, &text)));
        break;
      }
      case Stmt::Kind::kMacro: {
        const Stmt* macro = &s;
        scope_->set(s.name, Value::function(s.name, [this, macro](const Value&, CallArgs& args) {
                      return call_macro(*macro, args);
                    }));
        break;
      }
      case Stmt::Kind::kCallBlock: {
        const Stmt* block = &s;
        Value caller = Value::function("caller", [this, block](const Value&, CallArgs& args) {
          return call_macro(*block, args);
        });
        emit(to_str(eval_call(*s.expr, &caller)));
        break;
      }
      case Stmt::Kind::kBreak: return Flow::kBreak;
      case Stmt::Kind::kContinue: return Flow::kContinue;
      case Stmt::Kind::kScope: return exec_body(s.body);
    }
    return Flow::kNormal;
  }

  Value make_loop(size_t i, const std::vector<Value>& items) {
    const auto n = static_cast<int64_t>(items.size());
    const auto index = static_cast<int64_t>(i);
    Value loop = Value::dict();
    auto& d = loop.dict_data();
    d.items.reserve(12);
    auto put = [&d](const char* key, Value v) {
      d.items.emplace_back(Value::string(key), std::move(v));
    };
    put("index", Value::integer(index + 1));
    put("index0", Value::integer(index));
    put("revindex", Value::integer(n - index));
    put("revindex0", Value::integer(n - index - 1));
    put("first", Value::boolean(i == 0));
    put("last", Value::boolean(index == n - 1));
    put("length", Value::integer(n));
    put("depth", Value::integer(1));
    put("depth0", Value::integer(0));
    if (i > 0) put("previtem", items[i - 1]);
    if (index + 1 < n) put("nextitem", items[i + 1]);
    put("cycle", Value::function("cycle", [i](const Value&, CallArgs& args) {
          if (args.positional.empty()) fail("jinja", "loop.cycle() needs at least one value");
          return args.positional[i % args.positional.size()];
        }));
    return loop;
  }

  Flow exec_for(const Stmt& s) {
    std::vector<Value> items = iterate(eval(*s.expr));
    Scope* outer = scope_;
    if (s.filter) {
      // "for x in xs if cond" filters before counting, so loop.index and loop.length see
      // only the kept items.
      std::vector<Value> kept;
      for (auto& item : items) {
        count_iteration();
        Scope probe;
        probe.parent = outer;
        scope_ = &probe;
        assign(*s.target, item);
        const bool keep = truthy(eval(*s.filter));
        scope_ = outer;
        if (keep) kept.push_back(std::move(item));
      }
      items = std::move(kept);
    }
    if (items.empty()) return exec_body(s.else_body);
    for (size_t i = 0; i < items.size(); ++i) {
      count_iteration();
      Scope iteration;
      iteration.parent = outer;
      scope_ = &iteration;
      assign(*s.target, items[i]);
      iteration.set("loop", make_loop(i, items));
      const Flow f = exec_body(s.body);
      scope_ = outer;
      if (f == Flow::kBreak) break;
    }
    return Flow::kNormal;
  }

  void assign(const Expr& target, const Value& value) {
    switch (target.kind) {
      case Expr::Kind::kName: scope_->set(target.name, value); return;
      case Expr::Kind::kTuple: {
        const std::vector<Value> parts = iterate(value);
        if (parts.size() != target.args.size())
          fail("jinja", parts.size() < target.args.size() ? "not enough" : "too many",
               " values to unpack (expected ", target.args.size(), ", got ", parts.size(), ")");
        for (size_t i = 0; i < parts.size(); ++i) assign(*target.args[i], parts[i]);
        return;
      }
      case Expr::Kind::kGetAttr: {
        const Value* ns = scope_->find(target.args[0]->name);
        if (!ns || !ns->is_namespace())
          fail("jinja", "cannot assign attribute on non-namespace object '", target.args[0]->name,
               "'");
        check_no_cycle(*ns, value);
        ns->dict_data().set(Value::string(target.name), value);
        return;
      }
      default: fail("jinja", "cannot assign to this expression");
    }
  }

  Value call_macro(const Stmt& macro, CallArgs& args) {
    DepthGuard guard(macro_depth_, kMaxMacroDepth);
    // Macros see their arguments and the template's top level, not the caller's locals.
    Scope frame;
    frame.parent = &root_;
    Scope* saved_scope = scope_;
    scope_ = &frame;
    std::vector<bool> used(args.keyword.size(), false);
    for (size_t i = 0; i < macro.params.size(); ++i) {
      const auto& [name, def] = macro.params[i];
      Value v;
      bool found = false;
      if (i < args.positional.size()) {
        v = args.positional[i];
        found = true;
      }
      for (size_t k = 0; k < args.keyword.size(); ++k) {
        if (args.keyword[k].first != name) continue;
        if (found) fail("jinja", "macro '", macro.name, "' got multiple values for '", name, "'");
        v = args.keyword[k].second;
        used[k] = found = true;
      }
      if (!found && def) v = eval(*def);
      frame.set(name, std::move(v));
    }
    std::vector<Value> varargs;
    for (size_t i = macro.params.size(); i < args.positional.size(); ++i)
      varargs.push_back(args.positional[i]);
    frame.set("varargs", Value::tuple(std::move(varargs)));
    Value kwargs = Value::dict();
    for (size_t k = 0; k < args.keyword.size(); ++k) {
      if (used[k]) continue;
      if (args.keyword[k].first == "caller") {
        frame.set("caller", args.keyword[k].second);
      } else {
        kwargs.dict_data().set(Value::string(args.keyword[k].first), args.keyword[k].second);
      }
    }
    frame.set("kwargs", std::move(kwargs));
    scope_ = saved_scope;
    return Value::string(capture(macro.body, &frame));
  }

  // ---- expressions ----

  Value lookup(const std::string& name) const {
    const Value* v = scope_->find(name);
    return v ? *v : Value();
  }

  CallArgs eval_args(const Expr& e, size_t first) {
    CallArgs args;
    for (size_t i = first; i < e.args.size(); ++i) args.positional.push_back(eval(*e.args[i]));
    for (const auto& [k, v] : e.kwargs) args.keyword.emplace_back(k, eval(*v));
    return args;
  }

  // Evaluates a call; `caller` is the body of a {% call %} block, passed as a keyword.
  Value eval_call(const Expr& e, const Value* caller) {
    const Expr& callee = *e.args[0];
    if (callee.kind == Expr::Kind::kGetAttr) {
      // Method calls go straight to the method table instead of building a bound function.
      const Value obj = eval(*callee.args[0]);
      CallArgs args = eval_args(e, 1);
      if (caller) args.keyword.emplace_back("caller", *caller);
      if (auto result = call_method(obj, callee.name, args)) return std::move(*result);
      const Value f = get_attr(obj, callee.name);
      if (f.is_undefined())
        fail("jinja", "'", type_name(obj), "' object has no attribute '", callee.name, "'");
      return call_value(f, args, callee.name);
    }
    const Value f = eval(callee);
    CallArgs args = eval_args(e, 1);
    if (caller) args.keyword.emplace_back("caller", *caller);
    return call_value(f, args, callee.kind == Expr::Kind::kName ? callee.name : "expression");
  }

  Value call_value(const Value& f, CallArgs& args, const std::string& what) {
    if (f.is_function()) {
      const Function& fn = f.function_data();
      return fn.call(fn.self, args);
    }
    if (f.is_undefined()) fail("jinja", "'", what, "' is undefined");
    fail("jinja", "'", type_name(f), "' object is not callable");
  }

  Value eval_filter(const Expr& e, const Value* block_input) {
    Value input;
    if (!e.args[0]) {
      input = *block_input;
    } else if (e.args[0]->kind == Expr::Kind::kFilter) {
      input = eval_filter(*e.args[0], block_input);
    } else {
      input = eval(*e.args[0]);
    }
    CallArgs args = eval_args(e, 1);
    return apply_filter(e.name, input, args);
  }

  bool compare_op(Op op, const Value& a, const Value& b) {
    switch (op) {
      case Op::kEq: return equals(a, b);
      case Op::kNe: return !equals(a, b);
      case Op::kLt: return compare(a, b) < 0;
      case Op::kLe: return compare(a, b) <= 0;
      case Op::kGt: return compare(a, b) > 0;
      case Op::kGe: return compare(a, b) >= 0;
      case Op::kIn: return contains(b, a);
      case Op::kNotIn: return !contains(b, a);
      default: fail("jinja", "bad comparison operator");
    }
  }

  Value eval(const Expr& e) {
    DepthGuard guard(depth_, kMaxRenderDepth);
    line_ = e.line;
    switch (e.kind) {
      case Expr::Kind::kConst: return e.value;
      case Expr::Kind::kName: return lookup(e.name);
      case Expr::Kind::kList:
      case Expr::Kind::kTuple: {
        std::vector<Value> items;
        items.reserve(e.args.size());
        for (const auto& a : e.args) items.push_back(eval(*a));
        return e.kind == Expr::Kind::kList ? Value::list(std::move(items))
                                           : Value::tuple(std::move(items));
      }
      case Expr::Kind::kDict: {
        Value d = Value::dict();
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          Value key = eval(*e.args[i]);
          d.dict_data().set(std::move(key), eval(*e.args[i + 1]));
        }
        return d;
      }
      case Expr::Kind::kGetAttr: return get_attr(eval(*e.args[0]), e.name);
      case Expr::Kind::kGetItem: {
        const Value obj = eval(*e.args[0]);
        return get_item(obj, eval(*e.args[1]));
      }
      case Expr::Kind::kSlice: {
        const Value obj = eval(*e.args[0]);
        const Value start = e.args[1] ? eval(*e.args[1]) : Value();
        const Value stop = e.args[2] ? eval(*e.args[2]) : Value();
        const Value step = e.args[3] ? eval(*e.args[3]) : Value();
        return slice(obj, start, stop, step);
      }
      case Expr::Kind::kCall: return eval_call(e, nullptr);
      case Expr::Kind::kFilter: return eval_filter(e, nullptr);
      case Expr::Kind::kTest: {
        const Value v = eval(*e.args[0]);
        CallArgs args = eval_args(e, 1);
        return Value::boolean(apply_test(e.name, v, args) != e.negated);
      }
      case Expr::Kind::kUnary: return unary_op(e.op, eval(*e.args[0]));
      case Expr::Kind::kBinary: {
        // and/or return an operand, as in Python, and short-circuit.
        if (e.op == Op::kAnd || e.op == Op::kOr) {
          Value left = eval(*e.args[0]);
          if (truthy(left) == (e.op == Op::kOr)) return left;
          return eval(*e.args[1]);
        }
        const Value left = eval(*e.args[0]);
        const Value right = eval(*e.args[1]);
        return binary_op(e.op, left, right);
      }
      case Expr::Kind::kCompare: {
        Value left = eval(*e.args[0]);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value right = eval(*e.args[i + 1]);
          if (!compare_op(e.ops[i], left, right)) return Value::boolean(false);
          left = std::move(right);
        }
        return Value::boolean(true);
      }
      case Expr::Kind::kCondition:
        if (truthy(eval(*e.args[0]))) return eval(*e.args[1]);
        return e.args[2] ? eval(*e.args[2]) : Value();
    }
    return Value();
  }

  Scope globals_;
  Scope root_;
  Scope* scope_ = nullptr;
  std::string* out_ = nullptr;
  int depth_ = 0;
  int macro_depth_ = 0;
  int64_t iterations_ = 0;
  int line_ = 0;
};

}  // namespace

struct Template::Program {
  Body body;
};

Template::Template(std::string source) {
  auto program = std::make_shared<Program>();
  program->body = parse(source);
  program_ = std::move(program);
}

Template::~Template() = default;
Template::Template(const Template&) = default;
Template& Template::operator=(const Template&) = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

std::string Template::render(const nlohmann::ordered_json& context) const {
  if (!context.is_object() && !context.is_null())
    fail("jinja", "the render context must be a JSON object");
  return render(from_json(context));
}

std::string Template::render(const Value& context) const {
  Renderer renderer(context);
  try {
    return renderer.run(program_->body);
  } catch (const Error& e) {
    // Errors from values, filters and raise_exception know nothing of the template; add the
    // line of the expression or statement being rendered.
    constexpr std::string_view kPrefix = "[jinja] ";
    std::string_view message = e.what();
    if (message.substr(0, kPrefix.size()) == kPrefix) message.remove_prefix(kPrefix.size());
    fail("jinja", "line ", renderer.line(), ": ", message);
  }
}

}  // namespace lmx::jinja
