// lmx: the public fine-tuning API. LoRA adapters are trained on JSON Lines data and written
// in PEFT's layout; LoadOptions::adapter_path loads them, and fuse_lora folds them into a
// model folder of its own.
//
//   lmx::LoraOptions o;
//   o.iters = 600;
//   o.learning_rate = 1e-4f;
//   o.adapter_path = "adapters";
//   lmx::train_lora("/models/Qwen3-0.6B", "data/train.jsonl", "data/valid.jsonl", o,
//                   [](const lmx::TrainProgress& p) { std::printf("%d %.3f\n", p.step, p.train_loss); });
//   auto model = lmx::load_model("/models/Qwen3-0.6B", {.adapter_path = "adapters"});
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace lmx {

struct LoraOptions {
  // The adapters.
  int rank = 8;
  float alpha = 16;  // the adapter's output is scaled by alpha / rank (alpha / sqrt(rank) with rslora)
  bool rslora = false;
  // lora_dropout: the probability of zeroing each element of an adapter's input while training
  // (PEFT's; 0.05-0.1 is usual on small data). Inference never drops.
  float dropout = 0;
  // Projections to adapt, by their last name; empty = all seven (q, k, v, o, gate, up, down).
  std::vector<std::string> targets;
  int num_layers = 0;  // adapt only the last this many decoder layers (mlx-lm's --num-layers); 0 = all
  std::filesystem::path resume_adapter;  // continue training these (their rank, alpha, dropout, layers)
  // The data. Each line: {"text": ...}, {"messages": [...]} or {"prompt": ..., "completion": ...}.
  int max_seq_len = 2048;    // longer examples are cut (to the model's context too)
  bool mask_prompt = false;  // learn only each example's last message (or completion)
  // The optimisation: AdamW, a linear warm-up, then constant or a cosine to a tenth.
  int iters = 100, batch_size = 4;
  int grad_accumulation = 1;  // micro-batches of batch_size a step, their gradients averaged
  float learning_rate = 1e-5f, weight_decay = 0;
  int warmup = 0;
  bool cosine = false;
  bool grad_checkpoint = false;  // less memory, each layer computed twice
  uint64_t seed = 0;
  int report_every = 10, eval_every = 0, save_every = 0;  // 0: at the end only
  int val_batches = 0;  // batches of the validation data each time it is scored (0: all)
  // Where: "" = default_device() (the GPU where one is visible); dtype "" = the weights'.
  std::string device, dtype;
  std::filesystem::path adapter_path = "adapters";
};

struct TrainProgress {
  int step = 0, iters = 0;
  double train_loss = -1;  // mean since the last report
  double valid_loss = -1;  // -1 where validation did not run at this step
  double learning_rate = 0, tokens_per_s = 0;
  int64_t tokens = 0;       // targets trained on so far
  size_t peak_memory = 0;   // bytes on the model's device
  double elapsed_s = 0, eta_s = 0;  // since the first step, and to the last at the pace so far
};

struct TrainSummary {
  size_t train_examples = 0, valid_examples = 0;
  int64_t train_tokens = 0;
  int truncated = 0;              // examples cut to max_length tokens
  int max_length = 0;             // max_seq_len, or the model's context where that is shorter
  int64_t trainable_parameters = 0;
  int rank = 0;  // the adapters' (a resumed adapter's own, where one is resumed)
  float alpha = 0, dropout = 0;
  std::string dtype, device;
};

// Trains adapters on `model_dir` (which needs tokenizer.json, and a chat template for chat
// data) and writes them to options.adapter_path. valid_data may be empty. `started` hears
// what is about to run, `progress` each report. Errors are lmx::Error naming the file,
// line or option.
void train_lora(const std::filesystem::path& model_dir, const std::filesystem::path& train_data,
                const std::filesystem::path& valid_data, const LoraOptions& options,
                const std::function<void(const TrainProgress&)>& progress = {},
                const std::function<void(const TrainSummary&)>& started = {});

struct EvalResult {
  size_t examples = 0;
  int64_t targets = 0;  // tokens scored (every token after each example's first, or its last message's)
  double loss = 0;        // mean cross-entropy a target, in nats
  double perplexity = 0;  // exp(loss)
};

// Scores `data` (JSON Lines as train_lora reads it) under model_dir, with the adapters in
// adapter_dir ("" = the bare model): mlx-lm's --test. Reads options' max_seq_len, mask_prompt,
// batch_size, device and dtype.
EvalResult evaluate_lora(const std::filesystem::path& model_dir, const std::filesystem::path& adapter_dir,
                         const std::filesystem::path& data, const LoraOptions& options = {});

// Writes out_dir: model_dir's config and tokenizer files, and its weights with the adapter
// folded in (W + scale·B·A in f32, rounded once to `dtype`, "" = the weights' own). An
// MLX-quantized model's adapted weights are dequantized exactly, fused, and quantized again at
// their own widths (as mlx-lm fuses); with `dequantize`, every weight is written unquantized in
// the compute dtype and config.json loses its "quantization". Weights past `max_shard_bytes`
// (0: no limit) go into shards with model.safetensors.index.json, as save_pretrained writes
// them. Returns the bytes of weights written.
uint64_t fuse_lora(const std::filesystem::path& model_dir, const std::filesystem::path& adapter_dir,
                   const std::filesystem::path& out_dir, const std::string& dtype = "", bool dequantize = false,
                   uint64_t max_shard_bytes = 5'000'000'000);

}  // namespace lmx
