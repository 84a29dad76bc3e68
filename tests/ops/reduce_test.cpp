// Reductions, softmax and matmul against float64 references.
#include <cmath>
#include <limits>
#include <tuple>

#include "harness.h"

namespace lmx::test {
namespace {

using RowsParam = std::tuple<Dtype, int64_t>;
class ReduceTest : public ::testing::TestWithParam<RowsParam> {};

TEST_P(ReduceTest, SumMeanMaxMinLogsumexpSoftmaxArgmax) {
  const auto [dtype, n] = GetParam();
  const int64_t rows = 3;
  for (Device dev : test_devices()) {
    const Input x = random_input({rows, n}, dtype, 17 + n, -3, 3, dev);
    std::vector<double> s(rows), mx(rows), mn(rows), lse(rows), am(rows), sm(size_t(rows * n)), mean_v(rows);
    double abs_sum_max = 0;
    for (int64_t r = 0; r < rows; ++r) {
      double acc = 0, abs_acc = 0, hi = -INFINITY, lo = INFINITY;
      int64_t arg = 0;
      for (int64_t i = 0; i < n; ++i) {
        const double v = x.values[size_t(r * n + i)];
        acc += v;
        abs_acc += std::abs(v);
        if (v > hi) { hi = v; arg = i; }
        lo = std::min(lo, v);
      }
      double e = 0;
      for (int64_t i = 0; i < n; ++i) e += std::exp(x.values[size_t(r * n + i)] - hi);
      for (int64_t i = 0; i < n; ++i) sm[size_t(r * n + i)] = std::exp(x.values[size_t(r * n + i)] - hi) / e;
      s[r] = acc, mx[r] = hi, mn[r] = lo, lse[r] = hi + std::log(e), am[r] = double(arg), mean_v[r] = acc / n;
      abs_sum_max = std::max(abs_sum_max, abs_acc);
    }
    const double u = unit_roundoff(dtype);
    // f32 accumulation over n terms, then one rounding to the dtype.
    const double acc_err = double(n) * unit_roundoff(Dtype::f32) * abs_sum_max;
    expect_close(sum(x.array, {1}), s, 2 * u, acc_err + 1e-6, "sum");
    expect_close(mean(x.array, {1}), mean_v, 2 * u, acc_err / n + 1e-6, "mean");
    expect_close(max(x.array, {1}), mx, 0, 0, "max");
    expect_close(min(x.array, {1}), mn, 0, 0, "min");
    expect_close(logsumexp(x.array, {1}), lse, 2 * u + 1e-6, 1e-6, "logsumexp");
    expect_close(argmax(x.array, 1), am, 0, 0, "argmax");
    expect_close(softmax(x.array, -1), sm, 2 * u + 1e-5, 1e-7, "softmax");
    // Over the first axis too (a strided reduction) and keepdims.
    const Array s0 = sum(x.array, {0}, true);
    EXPECT_EQ(s0.shape(), (Shape{1, n}));
  }
}

INSTANTIATE_TEST_SUITE_P(Ops, ReduceTest,
                         ::testing::Combine(::testing::ValuesIn(kFloatDtypes), ::testing::ValuesIn(kAwkwardSizes)),
                         [](const auto& info) {
                           return dtype_param_name(std::get<0>(info.param)) + "_" +
                                  std::to_string(std::get<1>(info.param));
                         });

// Rows of 2 to 16 columns, which a CUDA thread reduces alone.
INSTANTIATE_TEST_SUITE_P(ShortRows, ReduceTest,
                         ::testing::Combine(::testing::ValuesIn(kFloatDtypes), ::testing::Values(2, 7, 16)),
                         [](const auto& info) {
                           return dtype_param_name(std::get<0>(info.param)) + "_" +
                                  std::to_string(std::get<1>(info.param));
                         });

// A gradient summed back over a grouped-query repeat: [Hkv, rep, L] over rep, many short rows.
TEST(ReduceTest, ManyShortRowsOverAMiddleAxis) {
  const int64_t heads = 3, rep = 2, len = 700;
  for (Device dev : test_devices()) {
    const Input x = random_input({heads, rep, len}, Dtype::f32, 5, -2, 2, dev);
    std::vector<double> want(size_t(heads * len));
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t r = 0; r < rep; ++r)
        for (int64_t i = 0; i < len; ++i) want[size_t(h * len + i)] += x.values[size_t((h * rep + r) * len + i)];
    expect_close(sum(x.array, {1}), want, 1e-6, 1e-6, "sum over the repeat");
  }
}

TEST(ReduceTest, AllAxesAndIntegerSum) {
  const Array a = from_vector<int32_t>({1, 2, 3, 4, 5, 6}, {2, 3});
  EXPECT_EQ(to_vector<int32_t>(sum(a)), (std::vector<int32_t>{21}));
  EXPECT_EQ(to_vector<int32_t>(sum(a, {0})), (std::vector<int32_t>{5, 7, 9}));
  EXPECT_EQ(to_vector<int32_t>(max(a, {1})), (std::vector<int32_t>{3, 6}));
  EXPECT_EQ(sum(a, {0, 1}, true).shape(), (Shape{1, 1}));
}

TEST(ReduceTest, ArgmaxTakesTheFirstOfTies) {
  const Array a = from_floats({1, 3, 3, 2}, {4});
  EXPECT_EQ(to_vector<int32_t>(argmax(a)), (std::vector<int32_t>{1}));
}

// NaN never wins, on every device and float dtype; a row of nothing but NaN has no index
// (-1), which decoding turns into a clear error. A row of -inf has its first index.
TEST(ReduceTest, ArgmaxSkipsNaNAndGivesMinusOneForARowOfNaN) {
  // Each row's argmax on every device and float dtype.
  auto expect_argmax = [](const Array& rows, const std::vector<int32_t>& want) {
    for (Device dev : test_devices())
      for (Dtype t : kFloatDtypes)
        EXPECT_EQ(to_vector<int32_t>(argmax(to_device(astype(rows, t), dev), -1)), want)
            << dtype_name(t) << (dev.type == Device::Type::cpu ? " on the CPU" : " on CUDA");
  };
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  expect_argmax(from_floats({nan, 1, 3, 3, 2,  //
                             nan, nan, nan, nan, nan,  //
                             1, nan, 1, 0, nan,  //
                             -inf, -inf, nan, -inf, nan,  //
                             -2, -1, nan, inf, nan},
                            {5, 5}),
                {2, -1, 0, 0, 3});
  // Rows of whole 16-byte vectors, which the CUDA kernel loads a vector at a time.
  std::vector<float> wide(2 * 4096, nan);
  wide[4096 + 4000] = 1;
  expect_argmax(from_vector(wide, {2, 4096}), {-1, 4000});
}

// Axes of length 1 reduce nothing: each reduction is its input, reshaped (a gradient summed
// back over a batch axis of 1 takes this path). A transposed input, ±inf and NaN included.
TEST(ReduceTest, AxesOfLengthOneGiveTheInputItself) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const std::vector<float> v = {1.5f, -2, inf, -inf, nan, 0.25f};
  for (Device dev : test_devices())
    for (Dtype t : kFloatDtypes) {
      const Array a = to_device(astype(from_floats(v, {1, 2, 3}), t), dev);  // [1, 2, 3]
      const Array at = transpose(a, {0, 2, 1});                                // [1, 3, 2], strided
      const std::vector<float> vt = {1.5f, -inf, -2, nan, inf, 0.25f};
      auto same = [&](const Array& got, const Shape& shape, const std::vector<float>& want, const char* what) {
        EXPECT_EQ(got.shape(), shape) << what;
        EXPECT_EQ(got.dtype(), t) << what;
        const std::vector<float> g = to_floats(got);
        ASSERT_EQ(g.size(), want.size()) << what;
        for (size_t i = 0; i < g.size(); ++i)
          EXPECT_TRUE(g[i] == want[i] || (std::isnan(g[i]) && std::isnan(want[i])))
              << what << " [" << i << "] " << g[i] << " for " << want[i] << " on " << dev.str();
      };
      same(sum(a, {0}), {2, 3}, v, "sum");
      same(max(a, {0}, true), {1, 2, 3}, v, "max keepdims");
      same(min(at, {0}), {3, 2}, vt, "min of a transposed input");
      same(mean(a, {0}), {2, 3}, v, "mean");
      same(logsumexp(at, {0}, true), {1, 3, 2}, vt, "logsumexp");
      same(sum(reshape(a, {2, 1, 3}), {1}), {2, 3}, v, "sum over a middle axis");
    }
}

TEST(ReduceTest, RejectsBadAxesAndDtypes) {
  expect_op_error([] { sum(ones({2, 3}), {2}); }, "sum");
  expect_op_error([] { sum(ones({2, 3}), {1, 1}); }, "sum");
  expect_op_error([] { logsumexp(ones({2}, Dtype::i32)); }, "logsumexp");
  expect_op_error([] { softmax(ones({2}, Dtype::i32)); }, "softmax");
  expect_op_error([] { max(zeros({2, 0}), {1}); }, "max");
  expect_op_error([] { argmax(ones({2}, Dtype::boolean)); }, "argmax");
  expect_op_error([] { mean(ones({2}, Dtype::i32)); }, "mean");
}

// matmul: [B, M, K] x [B, K, N] with transposed operands and broadcast batches.
using MatmulParam = std::tuple<Dtype, int64_t, int>;
class MatmulTest : public ::testing::TestWithParam<MatmulParam> {};

TEST_P(MatmulTest, MatchesFloat64Reference) {
  const auto [dtype, k, variant] = GetParam();
  // variant 0: plain B; 1: B given as a transposed [N, K] weight; 2: decode-shaped
  // GEMV with a transposed weight shared by the batch (broadcast, no copy); 3 and 4: 0
  // and 1 with more rows than the CPU's 16-bit GEMV takes (sgemm on f32 copies, B's in
  // the layout it has); 5: 4 with A given transposed.
  const int64_t b = 2, m = variant == 2 ? 1 : variant >= 3 ? 70 : 5, n = 7;
  const bool plain_b = variant == 0 || variant == 3;
  for (Device dev : test_devices()) {
    const Input a = random_input({b, m, k}, dtype, 3 + k, -1, 1, dev);
    const Shape wshape = plain_b ? Shape{b, k, n} : variant == 2 ? Shape{n, k} : Shape{b, n, k};
    const Input w = random_input(wshape, dtype, 5 + k, -1, 1, dev);
    const Array rhs = plain_b ? w.array : swapaxes(w.array, -1, -2);
    // A transposed view of the same values: [B, K, M] storage read as [B, M, K].
    const Array lhs = variant == 5 ? swapaxes(contiguous(swapaxes(a.array, -1, -2)), -1, -2) : a.array;
    const Array got = matmul(lhs, rhs);
    ASSERT_EQ(got.shape(), (Shape{b, m, n}));
    std::vector<double> want(size_t(b * m * n));
    double scale = 0;
    for (int64_t bi = 0; bi < b; ++bi)
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
          double acc = 0, mag = 0;
          for (int64_t t = 0; t < k; ++t) {
            const double x = a.values[size_t((bi * m + i) * k + t)];
            const size_t wi = plain_b        ? size_t((bi * k + t) * n + j)
                              : variant == 2 ? size_t(j * k + t)
                                             : size_t((bi * n + j) * k + t);
            acc += x * w.values[wi];
            mag += std::abs(x * w.values[wi]);
          }
          want[size_t((bi * m + i) * n + j)] = acc;
          scale = std::max(scale, mag);
        }
    const double u = unit_roundoff(dtype);
    expect_close(got, want, 2 * u, double(k) * unit_roundoff(Dtype::f32) * scale + 1e-6,
                 "matmul on " + dev.str());
  }
}

INSTANTIATE_TEST_SUITE_P(Ops, MatmulTest,
                         ::testing::Combine(::testing::ValuesIn(kFloatDtypes), ::testing::ValuesIn(kAwkwardSizes),
                                            ::testing::Values(0, 1, 2, 3, 4, 5)),
                         [](const auto& info) {
                           return dtype_param_name(std::get<0>(info.param)) + "_k" +
                                  std::to_string(std::get<1>(info.param)) + "_v" +
                                  std::to_string(std::get<2>(info.param));
                         });

TEST(MatmulTest, VectorOperandsAndErrors) {
  const Array v = from_floats({1, 2, 3}, {3});
  const Array m = from_floats({1, 0, 0, 1, 1, 1}, {3, 2});
  EXPECT_EQ(to_floats(matmul(v, m)), (std::vector<float>{4, 5}));
  EXPECT_EQ(matmul(v, m).shape(), (Shape{2}));
  expect_op_error([] { matmul(ones({2, 3}), ones({4, 2})); }, "matmul");
  expect_op_error([] { matmul(ones({2, 3}), ones({3, 2}, Dtype::bf16)); }, "matmul");
  expect_op_error([] { matmul(ones({2, 3}, Dtype::i32), ones({3, 2}, Dtype::i32)); }, "matmul");
  expect_op_error([] { matmul(ones({2, 2, 3}), ones({3, 3, 2})); }, "matmul");
}

}  // namespace
}  // namespace lmx::test
