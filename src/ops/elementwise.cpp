// Element-wise ops: unary math, binary math with broadcasting, where and cast.
#include "ops/op_util.h"

namespace lmx {
namespace detail {

Dtype promote(Dtype a, Dtype b) {
  if (a == b) return a;
  if (is_float(a) || is_float(b)) {
    if (!is_float(b)) return a;
    if (!is_float(a)) return b;
    return Dtype::f32;  // f16 with bf16, or either with f32
  }
  if (a == Dtype::boolean) return b;
  if (b == Dtype::boolean) return a;
  // Two integer types: the wider; a 32-bit one wins over 8-bit ones.
  if (itemsize(a) != itemsize(b)) return itemsize(a) > itemsize(b) ? a : b;
  return Dtype::i32;  // i32 with u32, or i8 with u8
}

}  // namespace detail

namespace {

const char* unary_name(UnaryOp op) {
  static constexpr const char* kNames[] = {"neg", "abs", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid",
                                           "silu", "gelu_tanh", "square", "logical_not", "sin", "cos"};
  return kNames[int(op)];
}
const char* binary_name(BinaryOp op) {
  static constexpr const char* kNames[] = {"add", "subtract", "multiply", "divide", "power", "maximum",
                                           "minimum", "equal", "not_equal", "less", "less_equal", "greater",
                                           "greater_equal", "logical_and", "logical_or"};
  return kNames[int(op)];
}
bool is_comparison(BinaryOp op) { return op >= BinaryOp::eq; }

}  // namespace

Array unary(UnaryOp op, const Array& a) {
  const char* name = unary_name(op);
  detail::check_valid(a, name);
  const bool integer_ok = op == UnaryOp::neg || op == UnaryOp::abs || op == UnaryOp::square;
  if (op == UnaryOp::logical_not) {
    LMX_CHECK(a.dtype() == Dtype::boolean, name, "expects a bool array, got ", dtype_name(a.dtype()));
  } else if (!integer_ok) {
    detail::check_float(a, name);
  } else {
    LMX_CHECK(a.dtype() != Dtype::boolean, name, "is not defined for bool arrays");
  }
  const detail::OpRecord record;
  Array out(a.shape(), a.dtype(), a.device());
  detail::kern(a).unary(op, a, out);
  if (is_float(a.dtype())) record(detail::Step::unary, {a}, out, int(op));
  return out;
}

Array binary(BinaryOp op, const Array& a, const Array& b) {
  const char* name = binary_name(op);
  detail::check_valid(a, name, "first operand");
  detail::check_valid(b, name, "second operand");
  detail::check_same_device(a, b, name);
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  Dtype t = detail::promote(a.dtype(), b.dtype());
  if (op == BinaryOp::logical_and || op == BinaryOp::logical_or) {
    LMX_CHECK(a.dtype() == Dtype::boolean && b.dtype() == Dtype::boolean, name, "expects bool arrays, got ",
              dtype_name(a.dtype()), " and ", dtype_name(b.dtype()));
  } else if (op == BinaryOp::pow) {
    LMX_CHECK(is_float(t), name, "expects floating-point arrays, got ", dtype_name(a.dtype()), " and ",
              dtype_name(b.dtype()));
  } else if (!is_comparison(op)) {
    LMX_CHECK(t != Dtype::boolean, name, "is not defined for bool arrays; cast them first");
  }
  const detail::OpRecord record;
  const Array ab = broadcast_to(astype(a, t), shape);
  const Array bb = broadcast_to(astype(b, t), shape);
  Array out(shape, is_comparison(op) ? Dtype::boolean : t, a.device());
  detail::kern(a).binary(op, ab, bb, out);
  if (is_float(t) && !is_comparison(op)) record(detail::Step::binary, {a, b}, out, int(op));
  return out;
}

Array neg(const Array& a) { return unary(UnaryOp::neg, a); }
Array abs(const Array& a) { return unary(UnaryOp::abs, a); }
Array exp(const Array& a) { return unary(UnaryOp::exp, a); }
Array log(const Array& a) { return unary(UnaryOp::log, a); }
Array sqrt(const Array& a) { return unary(UnaryOp::sqrt, a); }
Array rsqrt(const Array& a) { return unary(UnaryOp::rsqrt, a); }
Array tanh(const Array& a) { return unary(UnaryOp::tanh, a); }
Array sigmoid(const Array& a) { return unary(UnaryOp::sigmoid, a); }
Array silu(const Array& a) { return unary(UnaryOp::silu, a); }
Array gelu_tanh(const Array& a) { return unary(UnaryOp::gelu_tanh, a); }
Array square(const Array& a) { return unary(UnaryOp::square, a); }
Array logical_not(const Array& a) { return unary(UnaryOp::logical_not, a); }
Array sin(const Array& a) { return unary(UnaryOp::sin, a); }
Array cos(const Array& a) { return unary(UnaryOp::cos, a); }

Array add(const Array& a, const Array& b) { return binary(BinaryOp::add, a, b); }
Array subtract(const Array& a, const Array& b) { return binary(BinaryOp::sub, a, b); }
Array multiply(const Array& a, const Array& b) { return binary(BinaryOp::mul, a, b); }
Array divide(const Array& a, const Array& b) { return binary(BinaryOp::div, a, b); }
Array power(const Array& a, const Array& b) { return binary(BinaryOp::pow, a, b); }
Array maximum(const Array& a, const Array& b) { return binary(BinaryOp::maximum, a, b); }
Array minimum(const Array& a, const Array& b) { return binary(BinaryOp::minimum, a, b); }
Array equal(const Array& a, const Array& b) { return binary(BinaryOp::eq, a, b); }
Array not_equal(const Array& a, const Array& b) { return binary(BinaryOp::ne, a, b); }
Array less(const Array& a, const Array& b) { return binary(BinaryOp::lt, a, b); }
Array less_equal(const Array& a, const Array& b) { return binary(BinaryOp::le, a, b); }
Array greater(const Array& a, const Array& b) { return binary(BinaryOp::gt, a, b); }
Array greater_equal(const Array& a, const Array& b) { return binary(BinaryOp::ge, a, b); }
Array logical_and(const Array& a, const Array& b) { return binary(BinaryOp::logical_and, a, b); }
Array logical_or(const Array& a, const Array& b) { return binary(BinaryOp::logical_or, a, b); }
Array add(const Array& a, double b) { return add(a, detail::constant(b, a.dtype(), a.device())); }
Array multiply(const Array& a, double b) { return multiply(a, detail::constant(b, a.dtype(), a.device())); }
Array operator+(const Array& a, const Array& b) { return add(a, b); }
Array operator-(const Array& a, const Array& b) { return subtract(a, b); }
Array operator*(const Array& a, const Array& b) { return multiply(a, b); }
Array operator/(const Array& a, const Array& b) { return divide(a, b); }
Array operator-(const Array& a) { return neg(a); }

Array where(const Array& cond, const Array& a, const Array& b) {
  detail::check_valid(cond, "where", "condition");
  detail::check_valid(a, "where");
  detail::check_valid(b, "where");
  LMX_CHECK(cond.dtype() == Dtype::boolean, "where", "condition must be bool, got ", dtype_name(cond.dtype()));
  detail::check_same_device(cond, a, "where");
  detail::check_same_device(a, b, "where");
  const Shape shape = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), "where"), b.shape(), "where");
  const Dtype t = detail::promote(a.dtype(), b.dtype());
  const detail::OpRecord record;
  Array out(shape, t, a.device());
  detail::kern(a).where(broadcast_to(cond, shape), broadcast_to(astype(a, t), shape),
                        broadcast_to(astype(b, t), shape), out);
  if (is_float(t)) record(detail::Step::where, {cond, a, b}, out);
  return out;
}

Array astype(const Array& a, Dtype dtype) {
  detail::check_valid(a, "astype");
  if (a.dtype() == dtype) return a;
  const detail::OpRecord record;
  Array out(a.shape(), dtype, a.device());
  detail::kern(a).copy(a, out);
  if (is_float(a.dtype()) && is_float(dtype)) record(detail::Step::astype, {a}, out);
  return out;
}

}  // namespace lmx
