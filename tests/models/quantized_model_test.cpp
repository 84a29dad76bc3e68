// MLX affine-quantized checkpoints (spec §2) against their dequantized float32 copies.
// tools/reference/make_quantized_fixtures.py writes both from the float fixtures: the
// quantized folder as mlx_lm.convert lays it out, and the same weights dequantized in
// float64 from the stored codes. The copy runs through the float path, which the float
// fixtures check against transformers; the format spec names exactly this reference.
// Then the ways a quantized folder can be wrong.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <set>
#include <stdexcept>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/safetensors.h"
#include "models/loader.h"
#include "ops/kernels.h"
#include "ops/fast.h"
#include "ops/ops.h"
#include "compare.h"

namespace lmx {
namespace {

namespace fs = std::filesystem;
const fs::path kModels = fs::path(LMX_FIXTURES_DIR) / "models";
using test::greedy, test::max_abs, test::relative_l2;

// Two rows of 12 ids below the fixtures' vocabulary of 512.
const std::vector<int32_t> kIds{1,  17, 300, 42, 7,  99,  256, 3,   11, 500, 64, 128,
                                2,  5,  8,   13, 21, 34,  55,  89,  144, 233, 377, 0};

std::vector<float> logits_of(const models::CausalLM& m, Device d) {
  return to_floats(m.forward(to_device(from_vector(kIds, {2, 12}), d)));
}

models::ModelLoadOptions f32_on(Device d) {
  models::ModelLoadOptions o;
  o.dtype = Dtype::f32;
  o.device = d;
  return o;
}

// A tensor of a checkpoint as an array, in its stored dtype.
Array read_tensor(const io::SafetensorsFile& file, const std::string& name) {
  const io::TensorInfo* t = file.find(name);
  if (!t) throw std::runtime_error(file.path().string() + " has no " + name);
  const std::span<const std::byte> data = file.data(*t);
  return copy(from_host(data.data(), Shape(t->shape.begin(), t->shape.end()), *io::to_lmx_dtype(t->dtype)));
}

// fast::quantize against tools/reference/make_quantized_fixtures.py, an implementation of
// MLX's rule of its own (Python, in float64): quantizing each float fixture's weights gives
// its quantized fixture's codes, scales and biases bit for bit, at every width the fixtures hold.
TEST(QuantizeTest, TheFloatFixturesQuantizeToTheQuantizedFixturesBitForBit) {
  const std::pair<const char*, const char*> pairs[] = {{"llama-mlx-q4", "llama-f32"},
                                                       {"gemma3_text-mlx-q4", "gemma3_text-f32"},
                                                       {"qwen3-mlx-q8", "qwen3-f32"},
                                                       {"qwen3-mlx-mixed", "qwen3-f32"}};
  std::set<int> widths, groups;
  for (const auto& [quantized, source] : pairs) {
    const auto qf = io::SafetensorsFile::open(kModels / quantized / "model.safetensors");
    const auto ff = io::SafetensorsFile::open(kModels / source / "model.safetensors");
    for (const io::TensorInfo& t : qf.tensors()) {
      if (!t.name.ends_with(".scales")) continue;
      const std::string m = t.name.substr(0, t.name.size() - 7);
      SCOPED_TRACE(std::string(quantized) + ": " + m);
      const Array packed = read_tensor(qf, m + ".weight"), scales = read_tensor(qf, m + ".scales"),
                  biases = read_tensor(qf, m + ".biases"), weight = read_tensor(ff, m + ".weight");
      const int64_t cols = weight.shape(1);
      const int group = int(cols / scales.shape(1)), bits = int(packed.shape(1) * 32 / cols);
      const fast::QuantizedMatrix got = fast::quantize(weight, bits, group, Dtype::bf16);
      ASSERT_EQ(got.packed.shape(), packed.shape());
      EXPECT_EQ(to_vector<uint32_t>(got.packed), to_vector<uint32_t>(packed));
      EXPECT_EQ(to_floats(got.scales), to_floats(scales));
      EXPECT_EQ(to_floats(got.biases), to_floats(biases));
      widths.insert(bits), groups.insert(group);
    }
  }
  EXPECT_EQ(widths, (std::set<int>{2, 3, 4, 5, 6, 8}));
  EXPECT_EQ(groups, (std::set<int>{32, 64}));
}

// What quantize refuses, with the reason.
TEST(QuantizeTest, BadWidthsGroupsShapesAndValuesAreRefused) {
  auto error_of = [](const Array& w, int bits, int group) {
    try {
      fast::quantize(w, bits, group, Dtype::bf16);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const Array w = random_uniform({4, 64}, 1, -1, 1);
  EXPECT_NE(error_of(w, 7, 64).find("MLX's affine widths are 2, 3, 4, 5, 6 and 8 bits"), std::string::npos);
  EXPECT_NE(error_of(w, 4, 48).find("group sizes 32, 64 and 128"), std::string::npos);
  EXPECT_NE(error_of(w, 4, 128).find("columns are not whole groups of 128"), std::string::npos);
  EXPECT_NE(error_of(reshape(w, {256}), 4, 64).find("must be a matrix"), std::string::npos);
  std::vector<float> v = to_floats(w);
  v[70] = std::nanf("");
  EXPECT_NE(error_of(from_floats(v, {4, 64}), 4, 64).find("at [1, 6]: only finite weights"), std::string::npos);
  // A constant group quantizes exactly, as does one holding two values.
  const fast::QuantizedMatrix flat = fast::quantize(full({2, 32}, 0.75), 4, 32, Dtype::f32);
  EXPECT_EQ(to_floats(fast::dequantize(flat, Dtype::f32)), std::vector<float>(64, 0.75f));
}

class QuantizedModelTest : public ::testing::TestWithParam<std::string> {
 protected:
  fs::path dir() const { return kModels / GetParam(); }
  fs::path reference() const { return kModels / GetParam() / "dequantized"; }
};

TEST_P(QuantizedModelTest, F32LogitsAndGreedyTokensMatchTheDequantizedReference) {
  const auto q = models::load_causal_lm(dir(), f32_on(Device::cpu()));
  const auto ref = models::load_causal_lm(reference(), f32_on(Device::cpu()));
  ASSERT_TRUE(q->quantized()) << "the CPU keeps the packed codes";
  ASSERT_FALSE(ref->quantized());
  const std::vector<float> got = logits_of(*q, Device::cpu()), want = logits_of(*ref, Device::cpu());
  ASSERT_EQ(got.size(), want.size());
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, double(std::abs(got[i] - want[i])));
  EXPECT_LE(worst, 1e-4 * max_abs(want));
  // 20 greedy tokens: the prompt through the tiled product, each step through the one-row
  // kernel that reads the codes.
  const std::vector<int32_t> prompt(kIds.begin(), kIds.begin() + 7);
  EXPECT_EQ(greedy(*q, prompt, 20), greedy(*ref, prompt, 20));
}

TEST_P(QuantizedModelTest, Bf16LogitsAreWithinBf16OfTheReference) {
  const auto q = models::load_causal_lm(dir());  // the scales' dtype: bf16
  ASSERT_EQ(q->dtype(), Dtype::bf16);
  const auto ref = models::load_causal_lm(reference(), f32_on(Device::cpu()));
  EXPECT_LE(relative_l2(logits_of(*q, Device::cpu()), logits_of(*ref, Device::cpu())), 2e-2);
}

TEST_P(QuantizedModelTest, CachedDecodingEqualsFullRecomputation) {
  const auto model = models::load_causal_lm(dir(), f32_on(Device::cpu()));
  const std::vector<int32_t> row(kIds.begin(), kIds.begin() + 12);
  const std::vector<float> full = to_floats(model->forward(from_vector(row, {1, 12})));  // [1, 12, V]
  KVCache cache(model->num_layers());
  const std::vector<nn::LayerCache*> layers = cache.layers();
  const Array prompt = from_vector(std::vector<int32_t>(row.begin(), row.begin() + 4), {1, 4});
  std::vector<float> inc = to_floats(model->forward(prompt, layers));
  for (size_t t = 4; t < row.size(); ++t) {
    const Array id = from_vector(std::vector<int32_t>{row[t]}, {1, 1});
    const std::vector<float> step = to_floats(model->forward(id, layers));
    inc.insert(inc.end(), step.begin(), step.end());
  }
  ASSERT_EQ(inc.size(), full.size());
  double worst = 0;
  for (size_t i = 0; i < full.size(); ++i) worst = std::max(worst, double(std::abs(inc[i] - full[i])));
  EXPECT_LE(worst, 1e-5 * max_abs(full));
}

TEST_P(QuantizedModelTest, OtherDevicesGetTheWeightsDequantizedOnce) {
  Device gpu = Device::cpu();
  try {
    detail::kernels_for(Device::cuda(0));
    gpu = Device::cuda(0);
  } catch (const Error& e) {
    GTEST_SKIP() << "no GPU visible: " << e.what();
  }
  const auto q = models::load_causal_lm(dir(), f32_on(gpu));
  EXPECT_FALSE(q->quantized());
  const auto ref = models::load_causal_lm(reference(), f32_on(gpu));
  const std::vector<float> got = logits_of(*q, gpu), want = logits_of(*ref, gpu);
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, double(std::abs(got[i] - want[i])));
  EXPECT_LE(worst, 1e-4 * max_abs(want));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, QuantizedModelTest,
                         ::testing::Values("llama-mlx-q4", "gemma3_text-mlx-q4", "qwen3-mlx-mixed", "qwen3-mlx-q8"),
                         [](const auto& info) {
                           std::string s = info.param;
                           std::replace(s.begin(), s.end(), '-', '_');
                           return s;
                         });

// ---- bad quantized folders ----

class BadQuantizedModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("lmx_bad_quantized_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    for (const char* f : {"config.json", "model.safetensors"})
      fs::copy_file(kModels / "llama-mlx-q4" / f, dir_ / f);
    std::ifstream in(dir_ / "config.json");
    config_ = nlohmann::json::parse(in);
  }
  void TearDown() override { fs::remove_all(dir_); }
  void expect_load_error(const std::vector<std::string>& needles) {
    std::ofstream(dir_ / "config.json") << config_.dump(2);
    try {
      models::load_causal_lm(dir_);
      ADD_FAILURE() << "loading succeeded";
    } catch (const Error& e) {
      for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
    }
  }
  // Rewrites model.safetensors without `drop`.
  void drop_tensor(const std::string& drop) {
    const io::SafetensorsFile f = io::SafetensorsFile::open(dir_ / "model.safetensors");
    std::vector<io::NamedTensor> keep;
    std::vector<std::vector<std::byte>> bytes;
    bytes.reserve(f.tensors().size());
    for (const io::TensorInfo& t : f.tensors()) {
      if (t.name == drop) continue;
      const auto data = f.data(t);
      bytes.emplace_back(data.begin(), data.end());
      keep.push_back({t.name, t.dtype, t.shape, bytes.back()});
    }
    ASSERT_EQ(keep.size() + 1, f.tensors().size()) << drop;
    io::write_safetensors(dir_ / "model.safetensors.new", keep, {{"format", "mlx"}});
    fs::rename(dir_ / "model.safetensors.new", dir_ / "model.safetensors");
  }
  fs::path dir_;
  nlohmann::json config_;
};

TEST_F(BadQuantizedModelTest, ScalesWithoutAQuantizationObject) {
  config_.erase("quantization");
  config_.erase("quantization_config");
  expect_load_error({"model.embed_tokens.scales", "no \"quantization\" object", "disagree"});
}

TEST_F(BadQuantizedModelTest, BitsThatDisagreeWithThePackedCodes) {
  config_["quantization"]["bits"] = 8;
  config_["quantization_config"]["bits"] = 8;
  expect_load_error({"model.embed_tokens.weight", "[512, 8]", "8-bit, group-32 quantization", "[512, 16]"});
}

TEST_F(BadQuantizedModelTest, AModuleKeptInFloatThatHasScales) {
  config_["quantization"]["model.layers.0.mlp.up_proj"] = false;
  expect_load_error({"model.layers.0.mlp.up_proj", "keeps that module in float"});
}

TEST_F(BadQuantizedModelTest, AModeOtherThanAffine) {
  config_["quantization"]["mode"] = "mxfp4";
  config_["quantization"]["group_size"] = 32;
  config_["quantization_config"] = config_["quantization"];
  expect_load_error({"mxfp4", "affine", "mlx_lm.convert"});
}

TEST_F(BadQuantizedModelTest, MissingBiases) {
  drop_tensor("model.layers.1.self_attn.k_proj.biases");
  expect_load_error({"model.layers.1.self_attn.k_proj.biases", "missing"});
}

TEST_F(BadQuantizedModelTest, ScalesOfTheWrongShape) {
  config_["quantization"]["group_size"] = 64;
  config_["quantization_config"]["group_size"] = 64;
  expect_load_error({"model.embed_tokens.", "group-64", "[512, 1]"});
}

}  // namespace
}  // namespace lmx
