// LoRA adapters on the fixture models: what a fresh one changes (nothing), where its
// gradients go, PEFT files written and read back, fusing, checkpointed layers, bad folders.
#include "models/lora.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "autograd/autograd.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "lmx/train.h"
#include "models/loader.h"
#include "ops/harness.h"
#include "compare.h"
#include "train/loss.h"
#include "train/optimizer.h"

namespace lmx::models {
namespace {

namespace fs = std::filesystem;
const fs::path kModels = fs::path(LMX_FIXTURES_DIR) / "models";

const Array kIds = from_vector(std::vector<int32_t>{5, 17, 300, 42, 9, 255, 1, 77}, {1, 8});
const Array kTargets = from_vector(std::vector<int32_t>{17, 300, 42, 9, 255, 1, 77, 3}, {1, 8});

std::vector<Array> params_of(CausalLM& m) {
  std::vector<Array> out;
  for (const auto& [name, a] : lora_parameters(m)) out.push_back(*a);
  return out;
}

// Gives every B a random value, so that the adapters change the model.
void randomise_b(CausalLM& m) {
  uint64_t seed = 1;
  for (const auto& [name, a] : lora_parameters(m))
    if (name.ends_with("lora_B.weight"))
      *a = astype(random_uniform(a->shape(), ++seed, -0.05f, 0.05f), a->dtype());
}

// The adapters' gradients of `loss`, checked two ways: checkpointed layers give them to the
// bit, and along the gradient the loss moves by |g| per unit step (f32, central differences).
void expect_sound_gradients(CausalLM& m, const std::function<Array()>& loss) {
  const std::vector<Array> params = params_of(m);
  const auto plain = autograd::value_and_grad(loss, params);
  m.set_gradient_checkpointing(true);
  const auto saved = autograd::value_and_grad(loss, params);
  m.set_gradient_checkpointing(false);
  EXPECT_EQ(item(plain.value), item(saved.value));
  for (size_t i = 0; i < params.size(); ++i)
    EXPECT_EQ(to_floats(plain.grads[i]), to_floats(saved.grads[i])) << "checkpointed layers, parameter " << i;
  double g2 = 0;
  for (const Array& g : plain.grads)
    for (const float v : to_floats(g)) g2 += double(v) * v;
  const double gnorm = std::sqrt(g2), t = 0.01 / gnorm;
  auto moved = [&](double s) {
    std::vector<Array*> slots;
    for (const auto& [name, a] : lora_parameters(m)) slots.push_back(a);
    for (size_t i = 0; i < params.size(); ++i) *slots[i] = add(params[i], multiply(plain.grads[i], s / gnorm));
    const double v = item(loss());
    for (size_t i = 0; i < params.size(); ++i) *slots[i] = params[i];
    return v;
  };
  EXPECT_NEAR((moved(t) - moved(-t)) / (2 * t), gnorm, 1e-3 * gnorm);
}

fs::path temp_dir(const std::string& name) {
  const fs::path d =
      fs::temp_directory_path() / ("lmx-lora-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(d);
  return d;
}

class LoraTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::unique_ptr<CausalLM> load() const { return load_causal_lm(kModels / (GetParam() + "-f32")); }
};

TEST_P(LoraTest, AFreshAdapterChangesNothingAndOnlyBLearnsFirst) {
  const auto base = load(), model = load();
  const LoraConfig config{4, 8, {"q_proj", "v_proj", "down_proj"}};
  attach_lora(*model, config, 3);
  EXPECT_TRUE(model->has_adapters());
  EXPECT_EQ(to_floats(model->forward(kIds)), to_floats(base->forward(kIds)))
      << "B = 0: the same logits";
  const auto named = lora_parameters(*model);
  ASSERT_EQ(named.size(), size_t(model->num_layers() * 3 * 2));
  EXPECT_EQ(named[0].first, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
  const std::vector<Array> params = params_of(*model);
  const auto r = autograd::value_and_grad(
      [&] { return train::cross_entropy(model->forward(kIds), kTargets); }, params);
  for (size_t i = 0; i < params.size(); ++i) {
    double norm = 0;
    for (const float v : to_floats(r.grads[i])) norm += double(v) * v;
    // With B = 0, d/dA = Bᵀ·(...) is zero; B's gradient is not.
    if (named[i].first.ends_with("lora_A.weight"))
      EXPECT_EQ(norm, 0.0) << named[i].first;
    else
      EXPECT_GT(norm, 0.0) << named[i].first;
  }
}

TEST_P(LoraTest, GradientsMatchCentralDifferencesAndCheckpointingChangesNone) {
  const auto model = load();
  attach_lora(*model, {4, 8}, 5);
  randomise_b(*model);
  expect_sound_gradients(*model, [&] { return train::cross_entropy(model->forward(kIds), kTargets); });
}

// While a DropoutScope lives, the adapters' inputs are dropped: the logits change, the same
// seed gives the same masks (so a checkpointed replay matches its first run to the bit), and
// the gradient is that of the masked loss. Outside one, dropout changes nothing.
TEST_P(LoraTest, DropoutActsOnlyWhileTrainingAndCheckpointedLayersReplayItsMasks) {
  const auto model = load();
  attach_lora(*model, {4, 8, LoraConfig{}.target_modules, false, 0.3f}, 5);
  randomise_b(*model);
  const std::vector<float> eval = to_floats(model->forward(kIds));
  model->for_each_linear([](const std::string&, nn::Linear& l) { l.lora->dropout = 0; });
  EXPECT_EQ(to_floats(model->forward(kIds)), eval) << "no scope: no dropout";
  {
    const nn::DropoutScope scope(11);
    EXPECT_EQ(to_floats(model->forward(kIds)), eval) << "dropout 0 in a scope";
  }
  model->for_each_linear([](const std::string&, nn::Linear& l) { l.lora->dropout = 0.3f; });
  std::vector<float> first, again, other;
  {
    const nn::DropoutScope scope(11);
    first = to_floats(model->forward(kIds));
    again = to_floats(model->forward(kIds));
  }
  {
    const nn::DropoutScope scope(12);
    other = to_floats(model->forward(kIds));
  }
  EXPECT_NE(first, eval) << "dropout 0.3 in a scope changes the logits";
  EXPECT_EQ(first, again) << "one seed, one set of masks";
  EXPECT_NE(first, other) << "another seed, other masks";

  const nn::DropoutScope scope(11);  // the masks fixed by the seed: a smooth loss of the adapters
  expect_sound_gradients(*model, [&] { return train::cross_entropy(model->forward(kIds), kTargets); });
}

// One adapter with A = B = I over a zero weight: the layer's output is its dropped input, so
// each element is 0 or x · (1 / (1 - p)) in f32 rounded once to bf16, and about p of them are 0.
// The masks are counter-based, so every device drops the same elements.
TEST(LoraDropoutTest, EachElementIsZeroOrScaledAboutPAreZeroAndEveryDeviceAgrees) {
  const int64_t n = 64, rows = 256;
  const float p = 0.25f;
  std::vector<float> identity(size_t(n * n), 0.0f);
  for (int64_t i = 0; i < n; ++i) identity[size_t(i * n + i)] = 1;
  const Array x = random_uniform({rows, n}, 3, 0.5f, 2.0f, Dtype::bf16);  // no zeros of its own
  const std::vector<float> xs = to_floats(x);
  std::vector<float> scaled(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) scaled[i] = xs[i] * float(1.0 / (1.0 - p));
  const std::vector<float> kept = to_floats(from_floats(scaled, {rows, n}, Dtype::bf16));
  std::vector<float> cpu;
  for (const Device d : test::test_devices()) {
    SCOPED_TRACE(d.str());
    nn::Linear layer(n, n, false);
    layer.weight = zeros({n, n}, Dtype::bf16, d);
    const Array eye = from_floats(identity, {n, n}, Dtype::bf16, d);
    layer.lora = nn::LoRA{eye, eye, 1, p, 42};
    const Array xd = to_device(x, d);
    EXPECT_EQ(to_floats(layer.forward(xd)), xs) << "no scope";
    const nn::DropoutScope scope(7);
    const std::vector<float> y = to_floats(layer.forward(xd));
    int64_t zeroed = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      if (y[i] == 0) {
        ++zeroed;
      } else {
        ASSERT_EQ(y[i], kept[i]) << "element " << i << " of x " << xs[i];
      }
    }
    // Binomial(16384, 0.25): mean 4096, standard deviation 55; six of them either way.
    EXPECT_NEAR(double(zeroed), 0.25 * double(rows * n), 6 * 55.5);
    if (d == Device::cpu()) {
      cpu = y;
    } else {
      EXPECT_EQ(y, cpu) << "the CPU's masks";
    }
  }
}

TEST_P(LoraTest, SavedAdaptersLoadBackAndFuseIntoTheWeights) {
  const auto model = load();
  const LoraConfig config{4, 16, {"k_proj", "o_proj", "gate_proj", "up_proj"}, true, 0.1f};
  attach_lora(*model, config, 7);
  randomise_b(*model);
  const std::vector<float> want = to_floats(model->forward(kIds));
  const fs::path dir = temp_dir(GetParam());
  save_lora(*model, config, dir, "test-base");
  ASSERT_TRUE(fs::exists(dir / "adapter_config.json"));

  const auto again = load();
  const LoraConfig read = load_lora(*again, dir);
  EXPECT_EQ(read.rank, 4);
  EXPECT_EQ(read.alpha, 16);
  EXPECT_TRUE(read.use_rslora);
  EXPECT_EQ(read.dropout, 0.1f);
  EXPECT_EQ(read.target_modules,
            (std::vector<std::string>{"gate_proj", "k_proj", "o_proj", "up_proj"}));
  EXPECT_EQ(to_floats(again->forward(kIds)), want) << "the same adapters, the same logits";

  fuse_lora(*again);
  EXPECT_FALSE(again->has_adapters());
  const std::vector<float> fused = to_floats(again->forward(kIds));
  double worst = 0, scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    worst = std::max(worst, double(std::abs(fused[i] - want[i])));
    scale = std::max(scale, double(std::abs(want[i])));
  }
  EXPECT_LE(worst, 1e-5 * scale) << "W + scale·B·A in f32 against the adapter beside W";
  fs::remove_all(dir);
}

// PEFT's own numbers (tools/reference/make_lora_fixtures.py: r 4, alpha 8, every projection,
// random A and B, a masked prompt and masked padding): its adapter folder loaded here gives
// its logits, its loss and the gradient of every adapter tensor, on every device.
TEST_P(LoraTest, PeftAdaptersGiveTransformersLogitsLossAndGradients) {
  const fs::path dir = fs::path(LMX_FIXTURES_DIR) / "lora" / GetParam();
  const io::SafetensorsFile golden = io::SafetensorsFile::open(dir / "golden.safetensors");
  auto get = [&](const std::string& name) {
    const io::TensorInfo* t = golden.find(name);
    if (!t) throw Error("golden tensor missing: " + name);
    const auto bytes = golden.data(*t);
    return from_host(bytes.data(), Shape(t->shape.begin(), t->shape.end()), *io::to_lmx_dtype(t->dtype));
  };
  const Array ids = get("input_ids"), labels = get("labels");  // [2, L] int32, -100 where ignored
  const int64_t l = ids.shape()[1];
  // HF shifts inside its loss: position t is scored against labels[t + 1], the last against none.
  const Array targets =
      concatenate({slice(labels, {0, 1}, {2, l}), full({2, 1}, train::kIgnoreIndex, Dtype::i32)}, 1);
  for (const Device d : test::test_devices()) {
    SCOPED_TRACE(d.str());
    ModelLoadOptions o;
    o.device = d;
    const auto model = load_causal_lm(kModels / (GetParam() + "-f32"), o);
    const LoraConfig config = load_lora(*model, dir);
    EXPECT_EQ(config.rank, 4);
    EXPECT_EQ(config.alpha, 8);
    const auto named = lora_parameters(*model);
    ASSERT_EQ(named.size(), size_t(model->num_layers() * 7 * 2));
    std::vector<Array> params;
    for (const auto& [name, a] : named) params.push_back(*a);

    const Array x = to_device(ids, d), t = to_device(targets, d);
    const std::vector<float> want = to_floats(get("logits")), got = to_floats(model->forward(x));
    ASSERT_EQ(got.size(), want.size());
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, double(std::abs(got[i] - want[i])));
    EXPECT_LE(worst, 1e-4 * test::max_abs(want)) << "logits, worst |diff| " << worst;

    const auto r = autograd::value_and_grad([&] { return train::cross_entropy(model->forward(x), t); }, params);
    const float loss = item(get("loss"));
    EXPECT_NEAR(item(r.value), loss, 1e-5 * loss);
    for (size_t i = 0; i < params.size(); ++i) {
      // f32 sums in another order: each tensor within 1e-4 of its norm (relative L2).
      const std::vector<float> g = to_floats(r.grads[i]), w = to_floats(get("grad." + named[i].first));
      ASSERT_EQ(g.size(), w.size()) << named[i].first;
      EXPECT_LE(test::relative_l2(g, w), 1e-4) << named[i].first;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LoraTest, ::testing::Values("llama", "qwen3", "gemma3_text"));

// QLoRA: adapters on an MLX 8-bit model learn through the packed codes (the gradient for x
// dequantizes each weight for its product only).
TEST(LoraFilesTest, AdaptersOnAQuantizedModelLearn) {
  const auto model = load_causal_lm(kModels / "qwen3-mlx-q8");
  ASSERT_TRUE(model->quantized());
  attach_lora(*model, {4, 8}, 2);
  std::vector<Array> params;
  for (const auto& [name, a] : lora_parameters(*model)) params.push_back(*a = copy(*a));
  EXPECT_EQ(params[0].dtype(), Dtype::bf16) << "the adapters take the model's dtype";
  train::AdamW opt(params, {1e-2f, 0.9f, 0.999f, 1e-8f, 0});
  float first = 0, last = 0;
  for (int step = 0; step < 25; ++step) {
    const auto r =
        autograd::value_and_grad([&] { return train::cross_entropy(model->forward(kIds), kTargets); }, params);
    opt.step(r.grads);
    (step == 0 ? first : last) = item(r.value);
  }
  EXPECT_LT(last, 0.5f * first) << "from " << first;
}

// Fusing into an MLX model of every width (the mixed fixture, in f32 so that the checks are
// tight): each adapted weight requantized at its own width lies within a step of the exact
// W + scale·B·A (computed here in double from the codes), or, dequantized, equals it to f32
// rounding. (A step, not half: MLX's rule makes the end of larger magnitude exact, and its
// scale may then fall short of the other end by up to a step.) The folders lmx::fuse_lora
// writes load back as the same models.
TEST(LoraFilesTest, AQuantizedModelFusesAgainAtItsOwnWidthsOrDequantized) {
  const fs::path base = kModels / "qwen3-mlx-mixed";
  ModelLoadOptions f32;
  f32.dtype = Dtype::f32;
  const auto adapted = load_causal_lm(base, f32);
  const LoraConfig config{4, 8};
  attach_lora(*adapted, config, 2);
  for (const auto& [name, a] : lora_parameters(*adapted))  // a change of several quantization steps
    if (name.ends_with("lora_B.weight")) *a = random_uniform(a->shape(), 9, -0.5f, 0.5f);
  const fs::path dir = temp_dir("qlora");
  save_lora(*adapted, config, dir);
  const std::vector<float> want = to_floats(adapted->forward(kIds));
  std::map<std::string, std::vector<double>> exact;  // [out, in] each
  std::map<std::string, std::pair<int, int>> widths;
  adapted->for_each_linear([&](const std::string& name, nn::Linear& l) {
    const std::vector<float> w = to_floats(l.is_quantized() ? fast::dequantize(l.quantized, Dtype::f32) : l.weight),
                             a = to_floats(l.lora->a), b = to_floats(l.lora->b);
    const int64_t in = l.in_features(), out = l.out_features(), r = config.rank;
    std::vector<double>& e = exact[name];
    e.assign(w.begin(), w.end());
    for (int64_t o = 0; o < out; ++o)
      for (int64_t i = 0; i < in; ++i)
        for (int64_t k = 0; k < r; ++k)
          e[size_t(o * in + i)] += l.lora->scale * double(b[size_t(o * r + k)]) * a[size_t(k * in + i)];
    if (l.is_quantized()) widths[name] = {l.quantized.bits, l.quantized.group_size};
  });
  ASSERT_GE(widths.size(), 5u) << "the fixture's projections of 2 to 8 bits";

  const auto again = load_causal_lm(base, f32), plain = load_causal_lm(base, f32);
  load_lora(*again, dir), load_lora(*plain, dir);
  fuse_lora(*again);
  fuse_lora(*plain, /*dequantize=*/true);
  EXPECT_FALSE(again->has_adapters() || plain->has_adapters());
  again->for_each_linear([&](const std::string& name, nn::Linear& l) {
    SCOPED_TRACE(name);
    const std::vector<double>& e = exact[name];
    if (!widths.count(name)) {
      ASSERT_FALSE(l.is_quantized());
      return;
    }
    ASSERT_TRUE(l.is_quantized());
    EXPECT_EQ(std::make_pair(l.quantized.bits, l.quantized.group_size), widths[name]);
    const std::vector<float> w = to_floats(fast::dequantize(l.quantized, Dtype::f32)),
                             scales = to_floats(l.quantized.scales);
    const int64_t in = l.in_features(), groups = in / l.quantized.group_size;
    for (size_t i = 0; i < w.size(); ++i) {
      const double step = std::abs(scales[size_t(int64_t(i) / in * groups + int64_t(i) % in / l.quantized.group_size)]);
      ASSERT_LE(std::abs(w[i] - e[i]), step + 1e-6 * (1 + std::abs(e[i]))) << "element " << i;
    }
  });
  plain->for_each_linear([&](const std::string& name, nn::Linear& l) {
    SCOPED_TRACE(name);
    ASSERT_FALSE(l.is_quantized());
    const std::vector<float> w = to_floats(l.weight);
    const std::vector<double>& e = exact[name];
    for (size_t i = 0; i < w.size(); ++i) ASSERT_NEAR(w[i], e[i], 1e-6 * (1 + std::abs(e[i]))) << "element " << i;
  });
  EXPECT_LE(test::relative_l2(to_floats(plain->forward(kIds)), want), 1e-5) << "dequantized: the adapter's logits";

  // The written folders: the same weights, loaded back.
  const fs::path requantized = temp_dir("qlora-fused"), dequantized = temp_dir("qlora-dequantized");
  ::lmx::fuse_lora(base, dir, requantized, "f32");
  ::lmx::fuse_lora(base, dir, dequantized, "f32", /*dequantize=*/true);
  const auto read_q = load_causal_lm(requantized), read_d = load_causal_lm(dequantized);
  EXPECT_TRUE(read_q->quantized());
  EXPECT_FALSE(read_d->quantized());
  EXPECT_EQ(to_floats(read_q->forward(kIds)), to_floats(again->forward(kIds)));
  EXPECT_LE(test::relative_l2(to_floats(read_d->forward(kIds)), want), 1e-5);
  const nlohmann::json written = nlohmann::json::parse(std::ifstream(dequantized / "config.json"));
  EXPECT_FALSE(written.contains("quantization") || written.contains("quantization_config"));
  EXPECT_EQ(written.at("dtype"), "float32");
  EXPECT_TRUE(nlohmann::json::parse(std::ifstream(requantized / "config.json")).contains("quantization"));

  // A diverged adapter is refused before any layer changes.
  const auto diverged = load_causal_lm(base, f32);
  load_lora(*diverged, dir);
  Array& last_b = *lora_parameters(*diverged).back().second;
  last_b = full(last_b.shape(), std::nan(""), last_b.dtype());
  try {
    fuse_lora(*diverged);
    ADD_FAILURE() << "a NaN adapter fused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("down_proj's adapter holds nan: it diverged"), std::string::npos) << e.what();
  }
  int kept = 0;
  diverged->for_each_linear([&](const std::string&, nn::Linear& l) { kept += l.lora.has_value(); });
  EXPECT_EQ(kept, 7 * diverged->num_layers()) << "no adapter folded";
  for (const fs::path& d : {dir, requantized, dequantized}) fs::remove_all(d);
}

// Adapters on some layers only (PEFT's layers_to_transform, mlx-lm's --num-layers): the
// others are left bare, and the list is saved and read back.
TEST(LoraFilesTest, AdaptersOnChosenLayersOnlyRoundTrip) {
  const auto model = load_causal_lm(kModels / "qwen3-f32");
  ASSERT_EQ(model->num_layers(), 2);
  LoraConfig config{2, 4, {"q_proj", "down_proj"}};
  config.layers = {1};
  attach_lora(*model, config, 1);
  std::vector<std::string> names;
  for (const auto& [name, a] : lora_parameters(*model)) names.push_back(name);
  EXPECT_EQ(names, (std::vector<std::string>{"base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight",
                                             "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight",
                                             "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight",
                                             "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"}));
  const fs::path dir = temp_dir("layers");
  config.alpha = 4.1f;
  config.dropout = 0.1f;
  save_lora(*model, config, dir);
  std::stringstream written;
  written << std::ifstream(dir / "adapter_config.json").rdbuf();
  const auto json = nlohmann::json::parse(written.str());
  EXPECT_EQ(json.at("layers_to_transform"), nlohmann::json::array({1}));
  // Floats as PEFT writes them (0.1, not the widened 0.10000000149011612).
  EXPECT_NE(written.str().find("\"lora_dropout\": 0.1,"), std::string::npos) << written.str();
  EXPECT_NE(written.str().find("\"lora_alpha\": 4.1,"), std::string::npos) << written.str();
  const auto again = load_causal_lm(kModels / "qwen3-f32");
  EXPECT_EQ(load_lora(*again, dir).layers, std::vector<int>{1});
  EXPECT_EQ(lora_parameters(*again).size(), 4u);

  const auto other = load_causal_lm(kModels / "qwen3-f32");
  config.layers = {2};
  EXPECT_THROW(attach_lora(*other, config, 1), Error) << "a layer the model lacks";
  EXPECT_FALSE(other->has_adapters());
  // A config whose list leaves out a layer the tensors adapt.
  std::ofstream(dir / "adapter_config.json") << R"({"peft_type": "LORA", "r": 2, "layers_to_transform": [0]})";
  try {
    load_lora(*other, dir);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 1 is not in the config's layers_to_transform"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(other->has_adapters());
  fs::remove_all(dir);
}

// A broken adapter folder is an error that names the file (and tensor), and attaches nothing.
TEST(LoraFilesTest, BrokenFoldersAreRefusedAndAttachNothing) {
  const auto model = load_causal_lm(kModels / "qwen3-f32");
  attach_lora(*model, {2, 4, {"q_proj"}}, 1);
  const fs::path good = temp_dir("good");
  save_lora(*model, {2, 4, {"q_proj"}}, good);
  const auto fresh = load_causal_lm(kModels / "qwen3-f32");
  auto expect_error = [&](const fs::path& dir, const std::string& needle) {
    try {
      load_lora(*fresh, dir);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fresh->has_adapters()) << needle;
  };
  expect_error(temp_dir("missing"), "adapter_config.json does not exist");
  auto variant = [&](const std::string& name, const std::string& config_text) {
    const fs::path d = temp_dir(name);
    fs::create_directories(d);
    fs::copy_file(good / "adapter_model.safetensors", d / "adapter_model.safetensors");
    std::ofstream(d / "adapter_config.json") << config_text;
    return d;
  };
  expect_error(variant("ia3", R"({"peft_type": "IA3", "r": 2})"), "is not LORA");
  expect_error(variant("dora", R"({"peft_type": "LORA", "r": 2, "use_dora": true})"), "DoRA");
  expect_error(variant("rank", R"({"peft_type": "LORA", "r": 3, "lora_alpha": 4})"),
               " where r = 3");
  expect_error(variant("json", R"({"peft_type": "LORA", "r": )"), "adapter_config.json");
  expect_error(variant("drop", R"({"peft_type": "LORA", "r": 2, "lora_dropout": 1.0})"), "lora_dropout must be in");
  // Tensors for a projection the model lacks, and an A without its B.
  const fs::path odd = variant("odd", R"({"peft_type": "LORA", "r": 2})");
  const std::vector<float> zeros_a(2 * 64, 0.0f);
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(zeros_a.data()),
                                         zeros_a.size() * 4);
  io::write_safetensors(odd / "adapter_model.safetensors",
                        {{"base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight",
                          io::StDtype::F32,
                          {2, 64},
                          bytes}});
  expect_error(odd, "has no projection model.layers.9.self_attn.q_proj");
  io::write_safetensors(odd / "adapter_model.safetensors",
                        {{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                          io::StDtype::F32,
                          {2, 64},
                          bytes}});
  expect_error(odd, "has only one of lora_A and lora_B");
  for (const char* n : {"good", "ia3", "dora", "rank", "json", "drop", "odd"}) fs::remove_all(temp_dir(n));
}

}  // namespace
}  // namespace lmx::models
