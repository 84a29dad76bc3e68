// Creation, cast, layout, indexing, sorting and sampling ops.
#include <map>
#include <numeric>

#include "harness.h"

namespace lmx::test {
namespace {

std::vector<float> iota_f(int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), 0.0f);
  return v;
}

TEST(CreationTest, FullArangeZerosOnes) {
  EXPECT_EQ(to_floats(full({2, 2}, 1.5, Dtype::bf16)), (std::vector<float>{1.5, 1.5, 1.5, 1.5}));
  EXPECT_EQ(to_vector<int32_t>(arange(2, 11, 3)), (std::vector<int32_t>{2, 5, 8}));
  EXPECT_EQ(to_floats(arange(0, 1, 0.25, Dtype::f32)), (std::vector<float>{0, 0.25, 0.5, 0.75}));
  EXPECT_EQ(arange(5, 0, 1).size(), 0);
  EXPECT_EQ(to_floats(zeros({3}, Dtype::f16)), (std::vector<float>{0, 0, 0}));
  EXPECT_EQ(scalar(3).ndim(), 0);
  expect_op_error([] { arange(0, 1, 0); }, "arange");
  expect_op_error([] { random_uniform({2}, 1, 0, 1, Dtype::i32); }, "random_uniform");
}

TEST(CreationTest, RandomIsSeededAndHasTheRightMoments) {
  const Array a = random_normal({100000}, 42), b = random_normal({100000}, 42), c = random_normal({100000}, 43);
  EXPECT_EQ(to_floats(a), to_floats(b));
  EXPECT_NE(to_floats(a), to_floats(c));
  const std::vector<float> v = to_floats(a);
  double m = 0, s = 0;
  for (float x : v) m += x;
  m /= double(v.size());
  for (float x : v) s += (x - m) * (x - m);
  s = std::sqrt(s / double(v.size()));
  EXPECT_NEAR(m, 0, 0.02);  // 5 standard errors
  EXPECT_NEAR(s, 1, 0.02);
  const std::vector<float> u = to_floats(random_uniform({100000}, 1, -1, 3));
  EXPECT_GE(*std::min_element(u.begin(), u.end()), -1);
  EXPECT_LT(*std::max_element(u.begin(), u.end()), 3);
  EXPECT_NEAR(std::accumulate(u.begin(), u.end(), 0.0) / double(u.size()), 1.0, 0.03);
}

TEST(CastTest, RoundsToNearestEvenAndSaturatesIntegers) {
  // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
  const Array a = from_floats({1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 65520.0f, NAN, -INFINITY}, {5});
  const std::vector<float> b = to_floats(astype(a, Dtype::bf16));
  EXPECT_EQ(b[0], 1.0f);
  EXPECT_EQ(b[1], 1.0f + 4 * 0x1p-8f);
  EXPECT_TRUE(std::isnan(b[3]));
  EXPECT_EQ(b[4], -INFINITY);
  const std::vector<float> h = to_floats(astype(a, Dtype::f16));
  EXPECT_EQ(h[2], INFINITY);  // 65520 rounds up past the largest half
  EXPECT_EQ(to_vector<int32_t>(astype(from_floats({2.7f, -2.7f, 3e10f, NAN}, {4}), Dtype::i32)),
            (std::vector<int32_t>{2, -2, 2147483647, 0}));
  EXPECT_EQ(to_vector<uint8_t>(astype(from_floats({300, -5, 7.9f}, {3}), Dtype::u8)),
            (std::vector<uint8_t>{255, 0, 7}));
}

TEST(LayoutTest, ReshapeTransposeSqueezeExpand) {
  const Array a = from_floats(iota_f(6), {2, 3});
  const Array t = transpose(a);
  EXPECT_EQ(t.shape(), (Shape{3, 2}));
  EXPECT_FALSE(t.is_contiguous());
  EXPECT_EQ(to_floats(t), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  EXPECT_EQ(to_floats(reshape(t, {6})), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  EXPECT_EQ(reshape(a, {3, -1}).shape(), (Shape{3, 2}));
  EXPECT_EQ(reshape(a, {6}).storage(), a.storage());  // a view, no copy
  EXPECT_EQ(expand_dims(a, 1).shape(), (Shape{2, 1, 3}));
  EXPECT_EQ(squeeze(expand_dims(a, 0)).shape(), (Shape{2, 3}));
  EXPECT_EQ(to_floats(contiguous(swapaxes(a, 0, 1))), to_floats(t));
  expect_op_error([&] { reshape(a, {4, -1}); }, "reshape");
  expect_op_error([&] { reshape(a, {-1, -1}); }, "reshape");
  expect_op_error([&] { transpose(a, {0, 0}); }, "transpose");
  expect_op_error([&] { squeeze(a, {0}); }, "squeeze");
  expect_op_error([&] { broadcast_to(a, {3, 3}); }, "broadcast_to");
}

TEST(LayoutTest, SliceWithNegativeStepsAndUpdate) {
  const Array a = from_floats(iota_f(10), {10});
  EXPECT_EQ(to_floats(slice(a, {2}, {8}, {3})), (std::vector<float>{2, 5}));
  EXPECT_EQ(to_floats(slice(a, {-1}, {-11}, {-4})), (std::vector<float>{9, 5, 1}));
  EXPECT_EQ(slice(a, {5}, {2}).size(), 0);
  const Array m = from_floats(iota_f(12), {3, 4});
  EXPECT_EQ(to_floats(slice_axis(m, 1, 1, 3)), (std::vector<float>{1, 2, 5, 6, 9, 10}));
  const Array u = slice_update(m, full({1}, -1.0), {0, 1}, {3, 2});
  EXPECT_EQ(to_floats(u), (std::vector<float>{0, -1, 2, 3, 4, -1, 6, 7, 8, -1, 10, 11}));
  EXPECT_EQ(to_floats(m)[1], 1);  // the input is unchanged
  expect_op_error([&] { slice(a, {0}, {2}, {0}); }, "slice");
  expect_op_error([&] { slice_update(m, ones({5}), {0, 0}, {1, 4}); }, "slice_update");
}

TEST(LayoutTest, AssignWritesThroughViewsButNotIntoBorrowedMemory) {
  Array buf = zeros({4, 3});
  assign(slice_axis(buf, 0, 1, 3), from_floats({1, 2, 3, 4, 5, 6}, {2, 3}));
  EXPECT_EQ(to_floats(buf), (std::vector<float>{0, 0, 0, 1, 2, 3, 4, 5, 6, 0, 0, 0}));
  std::vector<float> host(3, 0);
  const Array borrowed = Array::borrow(host.data(), {3}, Dtype::f32, std::make_shared<int>(0));
  expect_op_error([&] { assign(borrowed, ones({3})); }, "assign");
}

TEST(LayoutTest, ConcatenateAlongEachAxis) {
  for (int64_t n : kAwkwardSizes) {
    const Input a = random_input({2, n}, Dtype::bf16, 1), b = random_input({2, 3}, Dtype::bf16, 2);
    const Array c = concatenate({a.array, b.array}, 1);
    ASSERT_EQ(c.shape(), (Shape{2, n + 3}));
    const std::vector<float> v = to_floats(c);
    EXPECT_EQ(v[size_t(n)], float(b.values[0]));
    EXPECT_EQ(v[size_t(n + 3 + n - 1)], float(a.values[size_t(2 * n - 1)]));
  }
  EXPECT_EQ(concatenate({ones({1, 2}), zeros({2, 2})}, 0).shape(), (Shape{3, 2}));
  expect_op_error([] { concatenate({ones({1, 2}), ones({1, 3})}, 0); }, "concatenate");
  expect_op_error([] { concatenate({}, 0); }, "concatenate");
}

TEST(IndexingTest, TakeEmbeddingAndTakeAlongAxis) {
  for (Dtype t : kFloatDtypes) {
    const Array w = astype(from_floats(iota_f(12), {4, 3}), t);
    const Array ids = from_vector<int32_t>({3, 0, 3}, {3});
    EXPECT_EQ(to_floats(embedding(w, ids)), (std::vector<float>{9, 10, 11, 0, 1, 2, 9, 10, 11}));
    EXPECT_EQ(to_floats(take(w, from_vector<int32_t>({2}, {1}), 1)), (std::vector<float>{2, 5, 8, 11}));
    const Array idx = from_vector<int32_t>({2, 0, 1, 1}, {4, 1});
    EXPECT_EQ(to_floats(take_along_axis(w, idx, 1)), (std::vector<float>{2, 3, 7, 10}));
  }
  const Array w = zeros({4, 3});
  expect_op_error([&] { take(w, from_vector<int32_t>({4}, {1}), 0); }, "take");
  expect_op_error([&] { take(w, from_vector<int32_t>({-1}, {1}), 0); }, "take");
  expect_op_error([&] { take(w, ones({1}), 0); }, "take");
  expect_op_error([&] { take_along_axis(w, from_vector<int32_t>({0}, {1}), 1); }, "take_along_axis");
}

TEST(SortTest, SortArgsortTopkAreStableAndDeterministic) {
  for (int64_t n : kAwkwardSizes) {
    const Input x = random_input({2, n}, Dtype::bf16, 9 + n, -2, 2);  // bf16: many ties
    const std::vector<int32_t> idx = to_vector<int32_t>(argsort(x.array, true));
    const std::vector<float> vals = to_floats(sort(x.array, true));
    const int k = int(std::min<int64_t>(n, 5));
    auto [tv, ti] = topk(x.array, k);
    const std::vector<int32_t> tiv = to_vector<int32_t>(ti);
    const std::vector<float> tvv = to_floats(tv);
    for (int64_t r = 0; r < 2; ++r) {
      for (int64_t i = 0; i < n; ++i) {
        const double v = x.values[size_t(r * n + idx[size_t(r * n + i)])];
        EXPECT_EQ(vals[size_t(r * n + i)], float(v));
        if (i > 0) {
          const double prev = x.values[size_t(r * n + idx[size_t(r * n + i - 1)])];
          EXPECT_TRUE(prev > v || (prev == v && idx[size_t(r * n + i - 1)] < idx[size_t(r * n + i)]));
        }
      }
      for (int i = 0; i < k; ++i) {
        EXPECT_EQ(tiv[size_t(r * k + i)], idx[size_t(r * n + i)]);
        EXPECT_EQ(tvv[size_t(r * k + i)], vals[size_t(r * n + i)]);
      }
    }
  }
  EXPECT_EQ(to_floats(sort(from_floats({3, 1, 2}, {3}))), (std::vector<float>{1, 2, 3}));
  expect_op_error([] { topk(ones({3}), 4); }, "topk");
  expect_op_error([] { sort(ones({3}, Dtype::boolean)); }, "sort");
}

TEST(SamplingTest, CategoricalFollowsTheSoftmaxDistribution) {
  // logits of probabilities {0.1, 0.2, 0.3, 0.4, 0}: 20000 rows, chi-square against them.
  const std::vector<double> p = {0.1, 0.2, 0.3, 0.4, 0.0};
  std::vector<float> logits;
  const int rows = 20000;
  for (int r = 0; r < rows; ++r)
    for (double q : p) logits.push_back(q > 0 ? float(std::log(q)) : -INFINITY);
  const std::vector<int32_t> draws = to_vector<int32_t>(categorical(from_floats(logits, {rows, 5}), 123));
  std::vector<int> count(5, 0);
  for (int32_t d : draws) ++count[size_t(d)];
  EXPECT_EQ(count[4], 0);  // never a zero-probability class
  double chi2 = 0;
  for (int i = 0; i < 4; ++i) chi2 += std::pow(count[size_t(i)] - rows * p[size_t(i)], 2) / (rows * p[size_t(i)]);
  EXPECT_LT(chi2, 16.27);  // p = 0.001 for 3 degrees of freedom
  EXPECT_EQ(draws, to_vector<int32_t>(categorical(from_floats(logits, {rows, 5}), 123)));
  expect_op_error([] { categorical(ones({2}, Dtype::i32), 1); }, "categorical");
}

}  // namespace
}  // namespace lmx::test
