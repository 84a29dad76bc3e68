#include "text/jinja/parser.h"

#include <algorithm>
#include <initializer_list>

#include "core/error.h"
#include "text/jinja/lexer.h"

namespace lmx::jinja {
namespace {

std::string describe(const Token& t) {
  switch (t.type) {
    case TokenType::kText: return "template data";
    case TokenType::kVarBegin: return "'{{'";
    case TokenType::kVarEnd: return "end of print statement";
    case TokenType::kBlockBegin: return "'{%'";
    case TokenType::kBlockEnd: return "end of statement block";
    case TokenType::kString: return "string literal";
    case TokenType::kInt:
    case TokenType::kFloat: return "number '" + t.text + "'";
    case TokenType::kEof: return "end of template";
    default: return "'" + t.text + "'";
  }
}

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : toks_(std::move(tokens)) {}

  Body parse_template() {
    Body body = parse_body({});
    if (cur().type != TokenType::kEof) error("unexpected " + describe(peek(1)));
    return body;
  }

 private:
  // Counts recursion in the parser; every recursive path passes through one of these.
  class NestingGuard {
   public:
    explicit NestingGuard(Parser& p) : p_(p) {
      if (++p_.nesting_ > kMaxNesting) p_.error("template nested too deeply");
    }
    ~NestingGuard() { --p_.nesting_; }
    NestingGuard(const NestingGuard&) = delete;
    NestingGuard& operator=(const NestingGuard&) = delete;

   private:
    Parser& p_;
  };

  const Token& cur() const { return toks_[pos_]; }
  const Token& peek(size_t n) const { return toks_[std::min(pos_ + n, toks_.size() - 1)]; }
  void advance() {
    if (pos_ + 1 < toks_.size()) ++pos_;
  }
  bool is_op(const Token& t, std::string_view op) const {
    return t.type == TokenType::kOp && t.text == op;
  }
  bool is_op(std::string_view op) const { return is_op(cur(), op); }
  bool is_name(std::string_view name) const {
    return cur().type == TokenType::kName && cur().text == name;
  }
  bool skip_op(std::string_view op) {
    if (!is_op(op)) return false;
    advance();
    return true;
  }
  bool skip_name(std::string_view name) {
    if (!is_name(name)) return false;
    advance();
    return true;
  }

  [[noreturn]] void error(const std::string& message) const {
    syntax_error(cur().line, cur().column, message);
  }
  void expect_op(std::string_view op) {
    if (!skip_op(op)) error("expected '" + std::string(op) + "', got " + describe(cur()));
  }
  void expect(TokenType type, const char* what) {
    if (cur().type != type) error(std::string("expected ") + what + ", got " + describe(cur()));
    advance();
  }
  void expect_block_end() { expect(TokenType::kBlockEnd, "end of statement block"); }
  std::string expect_name() {
    if (cur().type != TokenType::kName) error("expected a name, got " + describe(cur()));
    std::string name = cur().text;
    advance();
    return name;
  }

  ExprPtr node(Expr::Kind kind, const Token& at) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = at.line;
    e->column = at.column;
    return e;
  }
  // Records the height of a finished node; deep trees are rejected so that evaluating and
  // destroying them stays within the stack.
  ExprPtr finish(ExprPtr e) {
    int depth = 0;
    for (const auto& a : e->args)
      if (a) depth = std::max(depth, a->depth);
    for (const auto& [k, a] : e->kwargs) depth = std::max(depth, a->depth);
    e->depth = depth + 1;
    if (e->depth > kMaxExprDepth) syntax_error(e->line, e->column, "expression nested too deeply");
    return e;
  }
  ExprPtr binary(Expr::Kind kind, Op op, ExprPtr left, ExprPtr right, const Token& at) {
    auto e = node(kind, at);
    e->op = op;
    e->args.push_back(std::move(left));
    e->args.push_back(std::move(right));
    return finish(std::move(e));
  }

  // ---- statements ----

  Body parse_body(std::initializer_list<std::string_view> end_names) {
    NestingGuard guard(*this);
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == TokenType::kEof) {
        if (end_names.size() == 0) return body;
        error("unexpected end of template, expected '" + std::string(end_names.end()[-1]) + "'");
      }
      if (t.type == TokenType::kText) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kText;
        s->line = t.line;
        s->text = t.text;
        body.push_back(std::move(s));
        advance();
      } else if (t.type == TokenType::kVarBegin) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kOutput;
        s->line = t.line;
        advance();
        s->expr = parse_tuple(true, false);
        expect(TokenType::kVarEnd, "end of print statement");
        body.push_back(std::move(s));
      } else if (t.type == TokenType::kBlockBegin) {
        const Token& name = peek(1);
        if (name.type == TokenType::kName &&
            std::find(end_names.begin(), end_names.end(), name.text) != end_names.end())
          return body;
        advance();
        body.push_back(parse_statement());
      } else {
        error("unexpected " + describe(t));
      }
    }
  }

  // Consumes "{% name" where name is one of the end names that parse_body stopped at.
  std::string take_end_tag() {
    advance();  // {%
    return expect_name();
  }

  StmtPtr make_stmt(Stmt::Kind kind, const Token& at) {
    auto s = std::make_unique<Stmt>();
    s->kind = kind;
    s->line = at.line;
    return s;
  }

  StmtPtr parse_statement() {
    const Token at = cur();
    if (at.type != TokenType::kName) error("expected a tag name, got " + describe(at));
    const std::string& tag = at.text;
    if (tag == "for") return parse_for();
    if (tag == "if") return parse_if();
    if (tag == "set") return parse_set();
    if (tag == "macro") return parse_macro();
    if (tag == "call") return parse_call_block();
    if (tag == "filter") return parse_filter_block();
    if (tag == "generation") {
      advance();
      expect_block_end();
      auto s = make_stmt(Stmt::Kind::kScope, at);
      s->body = parse_body({"endgeneration"});
      take_end_tag();
      expect_block_end();
      return s;
    }
    if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) error("'" + tag + "' outside loop");
      auto s = make_stmt(tag == "break" ? Stmt::Kind::kBreak : Stmt::Kind::kContinue, at);
      advance();
      expect_block_end();
      return s;
    }
    error("unknown or unexpected tag '" + tag + "'");
  }

  // A name, "name.attr", or a tuple of names, as allowed on the left of set and for.
  ExprPtr parse_assign_target(bool allow_attribute) {
    const Token at = cur();
    std::vector<ExprPtr> names;
    const bool parens = skip_op("(");
    while (true) {
      const Token name_tok = cur();
      auto n = node(Expr::Kind::kName, name_tok);
      n->name = expect_name();
      if (allow_attribute && names.empty() && !parens && is_op(".")) {
        advance();
        auto attr = node(Expr::Kind::kGetAttr, name_tok);
        attr->name = expect_name();
        attr->args.push_back(finish(std::move(n)));
        return finish(std::move(attr));
      }
      names.push_back(finish(std::move(n)));
      if (!skip_op(",")) break;
      if (!parens && cur().type != TokenType::kName) break;
      if (parens && is_op(")")) break;
    }
    if (parens) expect_op(")");
    if (names.size() == 1 && !parens) return std::move(names[0]);
    auto t = node(Expr::Kind::kTuple, at);
    t->args = std::move(names);
    return finish(std::move(t));
  }

  StmtPtr parse_for() {
    const Token at = cur();
    advance();
    auto s = make_stmt(Stmt::Kind::kFor, at);
    s->target = parse_assign_target(false);
    if (!skip_name("in")) error("expected 'in', got " + describe(cur()));
    s->expr = parse_tuple(false, false);
    if (skip_name("if")) s->filter = parse_expression(true);
    if (is_name("recursive")) error("recursive loops are not supported");
    expect_block_end();
    ++loop_depth_;
    s->body = parse_body({"else", "endfor"});
    --loop_depth_;
    if (take_end_tag() == "else") {
      expect_block_end();
      s->else_body = parse_body({"endfor"});
      take_end_tag();
    }
    expect_block_end();
    return s;
  }

  StmtPtr parse_if() {
    const Token at = cur();
    advance();
    auto s = make_stmt(Stmt::Kind::kIf, at);
    ExprPtr cond = parse_tuple(true, false);
    while (true) {
      expect_block_end();
      Body body = parse_body({"elif", "else", "endif"});
      s->branches.emplace_back(std::move(cond), std::move(body));
      const std::string tag = take_end_tag();
      if (tag == "elif") {
        cond = parse_tuple(true, false);
        continue;
      }
      if (tag == "else") {
        expect_block_end();
        s->branches.emplace_back(nullptr, parse_body({"endif"}));
        take_end_tag();
      }
      expect_block_end();
      return s;
    }
  }

  StmtPtr parse_set() {
    const Token at = cur();
    advance();
    ExprPtr target = parse_assign_target(true);
    if (skip_op("=")) {
      auto s = make_stmt(Stmt::Kind::kSet, at);
      s->target = std::move(target);
      s->expr = parse_tuple(true, false);
      expect_block_end();
      return s;
    }
    if (target->kind == Expr::Kind::kTuple) error("a block set needs a single name");
    auto s = make_stmt(Stmt::Kind::kSetBlock, at);
    s->target = std::move(target);
    if (is_op("|")) s->filter = parse_filter_chain(nullptr);
    expect_block_end();
    s->body = parse_body({"endset"});
    take_end_tag();
    expect_block_end();
    return s;
  }

  void parse_params(Stmt& s) {
    expect_op("(");
    while (!is_op(")")) {
      if (!s.params.empty()) expect_op(",");
      if (is_op(")")) break;  // trailing comma
      std::string name = expect_name();
      ExprPtr def;
      if (skip_op("=")) def = parse_expression(true);
      s.params.emplace_back(std::move(name), std::move(def));
    }
    expect_op(")");
  }

  StmtPtr parse_macro() {
    const Token at = cur();
    advance();
    auto s = make_stmt(Stmt::Kind::kMacro, at);
    s->name = expect_name();
    parse_params(*s);
    expect_block_end();
    const int saved_loops = loop_depth_;
    loop_depth_ = 0;  // a loop around the definition does not surround the body at call time
    s->body = parse_body({"endmacro"});
    loop_depth_ = saved_loops;
    take_end_tag();
    expect_block_end();
    return s;
  }

  StmtPtr parse_call_block() {
    const Token at = cur();
    advance();
    auto s = make_stmt(Stmt::Kind::kCallBlock, at);
    if (is_op("(")) parse_params(*s);
    s->expr = parse_expression(true);
    if (s->expr->kind != Expr::Kind::kCall) error("expected a call in {% call %}");
    expect_block_end();
    const int saved_loops = loop_depth_;
    loop_depth_ = 0;
    s->body = parse_body({"endcall"});
    loop_depth_ = saved_loops;
    take_end_tag();
    expect_block_end();
    return s;
  }

  StmtPtr parse_filter_block() {
    const Token at = cur();
    auto s = make_stmt(Stmt::Kind::kFilterBlock, at);
    advance();
    // The "filter" tag name plays the role of the first "|".
    s->filter = parse_filter_chain(nullptr, /*first_pipe_consumed=*/true);
    expect_block_end();
    s->body = parse_body({"endfilter"});
    take_end_tag();
    expect_block_end();
    return s;
  }

  // ---- expressions ----

  bool at_tuple_end() const {
    const Token& t = cur();
    return t.type == TokenType::kVarEnd || t.type == TokenType::kBlockEnd || is_op(t, ")") ||
           (t.type == TokenType::kName && (t.text == "if" || t.text == "in"));
  }

  // A comma-separated list becomes a tuple; used for {{ }}, set values, for iterables and
  // parenthesised expressions.
  ExprPtr parse_tuple(bool with_condexpr, bool explicit_parens) {
    const Token at = cur();
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) expect_op(",");
      if (at_tuple_end() && (!items.empty() || explicit_parens)) break;
      items.push_back(with_condexpr ? parse_expression(true) : parse_or());
      if (is_op(","))
        is_tuple = true;
      else
        break;
    }
    if (!is_tuple && items.size() == 1) return std::move(items[0]);
    auto t = node(Expr::Kind::kTuple, at);
    t->args = std::move(items);
    return finish(std::move(t));
  }

  ExprPtr parse_expression(bool with_condexpr) {
    return with_condexpr ? parse_condexpr() : parse_or();
  }

  ExprPtr parse_condexpr() {
    NestingGuard guard(*this);
    const Token at = cur();
    ExprPtr expr = parse_or();
    while (skip_name("if")) {
      auto c = node(Expr::Kind::kCondition, at);
      c->args.push_back(parse_or());
      c->args.push_back(std::move(expr));
      c->args.push_back(skip_name("else") ? parse_condexpr() : nullptr);
      expr = finish(std::move(c));
    }
    return expr;
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (is_name("or")) {
      const Token at = cur();
      advance();
      left = binary(Expr::Kind::kBinary, Op::kOr, std::move(left), parse_and(), at);
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (is_name("and")) {
      const Token at = cur();
      advance();
      left = binary(Expr::Kind::kBinary, Op::kAnd, std::move(left), parse_not(), at);
    }
    return left;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      NestingGuard guard(*this);
      auto e = node(Expr::Kind::kUnary, cur());
      advance();
      e->op = Op::kNot;
      e->args.push_back(parse_not());
      return finish(std::move(e));
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const Token at = cur();
    ExprPtr first = parse_math1();
    ExprPtr cmp;
    while (true) {
      Op op;
      const Token& t = cur();
      if (t.type == TokenType::kOp && t.text == "==")
        op = Op::kEq;
      else if (t.type == TokenType::kOp && t.text == "!=")
        op = Op::kNe;
      else if (t.type == TokenType::kOp && t.text == "<")
        op = Op::kLt;
      else if (t.type == TokenType::kOp && t.text == "<=")
        op = Op::kLe;
      else if (t.type == TokenType::kOp && t.text == ">")
        op = Op::kGt;
      else if (t.type == TokenType::kOp && t.text == ">=")
        op = Op::kGe;
      else if (t.type == TokenType::kName && t.text == "in")
        op = Op::kIn;
      else if (t.type == TokenType::kName && t.text == "not" && peek(1).type == TokenType::kName &&
               peek(1).text == "in") {
        op = Op::kNotIn;
        advance();
      } else {
        break;
      }
      advance();
      if (!cmp) {
        cmp = node(Expr::Kind::kCompare, at);
        cmp->args.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parse_math1());
    }
    return cmp ? finish(std::move(cmp)) : std::move(first);
  }

  ExprPtr parse_math1() {
    ExprPtr left = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token at = cur();
      const Op op = at.text == "+" ? Op::kAdd : Op::kSub;
      advance();
      left = binary(Expr::Kind::kBinary, op, std::move(left), parse_concat(), at);
    }
    return left;
  }

  ExprPtr parse_concat() {
    ExprPtr left = parse_math2();
    while (is_op("~")) {
      const Token at = cur();
      advance();
      left = binary(Expr::Kind::kBinary, Op::kConcat, std::move(left), parse_math2(), at);
    }
    return left;
  }

  ExprPtr parse_math2() {
    ExprPtr left = parse_pow();
    while (true) {
      const Token at = cur();
      Op op;
      if (is_op("*"))
        op = Op::kMul;
      else if (is_op("/"))
        op = Op::kDiv;
      else if (is_op("//"))
        op = Op::kFloorDiv;
      else if (is_op("%"))
        op = Op::kMod;
      else
        break;
      advance();
      left = binary(Expr::Kind::kBinary, op, std::move(left), parse_pow(), at);
    }
    return left;
  }

  ExprPtr parse_pow() {
    ExprPtr left = parse_unary(true);
    while (is_op("**")) {
      const Token at = cur();
      advance();
      left = binary(Expr::Kind::kBinary, Op::kPow, std::move(left), parse_unary(true), at);
    }
    return left;
  }

  ExprPtr parse_unary(bool with_filter) {
    NestingGuard guard(*this);
    const Token at = cur();
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      advance();
      e = node(Expr::Kind::kUnary, at);
      e->op = at.text == "-" ? Op::kNeg : Op::kPos;
      e->args.push_back(parse_unary(false));
      e = finish(std::move(e));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr constant(const Token& at, Value v) {
    auto e = node(Expr::Kind::kConst, at);
    e->value = std::move(v);
    return finish(std::move(e));
  }

  ExprPtr parse_primary() {
    const Token at = cur();
    switch (at.type) {
      case TokenType::kName: {
        advance();
        if (at.text == "true" || at.text == "True") return constant(at, Value::boolean(true));
        if (at.text == "false" || at.text == "False") return constant(at, Value::boolean(false));
        if (at.text == "none" || at.text == "None") return constant(at, Value::none());
        auto e = node(Expr::Kind::kName, at);
        e->name = at.text;
        return finish(std::move(e));
      }
      case TokenType::kString: {
        std::string s;
        while (cur().type == TokenType::kString) {  // adjacent literals concatenate
          s += cur().text;
          advance();
        }
        return constant(at, Value::string(std::move(s)));
      }
      case TokenType::kInt: advance(); return constant(at, Value::integer(at.int_value));
      case TokenType::kFloat: advance(); return constant(at, Value::number(at.float_value));
      default: break;
    }
    if (skip_op("(")) {
      ExprPtr e = parse_tuple(true, true);
      expect_op(")");
      return e;
    }
    if (skip_op("[")) {
      auto e = node(Expr::Kind::kList, at);
      while (!is_op("]")) {
        if (!e->args.empty()) expect_op(",");
        if (is_op("]")) break;
        e->args.push_back(parse_expression(true));
      }
      expect_op("]");
      return finish(std::move(e));
    }
    if (skip_op("{")) {
      auto e = node(Expr::Kind::kDict, at);
      while (!is_op("}")) {
        if (!e->args.empty()) expect_op(",");
        if (is_op("}")) break;
        e->args.push_back(parse_expression(true));
        expect_op(":");
        e->args.push_back(parse_expression(true));
      }
      expect_op("}");
      return finish(std::move(e));
    }
    error("unexpected " + describe(at));
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      if (is_op(".") || is_op("[")) {
        e = parse_subscript(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        e = parse_filter(std::move(e));
      } else if (is_name("is")) {
        e = parse_test(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr obj) {
    const Token at = cur();
    if (skip_op(".")) {
      const Token attr = cur();
      if (attr.type == TokenType::kInt) {  // x.0 is x[0]
        advance();
        auto e = node(Expr::Kind::kGetItem, at);
        e->args.push_back(std::move(obj));
        e->args.push_back(constant(attr, Value::integer(attr.int_value)));
        return finish(std::move(e));
      }
      auto e = node(Expr::Kind::kGetAttr, at);
      e->name = expect_name();
      e->args.push_back(std::move(obj));
      return finish(std::move(e));
    }
    advance();  // [
    ExprPtr start, stop, step;
    bool slice = false;
    if (!is_op(":")) start = parse_expression(true);
    if (skip_op(":")) {
      slice = true;
      if (!is_op("]") && !is_op(":")) stop = parse_expression(true);
      if (skip_op(":") && !is_op("]")) step = parse_expression(true);
    }
    expect_op("]");
    auto e = node(slice ? Expr::Kind::kSlice : Expr::Kind::kGetItem, at);
    e->args.push_back(std::move(obj));
    e->args.push_back(std::move(start));
    if (slice) {
      e->args.push_back(std::move(stop));
      e->args.push_back(std::move(step));
    }
    return finish(std::move(e));
  }

  // Parses "(a, b, key=c)" into e->args (after whatever is already there) and e->kwargs.
  void parse_call_args(Expr& e) {
    expect_op("(");
    bool first = true;
    while (!is_op(")")) {
      if (!first) expect_op(",");
      first = false;
      if (is_op(")")) break;
      if (is_op("*") || is_op("**")) error("*args and **kwargs in calls are not supported");
      if (cur().type == TokenType::kName && is_op(peek(1), "=")) {
        std::string key = cur().text;
        advance();
        advance();
        e.kwargs.emplace_back(std::move(key), parse_expression(true));
      } else {
        if (!e.kwargs.empty()) error("positional argument follows keyword argument");
        e.args.push_back(parse_expression(true));
      }
    }
    expect_op(")");
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto e = node(Expr::Kind::kCall, cur());
    e->args.push_back(std::move(callee));
    parse_call_args(*e);
    return finish(std::move(e));
  }

  std::string parse_dotted_name() {
    std::string name = expect_name();
    while (skip_op(".")) {
      name += '.';
      name += expect_name();
    }
    return name;
  }

  ExprPtr parse_filter(ExprPtr input, bool pipe_consumed = false) {
    const Token at = cur();
    if (!pipe_consumed) expect_op("|");
    auto e = node(Expr::Kind::kFilter, at);
    e->name = parse_dotted_name();
    e->args.push_back(std::move(input));
    if (is_op("(")) parse_call_args(*e);
    return finish(std::move(e));
  }

  ExprPtr parse_filter_chain(ExprPtr input, bool first_pipe_consumed = false) {
    ExprPtr e = parse_filter(std::move(input), first_pipe_consumed);
    while (is_op("|")) e = parse_filter(std::move(e));
    return e;
  }

  ExprPtr parse_test(ExprPtr input) {
    auto e = node(Expr::Kind::kTest, cur());
    advance();  // is
    e->negated = skip_name("not");
    e->name = parse_dotted_name();
    e->args.push_back(std::move(input));
    const Token& t = cur();
    if (is_op("(")) {
      parse_call_args(*e);
    } else if ((t.type == TokenType::kName && t.text != "else" && t.text != "or" &&
                t.text != "and" && t.text != "if" && t.text != "is" && t.text != "in" &&
                t.text != "not") ||
               t.type == TokenType::kString || t.type == TokenType::kInt ||
               t.type == TokenType::kFloat || is_op("[") || is_op("{")) {
      // "x is divisibleby 3": one argument without parentheses.
      e->args.push_back(parse_postfix(parse_primary()));
    }
    return finish(std::move(e));
  }

  std::vector<Token> toks_;
  size_t pos_ = 0;
  int nesting_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

Body parse(std::string_view source) { return Parser(tokenize(source)).parse_template(); }

}  // namespace lmx::jinja
