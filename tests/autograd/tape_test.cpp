// The tape's own behaviour: which values get gradients, how they add up, checkpointed
// blocks, dtypes, and errors.
#include "ops/tape.h"

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <stdexcept>

#include "autograd/autograd.h"
#include "core/allocator.h"
#include "core/error.h"

namespace lmx::autograd {
namespace {

std::vector<float> floats(const Array& a) { return to_floats(a); }

TEST(TapeTest, UsesAddUpAndUnusedParametersGetZeros) {
  const Array x = from_floats({1, -2, 3}, {3}), unused = from_floats({5, 6}, {2});
  // x used three times: d/dx Σ (x·x + x) = 2x + 1.
  const auto [value, grads] =
      value_and_grad([&] { return sum(add(multiply(x, x), x)); }, std::vector{x, unused});
  EXPECT_FLOAT_EQ(item(value), 1 + 4 + 9 + 1 - 2 + 3);
  EXPECT_EQ(floats(grads[0]), (std::vector<float>{3, -3, 7}));
  EXPECT_EQ(floats(grads[1]), (std::vector<float>{0, 0}));
  EXPECT_EQ(detail::recorder(), nullptr) << "the tape is gone once value_and_grad returns";
}

// A block whose input is a parameter itself (fast::self_attention's tracked form takes q, k
// and v as a block's inputs, and a test differentiates them as parameters): its gradient
// counted once, not once as an input and again as a parameter.
TEST(TapeTest, ABlockOverAParameterCountsItsGradientOnce) {
  const Array x = from_floats({1, -2, 3}, {3}), w = from_floats({2, 2, 2}, {3});
  const Function block = [&](const std::vector<Array>& in) { return multiply(multiply(in[0], in[0]), w); };
  const auto [value, grads] =
      value_and_grad([&] { return sum(checkpoint(block, {x})); }, std::vector{x, w});
  EXPECT_EQ(floats(grads[0]), (std::vector<float>{4, -8, 12}));  // d/dx Σ w·x² = 2·w·x
  EXPECT_EQ(floats(grads[1]), (std::vector<float>{1, 4, 9}));
}

// The tape keeps only what a rule reads. Here exp's rule reads x; the sum's reads neither
// addend; the product's reads v (for the tracked side's gradient) but not the sum. So h,
// u and the sum are let go as soon as the forward pass drops them, and v stays.
TEST(TapeTest, OnlyWhatARuleReadsIsKeptAlive) {
  const std::vector<float> xs = {1, -2, 3}, vs = {2, 3, 4};
  const Array x = from_floats(xs, {3});
  std::weak_ptr<Storage> tracked, addend, total, factor;
  const auto [value, grads] = value_and_grad(
      [&] {
        Array y;
        {
          const Array h = exp(x), u = from_floats({10, 20, 30}, {3}), v = from_floats(vs, {3});
          const Array s = add(h, u);
          y = multiply(s, v);
          tracked = h.storage(), addend = u.storage(), total = s.storage(), factor = v.storage();
        }
        EXPECT_TRUE(tracked.expired()) << "exp's output: its rule reads the input";
        EXPECT_TRUE(addend.expired()) << "an addend: the sum's rule reads no values";
        EXPECT_TRUE(total.expired()) << "the product's rule reads v, not the sum";
        EXPECT_FALSE(factor.expired()) << "the product's rule reads v";
        return sum(y);
      },
      std::vector{x});
  const std::vector<float> g = floats(grads[0]);  // d/dx Σ v·(eˣ + u) = v·eˣ
  for (size_t i = 0; i < g.size(); ++i) EXPECT_NEAR(g[i], vs[i] * std::exp(xs[i]), 1e-5 * std::abs(g[i])) << i;
}

TEST(TapeTest, StopGradientCutsThePath) {
  const Array x = from_floats({2, 3}, {2});
  const auto [value, grads] =
      value_and_grad([&] { return sum(multiply(x, stop_gradient(x))); }, std::vector{x});
  EXPECT_EQ(floats(grads[0]), (std::vector<float>{2, 3}));  // x·c, c = x held fixed
}

// A stack of blocks h = tanh(h·W_i) whose loss is mean(h²), with and without checkpointing:
// the same gradients, bit for bit, and the checkpointed pass holds less memory at its peak.
TEST(TapeTest, CheckpointedBlocksGiveTheSameGradientsWithLessMemory) {
  const int blocks = 6;
  std::vector<Array> weights;
  for (int i = 0; i < blocks; ++i) weights.push_back(random_uniform({64, 64}, 10 + i, -0.2f, 0.2f));
  const Array x = random_uniform({256, 64}, 3, -1, 1);
  auto run = [&](bool checkpointed) {
    Allocator& cpu = allocator_for(Device::cpu());
    cpu.reset_peak();
    const size_t before = cpu.stats().active;
    auto loss = [&] {
      Array h = x;
      for (int i = 0; i < blocks; ++i) {
        auto block = [&, i](const std::vector<Array>& in) {
          return tanh(matmul(exp(multiply(in[0], 0.5)), weights[size_t(i)]));
        };
        h = checkpointed ? checkpoint(block, {h}) : block({h});
      }
      return mean(square(h));
    };
    ValueAndGrad r = value_and_grad(loss, weights);
    return std::pair{std::move(r), cpu.stats().peak - before};
  };
  const auto [plain, plain_peak] = run(false);
  const auto [saved, saved_peak] = run(true);
  EXPECT_EQ(item(plain.value), item(saved.value));
  for (int i = 0; i < blocks; ++i)
    EXPECT_EQ(floats(plain.grads[size_t(i)]), floats(saved.grads[size_t(i)])) << i;
  EXPECT_LT(saved_peak, plain_peak * 3 / 4)
      << "peak bytes " << saved_peak << " checkpointed, " << plain_peak << " not";
}

TEST(TapeTest, LowPrecisionParametersGetGradientsOfTheirDtype) {
  const Array w32 = random_uniform({8, 16}, 5, -1, 1);
  const Array w16 = astype(w32, Dtype::bf16);
  const Array x16 = astype(random_uniform({4, 8}, 6, -1, 1), Dtype::bf16);
  auto loss = [&](const Array& w, const Array& x) {
    return [&] { return sum(astype(silu(matmul(x, w)), Dtype::f32)); };
  };
  const ValueAndGrad low = value_and_grad(loss(w16, x16), std::vector{w16});
  const Array w = astype(w16, Dtype::f32), x = astype(x16, Dtype::f32);
  const ValueAndGrad full = value_and_grad(loss(w, x), std::vector{w});
  ASSERT_EQ(low.grads[0].dtype(), Dtype::bf16);
  const std::vector<float> a = floats(low.grads[0]), b = floats(full.grads[0]);
  // One bf16 rounding of the product and of the gradient each: a few units of 2^-8.
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 0.03 * (std::abs(b[i]) + 0.1)) << i;
}

TEST(TapeTest, ClearErrorsAndNoTapeLeftBehind) {
  const Array x = from_floats({1, 2}, {2});
  try {
    value_and_grad([&] { return multiply(x, x); }, std::vector{x});
    ADD_FAILURE() << "a loss of two elements was taken";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "[value_and_grad] the function must return one floating-point element"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(value_and_grad([&] { return sum(x); },
                              std::vector{from_vector(std::vector<int32_t>{1}, {1})}),
               Error);
  EXPECT_THROW(
      value_and_grad([&]() -> Array { throw std::runtime_error("inside"); }, std::vector{x}),
      std::runtime_error);
  EXPECT_EQ(detail::recorder(), nullptr);
  // An in-place write of a tracked value (a KV cache's) would cut the gradient silently.
  const Array buffer = zeros({2});
  EXPECT_THROW(value_and_grad(
                   [&] {
                     assign(buffer, multiply(x, x));
                     return sum(buffer);
                   },
                   std::vector{x}),
               Error);
  // A block that is not the same when run again is an error in the backward pass, not a wrong
  // gradient.
  int runs = 0;
  auto changing = [&](const std::vector<Array>& in) { return ++runs == 1 ? sum(in[0]) : in[0]; };
  EXPECT_THROW(
      value_and_grad([&] { return checkpoint(changing, {multiply(x, 2.0)}); }, std::vector{x}),
      Error);
  EXPECT_EQ(detail::recorder(), nullptr);
}

}  // namespace
}  // namespace lmx::autograd
