// LoRA fine-tuning: batches of examples, the loss and its gradients for the adapters only,
// AdamW, a learning-rate schedule, reports, validation and saved adapters.
#pragma once

#include <filesystem>
#include <functional>
#include <string>

#include "models/lora.h"
#include "train/dataset.h"
#include "train/optimizer.h"

namespace lmx::train {

struct TrainOptions {
  int iters = 100;     // optimizer steps
  int batch_size = 4;  // examples a micro-batch
  int grad_accumulation = 1;  // micro-batches a step, their gradients averaged
  float learning_rate = 1e-5f;
  int warmup = 0;       // steps of linear warm-up from 0
  bool cosine = false;  // then a cosine decay to a tenth of the rate at the last step
  float weight_decay = 0;
  float adam_epsilon = 1e-8f;  // PyTorch's; where it is not far below |g|, a step's size follows g's scale
  int report_every = 10;
  int eval_every = 0;  // validation loss every this many steps (0: at the end only)
  int val_batches = 0;  // batches of the validation data each time (0: all of it)
  int save_every = 0;  // adapters written every this many steps (0: at the end only)
  bool grad_checkpoint = false;
  uint64_t seed = 0;  // the adapters' initialisation, the examples' order and the dropout masks
  std::filesystem::path adapter_path = "adapters";
  std::string base_model;  // recorded in adapter_config.json
};

struct TrainReport {
  int step = 0;
  double train_loss = -1;  // mean over the steps since the last report (-1: none)
  double valid_loss = -1;  // when validation ran at this step (-1: not)
  double learning_rate = 0;
  double tokens_per_s = 0;  // targets a second over the steps since the last report
  int64_t tokens = 0;       // targets trained on so far
  size_t peak_memory = 0;   // bytes, the model's device
  double elapsed_s = 0;     // since the first step began
  double eta_s = 0;         // to the last step, at the pace so far
};

// The learning rate at step (1-based) of `iters`.
double learning_rate_at(const TrainOptions& o, int step);

// Mean loss a target over `data` (no gradients), or over its first max_batches batches where
// that is > 0; `counted`, where given, gets how many targets were scored.
double evaluate(const models::CausalLM& model, const Dataset& data, int batch_size, int64_t* counted = nullptr,
                int max_batches = 0);

// The model's adapters as the parameters to train, each first made an array of its own, since
// the optimizer writes into its parameters in place. Fails where the model has none.
std::vector<Array> trainable_adapters(models::CausalLM& model);

// Trains the adapters already attached to `model` (models::attach_lora or load_lora) on
// `train`, and writes them to o.adapter_path with `lora` as their config. `report` gets a
// line every o.report_every steps, at each validation and at the end.
void train_lora(models::CausalLM& model, const models::LoraConfig& lora, const Dataset& train,
                const Dataset* valid, const TrainOptions& o,
                const std::function<void(const TrainReport&)>& report);

}  // namespace lmx::train
