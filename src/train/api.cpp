// The public fine-tuning API (include/lmx/train.h) over the trainer and the adapters.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "lmx/lmx.h"
#include "lmx/train.h"
#include "models/loader.h"
#include "models/lora.h"
#include "text/tokenizer.h"
#include "train/trainer.h"

namespace lmx {
namespace fs = std::filesystem;
namespace {

std::unique_ptr<models::CausalLM> load_for(const fs::path& dir, const std::string& device, const std::string& dtype,
                                           const char* op) {
  models::ModelLoadOptions o;
  o.device = Device::parse(device.empty() ? default_device() : device);
  o.dtype = models::compute_dtype(dtype, op);
  return models::load_causal_lm(dir, o);
}

// A model with its tokenizer, and how examples are read for it: cut to max_seq_len, and to
// the model's context too (positions past it were never trained).
struct ModelAndText {
  std::unique_ptr<models::CausalLM> model;
  Tokenizer tok;
  train::DatasetOptions data;
};

ModelAndText load_with_text(const fs::path& model_dir, const LoraOptions& o, const char* op) {
  auto model = load_for(model_dir, o.device, o.dtype, op);
  LMX_CHECK(fs::exists(model_dir / "tokenizer.json"), op, model_dir.string(),
            " has no tokenizer.json: training and scoring read text, which needs the model's tokenizer");
  Tokenizer tok = Tokenizer::from_dir(model_dir);
  const int64_t context = model->spec().max_position_embeddings;
  const int max_len = context > 0 ? int(std::min<int64_t>(o.max_seq_len, context)) : o.max_seq_len;
  return {std::move(model), std::move(tok), {o.mask_prompt, max_len}};
}

}  // namespace

void train_lora(const fs::path& model_dir, const fs::path& train_data, const fs::path& valid_data,
                const LoraOptions& o, const std::function<void(const TrainProgress&)>& progress,
                const std::function<void(const TrainSummary&)>& started) {
  const ModelAndText loaded = load_with_text(model_dir, o, "train");
  models::CausalLM* model = loaded.model.get();
  const train::Dataset train = train::read_jsonl(train_data, loaded.tok, loaded.data, model_dir.string());
  std::optional<train::Dataset> valid;
  if (!valid_data.empty()) valid = train::read_jsonl(valid_data, loaded.tok, loaded.data, model_dir.string());

  models::LoraConfig lora{o.rank, o.alpha, o.targets, o.rslora, o.dropout};
  if (lora.target_modules.empty()) lora.target_modules = models::LoraConfig{}.target_modules;
  const int layers = model->num_layers();
  LMX_CHECK(o.num_layers >= 0 && o.num_layers <= layers, "train", "num_layers ", o.num_layers,
            " is not between 0 (all) and the model's ", layers, " decoder layers");
  if (o.num_layers > 0)
    for (int l = layers - o.num_layers; l < layers; ++l) lora.layers.push_back(l);
  if (!o.resume_adapter.empty()) {
    lora = models::load_lora(*model, o.resume_adapter);
  } else {
    models::attach_lora(*model, lora, o.seed);
  }
  TrainSummary s;
  s.train_examples = train.examples.size();
  s.valid_examples = valid ? valid->examples.size() : 0;
  s.train_tokens = train.tokens;
  s.truncated = train.truncated;
  s.max_length = loaded.data.max_seq_len;
  s.dtype = dtype_name(model->dtype());
  s.device = model->device().str();
  s.rank = lora.rank, s.alpha = lora.alpha, s.dropout = lora.dropout;
  for (const auto& [name, p] : models::lora_parameters(*model)) s.trainable_parameters += p->size();
  if (started) started(s);

  train::TrainOptions t;
  t.iters = o.iters, t.batch_size = o.batch_size, t.grad_accumulation = o.grad_accumulation;
  t.learning_rate = o.learning_rate, t.warmup = o.warmup;
  t.cosine = o.cosine, t.weight_decay = o.weight_decay, t.report_every = o.report_every;
  t.eval_every = o.eval_every, t.save_every = o.save_every, t.grad_checkpoint = o.grad_checkpoint;
  t.val_batches = o.val_batches;
  t.seed = o.seed, t.adapter_path = o.adapter_path, t.base_model = model_dir.string();
  train::train_lora(*model, lora, train, valid ? &*valid : nullptr, t, [&](const train::TrainReport& r) {
    if (progress)
      progress({r.step, o.iters, r.train_loss, r.valid_loss, r.learning_rate, r.tokens_per_s, r.tokens,
                r.peak_memory, r.elapsed_s, r.eta_s});
  });
}

EvalResult evaluate_lora(const fs::path& model_dir, const fs::path& adapter_dir, const fs::path& data,
                         const LoraOptions& o) {
  LMX_CHECK(o.batch_size > 0, "eval", "batch_size must be > 0, got ", o.batch_size);
  const ModelAndText loaded = load_with_text(model_dir, o, "eval");
  const train::Dataset set = train::read_jsonl(data, loaded.tok, loaded.data, model_dir.string());
  LMX_CHECK(!set.examples.empty(), "eval", data.string(), " holds no examples");
  if (!adapter_dir.empty()) models::load_lora(*loaded.model, adapter_dir);
  EvalResult r;
  r.examples = set.examples.size();
  r.loss = train::evaluate(*loaded.model, set, o.batch_size, &r.targets);
  r.perplexity = std::exp(r.loss);
  return r;
}

uint64_t fuse_lora(const fs::path& model_dir, const fs::path& adapter_dir, const fs::path& out_dir,
                   const std::string& dtype, bool dequantize, uint64_t max_shard_bytes) {
  LMX_CHECK(fs::weakly_canonical(out_dir) != fs::weakly_canonical(model_dir), "fuse",
            "the output folder must be a new one, not the model's own (", out_dir.string(), ")");
  const auto model = load_for(model_dir, "cpu", dtype, "fuse");  // W + scale·B·A once, then to disk
  models::load_lora(*model, adapter_dir);
  models::fuse_lora(*model, dequantize);
  // The tensors in mlx-lm's layout (<module>.weight as U32 codes, .scales, .biases) where a
  // weight stays quantized; each dequantized as it is written where none may.
  std::vector<io::DeferredTensor> tensors;
  uint64_t bytes = 0;
  auto add = [&](const std::string& name, const Array& p) {
    const Array a = contiguous(p);
    tensors.push_back({name, io::to_st_dtype(a.dtype()), a.shape(),
                       [a](std::span<std::byte> to) { std::memcpy(to.data(), a.raw(), to.size()); }});
    bytes += a.nbytes();
  };
  model->visit("", [&](const std::string& name, Array& p, const Shape&, fast::QuantizedMatrix* q) {
    if (!q || !q->packed.valid()) {
      if (p.valid()) add(name, p);
    } else if (dequantize) {
      const fast::QuantizedMatrix m = *q;
      const Dtype t = m.scales.dtype();
      tensors.push_back({name, io::to_st_dtype(t), {m.rows(), m.cols()}, [m, t](std::span<std::byte> to) {
                           const Array w = fast::dequantize(m, t);
                           std::memcpy(to.data(), w.raw(), to.size());
                         }});
      bytes += uint64_t(m.rows() * m.cols()) * itemsize(t);
    } else {
      const std::string module = name.substr(0, name.size() - std::string_view(".weight").size());
      add(name, q->packed), add(module + ".scales", q->scales), add(module + ".biases", q->biases);
    }
  });
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  LMX_CHECK(!ec, "fuse", out_dir.string(), ": cannot create the folder: ", ec.message());
  io::write_model_weights(out_dir, tensors, {{"format", "pt"}}, max_shard_bytes);
  // config.json with the written dtype, and without MLX's quantization where none is left.
  // (The loader has read it already, so it parses.)
  auto config = nlohmann::ordered_json::parse(io::read_text_file(model_dir / "config.json", "fuse"));
  for (const char* key : {"dtype", "torch_dtype"})
    if (config.contains(key)) config[key] = dtype_name(model->dtype());
  if (dequantize) config.erase("quantization"), config.erase("quantization_config");
  {
    std::ofstream f(out_dir / "config.json");
    f << config.dump(2) << "\n";
    LMX_CHECK(f.good(), "fuse", (out_dir / "config.json").string(), ": cannot write");
  }
  for (const char* f : {"generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                        "chat_template.jinja"})
    if (fs::exists(model_dir / f)) fs::copy_file(model_dir / f, out_dir / f, fs::copy_options::overwrite_existing);
  return bytes;
}

}  // namespace lmx
