#include "io/config.h"

#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_file.h"

namespace lmx::io {

namespace {

constexpr std::string_view kWhere = "config";
using nlohmann::json;

// Typed access to one JSON object. A null value counts as absent (HF writes None as
// null); a value of the wrong type is an error that names the field.
class Fields {
 public:
  Fields(const json& obj, std::string file, std::string prefix = "")
      : obj_(&obj), file_(std::move(file)), prefix_(std::move(prefix)) {}

  const json* get(std::string_view key) const {
    auto it = obj_->find(key);
    return it == obj_->end() || it->is_null() ? nullptr : &*it;
  }
  bool has(std::string_view key) const { return get(key) != nullptr; }
  std::string name(std::string_view key) const { return prefix_ + std::string(key); }
  const std::string& file() const { return file_; }

  [[noreturn]] void wrong_type(std::string_view key, std::string_view expected, const json& v) const {
    fail(kWhere, file_, ": field '", name(key), "' must be ", expected, ", got ", json_kind(v), " ", v.dump(),
         "; fix config.json");
  }
  [[noreturn]] void missing(std::string_view key) const {
    fail(kWhere, file_, ": missing field '", name(key), "'; config.json is incomplete: re-download it");
  }

  std::optional<int64_t> opt_int(std::string_view key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    return to_int(key, *v);
  }
  int64_t req_int(std::string_view key) const {
    auto v = opt_int(key);
    if (!v) missing(key);
    return *v;
  }
  std::optional<double> opt_double(std::string_view key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_number()) wrong_type(key, "a number", *v);
    return v->get<double>();
  }
  std::optional<bool> opt_bool(std::string_view key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) wrong_type(key, "true or false", *v);
    return v->get<bool>();
  }
  std::optional<std::string> opt_string(std::string_view key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_string()) wrong_type(key, "a string", *v);
    return v->get<std::string>();
  }
  std::vector<std::string> string_list(std::string_view key) const {
    std::vector<std::string> out;
    const json* v = get(key);
    if (!v) return out;
    if (!v->is_array()) wrong_type(key, "a list of strings", *v);
    for (const auto& e : *v) {
      if (!e.is_string()) wrong_type(key, "a list of strings", *v);
      out.push_back(e.get<std::string>());
    }
    return out;
  }
  // eos_token_id: an integer or a list of integers.
  std::vector<int64_t> int_or_list(std::string_view key) const {
    std::vector<int64_t> out;
    const json* v = get(key);
    if (!v) return out;
    if (!v->is_array()) return {to_int(key, *v)};
    for (const auto& e : *v) out.push_back(to_int(key, e));
    return out;
  }
  std::optional<Fields> opt_object(std::string_view key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_object()) wrong_type(key, "an object", *v);
    return Fields(*v, file_, name(key) + ".");
  }

 private:
  int64_t to_int(std::string_view key, const json& v) const {
    if (v.is_number_unsigned()) {
      if (v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())) wrong_type(key, "an integer", v);
      return int64_t(v.get<uint64_t>());
    }
    if (v.is_number_integer()) return v.get<int64_t>();
    // Some exporters write 131072.0; accept floats that hold an exact integer.
    if (v.is_number_float()) {
      double d = v.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) return int64_t(d);
    }
    wrong_type(key, "an integer", v);
  }

  const json* obj_;  // a pointer so that Fields stays assignable inside std::optional
  std::string file_;
  std::string prefix_;
};

// HF's defaults for fields config.json may omit, per model_type (spec §1 tables).
struct FamilyDefaults {
  std::string_view model_type;
  std::string_view hidden_act;
  int64_t max_position_embeddings;
  double rms_norm_eps;
  bool tie_word_embeddings;
  double rope_theta;
  std::optional<double> rope_local_theta;  // base for sliding layers when it differs (Gemma)
  std::optional<double> query_pre_attn_scalar;
  std::optional<int64_t> sliding_window;
  std::optional<int64_t> bos, eos, pad;
  // Only Gemma 3 has these: the text_config of 4B+ multimodal checkpoints omits them
  // and relies on Gemma3TextConfig's defaults.
  std::optional<int64_t> vocab_size, num_attention_heads, num_key_value_heads, head_dim;
};

constexpr FamilyDefaults kGeneric{"", "silu", 2048, 1e-6, false, 10000.0, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}};
constexpr FamilyDefaults kFamilies[] = {
    {"llama", "silu", 2048, 1e-6, false, 10000.0, {}, {}, {}, 1, 2, {}, {}, {}, {}, {}},
    {"qwen3", "silu", 32768, 1e-6, false, 10000.0, {}, {}, 4096, {}, {}, {}, {}, {}, {}, 128},
    {"gemma3_text", "gelu_pytorch_tanh", 131072, 1e-6, true, 1e6, 1e4, 256.0, 4096, 2, 1, 0, 262208, 8, 4, 256},
};

const FamilyDefaults& family_defaults(std::string_view model_type) {
  for (const auto& f : kFamilies)
    if (f.model_type == model_type) return f;
  return kGeneric;
}

// Positive integer fields: a zero or negative size is a corrupt config, not a model.
int64_t positive(const Fields& f, std::string_view key, int64_t v) {
  if (v <= 0) fail(kWhere, f.file(), ": field '", key, "' must be positive, got ", v, "; fix config.json");
  return v;
}

int64_t size_field(const Fields& f, std::string_view key, std::optional<int64_t> fallback = std::nullopt) {
  auto v = f.opt_int(key);
  if (!v && !fallback) f.missing(key);
  return positive(f, key, v ? *v : *fallback);
}

RopeParams parse_rope(const Fields& f, RopeParams p) {
  // "type" is the 4.x spelling of "rope_type".
  if (auto t = f.opt_string("rope_type"))
    p.rope_type = *t;
  else if (auto t2 = f.opt_string("type"))
    p.rope_type = *t2;
  if (p.rope_type != "default" && p.rope_type != "linear" && p.rope_type != "llama3")
    fail(kWhere, f.file(), ": field '", f.name("rope_type"), "' is '", p.rope_type,
         "', which lmx does not support (supported: default, linear, llama3)");
  if (auto v = f.opt_double("rope_theta")) p.theta = *v;
  if (p.theta <= 0) fail(kWhere, f.file(), ": field '", f.name("rope_theta"), "' must be positive");
  if (p.rope_type == "default") return p;
  if (!f.has("factor")) f.missing("factor");
  p.factor = *f.opt_double("factor");
  if (!(p.factor > 0)) fail(kWhere, f.file(), ": field '", f.name("factor"), "' must be positive");
  if (p.rope_type == "linear") return p;
  if (auto v = f.opt_double("low_freq_factor")) p.low_freq_factor = *v;
  if (auto v = f.opt_double("high_freq_factor")) p.high_freq_factor = *v;
  if (auto v = f.opt_int("original_max_position_embeddings")) p.original_max_position_embeddings = *v;
  if (!(p.high_freq_factor > p.low_freq_factor) || !(p.low_freq_factor > 0) ||
      p.original_max_position_embeddings <= 0)
    fail(kWhere, f.file(), ": llama3 rope parameters in '", f.name(""),
         "' need 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0");
  return p;
}

// Both forms end as one RopeParams per layer type:
//  4.x: rope_theta + rope_scaling for full layers; Gemma's sliding layers use
//       rope_local_base_freq with no scaling.
//  5.x: rope_parameters, flat (all layers) or nested by layer type.
std::map<std::string, RopeParams, std::less<>> resolve_rope(const Fields& f, const FamilyDefaults& fam) {
  const double theta = f.opt_double("rope_theta").value_or(fam.rope_theta);
  const std::optional<double> local = f.has("rope_local_base_freq") ? f.opt_double("rope_local_base_freq")
                                                                     : fam.rope_local_theta;
  RopeParams full{.theta = theta};
  std::optional<RopeParams> sliding;
  if (local) sliding = RopeParams{.theta = *local};

  if (auto rp = f.opt_object("rope_parameters")) {
    const bool nested = rp->has(kFullAttention) || rp->has(kSlidingAttention);
    if (!nested) {
      full = parse_rope(*rp, full);
    } else {
      if (auto o = rp->opt_object(kFullAttention)) full = parse_rope(*o, full);
      if (auto o = rp->opt_object(kSlidingAttention)) sliding = parse_rope(*o, sliding.value_or(full));
    }
  } else if (auto rs = f.opt_object("rope_scaling")) {
    full = parse_rope(*rs, full);
  }
  return {{std::string(kFullAttention), full}, {std::string(kSlidingAttention), sliding.value_or(full)}};
}

std::vector<std::string> resolve_layer_types(const Fields& f, const ModelConfig& c) {
  std::vector<std::string> types = f.string_list("layer_types");
  if (!types.empty()) {
    if (int64_t(types.size()) != c.num_hidden_layers)
      fail(kWhere, f.file(), ": field 'layer_types' has ", types.size(), " entries but num_hidden_layers is ",
           c.num_hidden_layers, "; fix config.json");
    for (const auto& t : types)
      if (t != kFullAttention && t != kSlidingAttention)
        fail(kWhere, f.file(), ": field 'layer_types' holds '", t, "'; lmx supports '", kFullAttention, "' and '",
             kSlidingAttention, "'");
    return types;
  }
  types.assign(size_t(c.num_hidden_layers), std::string(kFullAttention));
  if (c.model_type == "gemma3_text") {
    // Every pattern-th layer is global: (i+1) % pattern == 0.
    auto pat = f.opt_int("sliding_window_pattern");
    if (!pat) pat = f.opt_int("_sliding_window_pattern");
    const int64_t pattern = positive(f, "sliding_window_pattern", pat.value_or(6));
    for (int64_t i = 0; i < c.num_hidden_layers; ++i)
      if ((i + 1) % pattern != 0) types[size_t(i)] = kSlidingAttention;
  } else if (c.model_type == "qwen3" && c.sliding_window) {
    const int64_t first = f.opt_int("max_window_layers").value_or(28);
    for (int64_t i = std::max<int64_t>(first, 0); i < c.num_hidden_layers; ++i) types[size_t(i)] = kSlidingAttention;
  }
  return types;
}

QuantSpec parse_quant_spec(const Fields& f, QuantSpec q) {
  if (auto v = f.opt_int("group_size")) q.group_size = *v;
  if (auto v = f.opt_int("bits")) q.bits = *v;
  if (auto v = f.opt_string("mode")) q.mode = *v;
  const std::string& file = f.file();
  if (q.mode != "affine" && q.mode != "mxfp4" && q.mode != "nvfp4" && q.mode != "mxfp8")
    fail(kWhere, file, ": field '", f.name("mode"), "' is '", q.mode,
         "'; supported quantization modes: affine, mxfp4, nvfp4, mxfp8");
  const bool bits_ok = q.mode == "affine" ? (q.bits >= 2 && q.bits <= 8 && q.bits != 7) : (q.bits == 4 || q.bits == 8);
  if (!bits_ok) fail(kWhere, file, ": field '", f.name("bits"), "' is ", q.bits, ", which ", q.mode, " quantization does not support");
  if (q.group_size <= 0) fail(kWhere, file, ": field '", f.name("group_size"), "' must be positive");
  return q;
}

std::optional<QuantConfig> parse_quantization(const Fields& f) {
  std::optional<Fields> q = f.opt_object("quantization");
  if (!q) {
    q = f.opt_object("quantization_config");
    if (q && q->has("quant_method")) {
      const json* m = q->get("quant_method");
      fail(kWhere, f.file(), ": unsupported quantization method ", m->dump(),
           " in 'quantization_config': lmx runs float (F32/F16/BF16) and MLX-quantized checkpoints; use a "
           "float or mlx-community version of this model");
    }
  }
  if (!q) return std::nullopt;
  QuantConfig qc;
  qc.base = parse_quant_spec(*q, QuantSpec{});
  // Every other key whose value is an object or a bool is a per-module override.
  const json* obj = f.get(f.has("quantization") ? "quantization" : "quantization_config");
  for (const auto& [key, v] : obj->items()) {
    if (v.is_object())
      qc.overrides.emplace(key, parse_quant_spec(*q->opt_object(key), qc.base));
    else if (v.is_boolean())
      qc.overrides.emplace(key, v.get<bool>() ? std::optional<QuantSpec>(qc.base) : std::nullopt);
  }
  return qc;
}

// A "gemma3" (multimodal) config keeps the text model in text_config; the top-level
// keys (quantization, architectures, token ids) apply unless text_config overrides them.
json unwrap_text_config(const json& root, const std::string& file) {
  auto tc = root.find("text_config");
  if (tc == root.end() || !tc->is_object())
    fail(kWhere, file, ": model_type 'gemma3' needs a 'text_config' object; re-download config.json");
  json merged = root;
  merged.erase("text_config");
  merged.erase("vision_config");
  for (const auto& [k, v] : tc->items()) merged[k] = v;
  merged["model_type"] = "gemma3_text";
  return merged;
}

ModelConfig from_json(const json& root_in, const std::filesystem::path& path) {
  const std::string file = path.string();
  if (!root_in.is_object()) fail(kWhere, file, ": expected a JSON object at the top level");
  const json root = root_in.value("model_type", json()) == "gemma3" ? unwrap_text_config(root_in, file) : root_in;
  const Fields f(root, file);

  ModelConfig c;
  c.path = path;
  auto mt = f.opt_string("model_type");
  if (!mt) f.missing("model_type");
  c.model_type = *mt;
  const FamilyDefaults& fam = family_defaults(c.model_type);
  c.architectures = f.string_list("architectures");

  c.vocab_size = size_field(f, "vocab_size", fam.vocab_size);
  c.hidden_size = size_field(f, "hidden_size");
  c.intermediate_size = size_field(f, "intermediate_size");
  c.num_hidden_layers = size_field(f, "num_hidden_layers");
  c.num_attention_heads = size_field(f, "num_attention_heads", fam.num_attention_heads);
  c.num_key_value_heads =
      size_field(f, "num_key_value_heads", fam.num_key_value_heads.value_or(c.num_attention_heads));
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    fail(kWhere, file, ": num_key_value_heads (", c.num_key_value_heads, ") must divide num_attention_heads (",
         c.num_attention_heads, "); fix config.json");
  if (!f.has("head_dim") && !fam.head_dim && c.hidden_size % c.num_attention_heads != 0)
    fail(kWhere, file, ": missing field 'head_dim', and hidden_size (", c.hidden_size,
         ") is not a multiple of num_attention_heads (", c.num_attention_heads, ")");
  c.head_dim = size_field(f, "head_dim", fam.head_dim.value_or(c.hidden_size / c.num_attention_heads));
  if (c.head_dim % 2 != 0) fail(kWhere, file, ": field 'head_dim' must be even for RoPE, got ", c.head_dim);

  // Gemma spells it hidden_activation; prefer the family's own key when both appear.
  const bool gemma = c.model_type.starts_with("gemma");
  const char* act_keys[2] = {gemma ? "hidden_activation" : "hidden_act", gemma ? "hidden_act" : "hidden_activation"};
  c.hidden_act = f.opt_string(act_keys[0]).value_or(f.opt_string(act_keys[1]).value_or(std::string(fam.hidden_act)));

  c.max_position_embeddings = size_field(f, "max_position_embeddings", fam.max_position_embeddings);
  c.rms_norm_eps = f.opt_double("rms_norm_eps").value_or(fam.rms_norm_eps);
  if (!(c.rms_norm_eps > 0)) fail(kWhere, file, ": field 'rms_norm_eps' must be positive");
  c.tie_word_embeddings = f.opt_bool("tie_word_embeddings").value_or(fam.tie_word_embeddings);
  c.attention_bias = f.opt_bool("attention_bias").value_or(false);
  c.mlp_bias = f.opt_bool("mlp_bias").value_or(false);
  c.query_pre_attn_scalar = f.has("query_pre_attn_scalar") ? f.opt_double("query_pre_attn_scalar")
                                                           : fam.query_pre_attn_scalar;
  c.final_logit_softcapping = f.opt_double("final_logit_softcapping");
  c.attn_logit_softcapping = f.opt_double("attn_logit_softcapping");
  c.torch_dtype = f.opt_string("dtype").value_or(f.opt_string("torch_dtype").value_or(""));

  // A null bos/pad in the file means "none", overriding the family default.
  auto token = [&](std::string_view key, std::optional<int64_t> dflt) {
    return root.contains(key) ? f.opt_int(key) : dflt;
  };
  c.bos_token_id = token("bos_token_id", fam.bos);
  c.pad_token_id = token("pad_token_id", fam.pad);
  c.eos_token_id = root.contains("eos_token_id") ? f.int_or_list("eos_token_id")
                                                 : (fam.eos ? std::vector<int64_t>{*fam.eos} : std::vector<int64_t>{});

  // Qwen3 only slides when use_sliding_window is set; Gemma falls back to 4096 when the
  // key is absent; an explicit null always means no window.
  if (c.model_type == "qwen3") {
    if (f.opt_bool("use_sliding_window").value_or(false))
      c.sliding_window = root.contains("sliding_window") ? f.opt_int("sliding_window") : fam.sliding_window;
  } else if (c.model_type != "llama") {
    c.sliding_window = root.contains("sliding_window") ? f.opt_int("sliding_window") : fam.sliding_window;
  }
  if (c.sliding_window) positive(f, "sliding_window", *c.sliding_window);

  c.layer_types = resolve_layer_types(f, c);
  c.rope_parameters = resolve_rope(f, fam);
  c.quantization = parse_quantization(f);
  return c;
}

}  // namespace

const RopeParams& ModelConfig::rope_for(std::string_view layer_type) const {
  auto it = rope_parameters.find(layer_type);
  LMX_CHECK(it != rope_parameters.end(), "config", path.string(), ": no RoPE parameters for layer type '",
            layer_type, "'");
  return it->second;
}

std::optional<QuantSpec> ModelConfig::quant_for(std::string_view module_path) const {
  if (!quantization) return std::nullopt;
  auto it = quantization->overrides.find(module_path);
  if (it != quantization->overrides.end()) return it->second;
  return quantization->base;
}

std::vector<int64_t> ModelConfig::stop_token_ids() const {
  if (generation && !generation->eos_token_id.empty()) return generation->eos_token_id;
  return eos_token_id;
}

ModelConfig parse_model_config(std::string_view json_text, const std::filesystem::path& display_name) {
  return from_json(parse_json_text(json_text, display_name.string(), kWhere), display_name);
}

GenerationConfig parse_generation_config(std::string_view json_text, const std::filesystem::path& display_name) {
  const json root = parse_json_text(json_text, display_name.string(), kWhere);
  if (!root.is_object()) fail(kWhere, display_name.string(), ": expected a JSON object at the top level");
  const Fields f(root, display_name.string());
  GenerationConfig g;
  g.bos_token_id = f.opt_int("bos_token_id");
  g.pad_token_id = f.opt_int("pad_token_id");
  g.eos_token_id = f.int_or_list("eos_token_id");
  g.temperature = f.opt_double("temperature");
  g.top_p = f.opt_double("top_p");
  g.repetition_penalty = f.opt_double("repetition_penalty");
  g.top_k = f.opt_int("top_k");
  g.max_new_tokens = f.opt_int("max_new_tokens");
  g.do_sample = f.opt_bool("do_sample");
  return g;
}

ModelConfig load_model_config(const std::filesystem::path& model_dir, std::string_view config_file) {
  const auto path = model_dir / config_file;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    fail(kWhere, path.string(), ": not found; a model directory needs the config.json of a Hugging Face checkpoint");
  ModelConfig c = parse_model_config(read_text_file(path, kWhere), path);
  const auto gen = model_dir / "generation_config.json";
  if (std::filesystem::exists(gen, ec)) c.generation = parse_generation_config(read_text_file(gen, kWhere), gen);
  return c;
}

}  // namespace lmx::io
