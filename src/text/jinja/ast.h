// The parsed template: expression and statement nodes, owned by unique_ptr.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "text/jinja/value.h"

namespace lmx::jinja {

struct Expr;
struct Stmt;
using ExprPtr = std::unique_ptr<Expr>;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

enum class Op {
  kAdd,
  kSub,
  kMul,
  kDiv,
  kFloorDiv,
  kMod,
  kPow,
  kConcat,
  kEq,
  kNe,
  kLt,
  kLe,
  kGt,
  kGe,
  kIn,
  kNotIn,
  kAnd,
  kOr,
  kNot,
  kNeg,
  kPos,
};

struct Expr {
  enum class Kind {
    kConst,      // value
    kName,       // name
    kList,       // args: elements
    kTuple,      // args: elements
    kDict,       // args: key0, value0, key1, value1, ...
    kGetAttr,    // args[0].name
    kGetItem,    // args[0][args[1]]
    kSlice,      // args[0][args[1]:args[2]:args[3]], missing parts are null
    kCall,       // args[0](args[1:], kwargs)
    kFilter,     // args[0] | name(args[1:], kwargs); args[0] is null in {% filter %}
    kTest,       // args[0] is [not] name(args[1:], kwargs)
    kUnary,      // op args[0]
    kBinary,     // args[0] op args[1]
    kCompare,    // args[0] ops[0] args[1] ops[1] args[2] ... (chained)
    kCondition,  // args[1] if args[0] else args[2] (args[2] may be null)
  };
  Kind kind;
  int line = 0;
  int column = 0;
  int depth = 1;  // height of this subtree, bounded by the parser
  Value value;
  std::string name;
  Op op = Op::kAdd;
  bool negated = false;  // "is not"
  std::vector<Op> ops;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
};

struct Stmt {
  enum class Kind {
    kText,         // text
    kOutput,       // {{ expr }}
    kIf,           // branches: (condition, body); the else branch has a null condition
    kFor,          // for target in expr [if filter] body [else else_body]
    kSet,          // set target = expr
    kSetBlock,     // set target [| filter] body endset; expr holds the filter chain
    kMacro,        // macro name(params) body
    kCallBlock,    // call(params) expr body: expr is the call, body becomes caller()
    kFilterBlock,  // filter expr body: expr is a filter chain whose innermost input is null
    kBreak,
    kContinue,
    kScope,  // a body rendered as is: {% generation %}
  };
  Kind kind;
  int line = 0;
  std::string text;
  ExprPtr target;  // kName, kTuple of kName, or kGetAttr on a kName (namespace attribute)
  ExprPtr expr;
  ExprPtr filter;
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body;
  Body else_body;
  std::string name;
  std::vector<std::pair<std::string, ExprPtr>> params;  // macro parameters and defaults
};

}  // namespace lmx::jinja
