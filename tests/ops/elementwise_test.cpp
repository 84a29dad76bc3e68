// Unary and binary element-wise ops against float64 references, every float dtype,
// awkward sizes, with broadcasting, plus integer and comparison semantics.
#include <tuple>

#include "harness.h"

namespace lmx::test {
namespace {

struct UnaryCase {
  UnaryOp op;
  const char* name;
  double (*ref)(double);
  double lo, hi;
};
const UnaryCase kUnary[] = {
    {UnaryOp::neg, "neg", [](double x) { return -x; }, -4, 4},
    {UnaryOp::abs, "abs", [](double x) { return std::abs(x); }, -4, 4},
    {UnaryOp::exp, "exp", [](double x) { return std::exp(x); }, -4, 4},
    {UnaryOp::log, "log", [](double x) { return std::log(x); }, 0.05, 8},
    {UnaryOp::sqrt, "sqrt", [](double x) { return std::sqrt(x); }, 0.01, 8},
    {UnaryOp::rsqrt, "rsqrt", [](double x) { return 1 / std::sqrt(x); }, 0.05, 8},
    {UnaryOp::tanh, "tanh", [](double x) { return std::tanh(x); }, -4, 4},
    {UnaryOp::sigmoid, "sigmoid", [](double x) { return 1 / (1 + std::exp(-x)); }, -8, 8},
    {UnaryOp::silu, "silu", [](double x) { return x / (1 + std::exp(-x)); }, -8, 8},
    {UnaryOp::gelu_tanh, "gelu_tanh",
     [](double x) { return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); }, -6, 6},
    {UnaryOp::square, "square", [](double x) { return x * x; }, -4, 4},
    {UnaryOp::sin, "sin", [](double x) { return std::sin(x); }, -6, 6},
    {UnaryOp::cos, "cos", [](double x) { return std::cos(x); }, -6, 6},
};

using UnaryParam = std::tuple<int, Dtype, int64_t>;
class UnaryOpTest : public ::testing::TestWithParam<UnaryParam> {};

TEST_P(UnaryOpTest, MatchesFloat64Reference) {
  const auto [which, dtype, n] = GetParam();
  const UnaryCase& c = kUnary[which];
  for (Device dev : test_devices()) {
    const Input x = random_input({n}, dtype, 7 + n, c.lo, c.hi, dev);
    std::vector<double> want(x.values.size());
    for (size_t i = 0; i < want.size(); ++i) want[i] = c.ref(x.values[i]);
    // One rounding to the dtype plus f32 evaluation error; atol covers results near 0.
    const double u = unit_roundoff(dtype);
    expect_close(unary(c.op, x.array), want, 2 * u + 1e-6, 2 * u + 1e-6, std::string(c.name) + " on " + dev.str());
  }
}

INSTANTIATE_TEST_SUITE_P(Ops, UnaryOpTest,
                         ::testing::Combine(::testing::Range(0, int(std::size(kUnary))),
                                            ::testing::ValuesIn(kFloatDtypes), ::testing::ValuesIn(kAwkwardSizes)),
                         [](const auto& info) {
                           return std::string(kUnary[std::get<0>(info.param)].name) + "_" +
                                  dtype_param_name(std::get<1>(info.param)) + "_" +
                                  std::to_string(std::get<2>(info.param));
                         });

struct BinaryCase {
  BinaryOp op;
  const char* name;
  double (*ref)(double, double);
  double lo, hi;  // range of both operands
};
const BinaryCase kBinary[] = {
    {BinaryOp::add, "add", [](double a, double b) { return a + b; }, -4, 4},
    {BinaryOp::sub, "sub", [](double a, double b) { return a - b; }, -4, 4},
    {BinaryOp::mul, "mul", [](double a, double b) { return a * b; }, -4, 4},
    {BinaryOp::div, "div", [](double a, double b) { return a / b; }, 0.25, 4},
    {BinaryOp::pow, "pow", [](double a, double b) { return std::pow(a, b); }, 0.25, 3},
    {BinaryOp::maximum, "maximum", [](double a, double b) { return std::max(a, b); }, -4, 4},
    {BinaryOp::minimum, "minimum", [](double a, double b) { return std::min(a, b); }, -4, 4},
    {BinaryOp::eq, "eq", [](double a, double b) { return double(a == b); }, -1, 1},
    {BinaryOp::ne, "ne", [](double a, double b) { return double(a != b); }, -1, 1},
    {BinaryOp::lt, "lt", [](double a, double b) { return double(a < b); }, -4, 4},
    {BinaryOp::le, "le", [](double a, double b) { return double(a <= b); }, -4, 4},
    {BinaryOp::gt, "gt", [](double a, double b) { return double(a > b); }, -4, 4},
    {BinaryOp::ge, "ge", [](double a, double b) { return double(a >= b); }, -4, 4},
};

// Shapes of the two operands: same shape, a scalar, and two-sided broadcasting.
using BinaryParam = std::tuple<int, Dtype, int64_t, int>;
class BinaryOpTest : public ::testing::TestWithParam<BinaryParam> {};

TEST_P(BinaryOpTest, MatchesFloat64ReferenceWithBroadcasting) {
  const auto [which, dtype, n, layout] = GetParam();
  const BinaryCase& c = kBinary[which];
  const Shape sa = layout == 0 ? Shape{n} : layout == 1 ? Shape{3, n} : Shape{2, 1, n};
  const Shape sb = layout == 0 ? Shape{n} : layout == 1 ? Shape{} : Shape{3, 1};
  for (Device dev : test_devices()) {
    const Input a = random_input(sa, dtype, 11 + n, c.lo, c.hi, dev);
    Input b = random_input(sb, dtype, 13 + n, c.lo, c.hi, dev);
    if (c.op == BinaryOp::eq || c.op == BinaryOp::ne) {  // make some elements equal
      b = layout == 0 ? a : b;
    }
    const Shape out_shape = broadcast_shapes(sa, sb, "test");
    const Array got = binary(c.op, a.array, b.array);
    ASSERT_EQ(got.shape(), out_shape);
    // Reference with explicit broadcast indexing.
    std::vector<double> want(size_t(numel(out_shape)));
    const Strides os = row_major_strides(out_shape);
    for (size_t i = 0; i < want.size(); ++i) {
      auto index_into = [&](const Shape& s) {
        int64_t off = 0, stride = 1;
        for (int d = int(out_shape.size()) - 1, e = int(s.size()) - 1; e >= 0; --d, --e) {
          const int64_t idx = (int64_t(i) / os[d]) % out_shape[d];
          off += (s[e] == 1 ? 0 : idx) * stride;
          stride *= s[e];
        }
        return size_t(off);
      };
      want[i] = c.ref(a.values[index_into(sa)], b.values[index_into(sb)]);
    }
    const bool exact = c.op >= BinaryOp::maximum;
    const double u = exact ? 0 : unit_roundoff(dtype);
    expect_close(got, want, 2 * u + (exact ? 0 : 1e-6), 2 * u, std::string(c.name) + " on " + dev.str());
  }
}

INSTANTIATE_TEST_SUITE_P(Ops, BinaryOpTest,
                         ::testing::Combine(::testing::Range(0, int(std::size(kBinary))),
                                            ::testing::ValuesIn(kFloatDtypes), ::testing::Values(1, 33, 4097),
                                            ::testing::Values(0, 1, 2)),
                         [](const auto& info) {
                           return std::string(kBinary[std::get<0>(info.param)].name) + "_" +
                                  dtype_param_name(std::get<1>(info.param)) + "_" +
                                  std::to_string(std::get<2>(info.param)) + "_layout" +
                                  std::to_string(std::get<3>(info.param));
                         });

TEST(ElementwiseTest, IntegerArithmeticWrapsAndDividesByZeroToZero) {
  const Array a = from_vector<int32_t>({7, -7, 2147483647, 5}, {4});
  const Array b = from_vector<int32_t>({2, 2, 1, 0}, {4});
  EXPECT_EQ(to_vector<int32_t>(divide(a, b)), (std::vector<int32_t>{3, -3, 2147483647, 0}));
  EXPECT_EQ(to_vector<int32_t>(add(a, b)), (std::vector<int32_t>{9, -5, -2147483648, 5}));
  EXPECT_EQ(to_vector<int32_t>(abs(a)), (std::vector<int32_t>{7, 7, 2147483647, 5}));
}

TEST(ElementwiseTest, PromotionFollowsNumpyForMixedDtypes) {
  EXPECT_EQ(add(ones({2}, Dtype::bf16), ones({2}, Dtype::f16)).dtype(), Dtype::f32);
  EXPECT_EQ(add(ones({2}, Dtype::i32), ones({2}, Dtype::bf16)).dtype(), Dtype::bf16);
  EXPECT_EQ(add(ones({2}, Dtype::u8), ones({2}, Dtype::i32)).dtype(), Dtype::i32);
  EXPECT_EQ(less(ones({2}, Dtype::f32), ones({2}, Dtype::f32)).dtype(), Dtype::boolean);
}

TEST(ElementwiseTest, WhereSelectsWithBroadcastCondition) {
  const Array cond = from_vector<uint8_t>({1, 0, 1}, {3});
  const Array c = astype(cond, Dtype::boolean);
  const Array a = full({2, 3}, 5.0), b = full({1}, -1.0);
  EXPECT_EQ(to_floats(where(c, a, b)), (std::vector<float>{5, -1, 5, 5, -1, 5}));
}

TEST(ElementwiseTest, MaximumPropagatesNan) {
  const Array a = from_floats({NAN, 1, 2}, {3}), b = from_floats({0, NAN, 1}, {3});
  const std::vector<float> m = to_floats(maximum(a, b));
  EXPECT_TRUE(std::isnan(m[0]));
  EXPECT_EQ(m[2], 2);
}

TEST(ElementwiseTest, LogicalOps) {
  const Array t = astype(from_vector<uint8_t>({1, 1, 0, 0}, {4}), Dtype::boolean);
  const Array u = astype(from_vector<uint8_t>({1, 0, 1, 0}, {4}), Dtype::boolean);
  EXPECT_EQ(to_floats(logical_and(t, u)), (std::vector<float>{1, 0, 0, 0}));
  EXPECT_EQ(to_floats(logical_or(t, u)), (std::vector<float>{1, 1, 1, 0}));
  EXPECT_EQ(to_floats(logical_not(t)), (std::vector<float>{0, 0, 1, 1}));
}

TEST(ElementwiseTest, RejectsBadShapesAndDtypes) {
  expect_op_error([] { add(ones({2, 3}), ones({4})); }, "add");
  expect_op_error([] { exp(ones({2}, Dtype::i32)); }, "exp");
  expect_op_error([] { logical_and(ones({2}), ones({2})); }, "logical_and");
  expect_op_error([] { power(ones({2}, Dtype::i32), ones({2}, Dtype::i32)); }, "power");
  expect_op_error([] { where(ones({2}), ones({2}), ones({2})); }, "where");
  expect_op_error([] { add(Array(), ones({2})); }, "add");
  expect_op_error([] { neg(ones({2}, Dtype::boolean)); }, "neg");
}

}  // namespace
}  // namespace lmx::test
