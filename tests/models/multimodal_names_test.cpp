// Gemma 3's multimodal checkpoints (Gemma3ForConditionalGeneration: 4B, 12B, 27B) keep the
// text model's tensors beside the vision tower's, under "language_model.model..."
// (transformers 4.x, mlx-vlm) or "model.language_model..." (transformers 5.x), with the
// text config nested in "text_config". Each layout, made from the Gemma 3 fixtures (float
// and MLX 4-bit) with a vision tensor added, must load the same text model.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "models/loader.h"
#include "ops/ops.h"

namespace lmx {
namespace {

namespace fs = std::filesystem;
const fs::path kModels = fs::path(LMX_FIXTURES_DIR) / "models";

struct Layout {
  const char* name;
  const char* text_prefix;  // replaces "model." in the text model's names
  const char* lm_head;      // "lm_head." becomes this (Gemma ties its head; kept for the rule)
  const char* vision;       // a vision-tower tensor the loader must ignore
};
constexpr Layout kLayouts[] = {
    {"transformers4", "language_model.model.", "language_model.lm_head.",
     "vision_tower.vision_model.post_layernorm.weight"},
    {"transformers5", "model.language_model.", "lm_head.", "model.vision_tower.vision_model.post_layernorm.weight"},
};

// The fixture `name` rewritten into `layout` under dir: renamed tensors plus one vision
// tensor, and config.json as a multimodal one with the text config nested.
void write_multimodal(const std::string& name, const Layout& layout, const fs::path& dir) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  const io::SafetensorsFile f = io::SafetensorsFile::open(kModels / name / "model.safetensors");
  std::vector<io::NamedTensor> tensors;
  std::vector<std::string> names;
  names.reserve(f.tensors().size() + 1);
  for (const io::TensorInfo& t : f.tensors()) {
    std::string n = t.name;
    if (n.starts_with("model.")) n = layout.text_prefix + n.substr(6);
    if (n.starts_with("lm_head.")) n = layout.lm_head + n.substr(8);
    names.push_back(n);
    tensors.push_back({names.back(), t.dtype, t.shape, f.data(t)});
  }
  const std::vector<float> vision(8, 0.5f);
  tensors.push_back({layout.vision, io::StDtype::F32, {8}, std::as_bytes(std::span(vision))});
  io::write_safetensors(dir / "model.safetensors", tensors);

  std::ifstream in(kModels / name / "config.json");
  nlohmann::json text = nlohmann::json::parse(in);
  nlohmann::json outer = {{"model_type", "gemma3"}, {"architectures", {"Gemma3ForConditionalGeneration"}}};
  for (const char* key : {"quantization", "quantization_config"})
    if (text.contains(key)) outer[key] = text[key], text.erase(key);
  outer["text_config"] = text;
  std::ofstream(dir / "config.json") << outer.dump(2);
}

TEST(MultimodalNames, Gemma3TextModelLoadsFromEitherLayout) {
  const std::vector<int32_t> ids{2, 17, 300, 42, 7, 99, 256, 3};
  for (const char* fixture : {"gemma3_text-f32", "gemma3_text-mlx-q4"})
    for (const Layout& layout : kLayouts) {
      SCOPED_TRACE(std::string(fixture) + " as " + layout.name);
      const fs::path dir = fs::temp_directory_path() / ("lmx_multimodal_" + std::to_string(::getpid()));
      write_multimodal(fixture, layout, dir);
      models::ModelLoadOptions f32;
      f32.dtype = Dtype::f32;
      const auto flat = models::load_causal_lm(kModels / fixture, f32);
      const auto nested = models::load_causal_lm(dir, f32);
      const Array x = from_vector(ids, {1, int64_t(ids.size())});
      EXPECT_EQ(to_floats(nested->forward(x)), to_floats(flat->forward(x)));
      fs::remove_all(dir);
    }
}

}  // namespace
}  // namespace lmx
