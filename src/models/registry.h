// model_type -> the function that turns a config.json into a DecoderSpec.
#pragma once

#include <string>
#include <vector>

#include "io/config.h"
#include "models/transformer.h"

namespace lmx::models {

// Each family file defines one of these.
DecoderSpec llama_spec(const io::ModelConfig& c);
DecoderSpec qwen3_spec(const io::ModelConfig& c);
DecoderSpec gemma3_spec(const io::ModelConfig& c);

// The spec for config.json's model_type; throws "[config] <file>: unknown model_type"
// listing the supported ones.
DecoderSpec build_spec(const io::ModelConfig& c, const std::string& config_path);

// Fields every family fills the same way (sizes, eos ids, tying).
DecoderSpec common_spec(const io::ModelConfig& c);
// Attention of layer i with the family's choices applied by the caller afterwards.
nn::AttentionSpec common_attention(const io::ModelConfig& c, int layer);

}  // namespace lmx::models
