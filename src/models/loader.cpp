#include "models/loader.h"

#include <cstdint>
#include <functional>

#include "core/error.h"
#include "io/config.h"
#include "io/weight_set.h"
#include "models/registry.h"

namespace lmx::models {
namespace {

// One checkpoint tensor of `shape` as stored, on the CPU: in place (no copy) when
// suitably aligned; MLX files may place tensors at odd offsets, and those are copied once.
// `want` names the dtypes allowed, for the error.
Array stored_tensor(const io::WeightSet& ws, const std::string& name, const Shape& shape, bool (*allowed)(Dtype),
                    const char* want, const std::string& why = "config.json implies") {
  const io::TensorInfo& info = ws.at(name);
  const std::string where = detail::cat(ws.file_of(name).string(), ": tensor '", name, "'");
  const Shape stored(info.shape.begin(), info.shape.end());
  LMX_CHECK(stored == shape, "load", where, " has shape ", shape_str(stored), " but ", why, " ", shape_str(shape),
            "; the weights do not belong to this config");
  const std::optional<Dtype> dt = io::to_lmx_dtype(info.dtype);
  LMX_CHECK(dt && allowed(*dt), "load", where, " has dtype ", io::st_dtype_name(info.dtype), ", expected ", want);
  const std::span<const std::byte> bytes = ws.data(name);
  const bool aligned = reinterpret_cast<uintptr_t>(bytes.data()) % itemsize(*dt) == 0;
  return aligned ? Array::borrow(bytes.data(), shape, *dt, ws.keep_alive(name)) : from_host(bytes.data(), shape, *dt);
}

bool float_dtype(Dtype t) { return is_float(t); }
bool u32_dtype(Dtype t) { return t == Dtype::u32; }

// A float checkpoint tensor in the compute dtype on the target device.
Array tensor_to_array(const io::WeightSet& ws, const std::string& name, const Shape& shape, Dtype compute,
                      Device device) {
  Array a = stored_tensor(ws, name, shape, float_dtype, "F32, F16 or BF16");
  if (a.dtype() != compute) a = astype(a, compute);
  return to_device(a, device);
}

// The MLX-quantized matrix `module` ("model.layers.0.mlp.down_proj") of logical shape
// [out, in] (spec §2): a module is quantized when <module>.scales exists, as mlx-lm
// decides, with the bits and group size config.json gives it. Scales and biases come
// in the compute dtype, on the CPU.
fast::QuantizedMatrix quantized_matrix(const io::WeightSet& ws, const io::ModelConfig& config,
                                       const std::string& module, const Shape& shape, Dtype compute) {
  const std::string where = detail::cat(ws.file_of(module + ".scales").string(), ": tensor '", module, ".scales'");
  const std::optional<io::QuantSpec> q = config.quant_for(module);
  LMX_CHECK(q.has_value(), "load", where, " marks '", module, "' as quantized, but ", config.path.string(),
            config.quantization ? " keeps that module in float" : " has no \"quantization\" object",
            "; the checkpoint and its config disagree (mlx_lm.convert writes both)");
  LMX_CHECK(q->mode == "affine", "load", config.path.string(), ": '", module, "' uses MLX's ", q->mode,
            " quantization; lmx runs the affine mode (2-8 bits) so far. Convert with mlx_lm.convert -q "
            "(affine is its default), or use the float checkpoint");
  const int64_t out = shape[0], in = shape[1];
  LMX_CHECK(in * q->bits % 32 == 0 && in % q->group_size == 0, "load", where, ": ", in, " inputs of '", module,
            "' do not split into groups of ", q->group_size, " at ", q->bits, " bits");
  const std::string spec = detail::cat("the ", q->bits, "-bit, group-", q->group_size, " quantization in ",
                                       config.path.filename().string(), " implies");
  fast::QuantizedMatrix m;
  m.bits = int(q->bits);
  m.group_size = int(q->group_size);
  m.packed = stored_tensor(ws, module + ".weight", {out, in * q->bits / 32}, u32_dtype, "U32 (packed codes)", spec);
  m.scales = stored_tensor(ws, module + ".scales", {out, in / q->group_size}, float_dtype, "F32, F16 or BF16", spec);
  LMX_CHECK(ws.find(module + ".biases") != nullptr, "load", ws.dir().string(), ": tensor '", module,
            ".biases' is missing: affine-quantized modules store scales and biases");
  m.biases = stored_tensor(ws, module + ".biases", {out, in / q->group_size}, float_dtype, "F32, F16 or BF16", spec);
  if (m.scales.dtype() != compute) m.scales = astype(m.scales, compute);
  if (m.biases.dtype() != compute) m.biases = astype(m.biases, compute);
  fast::check_quantized(m, "load", where);
  return m;
}

// Where a checkpoint keeps the text model's tensors. A text model's names are the
// model's own ("model.layers.0...", "lm_head.weight"); Gemma 3's multimodal checkpoints
// (Gemma3ForConditionalGeneration, 4B and up) keep them beside the vision tower's, as
// "language_model.model..." (transformers 4.x, and mlx-vlm's conversions) or
// "model.language_model..." (transformers 5.x). Returns the name in the checkpoint.
std::function<std::string(const std::string&)> stored_names(const io::WeightSet& ws) {
  auto has_embedding = [&](const std::string& prefix) {
    return ws.find(prefix + "embed_tokens.weight") != nullptr;
  };
  if (has_embedding("model.") || !(has_embedding("language_model.model.") || has_embedding("model.language_model.")))
    return [](const std::string& name) { return name; };
  if (has_embedding("language_model.model."))
    return [](const std::string& name) { return "language_model." + name; };
  return [](const std::string& name) {
    return name.starts_with("model.") ? "model.language_model." + name.substr(6) : name;
  };
}

}  // namespace

std::unique_ptr<CausalLM> load_causal_lm(const std::filesystem::path& dir, const ModelLoadOptions& options) {
  const io::ModelConfig config = io::load_model_config(dir, options.config_file);
  const DecoderSpec spec = build_spec(config, (dir / options.config_file).string());
  const io::WeightSet weights = io::WeightSet::open_dir(dir);

  const auto stored = stored_names(weights);

  // The compute dtype: asked for, else the embedding's stored dtype (its scales' when it
  // is quantized).
  const io::TensorInfo* embed = weights.find(stored("model.embed_tokens.scales"));
  if (!embed) embed = weights.find(stored("model.embed_tokens.weight"));
  Dtype compute = Dtype::f32;
  if (options.dtype) {
    compute = *options.dtype;
  } else if (embed) {
    compute = io::to_lmx_dtype(embed->dtype).value_or(Dtype::f32);
    if (!is_float(compute)) compute = Dtype::f32;
  }

  auto model = std::make_unique<CausalLM>(spec);
  model->set_deterministic(options.deterministic);
  model->visit("", [&](const std::string& param_name, Array& param, const Shape& shape,
                       fast::QuantizedMatrix* quant) {
    const std::string name = stored(param_name);
    LMX_CHECK(weights.find(name) != nullptr, "load", dir.string(), ": tensor '", name,
              "' is missing from the weights (model_type ", spec.model_type, ", expected shape ", shape_str(shape),
              "); the checkpoint is incomplete or does not match config.json");
    const std::string module = name.substr(0, name.rfind('.'));
    if (!quant || weights.find(module + ".scales") == nullptr) {
      param = tensor_to_array(weights, name, shape, compute, options.device);
      return;
    }
    fast::QuantizedMatrix m = quantized_matrix(weights, config, module, shape, compute);
    // The CPU multiplies by the packed codes. Other devices have no quantized kernels yet:
    // they get the weight dequantized once, here, in the compute dtype.
    if (options.device == Device::cpu()) {
      *quant = std::move(m);
    } else {
      param = to_device(fast::dequantize(m, compute), options.device);
    }
  });
  model->pack_attention_inputs();
  return model;
}

std::optional<Dtype> compute_dtype(std::string_view name, const char* op) {
  if (name.empty()) return std::nullopt;
  const std::optional<Dtype> d = parse_dtype(name);
  LMX_CHECK(d && is_float(*d), op, "dtype must be f32, bf16 or f16, got '", name, "'");
  return d;
}

}  // namespace lmx::models
