// Loading a model folder: config.json, then every weight through the model's
// parameter visitor, checked against the shapes config.json implies.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "models/transformer.h"

namespace lmx::models {

struct ModelLoadOptions {
  std::optional<Dtype> dtype;  // compute dtype; default: the weights' own (f32 stays f32)
  Device device = Device::cpu();
  std::string config_file = "config.json";  // another name lets tests load alternative forms
  bool deterministic = false;  // CausalLM::set_deterministic
};

// The compute dtype a user named: "f32", "bf16" or "f16"; empty for the weights' own
// (nullopt). Anything else is an lmx::Error from `op` that quotes what was given.
std::optional<Dtype> compute_dtype(std::string_view name, const char* op);

// Throws lmx::Error naming the file and tensor on any problem; nothing is returned
// half-loaded. Weights stored in the compute dtype are used in place (zero-copy mmap).
std::unique_ptr<CausalLM> load_causal_lm(const std::filesystem::path& dir, const ModelLoadOptions& options = {});

// The model_type values this build can run.
std::vector<std::string> supported_model_types();

}  // namespace lmx::models
