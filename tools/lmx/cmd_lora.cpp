// `lmx lora`: fine-tunes LoRA adapters on JSON Lines data. `lmx fuse`: folds an adapter into
// a model's weights and writes the result as a model folder of its own.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <sstream>

#include "commands.h"
#include "core/dtype.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "models/loader.h"
#include "models/lora.h"
#include "text/tokenizer.h"
#include "train/trainer.h"

namespace lmx::cli {
namespace fs = std::filesystem;
namespace {

struct LoraArgs {
  std::string model, data, valid, device = "cpu", dtype, resume;
  std::string targets = "all";
  int rank = 8, max_seq_len = 2048;
  float alpha = 16;
  bool rslora = false, mask_prompt = false;
  train::TrainOptions train;
};

std::unique_ptr<models::CausalLM> load_for(const std::string& dir, const std::string& device,
                                           const std::string& dtype) {
  models::ModelLoadOptions o;
  o.device = Device::parse(device);
  if (!dtype.empty()) {
    o.dtype = parse_dtype(dtype);
    LMX_CHECK(o.dtype && is_float(*o.dtype), "lora", "--dtype must be f32, bf16 or f16, got '",
              dtype, "'");
  }
  return models::load_causal_lm(dir, o);
}

std::vector<std::string> split_targets(const std::string& list) {
  if (list == "all") return models::LoraConfig{}.target_modules;
  std::vector<std::string> out;
  std::stringstream in(list);
  for (std::string t; std::getline(in, t, ',');)
    if (!t.empty()) out.push_back(t);
  return out;
}

std::string gib(size_t bytes) {
  char s[32];
  std::snprintf(s, sizeof s, "%.2f GiB", double(bytes) / double(size_t(1) << 30));
  return s;
}

void run_lora(LoraArgs& a) {
  fs::path train_file = a.data, valid_file = a.valid;
  if (fs::is_directory(train_file)) {  // mlx-lm's layout: DIR/train.jsonl, DIR/valid.jsonl
    if (valid_file.empty() && fs::exists(train_file / "valid.jsonl"))
      valid_file = train_file / "valid.jsonl";
    train_file /= "train.jsonl";
  }
  const auto model = load_for(a.model, a.device, a.dtype);
  const Tokenizer tok = Tokenizer::from_dir(a.model);
  const train::DatasetOptions dopt{a.mask_prompt, a.max_seq_len};
  const train::Dataset train = train::read_jsonl(train_file, tok, dopt, a.model);
  std::optional<train::Dataset> valid;
  if (!valid_file.empty()) valid = train::read_jsonl(valid_file, tok, dopt, a.model);
  models::LoraConfig lora{a.rank, a.alpha, split_targets(a.targets), a.rslora};
  if (!a.resume.empty()) {
    lora = models::load_lora(*model, a.resume);
  } else {
    models::attach_lora(*model, lora, a.train.seed);
  }
  int64_t trainable = 0;
  for (const auto& [name, p] : models::lora_parameters(*model)) trainable += p->size();
  std::printf("%s: %zu training examples (%lld tokens%s)", train_file.string().c_str(),
              train.examples.size(), (long long)train.tokens,
              train.truncated ? (", " + std::to_string(train.truncated) + " cut").c_str() : "");
  if (valid) std::printf(", %zu validation examples", valid->examples.size());
  std::printf("\nLoRA r %d, alpha %g on %zu module kinds: %lld trainable parameters (%s, %s)\n",
              lora.rank, double(lora.alpha), lora.target_modules.size(), (long long)trainable,
              std::string(dtype_name(model->dtype())).c_str(), model->device().str().c_str());
  a.train.base_model = a.model;
  train::train_lora(*model, lora, train, valid ? &*valid : nullptr, a.train,
                    [&](const train::TrainReport& r) {
                      std::printf("step %5d/%d  loss %.4f", r.step, a.train.iters, r.train_loss);
                      if (r.valid_loss >= 0) std::printf("  valid %.4f", r.valid_loss);
                      std::printf("  lr %.2e  %.0f tok/s  peak %s\n", r.learning_rate,
                                  r.tokens_per_s, gib(r.peak_memory).c_str());
                      std::fflush(stdout);
                    });
  std::printf("adapters written to %s (adapter_config.json, adapter_model.safetensors)\n",
              a.train.adapter_path.string().c_str());
}

// Copies the files a model folder needs besides its weights.
void copy_side_files(const fs::path& from, const fs::path& to) {
  for (const char* f : {"config.json", "generation_config.json", "tokenizer.json",
                        "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"})
    if (fs::exists(from / f)) fs::copy_file(from / f, to / f, fs::copy_options::overwrite_existing);
}

void run_fuse(const std::string& model_dir, const std::string& adapter, const std::string& out,
              const std::string& dtype) {
  LMX_CHECK(fs::absolute(out) != fs::absolute(model_dir), "fuse",
            "--out must be a new folder, not the model's own");
  const auto model = load_for(model_dir, "cpu", dtype);
  models::load_lora(*model, adapter);
  models::fuse_lora(*model);
  std::vector<io::DeferredTensor> tensors;
  uint64_t bytes = 0;
  model->visit("", [&](const std::string& name, Array& p, const Shape&, fast::QuantizedMatrix* q) {
    LMX_CHECK(p.valid() || !q || !q->packed.valid(), "fuse", model_dir,
              " is quantized: an adapter folds only into "
              "16- or 32-bit weights; fuse into the unquantized model");
    if (!p.valid()) return;
    const Array a = contiguous(p);
    tensors.push_back({name, io::to_st_dtype(a.dtype()), a.shape(), [a](std::span<std::byte> to) {
                         std::memcpy(to.data(), a.raw(), to.size());
                       }});
    bytes += a.nbytes();
  });
  fs::create_directories(out);
  io::write_safetensors_streamed(fs::path(out) / "model.safetensors", tensors, {{"format", "pt"}});
  copy_side_files(model_dir, out);
  std::printf("wrote %s: %zu tensors, %.2f GB, %s with %s folded in\n", out.c_str(), tensors.size(),
              double(bytes) / 1e9, model_dir.c_str(), adapter.c_str());
}

}  // namespace

void add_lora_commands(CLI::App& app) {
  auto a = std::make_shared<LoraArgs>();
  auto* cmd = app.add_subcommand("lora", "Fine-tune LoRA adapters on JSON Lines data");
  cmd->add_option("MODEL", a->model, "Model folder (config.json, *.safetensors, tokenizer.json)")
      ->required();
  cmd->add_option("--data", a->data,
                  "train.jsonl, or a folder holding train.jsonl (and valid.jsonl)")
      ->required();
  cmd->add_option("--valid", a->valid,
                  "Validation JSONL (default: valid.jsonl beside train.jsonl, if any)");
  cmd->add_option("--iters", a->train.iters, "Optimizer steps")->capture_default_str();
  cmd->add_option("--batch-size", a->train.batch_size, "Examples a step")->capture_default_str();
  cmd->add_option("--learning-rate", a->train.learning_rate, "Peak learning rate (AdamW)")
      ->capture_default_str();
  cmd->add_option("--warmup", a->train.warmup, "Steps of linear warm-up")->capture_default_str();
  cmd->add_flag("--cosine", a->train.cosine,
                "Cosine decay to a tenth of the rate by the last step");
  cmd->add_option("--weight-decay", a->train.weight_decay, "AdamW's decoupled weight decay")
      ->capture_default_str();
  cmd->add_option("--rank", a->rank, "Adapter rank r")->capture_default_str();
  cmd->add_option("--alpha", a->alpha, "lora_alpha: the adapter's output is scaled by alpha / r")
      ->capture_default_str();
  cmd->add_flag("--rslora", a->rslora, "Scale by alpha / sqrt(r) (rank-stabilised LoRA)");
  cmd->add_option("--targets", a->targets,
                  "Projections to adapt: \"all\", or a list such as q_proj,v_proj (of q_proj, "
                  "k_proj, v_proj, o_proj, "
                  "gate_proj, up_proj, down_proj)")
      ->capture_default_str();
  cmd->add_option("--max-seq-len", a->max_seq_len, "Longer examples are cut to this many tokens")
      ->capture_default_str();
  cmd->add_flag("--mask-prompt", a->mask_prompt,
                "Learn only each example's last message (or completion)");
  cmd->add_flag("--grad-checkpoint", a->train.grad_checkpoint,
                "Keep one layer's activations at a time and recompute the rest (less memory, about "
                "a third slower)");
  cmd->add_option("--adapter-path", a->train.adapter_path, "Folder to write the adapters into")
      ->capture_default_str();
  cmd->add_option("--resume-adapter", a->resume, "Continue training the adapters in this folder");
  cmd->add_option("--report-every", a->train.report_every, "Steps between progress lines")
      ->capture_default_str();
  cmd->add_option("--eval-every", a->train.eval_every,
                  "Steps between validation losses (0: at the end)");
  cmd->add_option("--save-every", a->train.save_every,
                  "Steps between writes of the adapters (0: at the end)");
  cmd->add_option("--seed", a->train.seed,
                  "Seed of the adapters' initialisation and the examples' order");
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--dtype", a->dtype, "Compute dtype: f32, bf16 or f16 (default: the weights')");
  cmd->footer(
      "Each line of the data is {\"text\": ...}, {\"messages\": [{\"role\": ..., \"content\": "
      "...}, ...]} (rendered\n"
      "by the model's chat template) or {\"prompt\": ..., \"completion\": ...}. The adapters are "
      "written in PEFT's\n"
      "layout: `lmx generate MODEL --adapter DIR` uses them, and so do transformers + PEFT.\n"
      "Gradients flow through the model's plain ops (not the fused decode kernels); CUDA training "
      "is untested.\n\n"
      "Examples:\n"
      "  lmx lora /models/Qwen3-0.6B --data data/ --iters 600 --batch-size 4 --learning-rate 1e-4\n"
      "  lmx lora /models/Llama-3.2-1B --data chats.jsonl --mask-prompt --targets q_proj,v_proj "
      "--rank 16\n"
      "  lmx chat /models/Qwen3-0.6B --adapter adapters");
  cmd->callback([a] { run_lora(*a); });

  auto model = std::make_shared<std::string>(), adapter = std::make_shared<std::string>(),
       out = std::make_shared<std::string>(), dtype = std::make_shared<std::string>();
  auto* fuse = app.add_subcommand(
      "fuse", "Fold a LoRA adapter into a model's weights and write a new model folder");
  fuse->add_option("MODEL", *model, "Model folder")->required();
  fuse->add_option("--adapter", *adapter,
                   "Adapter folder (adapter_config.json, adapter_model.safetensors)")
      ->required();
  fuse->add_option("--out", *out, "New model folder to write")->required();
  fuse->add_option("--dtype", *dtype, "Dtype of the written weights (default: the model's)");
  fuse->footer(
      "Each weight becomes W + scale·B·A, summed in f32 and rounded once. The tokenizer and "
      "config\n"
      "files are copied. The fused model decodes at full speed (no adapter beside the weights).\n\n"
      "Example:\n  lmx fuse /models/Qwen3-0.6B --adapter adapters --out /models/Qwen3-0.6B-tuned");
  fuse->callback([=] { run_fuse(*model, *adapter, *out, *dtype); });
}

}  // namespace lmx::cli
