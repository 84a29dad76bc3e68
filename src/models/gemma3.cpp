// Gemma 3 text (Gemma3ForCausalLM, model_type "gemma3_text"; spec §1.3):
// - embeddings scaled by sqrt(hidden), rounded to the activation dtype;
// - four norms per layer, all Gemma-style (f32, 1 + w);
// - q/k norms, attention scaled by query_pre_attn_scalar^-0.5, not head_dim^-0.5;
// - sliding-window layers with their own RoPE base, global layers with rope_theta and
//   its scaling (both resolved per layer type by io::ModelConfig);
// - GELU (tanh) MLP; tied LM head; optional final logit softcapping.
#include <cmath>

#include "models/registry.h"

namespace lmx::models {

DecoderSpec gemma3_spec(const io::ModelConfig& c) {
  DecoderSpec s = common_spec(c);
  s.norm_style = fast::RmsNormStyle::gemma;
  s.sandwich_norms = true;
  s.scale_embeddings = true;
  const double scalar = c.query_pre_attn_scalar.value_or(double(c.head_dim));
  for (int i = 0; i < int(c.num_hidden_layers); ++i) {
    nn::AttentionSpec a = common_attention(c, i);
    a.qk_norm = true;
    a.norm_style = fast::RmsNormStyle::gemma;
    a.scale = float(1.0 / std::sqrt(scalar));
    s.layers.push_back(a);
  }
  return s;
}

}  // namespace lmx::models
