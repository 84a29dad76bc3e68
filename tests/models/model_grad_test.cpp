// Gradients through whole models: every weight of the issue-B fixtures (f32) gets one from a
// next-token cross-entropy, and the loss moves along a direction as the gradient says it
// will (central differences of the model's own f32 forward, a step sized to stand well above
// its rounding).
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "autograd/autograd.h"
#include "models/loader.h"
#include "ops/harness.h"
#include "ops/ops.h"

namespace lmx {
namespace {

namespace fs = std::filesystem;
const fs::path kModels = fs::path(LMX_FIXTURES_DIR) / "models";

// Mean next-token cross-entropy of ids [1, L] against targets [1, L, 1].
Array cross_entropy(const models::CausalLM& m, const Array& ids, const Array& targets) {
  const Array logits = astype(m.forward(ids), Dtype::f32);  // [1, L, V]
  return mean(subtract(logsumexp(logits, {-1}, true), take_along_axis(logits, targets, -1)));
}

double dot(const std::vector<Array>& a, const std::vector<Array>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const std::vector<float> x = to_floats(a[i]), y = to_floats(b[i]);
    for (size_t j = 0; j < x.size(); ++j) s += double(x[j]) * double(y[j]);
  }
  return s;
}

void check_model(const std::string& family, Device d);

class ModelGradTest : public ::testing::TestWithParam<std::string> {};

// On every device this build reaches (CUDA cases skip with a message where no GPU is visible).
TEST_P(ModelGradTest, EveryWeightGetsTheGradientTheLossFollows) {
  for (const Device d : test::test_devices()) {
    SCOPED_TRACE(d.str());
    check_model(GetParam(), d);
  }
}

void check_model(const std::string& family, Device d) {
  models::ModelLoadOptions o;
  o.device = d;
  const auto model = models::load_causal_lm(kModels / (family + "-f32"), o);
  // The weights as arrays of their own (the loaded ones are read-only maps of the file),
  // so that a step along a direction can be written into them.
  std::vector<Array> params;
  std::vector<std::string> names;
  model->visit("", [&](const std::string& name, Array& p, const Shape&, fast::QuantizedMatrix*) {
    if (!p.valid()) return;
    p = copy(p);
    params.push_back(p);
    names.push_back(name);
  });
  const std::vector<int32_t> tokens{5, 17, 300, 42, 9, 255, 1, 77, 128, 3};
  const int64_t l = int64_t(tokens.size()) - 1;
  const Array ids = to_device(from_vector(std::vector<int32_t>(tokens.begin(), tokens.end() - 1), {1, l}), d);
  const Array targets =
      to_device(from_vector(std::vector<int32_t>(tokens.begin() + 1, tokens.end()), {1, l, 1}), d);
  auto loss = [&] { return cross_entropy(*model, ids, targets); };

  const float plain = item(loss());  // the fused kernels, nothing tracked
  const autograd::ValueAndGrad r = autograd::value_and_grad(loss, params);
  EXPECT_NEAR(item(r.value), plain, 1e-5 * std::abs(plain))
      << "the compositions' forward differs from the kernels'";
  for (size_t i = 0; i < params.size(); ++i) {
    const std::vector<float> g = to_floats(r.grads[i]);
    double norm = 0;
    for (float v : g) norm += double(v) * v;
    EXPECT_GT(norm, 0.0) << names[i] << " got no gradient";
  }

  // Directions: the gradient itself, and a random one.
  std::vector<Array> random;
  for (size_t i = 0; i < params.size(); ++i)
    random.push_back(random_normal(params[i].shape(), 50 + i, 0, 1, Dtype::f32, d));
  const double gnorm = std::sqrt(dot(r.grads, r.grads));
  for (const auto& [what, dir] : {std::pair{"gradient", r.grads}, std::pair{"random", random}}) {
    const double dnorm = std::sqrt(dot(dir, dir));
    const double predicted = dot(r.grads, dir) / dnorm;  // d loss / dt along dir / |dir|
    const double t = 0.01 / gnorm;  // moves the loss by about 0.01 along the gradient
    auto moved = [&](double s) {
      for (size_t i = 0; i < params.size(); ++i) {
        const Array orig = copy(params[i]);
        assign(params[i], add(orig, multiply(dir[i], s / dnorm)));
      }
      const double v = item(loss());
      return v;
    };
    std::vector<Array> saved;
    for (const Array& p : params) saved.push_back(copy(p));
    const double up = moved(t);
    for (size_t i = 0; i < params.size(); ++i) assign(params[i], saved[i]);
    const double down = moved(-t);
    for (size_t i = 0; i < params.size(); ++i) assign(params[i], saved[i]);
    const double measured = (up - down) / (2 * t);
    EXPECT_NEAR(measured, predicted, 1e-3 * gnorm) << what << " direction: |g| = " << gnorm;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ModelGradTest,
                         ::testing::Values("llama", "qwen3", "gemma3_text"));

}  // namespace
}  // namespace lmx
