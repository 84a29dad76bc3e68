// Llama 3.x (LlamaForCausalLM, model_type "llama"): pre-norm blocks, SiLU MLP,
// Llama-style RMSNorm, GQA, llama3 RoPE scaling (spec §1.1).
#include "models/registry.h"

namespace lmx::models {

DecoderSpec llama_spec(const io::ModelConfig& c) {
  DecoderSpec s = common_spec(c);
  s.norm_style = fast::RmsNormStyle::llama;
  for (int i = 0; i < int(c.num_hidden_layers); ++i) s.layers.push_back(common_attention(c, i));
  return s;
}

}  // namespace lmx::models
