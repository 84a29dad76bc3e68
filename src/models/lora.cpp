#include "models/lora.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "io/json_file.h"
#include "io/safetensors.h"

namespace lmx::models {
namespace fs = std::filesystem;
namespace {

constexpr const char* kConfigFile = "adapter_config.json";
constexpr const char* kWeightsFile = "adapter_model.safetensors";
const std::string kPrefix = "base_model.model.";

// "model.layers.0.self_attn.q_proj" -> "q_proj"
std::string last_name(const std::string& module) { return module.substr(module.rfind('.') + 1); }

// "model.layers.12.mlp.up_proj" -> 12
int layer_of(const std::string& module) { return std::stoi(module.substr(std::string("model.layers.").size())); }

// The double whose shortest decimal is the float's own: 0.1f is written as 0.1, as PEFT
// writes it, not as 0.10000000149011612 (the float widened).
double as_written(float v) {
  char text[32];
  const auto end = std::to_chars(text, text + sizeof(text) - 1, v).ptr;
  *end = '\0';
  return std::strtod(text, nullptr);
}

bool targeted(const LoraConfig& c, const std::string& module) {
  return std::find(c.target_modules.begin(), c.target_modules.end(), last_name(module)) != c.target_modules.end() &&
         (c.layers.empty() || std::find(c.layers.begin(), c.layers.end(), layer_of(module)) != c.layers.end());
}

void check_config(const LoraConfig& c, const std::string& where) {
  LMX_CHECK(c.rank > 0 && std::isfinite(c.alpha) && c.alpha > 0, "lora", where,
            ": rank must be > 0 and alpha > 0, got r ", c.rank, " and alpha ", c.alpha);
  LMX_CHECK(c.dropout >= 0 && c.dropout < 1, "lora", where, ": lora_dropout must be in [0, 1), got ", c.dropout);
  LMX_CHECK(!c.target_modules.empty(), "lora", where, ": no target modules");
}

// FNV-1a of the module's name: the adapter's dropout stream, the same wherever the adapter
// was made (attached, loaded or resumed) and on every platform.
uint64_t stream_of(const std::string& module) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const unsigned char c : module) h = (h ^ c) * 0x100000001b3ULL;
  return h;
}

// The host bytes of a contiguous array, for the writer.
std::vector<std::byte> host_bytes(const Array& a) {
  const Array c = contiguous(to_device(a, Device::cpu()));
  const auto* p = static_cast<const std::byte*>(c.raw());
  return {p, p + c.nbytes()};
}

}  // namespace

float LoraConfig::scale() const {
  return use_rslora ? alpha / std::sqrt(float(rank)) : alpha / float(rank);
}

void attach_lora(CausalLM& model, const LoraConfig& config, uint64_t seed) {
  check_config(config, "attach");
  for (const int l : config.layers)
    LMX_CHECK(l >= 0 && l < model.num_layers(), "lora", "layer ", l, " is not one of the model's ", model.num_layers(),
              " decoder layers (0 to ", model.num_layers() - 1, ")");
  std::set<std::string> found;
  uint64_t index = 0;
  const Dtype dtype = model.dtype();
  model.for_each_linear([&](const std::string& name, nn::Linear& layer) {
    ++index;
    if (!targeted(config, name)) return;
    found.insert(last_name(name));
    const int64_t in = layer.in_features(), out = layer.out_features(), r = config.rank;
    const float bound = 1.0f / std::sqrt(float(in));
    const Device d = model.device();
    layer.lora = nn::LoRA{
        astype(random_uniform({r, in}, seed * 1000003 + index, -bound, bound, Dtype::f32, d),
               dtype),
        zeros({out, r}, dtype, d), config.scale(), config.dropout, stream_of(name)};
  });
  for (const std::string& t : config.target_modules)
    LMX_CHECK(found.count(t), "lora", "target module \"", t,
              "\" names no projection of this model (its projections: ",
              "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)");
}

std::vector<std::pair<std::string, Array*>> lora_parameters(CausalLM& model) {
  std::vector<std::pair<std::string, Array*>> out;
  model.for_each_linear([&](const std::string& name, nn::Linear& layer) {
    if (!layer.lora) return;
    out.emplace_back(kPrefix + name + ".lora_A.weight", &layer.lora->a);
    out.emplace_back(kPrefix + name + ".lora_B.weight", &layer.lora->b);
  });
  return out;
}

void save_lora(CausalLM& model, const LoraConfig& config, const fs::path& dir,
               const std::string& base_model) {
  check_config(config, dir.string());
  const auto params = lora_parameters(model);
  LMX_CHECK(!params.empty(), "lora", "the model has no adapters to save");
  std::error_code ec;
  fs::create_directories(dir, ec);
  LMX_CHECK(!ec, "lora", dir.string(), ": cannot create the folder: ", ec.message());
  std::vector<std::vector<std::byte>> bytes;
  std::vector<io::NamedTensor> tensors;
  bytes.reserve(params.size());
  for (const auto& [name, a] : params) {
    bytes.push_back(host_bytes(*a));
    tensors.push_back({name, io::to_st_dtype(a->dtype()), a->shape(), bytes.back()});
  }
  io::write_safetensors(dir / kWeightsFile, tensors, {{"format", "pt"}});
  const nlohmann::json cfg = {{"peft_type", "LORA"},
                              {"task_type", "CAUSAL_LM"},
                              {"r", config.rank},
                              {"lora_alpha", as_written(config.alpha)},
                              {"lora_dropout", as_written(config.dropout)},
                              {"target_modules", config.target_modules},
                              {"layers_to_transform", config.layers.empty() ? nlohmann::json(nullptr)
                                                                             : nlohmann::json(config.layers)},
                              {"bias", "none"},
                              {"fan_in_fan_out", false},
                              {"use_rslora", config.use_rslora},
                              {"use_dora", false},
                              {"inference_mode", true},
                              {"init_lora_weights", true},
                              {"rank_pattern", nlohmann::json::object()},
                              {"alpha_pattern", nlohmann::json::object()},
                              {"modules_to_save", nullptr},
                              {"base_model_name_or_path", base_model}};
  const fs::path tmp = dir / (std::string(kConfigFile) + ".tmp");
  {
    std::ofstream f(tmp);
    f << cfg.dump(2) << "\n";
    LMX_CHECK(f.good(), "lora", tmp.string(), ": cannot write");
  }
  fs::rename(tmp, dir / kConfigFile, ec);
  LMX_CHECK(!ec, "lora", (dir / kConfigFile).string(), ": cannot write: ", ec.message());
}

LoraConfig load_lora(CausalLM& model, const fs::path& dir) {
  const fs::path cfg_path = dir / kConfigFile;
  LMX_CHECK(fs::exists(cfg_path), "lora", cfg_path.string(),
            " does not exist: an adapter folder holds ", kConfigFile, " and ", kWeightsFile,
            " (PEFT's save_pretrained writes both)");
  const nlohmann::json j = io::read_json_file(cfg_path, "lora");
  const std::string where = cfg_path.string();
  LMX_CHECK(j.is_object(), "lora", where, ": expected a JSON object");
  auto get = [&](const char* key, const nlohmann::json& fallback) {
    return j.contains(key) ? j[key] : fallback;
  };
  LMX_CHECK(get("peft_type", "LORA") == "LORA", "lora", where, ": peft_type ",
            get("peft_type", "").dump(), " is not LORA");
  LoraConfig c;
  try {
    c.rank = j.at("r").get<int>();
    c.alpha = get("lora_alpha", double(c.rank)).get<float>();
    c.use_rslora = get("use_rslora", false).get<bool>();
    c.dropout = get("lora_dropout", 0.0).get<float>();
    // null (every layer), one index, or a list of them
    const nlohmann::json layers = get("layers_to_transform", nullptr);
    if (layers.is_number_integer()) c.layers = {layers.get<int>()};
    if (layers.is_array()) c.layers = layers.get<std::vector<int>>();
    LMX_CHECK(layers.is_null() || layers.is_number_integer() || layers.is_array(), "lora", where,
              ": layers_to_transform must be null, a layer index or a list of them, got ", layers.dump());
    LMX_CHECK(!get("use_dora", false).get<bool>(), "lora", where,
              ": DoRA adapters (use_dora) are not supported");
    LMX_CHECK(!get("fan_in_fan_out", false).get<bool>(), "lora", where,
              ": fan_in_fan_out adapters (GPT-2's Conv1D "
              "layout) are not supported");
    LMX_CHECK(get("bias", "none") == "none", "lora", where,
              ": trained biases (bias = ", get("bias", "").dump(), ") are not supported");
    for (const char* key : {"rank_pattern", "alpha_pattern"})
      LMX_CHECK(get(key, nlohmann::json::object()).empty(), "lora", where, ": per-module ", key,
                " is not supported");
    const nlohmann::json modules = get("modules_to_save", nullptr);
    LMX_CHECK(modules.is_null() || modules.empty(), "lora", where,
              ": modules_to_save (fully trained layers) are not ", "supported");
  } catch (const nlohmann::json::exception& e) {
    fail("lora", where, ": ", io::json_error_text(e));
  }
  check_config(LoraConfig{c.rank, c.alpha, {"q_proj"}, c.use_rslora, c.dropout}, where);
  c.target_modules.clear();

  const io::SafetensorsFile file = io::SafetensorsFile::open(dir / kWeightsFile);
  std::map<std::string, nn::Linear*> layers;
  model.for_each_linear([&](const std::string& name, nn::Linear& l) { layers[name] = &l; });
  std::map<std::string, nn::LoRA> adapters;  // made in full before any is attached
  const Dtype dtype = model.dtype();
  for (const io::TensorInfo& t : file.tensors()) {
    const std::string at = (dir / kWeightsFile).string() + ", tensor " + t.name;
    const bool is_a = t.name.ends_with(".lora_A.weight"), is_b = t.name.ends_with(".lora_B.weight");
    LMX_CHECK(t.name.starts_with(kPrefix) && (is_a || is_b), "lora", at,
              ": not a LoRA tensor of this model (expected ", kPrefix,
              "<module>.lora_A.weight or .lora_B.weight)");
    const std::string module = t.name.substr(kPrefix.size(), t.name.size() - kPrefix.size() - 14);
    const auto layer = layers.find(module);
    LMX_CHECK(layer != layers.end(), "lora", at, ": the model has no projection ", module,
              " (an adapter for another model, or for layers lmx does not adapt)");
    LMX_CHECK(c.layers.empty() || std::find(c.layers.begin(), c.layers.end(), layer_of(module)) != c.layers.end(),
              "lora", at, ": layer ", layer_of(module), " is not in the config's layers_to_transform");
    const std::optional<Dtype> st = io::to_lmx_dtype(t.dtype);
    LMX_CHECK(st && is_float(*st), "lora", at, ": dtype ", io::st_dtype_name(t.dtype),
              " is not F32, F16 or BF16");
    const int64_t r = c.rank, in = layer->second->in_features(),
                  out = layer->second->out_features();
    const Shape want = is_a ? Shape{r, in} : Shape{out, r};
    LMX_CHECK(Shape(t.shape.begin(), t.shape.end()) == want, "lora", at, ": shape ",
              shape_str(Shape(t.shape.begin(), t.shape.end())), " where r = ", r,
              " and the projection [", out, ", ", in, "] need ", shape_str(want));
    const std::span<const std::byte> data = file.data(t);
    nn::LoRA& adapter = adapters[module];
    (is_a ? adapter.a : adapter.b) =
        astype(to_device(from_host(data.data(), want, *st), model.device()), dtype);
    adapter.scale = c.scale();
    adapter.dropout = c.dropout;
    adapter.stream = stream_of(module);
  }
  LMX_CHECK(!adapters.empty(), "lora", (dir / kWeightsFile).string(), ": holds no adapters");
  for (const auto& [module, adapter] : adapters)
    LMX_CHECK(adapter.a.valid() && adapter.b.valid(), "lora", (dir / kWeightsFile).string(), ": ",
              module, " has only one of lora_A and lora_B");
  std::set<std::string> targets;
  for (auto& [module, adapter] : adapters) {
    layers[module]->lora = adapter;
    targets.insert(last_name(module));
  }
  c.target_modules.assign(targets.begin(), targets.end());
  model.drop_fused_decoders();
  return c;
}

void fuse_lora(CausalLM& model, bool dequantize) {
  // Every adapter checked before any layer changes: a fused weight is quantized again, which
  // refuses NaN, so a diverged adapter must not leave the model half fused.
  model.for_each_linear([](const std::string& name, nn::Linear& layer) {
    if (!layer.lora) return;
    for (const Array* a : {&layer.lora->a, &layer.lora->b})
      for (const float v : to_floats(*a))
        LMX_CHECK(std::isfinite(v), "fuse_lora", name, "'s adapter holds ", v,
                  ": it diverged in training; fuse an earlier checkpoint of it");
  });
  model.for_each_linear([&](const std::string&, nn::Linear& layer) { layer.fuse_lora(dequantize); });
  model.drop_fused_decoders();
}

}  // namespace lmx::models
