// Every op's gradient rule against float64 central differences of a float64 forward.
#include <cmath>

#include "grad_harness.h"
#include "ops/fast.h"

namespace lmx::test {
namespace {

HT ref_unary(const HT& a, UnaryOp op) {
  return map1(a, [op](double x) {
    switch (op) {
      case UnaryOp::neg: return -x;
      case UnaryOp::abs: return std::abs(x);
      case UnaryOp::exp: return std::exp(x);
      case UnaryOp::log: return std::log(x);
      case UnaryOp::sqrt: return std::sqrt(x);
      case UnaryOp::rsqrt: return 1 / std::sqrt(x);
      case UnaryOp::tanh: return std::tanh(x);
      case UnaryOp::sigmoid: return 1 / (1 + std::exp(-x));
      case UnaryOp::silu: return x / (1 + std::exp(-x));
      case UnaryOp::gelu_tanh:
        return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
      case UnaryOp::square: return x * x;
      case UnaryOp::sin: return std::sin(x);
      case UnaryOp::cos: return std::cos(x);
      default: return double(NAN);
    }
  });
}

TEST(OpGradTest, UnaryOps) {
  const UnaryOp ops[] = {UnaryOp::neg,  UnaryOp::abs,       UnaryOp::exp,    UnaryOp::log,
                         UnaryOp::sqrt, UnaryOp::rsqrt,     UnaryOp::tanh,   UnaryOp::sigmoid,
                         UnaryOp::silu, UnaryOp::gelu_tanh, UnaryOp::square, UnaryOp::sin,
                         UnaryOp::cos};
  for (const UnaryOp op : ops) {
    const bool positive = op == UnaryOp::log || op == UnaryOp::sqrt || op == UnaryOp::rsqrt;
    check_gradients({"unary " + std::to_string(int(op)),
                     {{3, 7}},
                     positive ? 0.2 : -3.0,
                     3.0,
                     [op](const std::vector<Array>& x) { return unary(op, x[0]); },
                     [op](const std::vector<HT>& x) { return ref_unary(x[0], op); }});
  }
}

TEST(OpGradTest, BinaryOpsBroadcastBackToEachShape) {
  struct B {
    BinaryOp op;
    double lo;
    std::function<double(double, double)> f;
  };
  const B ops[] = {{BinaryOp::add, -2, [](double a, double b) { return a + b; }},
                   {BinaryOp::sub, -2, [](double a, double b) { return a - b; }},
                   {BinaryOp::mul, -2, [](double a, double b) { return a * b; }},
                   {BinaryOp::div, 0.5, [](double a, double b) { return a / b; }},
                   {BinaryOp::pow, 0.5, [](double a, double b) { return std::pow(a, b); }},
                   {BinaryOp::maximum, -2, [](double a, double b) { return std::max(a, b); }},
                   {BinaryOp::minimum, -2, [](double a, double b) { return std::min(a, b); }}};
  // Equal shapes, a row against a matrix, and both stretched ([3, 1, 4] with [2, 4]).
  const std::vector<std::vector<Shape>> shapes = {
      {{4, 5}, {4, 5}}, {{5}, {3, 5}}, {{3, 1, 4}, {2, 4}}};
  for (const B& b : ops)
    for (const auto& s : shapes)
      check_gradients(
          {"binary " + std::to_string(int(b.op)) + " " + shape_str(s[0]) + shape_str(s[1]), s, b.lo,
           2.0, [&](const std::vector<Array>& x) { return binary(b.op, x[0], x[1]); },
           [&](const std::vector<HT>& x) { return map2(x[0], x[1], b.f); }});
}

TEST(OpGradTest, WhereSendsEachSideItsOwnPart) {
  check_gradients({"where",
                   {{3, 4}, {4}, {3, 1}},
                   -2,
                   2,
                   [](const std::vector<Array>& x) {
                     return where(greater(x[0], scalar(0, Dtype::f32, x[0].device())), x[1], x[2]);
                   },
                   [](const std::vector<HT>& x) {
                     HT out{{3, 4}, {}};
                     for_each_index(out.shape, [&](const std::vector<int64_t>& i, int64_t) {
                       out.v.push_back(at_broadcast(x[0], i) > 0 ? at_broadcast(x[1], i)
                                                                 : at_broadcast(x[2], i));
                     });
                     return out;
                   },
                   {false, true, true}});
}

TEST(OpGradTest, MatmulWithBatchesAndVectors) {
  // [2, 3, 4] x [4, 5]: the weight's gradient sums over the batch.
  check_gradients({"batched",
                   {{2, 3, 4}, {4, 5}},
                   -2,
                   2,
                   [](const std::vector<Array>& x) { return matmul(x[0], x[1]); },
                   [](const std::vector<HT>& x) { return matmul_ref(x[0], x[1]); }});
  // x·Wᵀ through a transposed view, as Linear does.
  check_gradients({"transposed",
                   {{3, 6}, {5, 6}},
                   -2,
                   2,
                   [](const std::vector<Array>& x) { return matmul(x[0], swapaxes(x[1], 0, 1)); },
                   [](const std::vector<HT>& x) {
                     HT wt{{6, 5}, std::vector<double>(30)};
                     for (int i = 0; i < 5; ++i)
                       for (int j = 0; j < 6; ++j)
                         wt.v[size_t(j * 5 + i)] = x[1].v[size_t(i * 6 + j)];
                     return matmul_ref(x[0], wt);
                   }});
  check_gradients({"vector x matrix",
                   {{4}, {4, 3}},
                   -2,
                   2,
                   [](const std::vector<Array>& x) { return matmul(x[0], x[1]); },
                   [](const std::vector<HT>& x) {
                     HT out = matmul_ref({{1, 4}, x[0].v}, x[1]);
                     out.shape = {3};
                     return out;
                   }});
  check_gradients({"matrix x vector",
                   {{3, 4}, {4}},
                   -2,
                   2,
                   [](const std::vector<Array>& x) { return matmul(x[0], x[1]); },
                   [](const std::vector<HT>& x) {
                     HT out = matmul_ref(x[0], {{4, 1}, x[1].v});
                     out.shape = {3};
                     return out;
                   }});
  check_gradients({"vector x vector",
                   {{4}, {4}},
                   -2,
                   2,
                   [](const std::vector<Array>& x) { return matmul(x[0], x[1]); },
                   [](const std::vector<HT>& x) {
                     HT out = matmul_ref({{1, 4}, x[0].v}, {{4, 1}, x[1].v});
                     out.shape = {};
                     return out;
                   }});
}

// t [A, B, C] with axis 1 moved last: [A, C, B].
HT middle_last(const HT& t) {
  const int64_t a = t.shape[0], b = t.shape[1], c = t.shape[2];
  HT out{{a, c, b}, std::vector<double>(t.v.size())};
  for (int64_t i = 0; i < a; ++i)
    for (int64_t j = 0; j < b; ++j)
      for (int64_t k = 0; k < c; ++k)
        out.v[size_t((i * c + k) * b + j)] = t.v[size_t((i * b + j) * c + k)];
  return out;
}

TEST(OpGradTest, ReductionsOverAMiddleAxis) {
  using Row = std::vector<double>;
  const std::pair<std::string, std::function<double(const Row&)>> refs[] = {
      {"sum",
       [](const Row& r) {
         double s = 0;
         for (double v : r) s += v;
         return s;
       }},
      {"mean",
       [](const Row& r) {
         double s = 0;
         for (double v : r) s += v;
         return s / double(r.size());
       }},
      {"max", [](const Row& r) { return *std::max_element(r.begin(), r.end()); }},
      {"min", [](const Row& r) { return *std::min_element(r.begin(), r.end()); }},
      {"logsumexp", [](const Row& r) {
         double s = 0;
         for (double v : r) s += std::exp(v);
         return std::log(s);
       }}};
  for (const auto& [name, f] : refs)
    for (const bool keep : {false, true})
      check_gradients({name + (keep ? " keepdims" : ""),
                       {{2, 5, 3}},
                       -2,
                       2,
                       [&, name = name, keep](const std::vector<Array>& x) {
                         if (name == "sum") return sum(x[0], {1}, keep);
                         if (name == "mean") return mean(x[0], {1}, keep);
                         if (name == "max") return max(x[0], {1}, keep);
                         if (name == "min") return min(x[0], {1}, keep);
                         return logsumexp(x[0], {1}, keep);
                       },
                       [&, keep](const std::vector<HT>& x) {
                         HT out = reduce_last(middle_last(x[0]), f);  // [2, 3]
                         if (keep) out.shape = {2, 1, 3};
                         return out;
                       }});
  // Every axis at once.
  check_gradients({"sum of all",
                   {{3, 4}},
                   -2,
                   2,
                   [](const std::vector<Array>& x) { return sum(x[0]); },
                   [](const std::vector<HT>& x) {
                     HT out{{}, {0.0}};
                     for (double v : x[0].v) out.v[0] += v;
                     return out;
                   }});
}

TEST(OpGradTest, SoftmaxOnEitherAxis) {
  auto softmax_rows = [](const HT& t) {
    const int64_t c = t.shape.back();
    HT out = t;
    for (size_t r = 0; r < t.v.size(); r += size_t(c)) {
      double m = -INFINITY, s = 0;
      for (int64_t j = 0; j < c; ++j) m = std::max(m, t.v[r + size_t(j)]);
      for (int64_t j = 0; j < c; ++j) s += std::exp(t.v[r + size_t(j)] - m);
      for (int64_t j = 0; j < c; ++j) out.v[r + size_t(j)] = std::exp(t.v[r + size_t(j)] - m) / s;
    }
    return out;
  };
  check_gradients({"last axis",
                   {{3, 6}},
                   -3,
                   3,
                   [](const std::vector<Array>& x) { return softmax(x[0], -1); },
                   [&](const std::vector<HT>& x) { return softmax_rows(x[0]); }});
  check_gradients(
      {"axis 1 of 3",
       {{2, 4, 3}},
       -3,
       3,
       [](const std::vector<Array>& x) { return softmax(x[0], 1); },
       [&](const std::vector<HT>& x) { return middle_last(softmax_rows(middle_last(x[0]))); }});
}

TEST(OpGradTest, TakeAddsBackRepeatedRows) {
  const std::vector<int32_t> ids{2, 0, 2, 3, 2};
  check_gradients({"take axis 1",
                   {{2, 4, 3}},
                   -2,
                   2,
                   [&](const std::vector<Array>& x) {
                     return take(x[0], to_device(from_vector(ids, {5}), x[0].device()), 1);
                   },
                   [&](const std::vector<HT>& x) {
                     HT out{{2, 5, 3}, {}};
                     for (int64_t i = 0; i < 2; ++i)
                       for (const int32_t id : ids)
                         for (int64_t k = 0; k < 3; ++k)
                           out.v.push_back(x[0].v[size_t((i * 4 + id) * 3 + k)]);
                     return out;
                   }});
  // A cross-entropy's pick of each row's target.
  const std::vector<int32_t> targets{1, 4, 0};
  check_gradients(
      {"take_along_axis",
       {{3, 5}},
       -2,
       2,
       [&](const std::vector<Array>& x) {
         return take_along_axis(x[0], to_device(from_vector(targets, {3, 1}), x[0].device()), 1);
       },
       [&](const std::vector<HT>& x) {
         HT out{{3, 1}, {}};
         for (int64_t r = 0; r < 3; ++r)
           out.v.push_back(x[0].v[size_t(r * 5 + targets[size_t(r)])]);
         return out;
       }});
}

TEST(OpGradTest, LayoutOpsMoveTheGradientBack) {
  // A chain of views whose result is [3, 2, 4]: x [4, 6] -> transpose -> reshape -> slice
  // with a step -> expand/squeeze -> broadcast, times a weight so that each element counts once or
  // more.
  check_gradients(
      {"views",
       {{4, 6}},
       -2,
       2,
       [](const std::vector<Array>& x) {
         const Array t = reshape(transpose(x[0]), {3, 2, 4});          // [3, 2, 4]
         const Array s = slice(t, {0, 0, 3}, {3, 2, -5}, {1, 1, -2});  // [3, 2, 2]: columns 3, 1
         const Array e = squeeze(expand_dims(s, 0), {0});
         return multiply(broadcast_to(sum(e, {2}, true), {3, 2, 4}), t);
       },
       [](const std::vector<HT>& x) {
         HT t{{3, 2, 4}, std::vector<double>(24)};  // transpose [6, 4], read row-major
         for (int64_t i = 0; i < 6; ++i)
           for (int64_t j = 0; j < 4; ++j) t.v[size_t(i * 4 + j)] = x[0].v[size_t(j * 6 + i)];
         HT out = t;
         for (int64_t r = 0; r < 6; ++r) {
           const double s = t.v[size_t(r * 4 + 3)] + t.v[size_t(r * 4 + 1)];
           for (int64_t c = 0; c < 4; ++c) out.v[size_t(r * 4 + c)] = s * t.v[size_t(r * 4 + c)];
         }
         return out;
       }});
  // A permutation that is not its own inverse: [2, 3, 4] -> [3, 4, 2].
  check_gradients({"cyclic transpose",
                   {{2, 3, 4}},
                   -2,
                   2,
                   [](const std::vector<Array>& x) {
                     return transpose(x[0], {1, 2, 0});
                   },
                   [](const std::vector<HT>& x) {
                     HT out{{3, 4, 2}, std::vector<double>(24)};
                     for (int64_t i = 0; i < 2; ++i)
                       for (int64_t j = 0; j < 3; ++j)
                         for (int64_t k = 0; k < 4; ++k)
                           out.v[size_t((j * 4 + k) * 2 + i)] = x[0].v[size_t((i * 3 + j) * 4 + k)];
                     return out;
                   }});
  check_gradients({"concatenate and slice_update",
                   {{2, 3}, {2, 2}, {2, 1}},
                   -2,
                   2,
                   [](const std::vector<Array>& x) {
                     const Array c = concatenate({x[0], x[1]}, 1);  // [2, 5]
                     return multiply(slice_update(c, x[2], {0, 1}, {2, 2}), c);
                   },
                   [](const std::vector<HT>& x) {
                     HT out{{2, 5}, {}};
                     for (int64_t r = 0; r < 2; ++r)
                       for (int64_t j = 0; j < 5; ++j) {
                         const double c =
                             j < 3 ? x[0].v[size_t(r * 3 + j)] : x[1].v[size_t(r * 2 + j - 3)];
                         out.v.push_back((j == 1 ? x[2].v[size_t(r)] : c) * c);
                       }
                     return out;
                   }});
}

TEST(OpGradTest, CastsAndCopiesPassTheGradientThrough) {
  check_gradients({"astype and contiguous",
                   {{3, 4}},
                   -2,
                   2,
                   [](const std::vector<Array>& x) {
                     return astype(contiguous(swapaxes(astype(x[0], Dtype::f32), 0, 1)),
                                   Dtype::f32);
                   },
                   [](const std::vector<HT>& x) {
                     HT out{{4, 3}, std::vector<double>(12)};
                     for (int64_t i = 0; i < 3; ++i)
                       for (int64_t j = 0; j < 4; ++j)
                         out.v[size_t(j * 3 + i)] = x[0].v[size_t(i * 4 + j)];
                     return out;
                   }});
}

}  // namespace
}  // namespace lmx::test
