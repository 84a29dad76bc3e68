// LoRA adapters on a CausalLM's projections, read and written in PEFT's layout, so that an
// adapter trained here loads in transformers + PEFT and one trained there loads here:
//   adapter_config.json        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules":
//   [...], ...} adapter_model.safetensors
//   base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight [r, in]
//                              base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight [out,
//                              r]
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "models/transformer.h"

namespace lmx::models {

struct LoraConfig {
  int rank = 8;
  float alpha = 16;
  // The projections' last names; every one by default (all linear layers of the decoder).
  std::vector<std::string> target_modules = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                             "gate_proj", "up_proj", "down_proj"};
  bool use_rslora = false;  // scale alpha / sqrt(r) instead of alpha / r
  // lora_dropout: while training (nn::DropoutScope), each adapter's input elements are zeroed
  // with this probability, in [0, 1).
  float dropout = 0;
  // The decoder layers adapted, by index; empty: all of them. PEFT's layers_to_transform
  // (mlx-lm's --num-layers adapts the last N).
  std::vector<int> layers = {};
  float scale() const;
};

// Fresh adapters on every targeted projection, initialised as PEFT does: A uniform in
// ±1/sqrt(in) (kaiming-uniform with a = sqrt(5)), B zeros, so that the model is unchanged
// until B learns. In the model's dtype. Errors if a target names no projection.
void attach_lora(CausalLM& model, const LoraConfig& config, uint64_t seed);

// The adapters' arrays with their PEFT tensor names, A then B for each projection in
// layer order: the parameters a trainer updates (the pointers stay valid while the model
// and its adapters do).
std::vector<std::pair<std::string, Array*>> lora_parameters(CausalLM& model);

// Writes adapter_config.json and adapter_model.safetensors into dir (created if needed).
void save_lora(CausalLM& model, const LoraConfig& config, const std::filesystem::path& dir,
               const std::string& base_model = "");

// Reads a PEFT LoRA folder and attaches its adapters (all of them or, on any error, none).
// Errors name the file and tensor and say what to do.
LoraConfig load_lora(CausalLM& model, const std::filesystem::path& dir);

// Folds every adapter into its weight (nn::Linear::fuse_lora): a quantized projection is
// quantized again at its own width, or with `dequantize` left unquantized.
void fuse_lora(CausalLM& model, bool dequantize = false);

}  // namespace lmx::models
