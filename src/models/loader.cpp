#include "models/loader.h"

#include <cstdint>

#include "core/error.h"
#include "io/config.h"
#include "io/weight_set.h"
#include "models/registry.h"

namespace lmx::models {
namespace {

// One checkpoint tensor as an Array in the compute dtype on the target device. Used in
// place (no copy) when already in that dtype on the CPU and suitably aligned; MLX files
// may place tensors at odd offsets, and those are copied once.
Array tensor_to_array(const io::WeightSet& ws, const std::string& name, const Shape& shape, Dtype compute,
                      Device device) {
  const io::TensorInfo& info = ws.at(name);
  const std::string where = detail::cat(ws.file_of(name).string(), ": tensor '", name, "'");
  const Shape stored(info.shape.begin(), info.shape.end());
  LMX_CHECK(stored == shape, "load", where, " has shape ", shape_str(stored), " but config.json implies ",
            shape_str(shape), "; the weights do not belong to this config");
  const std::optional<Dtype> dt = io::to_lmx_dtype(info.dtype);
  LMX_CHECK(dt && is_float(*dt), "load", where, " has dtype ", io::st_dtype_name(info.dtype),
            ", expected F32, F16 or BF16");
  const std::span<const std::byte> bytes = ws.data(name);
  const bool aligned = reinterpret_cast<uintptr_t>(bytes.data()) % itemsize(*dt) == 0;
  Array a = aligned ? Array::borrow(bytes.data(), shape, *dt, ws.keep_alive(name))
                    : from_host(bytes.data(), shape, *dt);
  if (*dt != compute) a = astype(a, compute);
  return to_device(a, device);
}

}  // namespace

std::unique_ptr<CausalLM> load_causal_lm(const std::filesystem::path& dir, const ModelLoadOptions& options) {
  const io::ModelConfig config = io::load_model_config(dir, options.config_file);
  const DecoderSpec spec = build_spec(config, (dir / options.config_file).string());
  const io::WeightSet weights = io::WeightSet::open_dir(dir);

  // The compute dtype: asked for, else the embedding's stored dtype.
  const std::string embed_name = "model.embed_tokens.weight";
  Dtype compute = Dtype::f32;
  if (options.dtype) {
    compute = *options.dtype;
  } else if (const io::TensorInfo* e = weights.find(embed_name)) {
    compute = io::to_lmx_dtype(e->dtype).value_or(Dtype::f32);
  }

  auto model = std::make_unique<CausalLM>(spec);
  model->set_deterministic(options.deterministic);
  model->visit("", [&](const std::string& name, Array& param, const Shape& shape) {
    LMX_CHECK(weights.find(name) != nullptr, "load", dir.string(), ": tensor '", name,
              "' is missing from the weights (model_type ", spec.model_type, ", expected shape ", shape_str(shape),
              "); the checkpoint is incomplete or does not match config.json");
    param = tensor_to_array(weights, name, shape, compute, options.device);
  });
  return model;
}

}  // namespace lmx::models
