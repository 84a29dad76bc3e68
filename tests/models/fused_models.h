// The small random models the fused decode tests (fused_decode_test.cpp,
// fused_batch_test.cpp) step: configurations that reach the fused step's awkward paths,
// and random bf16 weights of a trained model's rough magnitudes.
#pragma once

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "io/config.h"
#include "models/registry.h"

namespace lmx::test {

constexpr const char* kLlama = R"({"model_type": "llama", "vocab_size": 1000, "hidden_size": 256,
 "intermediate_size": 520, "num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 2,
 "head_dim": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "tie_word_embeddings": true,
 "rope_theta": 500000.0, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
 "original_max_position_embeddings": 64, "rope_type": "llama3"}, "torch_dtype": "bfloat16"})";
constexpr const char* kGemma3 = R"({"model_type": "gemma3_text", "vocab_size": 2048, "hidden_size": 1152,
 "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 1,
 "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 4096,
 "rms_norm_eps": 1e-06, "tie_word_embeddings": true, "rope_theta": 1000000, "rope_local_base_freq": 10000,
 "query_pre_attn_scalar": 256, "sliding_window": 16, "sliding_window_pattern": 4,
 "final_logit_softcapping": 30.0, "torch_dtype": "bfloat16"})";

// A bf16 model on `device` with random weights of a trained model's rough magnitudes:
// uniform in ±`spread` (norm weights ±0.1 around their centre).
// `packed`: q, k and v side by side on a GPU, as the loader leaves them
// (CausalLM::pack_attention_inputs); false keeps three allocations.
inline std::unique_ptr<models::CausalLM> random_model(const char* config_json, Device device, float spread = 0.05f,
                                                      bool packed = true) {
  const io::ModelConfig c = io::parse_model_config(config_json, "test config");
  auto model = std::make_unique<models::CausalLM>(models::build_spec(c, "test config"));
  uint64_t seed = 1;
  model->visit("", [&](const std::string& name, Array& w, const Shape& shape, fast::QuantizedMatrix*) {
    const bool norm = name.ends_with("norm.weight");
    const float centre = norm && c.model_type != "gemma3_text" ? 1.0f : 0.0f, half = norm ? 0.1f : spread;
    w = to_device(random_uniform(shape, seed++, centre - half, centre + half, Dtype::bf16), device);
  });
  if (packed) model->pack_attention_inputs();
  return model;
}

// Sets the final norm's weights to NaN, as from weights that overflowed: every logit of
// every step is then NaN. False where the model has no final norm.
inline bool poison_final_norm(models::CausalLM& model) {
  bool poisoned = false;
  model.visit("", [&](const std::string& name, Array& w, const Shape& shape, fast::QuantizedMatrix*) {
    if (name != "model.norm.weight") return;
    w = to_device(astype(from_vector(std::vector<float>(size_t(shape[0]), NAN), shape), Dtype::bf16), w.device());
    poisoned = true;
  });
  return poisoned;
}

}  // namespace lmx::test
