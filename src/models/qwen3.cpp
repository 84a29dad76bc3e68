// Qwen3 (Qwen3ForCausalLM, model_type "qwen3"): Llama's block plus RMSNorm over each
// head of q and k before RoPE; head_dim is explicit and may differ from hidden/heads (spec §1.2).
#include "models/registry.h"

namespace lmx::models {

DecoderSpec qwen3_spec(const io::ModelConfig& c) {
  DecoderSpec s = common_spec(c);
  s.norm_style = fast::RmsNormStyle::llama;
  for (int i = 0; i < int(c.num_hidden_layers); ++i) {
    nn::AttentionSpec a = common_attention(c, i);
    a.qk_norm = true;
    a.norm_style = fast::RmsNormStyle::llama;
    s.layers.push_back(a);
  }
  return s;
}

}  // namespace lmx::models
