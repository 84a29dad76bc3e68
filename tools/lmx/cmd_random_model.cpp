// `lmx random-model`: writes a model folder with a real architecture's config and
// random weights, for benchmarks and load tests where real weights are unavailable.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "models/registry.h"

namespace lmx::cli {
namespace {

struct Preset {
  const char* name;
  const char* config;  // config.json as the hub publishes it (transformers 4.x form)
};
constexpr Preset kPresets[] = {
    {"llama-3.2-1b",
     R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 2048,
 "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
 "head_dim": 64, "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
 "tie_word_embeddings": true, "rope_theta": 500000.0, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0,
 "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"},
 "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16"})"},
    {"llama-3.1-8b",
     R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
 "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
 "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
 "tie_word_embeddings": false, "rope_theta": 500000.0, "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0,
 "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"},
 "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16"})"},
    {"llama-3.2-3b",
     R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 3072,
 "intermediate_size": 8192, "num_hidden_layers": 28, "num_attention_heads": 24, "num_key_value_heads": 8,
 "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
 "tie_word_embeddings": true, "rope_theta": 500000.0, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0,
 "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"},
 "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16"})"},
    {"qwen3-0.6b",
     R"({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 1024,
 "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
 "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 40960, "rms_norm_eps": 1e-06,
 "tie_word_embeddings": true, "rope_theta": 1000000, "attention_bias": false, "bos_token_id": 151643,
 "eos_token_id": 151645, "torch_dtype": "bfloat16"})"},
    {"qwen3-4b",
     R"({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 2560,
 "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
 "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 40960, "rms_norm_eps": 1e-06,
 "tie_word_embeddings": true, "rope_theta": 1000000, "attention_bias": false, "bos_token_id": 151643,
 "eos_token_id": 151645, "torch_dtype": "bfloat16"})"},
    {"gemma3-1b",
     R"({"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "vocab_size": 262144,
 "hidden_size": 1152, "intermediate_size": 6912, "num_hidden_layers": 26, "num_attention_heads": 4,
 "num_key_value_heads": 1, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
 "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "tie_word_embeddings": true, "rope_theta": 1000000,
 "rope_local_base_freq": 10000, "query_pre_attn_scalar": 256, "sliding_window": 512,
 "sliding_window_pattern": 6, "bos_token_id": 2, "eos_token_id": [1, 106], "torch_dtype": "bfloat16"})"},
    // Gemma-3-4B's text model (its checkpoint's text_config), on its own.
    {"gemma3-4b",
     R"({"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "vocab_size": 262208,
 "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34, "num_attention_heads": 8,
 "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
 "max_position_embeddings": 131072, "rms_norm_eps": 1e-06, "tie_word_embeddings": true, "rope_theta": 1000000,
 "rope_local_base_freq": 10000, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
 "query_pre_attn_scalar": 256, "sliding_window": 1024, "sliding_window_pattern": 6, "bos_token_id": 2,
 "eos_token_id": [1, 106], "torch_dtype": "bfloat16"})"},
};

// Random MLX affine codes for a quantized [out, in] matrix (spec §2): uniform codes, and
// per group the scale and offset that map them onto ±spread, as the float weights are.
void add_quantized(std::vector<io::DeferredTensor>& tensors, const std::string& module, const Shape& shape,
                   float spread, int bits, int group, uint64_t seed, uint64_t& bytes) {
  const int64_t out = shape[0], in = shape[1];
  LMX_CHECK(in % group == 0, "random-model", "'", module, "' has ", in, " inputs, not a multiple of group size ",
            group);
  tensors.push_back({module + ".weight", io::StDtype::U32, {out, in * bits / 32}, [=](std::span<std::byte> to) {
                       // splitmix64: any bits are valid codes.
                       uint64_t x = seed;
                       for (size_t i = 0; i + 4 <= to.size(); i += 4) {
                         uint64_t z = (x += 0x9E3779B97F4A7C15ull);
                         z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
                         z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
                         const uint32_t word = uint32_t(z ^ (z >> 31));
                         std::memcpy(to.data() + i, &word, 4);
                       }
                     }});
  const float scale = 2 * spread / float((1 << bits) - 1);
  for (const auto& [name, value] : {std::pair{".scales", scale}, std::pair{".biases", -spread}})
    tensors.push_back({module + name, io::StDtype::BF16, {out, in / group}, [value](std::span<std::byte> to) {
                         const bf16_t v = f32_to_bf16(value);
                         for (size_t i = 0; i + 2 <= to.size(); i += 2) std::memcpy(to.data() + i, &v, 2);
                       }});
  bytes += uint64_t(out * in) * uint64_t(bits) / 8 + uint64_t(out * (in / group)) * 4;
}

void write_random_model(const std::string& preset, const std::filesystem::path& out, uint64_t seed, int bits,
                        int group) {
  const Preset* p = nullptr;
  for (const Preset& x : kPresets)
    if (preset == x.name) p = &x;
  if (!p) {
    std::string names;
    for (const Preset& x : kPresets) names += std::string(names.empty() ? "" : ", ") + x.name;
    fail("random-model", "unknown preset '", preset, "'; choose one of ", names);
  }
  if (bits != 0 && bits != 2 && bits != 3 && bits != 4 && bits != 5 && bits != 6 && bits != 8)
    fail("random-model", "--bits ", bits, " is not an MLX affine width; choose 2, 3, 4, 5, 6 or 8");
  if (group != 32 && group != 64 && group != 128)
    fail("random-model", "--group-size ", group, " is not 32, 64 or 128");
  nlohmann::json config_json = nlohmann::json::parse(p->config);
  if (bits) {  // as mlx_lm.convert writes it
    config_json["quantization"] = {{"group_size", group}, {"bits", bits}, {"mode", "affine"}};
    config_json["quantization_config"] = config_json["quantization"];
  }
  const io::ModelConfig config = io::parse_model_config(config_json.dump(), preset + " preset");
  models::CausalLM model(models::build_spec(config, preset));
  // Each tensor is made when the writer reaches it, so memory holds one at a time (the
  // 8B preset's largest is 1 GB of its 16).
  std::vector<io::DeferredTensor> tensors;
  uint64_t n = 0, bytes = 0;
  model.visit("", [&](const std::string& name, Array&, const Shape& shape, fast::QuantizedMatrix* quantizable) {
    // Norm weights near their identity (1 for Llama/Qwen, 0 for Gemma's 1 + w form),
    // everything else small and uniform, as a trained model's magnitudes roughly are.
    const bool norm = name.ends_with("norm.weight");
    const float centre = norm && config.model_type != "gemma3_text" ? 1.0f : 0.0f;
    const float spread = norm ? 0.1f : 0.035f;
    const uint64_t tensor_seed = seed + n++;
    if (bits && quantizable)
      return add_quantized(tensors, name.substr(0, name.rfind('.')), shape, spread, bits, group, tensor_seed, bytes);
    tensors.push_back({name, io::StDtype::BF16, shape, [=](std::span<std::byte> to) {
                         const Array a = random_uniform(shape, tensor_seed, centre - spread, centre + spread,
                                                        Dtype::bf16);
                         LMX_CHECK(a.nbytes() == to.size(), "random-model", "tensor '", name, "' made ",
                                   a.nbytes(), " bytes where its file slot holds ", to.size());
                         std::memcpy(to.data(), a.raw(), to.size());
                       }});
    bytes += uint64_t(numel(shape)) * 2;
  });
  std::filesystem::create_directories(out);
  io::write_safetensors_streamed(out / "model.safetensors", tensors, {{"format", bits ? "mlx" : "pt"}});
  std::ofstream(out / "config.json") << config_json.dump(1) << "\n";
  std::printf("wrote %s: %zu tensors, %.2f GB of weights (%s)\n", out.string().c_str(), tensors.size(),
              double(bytes) / 1e9,
              bits ? ("MLX affine, " + std::to_string(bits) + " bits, groups of " + std::to_string(group)).c_str()
                   : "bf16");
}

}  // namespace

void add_random_model_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("random-model", "Write a model folder with a real architecture and random weights");
  auto preset = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  auto seed = std::make_shared<uint64_t>(0);
  cmd->add_option("PRESET", *preset,
                  "llama-3.2-1b, llama-3.2-3b (6.4 GB), llama-3.1-8b (16 GB), qwen3-0.6b, qwen3-4b (8.0 GB), "
                  "gemma3-1b or gemma3-4b (7.8 GB)")
      ->required();
  cmd->add_option("OUT_DIR", *out, "Folder to write config.json and model.safetensors into")->required();
  cmd->add_option("--seed", *seed, "Seed of the random weights");
  auto bits = std::make_shared<int>(0);
  auto group = std::make_shared<int>(64);
  cmd->add_option("--bits", *bits,
                  "Write an MLX affine-quantized checkpoint with codes of this many bits (2, 3, 4, 5, 6 or 8), "
                  "as mlx_lm.convert -q lays it out; default: bf16 weights");
  cmd->add_option("--group-size", *group, "Columns that share a scale and an offset when quantized (32, 64, 128)");
  cmd->footer("The weights are random: use it to measure speed and memory, not quality.\n\n"
              "Examples:\n"
              "  lmx random-model llama-3.2-1b /tmp/llama-1b && lmx generate /tmp/llama-1b --prompt-ids 1,2,3\n"
              "  lmx random-model qwen3-0.6b /tmp/qwen3-4bit --bits 4   # MLX 4-bit, groups of 64");
  cmd->callback([=] { write_random_model(*preset, *out, *seed, *bits, *group); });
}

}  // namespace lmx::cli
