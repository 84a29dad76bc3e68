// `lmx lora`: fine-tunes LoRA adapters on JSON Lines data. `lmx eval`: scores data under a
// model and its adapters. `lmx fuse`: folds an adapter into a model's weights and writes the
// result as a model folder of its own. All are thin over the public API (include/lmx/train.h).
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "commands.h"
#include "core/error.h"
#include "lmx/train.h"

namespace lmx::cli {
namespace fs = std::filesystem;
namespace {

struct LoraArgs {
  std::string model, data, valid, test, targets = "all";
  bool run_test = false;
  LoraOptions o;
};

// "test.jsonl: 100 examples, 4,321 targets, loss 2.3456, perplexity 10.45"
void print_eval(const std::string& data, const EvalResult& r, bool json) {
  if (json) {
    const nlohmann::json out{{"data", data},
                             {"examples", r.examples},
                             {"targets", r.targets},
                             {"loss", r.loss},
                             {"perplexity", r.perplexity}};
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf("%s: %zu examples, %lld targets, loss %.4f, perplexity %.3f\n", data.c_str(), r.examples,
                (long long)r.targets, r.loss, r.perplexity);
  }
}

std::vector<std::string> split_targets(const std::string& list) {
  std::vector<std::string> out;
  if (list == "all") return out;  // the API's default: every projection
  std::stringstream in(list);
  for (std::string t; std::getline(in, t, ',');)
    if (!t.empty()) out.push_back(t);
  return out;
}

// 75 s -> "1:15", 3,700 s -> "1:01:40".
std::string hms(double seconds) {
  const auto s = int64_t(seconds + 0.5);
  char out[32];
  if (s >= 3600) {
    std::snprintf(out, sizeof out, "%lld:%02lld:%02lld", (long long)(s / 3600), (long long)(s / 60 % 60),
                  (long long)(s % 60));
  } else {
    std::snprintf(out, sizeof out, "%lld:%02lld", (long long)(s / 60), (long long)(s % 60));
  }
  return out;
}

void run_lora(LoraArgs& a) {
  fs::path train_file = a.data, valid_file = a.valid, test_file = a.test;
  if (fs::is_directory(train_file)) {  // mlx-lm's layout: DIR/train.jsonl, DIR/valid.jsonl, DIR/test.jsonl
    if (valid_file.empty() && fs::exists(train_file / "valid.jsonl")) valid_file = train_file / "valid.jsonl";
    if (test_file.empty()) test_file = train_file / "test.jsonl";
    train_file /= "train.jsonl";
  }
  // Checked before training, not after it.
  LMX_CHECK(!a.run_test || fs::exists(test_file), "lora", "--test needs test data: ",
            test_file.empty() ? std::string("give --test-data FILE, or --data DIR holding test.jsonl")
                              : test_file.string() + " does not exist");
  a.o.targets = split_targets(a.targets);
  train_lora(
      a.model, train_file, valid_file, a.o,
      [&](const TrainProgress& p) {
        std::printf("step %5d/%d  loss %.4f", p.step, p.iters, p.train_loss);
        if (p.valid_loss >= 0) std::printf("  valid %.4f", p.valid_loss);
        const double mib = double(p.peak_memory) / double(1 << 20);
        std::printf("  lr %.2e  %.0f tok/s  peak %.*f %s  %s", p.learning_rate, p.tokens_per_s, mib < 1024 ? 0 : 2,
                    mib < 1024 ? mib : mib / 1024, mib < 1024 ? "MiB" : "GiB", hms(p.elapsed_s).c_str());
        if (p.step < p.iters) std::printf(" (eta %s)", hms(p.eta_s).c_str());
        std::printf("\n");
        std::fflush(stdout);
      },
      [&](const TrainSummary& s) {
        std::printf("%s: %zu training examples (%lld tokens", train_file.string().c_str(), s.train_examples,
                    (long long)s.train_tokens);
        if (s.truncated) std::printf(", %d cut to %d tokens", s.truncated, s.max_length);
        std::printf(")");
        if (s.valid_examples) std::printf(", %zu validation examples", s.valid_examples);
        std::printf("\nLoRA r %d, alpha %g, dropout %g: %lld trainable parameters (%s, %s)\n", s.rank,
                    double(s.alpha), double(s.dropout), (long long)s.trainable_parameters, s.dtype.c_str(),
                    s.device.c_str());
      });
  std::printf("adapters written to %s (adapter_config.json, adapter_model.safetensors)\n",
              a.o.adapter_path.string().c_str());
  if (a.run_test) print_eval(test_file.string(), evaluate_lora(a.model, a.o.adapter_path, test_file, a.o), false);
}

struct EvalArgs {
  std::string model, data, adapter;
  bool json = false;
  LoraOptions o;
};

void add_eval_command(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  auto* cmd = app.add_subcommand("eval", "Score JSON Lines data under a model (and adapters): loss and perplexity");
  cmd->add_option("MODEL", a->model, "Model folder (config.json, *.safetensors, tokenizer.json)")->required();
  cmd->add_option("--data", a->data, "JSONL to score, in the forms `lmx lora` reads")->required();
  cmd->add_option("--adapter", a->adapter, "LoRA adapter folder to apply (default: none)");
  cmd->add_option("--batch-size", a->o.batch_size, "Examples a forward pass")->capture_default_str();
  cmd->add_option("--max-seq-len", a->o.max_seq_len, "Longer examples are cut to this many tokens")
      ->capture_default_str();
  cmd->add_flag("--mask-prompt", a->o.mask_prompt, "Score only each example's last message (or completion)");
  cmd->add_option("--device", a->o.device, "cpu, cuda or cuda:N (default: the GPU where one is visible, else cpu)");
  cmd->add_option("--dtype", a->o.dtype, "Compute dtype: f32, bf16 or f16 (default: the weights')");
  cmd->add_flag("--json", a->json, "Print one JSON object");
  cmd->footer(
      "The loss is the mean cross-entropy a target token in nats, as `lmx lora` reports it, and the\n"
      "perplexity its exp. Compare a model with and without an adapter on held-out data:\n\n"
      "Examples:\n"
      "  lmx eval /models/Qwen3-0.6B --data data/test.jsonl\n"
      "  lmx eval /models/Qwen3-0.6B --data data/test.jsonl --adapter adapters --mask-prompt");
  cmd->callback([a] { print_eval(a->data, evaluate_lora(a->model, a->adapter, a->data, a->o), a->json); });
}

}  // namespace

void add_lora_commands(CLI::App& app) {
  auto a = std::make_shared<LoraArgs>();
  auto* cmd = app.add_subcommand("lora", "Fine-tune LoRA adapters on JSON Lines data");
  cmd->add_option("MODEL", a->model, "Model folder (config.json, *.safetensors, tokenizer.json)")
      ->required();
  cmd->add_option("--data", a->data,
                  "train.jsonl, or a folder holding train.jsonl (and valid.jsonl, test.jsonl)")
      ->required();
  cmd->add_option("--valid", a->valid,
                  "Validation JSONL (default: valid.jsonl beside train.jsonl, if any)");
  cmd->add_option("--iters", a->o.iters, "Optimizer steps")->capture_default_str();
  cmd->add_option("--batch-size", a->o.batch_size, "Examples a micro-batch")->capture_default_str();
  cmd->add_option("--grad-accumulation", a->o.grad_accumulation,
                  "Micro-batches a step, their gradients averaged: batch-size x this examples a step in "
                  "the memory of one micro-batch")
      ->capture_default_str();
  cmd->add_option("--learning-rate", a->o.learning_rate, "Peak learning rate (AdamW)")
      ->capture_default_str();
  cmd->add_option("--warmup", a->o.warmup, "Steps of linear warm-up")->capture_default_str();
  cmd->add_flag("--cosine", a->o.cosine,
                "Cosine decay to a tenth of the rate by the last step");
  cmd->add_option("--weight-decay", a->o.weight_decay, "AdamW's decoupled weight decay")
      ->capture_default_str();
  cmd->add_option("--rank", a->o.rank, "Adapter rank r")->capture_default_str();
  cmd->add_option("--alpha", a->o.alpha, "lora_alpha: the adapter's output is scaled by alpha / r")
      ->capture_default_str();
  cmd->add_flag("--rslora", a->o.rslora, "Scale by alpha / sqrt(r) (rank-stabilised LoRA)");
  cmd->add_option("--dropout", a->o.dropout,
                  "lora_dropout: while training, zero each element of an adapter's input with this "
                  "probability (0.05-0.1 guards small data against overfitting)")
      ->check(CLI::Range(0.0, 0.999))
      ->capture_default_str();
  cmd->add_option("--targets", a->targets,
                  "Projections to adapt: \"all\", or a list such as q_proj,v_proj (of q_proj, "
                  "k_proj, v_proj, o_proj, "
                  "gate_proj, up_proj, down_proj)")
      ->capture_default_str();
  cmd->add_option("--num-layers", a->o.num_layers,
                  "Adapt only the last this many decoder layers (0: all), as mlx-lm's --num-layers; saved as PEFT's "
                  "layers_to_transform")
      ->capture_default_str();
  cmd->add_option("--max-seq-len", a->o.max_seq_len, "Longer examples are cut to this many tokens")
      ->capture_default_str();
  cmd->add_flag("--mask-prompt", a->o.mask_prompt,
                "Learn only each example's last message (or completion)");
  cmd->add_flag("--grad-checkpoint", a->o.grad_checkpoint,
                "Keep only each layer's input and run the layer again in the backward pass (less "
                "memory, one more forward pass a step)");
  cmd->add_flag("--test", a->run_test,
                "After training, score the test data with the adapters: loss and perplexity (mlx-lm's --test)");
  cmd->add_option("--test-data", a->test, "Test JSONL for --test (default: test.jsonl in the --data folder)");
  cmd->add_option("--adapter-path", a->o.adapter_path, "Folder to write the adapters into")
      ->capture_default_str();
  cmd->add_option("--resume-adapter", a->o.resume_adapter,
                  "Continue training the adapters in this folder (with their own rank, alpha, dropout and layers)");
  cmd->add_option("--report-every", a->o.report_every, "Steps between progress lines")
      ->capture_default_str();
  cmd->add_option("--eval-every", a->o.eval_every,
                  "Steps between validation losses (0: at the end)");
  cmd->add_option("--val-batches", a->o.val_batches,
                  "Batches of the validation data scored each time (0: all; mlx-lm's --val-batches)")
      ->capture_default_str();
  cmd->add_option("--save-every", a->o.save_every,
                  "Steps between writes of the adapters (0: at the end)");
  cmd->add_option("--seed", a->o.seed,
                  "Seed of the adapters' initialisation, the examples' order and the dropout masks");
  cmd->add_option("--device", a->o.device, "cpu, cuda or cuda:N (default: the GPU where one is visible, else cpu)");
  cmd->add_option("--dtype", a->o.dtype, "Compute dtype: f32, bf16 or f16 (default: the weights')");
  cmd->footer(
      "Each line of the data is {\"text\": ...}, {\"messages\": [{\"role\": ..., \"content\": "
      "...}, ...]} (rendered\n"
      "by the model's chat template; with \"tools\" and messages' \"tool_calls\" as OpenAI's fine-tuning\n"
      "data holds them) or {\"prompt\": ..., \"completion\": ...}. The adapters are written in PEFT's\n"
      "layout: `lmx generate MODEL --adapter DIR` uses them, and so do transformers + PEFT.\n"
      "Attention, the norms, RoPE, the gated MLP and the loss each have a gradient kernel on CUDA;\n"
      "the rest flows through the model's plain ops. On an H100, 512-token rows of Qwen3-0.6B train\n"
      "2.4-3.4 times as fast as with transformers + PEFT (4.3-4.5 with --grad-checkpoint on both\n"
      "sides) in 0.5-0.6 times its memory (bench/NOTES.md).\n"
      "--grad-checkpoint trades a second forward pass for memory.\n\n"
      "Examples:\n"
      "  lmx lora /models/Qwen3-0.6B --data data/ --iters 600 --batch-size 4 --learning-rate 1e-4 --test\n"
      "  lmx lora /models/Llama-3.2-1B --data chats.jsonl --mask-prompt --targets q_proj,v_proj "
      "--rank 16\n"
      "  lmx lora /models/Qwen3-0.6B-4bit --data data/ --num-layers 16 --dropout 0.05  # QLoRA, as mlx-lm\n"
      "  lmx eval /models/Qwen3-0.6B --data data/test.jsonl --adapter adapters\n"
      "  lmx chat /models/Qwen3-0.6B --adapter adapters");
  cmd->callback([a] { run_lora(*a); });

  add_eval_command(app);

  auto model = std::make_shared<std::string>(), adapter = std::make_shared<std::string>(),
       out = std::make_shared<std::string>(), dtype = std::make_shared<std::string>();
  auto dequantize = std::make_shared<bool>(false);
  auto* fuse = app.add_subcommand(
      "fuse", "Fold a LoRA adapter into a model's weights and write a new model folder");
  fuse->add_option("MODEL", *model, "Model folder")->required();
  fuse->add_option("--adapter", *adapter,
                   "Adapter folder (adapter_config.json, adapter_model.safetensors)")
      ->required();
  fuse->add_option("--out", *out, "New model folder to write")->required();
  fuse->add_option("--dtype", *dtype, "Dtype of the written weights (default: the model's)");
  auto shard = std::make_shared<uint64_t>(5'000'000'000);
  fuse->add_option("--max-shard-size", *shard,
                   "Largest weights file, e.g. 5GB or 500MB; more goes into shards with an index, as "
                   "save_pretrained writes (0: one file)")
      ->transform(CLI::AsSizeValue(true))
      ->capture_default_str();
  fuse->add_flag("--dequantize", *dequantize,
                 "Write an MLX-quantized model's weights unquantized instead of quantizing the fused ones again");
  fuse->footer(
      "Each weight becomes W + scale·B·A, summed in f32 and rounded once. The tokenizer files are\n"
      "copied, and config.json with the written dtype. The fused model decodes at full speed (no\n"
      "adapter beside the weights).\n"
      "An MLX-quantized model (QLoRA) has each adapted weight dequantized exactly, fused, and quantized\n"
      "again at its own width and group size, as mlx-lm fuses: the result is as small as the base, at\n"
      "the cost of one more rounding. --dequantize writes every weight unquantized in the model's\n"
      "dtype (or --dtype) and drops the quantization from config.json.\n\n"
      "Examples:\n  lmx fuse /models/Qwen3-0.6B --adapter adapters --out /models/Qwen3-0.6B-tuned\n"
      "  lmx fuse /models/Qwen3-0.6B-4bit --adapter adapters --out /models/Qwen3-0.6B-tuned-bf16 --dequantize");
  fuse->callback([=] {
    const uint64_t bytes = fuse_lora(*model, *adapter, *out, *dtype, *dequantize, *shard);
    std::printf("wrote %s: %.2f GB of weights, %s with %s folded in\n", out->c_str(), double(bytes) / 1e9,
                model->c_str(), adapter->c_str());
  });
}

}  // namespace lmx::cli
