#include "models/registry.h"

#include <cmath>

#include "core/error.h"

namespace lmx::models {
namespace {

struct Family {
  const char* model_type;
  DecoderSpec (*build)(const io::ModelConfig&);
};
// The one table of supported architectures.
constexpr Family kFamilies[] = {
    {"llama", llama_spec},
    {"qwen3", qwen3_spec},
    {"gemma3_text", gemma3_spec},
};

}  // namespace

std::vector<std::string> supported_model_types() {
  std::vector<std::string> out;
  for (const Family& f : kFamilies) out.emplace_back(f.model_type);
  return out;
}

DecoderSpec build_spec(const io::ModelConfig& c, const std::string& config_path) {
  for (const Family& f : kFamilies)
    if (c.model_type == f.model_type) return f.build(c);
  std::string known;
  for (const Family& f : kFamilies) known += std::string(known.empty() ? "" : ", ") + f.model_type;
  fail("config", config_path, ": unknown model_type '", c.model_type, "'; this build of lmx runs ", known);
}

DecoderSpec common_spec(const io::ModelConfig& c) {
  DecoderSpec s;
  s.model_type = c.model_type;
  s.vocab_size = c.vocab_size;
  s.hidden_size = c.hidden_size;
  s.intermediate_size = c.intermediate_size;
  s.max_position_embeddings = c.max_position_embeddings;
  s.rms_norm_eps = float(c.rms_norm_eps);
  s.mlp_bias = c.mlp_bias;
  s.tie_word_embeddings = c.tie_word_embeddings;
  for (int64_t id : c.stop_token_ids()) s.eos_token_ids.push_back(int32_t(id));
  if (c.final_logit_softcapping) s.final_logit_softcapping = float(*c.final_logit_softcapping);
  const std::string& act = c.hidden_act;
  if (act == "silu" || act == "swish") {
    s.activation = nn::Activation::silu;
  } else if (act == "gelu_pytorch_tanh" || act == "gelu_tanh") {
    s.activation = nn::Activation::gelu_tanh;
  } else {
    fail("config", c.path.string(), ": unsupported activation '", act, "'; lmx supports silu and gelu_pytorch_tanh");
  }
  return s;
}

nn::AttentionSpec common_attention(const io::ModelConfig& c, int layer) {
  nn::AttentionSpec a;
  a.hidden = c.hidden_size;
  a.n_heads = c.num_attention_heads;
  a.n_kv_heads = c.num_key_value_heads;
  a.head_dim = c.head_dim;
  a.bias = c.attention_bias;
  a.norm_eps = float(c.rms_norm_eps);
  a.scale = float(1.0 / std::sqrt(double(c.head_dim)));
  const std::string& type = c.layer_types.at(size_t(layer));
  if (type == io::kSlidingAttention && c.sliding_window) a.window = *c.sliding_window;
  a.inv_freq = io::rope_inv_freq(c.rope_for(type), c.head_dim);
  return a;
}

}  // namespace lmx::models
