// config.json and generation_config.json, normalized across transformers 4.x and 5.x
// (spec: models-and-formats.md §1, §1.4, §2).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lmx::io {

inline constexpr std::string_view kFullAttention = "full_attention";
inline constexpr std::string_view kSlidingAttention = "sliding_attention";

// One layer type's rotary embedding, resolved from rope_theta/rope_scaling (4.x) or
// rope_parameters (5.x). Fields that the rope_type does not use keep their defaults.
struct RopeParams {
  std::string rope_type = "default";  // "default", "linear" or "llama3"
  double theta = 10000.0;
  double factor = 1.0;                                  // linear, llama3
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  int64_t original_max_position_embeddings = 8192;       // llama3
  bool operator==(const RopeParams&) const = default;
};

// inv_freq[i] for i < head_dim/2, in float32 arithmetic step by step as HF computes it,
// so that cos/sin tables match the reference bit for bit where the libm agrees.
std::vector<float> rope_inv_freq(const RopeParams& p, int64_t head_dim);

// MLX quantization of one module (spec §2).
struct QuantSpec {
  int64_t group_size = 64;
  int64_t bits = 4;
  std::string mode = "affine";  // "affine", "mxfp4", "nvfp4", "mxfp8"
  bool operator==(const QuantSpec&) const = default;
};

struct QuantConfig {
  QuantSpec base;
  // Per-module overrides keyed by module path ("model.layers.3.mlp.down_proj");
  // nullopt means the module is kept in float.
  std::map<std::string, std::optional<QuantSpec>, std::less<>> overrides;
};

// generation_config.json: every field is optional, absent when the file omits it.
struct GenerationConfig {
  std::optional<int64_t> bos_token_id, pad_token_id;
  std::vector<int64_t> eos_token_id;  // an int in the file becomes a list of one
  std::optional<double> temperature, top_p, repetition_penalty;
  std::optional<int64_t> top_k, max_new_tokens;
  std::optional<bool> do_sample;
};

// config.json with family defaults filled in. Field names match config.json.
struct ModelConfig {
  std::filesystem::path path;  // the config.json it came from, for error messages
  std::string model_type;      // "llama", "qwen3", "gemma3_text" (nested "gemma3" is unwrapped)
  std::vector<std::string> architectures;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // defaults to num_attention_heads
  int64_t head_dim = 0;             // defaults to hidden_size / num_attention_heads
  std::string hidden_act;           // Gemma's "hidden_activation" is read into this
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  bool mlp_bias = false;
  std::optional<double> query_pre_attn_scalar;  // Gemma: attention scaling is this^-0.5
  std::optional<int64_t> sliding_window;        // none when no layer slides
  std::optional<double> final_logit_softcapping, attn_logit_softcapping;
  std::string torch_dtype;  // "bfloat16", ...; from "dtype" (5.x) or "torch_dtype" (4.x); may be empty
  std::optional<int64_t> bos_token_id, pad_token_id;
  std::vector<int64_t> eos_token_id;
  std::vector<std::string> layer_types;  // one per layer: kFullAttention or kSlidingAttention
  std::map<std::string, RopeParams, std::less<>> rope_parameters;  // keyed by layer type, both present
  std::optional<QuantConfig> quantization;
  std::optional<GenerationConfig> generation;  // generation_config.json, when present

  const RopeParams& rope_for(std::string_view layer_type) const;
  // Quantization of a module ("model.layers.0.self_attn.q_proj"), nullopt when unquantized.
  std::optional<QuantSpec> quant_for(std::string_view module_path) const;
  // Tokens that end generation: generation_config.json's eos_token_id, else config.json's.
  std::vector<int64_t> stop_token_ids() const;
};

// Parses config.json text. `display_name` names the file in errors:
// "[config] <file>: missing field 'hidden_size'".
ModelConfig parse_model_config(std::string_view json_text, const std::filesystem::path& display_name);
GenerationConfig parse_generation_config(std::string_view json_text, const std::filesystem::path& display_name);

// Reads <dir>/<config_file> and, when present, <dir>/generation_config.json.
ModelConfig load_model_config(const std::filesystem::path& model_dir, std::string_view config_file = "config.json");

}  // namespace lmx::io
