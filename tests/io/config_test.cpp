// config.json normalization across transformers 4.x / 5.x forms, defaults and errors.
#include "io/config.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "io/io_test_util.h"

namespace lmx::io {
namespace {

using testing::error_of;
using testing::expect_contains;
using testing::TempDir;
using testing::write_file;

ModelConfig parse(const std::string& text) { return parse_model_config(text, "/m/config.json"); }
std::string parse_err(const std::string& text) { return error_of([&] { parse(text); }); }

// Every normalized field, so that two forms of one config compare field by field.
void expect_same(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.architectures, b.architectures);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.hidden_act, b.hidden_act);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.attention_bias, b.attention_bias);
  EXPECT_EQ(a.mlp_bias, b.mlp_bias);
  EXPECT_EQ(a.query_pre_attn_scalar, b.query_pre_attn_scalar);
  EXPECT_EQ(a.sliding_window, b.sliding_window);
  EXPECT_EQ(a.final_logit_softcapping, b.final_logit_softcapping);
  EXPECT_EQ(a.attn_logit_softcapping, b.attn_logit_softcapping);
  EXPECT_EQ(a.torch_dtype, b.torch_dtype);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.pad_token_id, b.pad_token_id);
  EXPECT_EQ(a.eos_token_id, b.eos_token_id);
  EXPECT_EQ(a.layer_types, b.layer_types);
  EXPECT_EQ(a.rope_for(kFullAttention), b.rope_for(kFullAttention));
  EXPECT_EQ(a.rope_for(kSlidingAttention), b.rope_for(kSlidingAttention));
}

const std::filesystem::path kFixtures = std::filesystem::path(LMX_FIXTURES_DIR) / "models";

TEST(ConfigFixtures, TransformersV4AndV5FormsAgree) {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(kFixtures)) {
    // The float fixtures come in both forms; the MLX-quantized ones, as mlx_lm writes them.
    if (!std::filesystem::exists(e.path() / "config_v4.json")) continue;
    SCOPED_TRACE(e.path().string());
    const auto v5 = load_model_config(e.path());
    const auto v4 = load_model_config(e.path(), "config_v4.json");
    expect_same(v5, v4);
    ASSERT_TRUE(v5.generation);
    EXPECT_EQ(v5.stop_token_ids(), v5.generation->eos_token_id);
    ++n;
  }
  EXPECT_EQ(n, 6);
}

TEST(ConfigFixtures, NormalizedValues) {
  const auto llama = load_model_config(kFixtures / "llama-bf16");
  EXPECT_EQ(llama.torch_dtype, "bfloat16");
  EXPECT_EQ(llama.eos_token_id, (std::vector<int64_t>{2, 3}));
  EXPECT_FALSE(llama.pad_token_id);  // explicit null
  EXPECT_EQ(llama.layer_types, (std::vector<std::string>(2, "full_attention")));
  const RopeParams want_llama{.rope_type = "llama3", .theta = 500000.0, .factor = 8.0, .low_freq_factor = 1.0,
                              .high_freq_factor = 4.0, .original_max_position_embeddings = 64};
  EXPECT_EQ(llama.rope_for(kFullAttention), want_llama);

  const auto qwen = load_model_config(kFixtures / "qwen3-f32");
  EXPECT_EQ(qwen.head_dim, 32);
  EXPECT_FALSE(qwen.sliding_window);
  EXPECT_FALSE(qwen.tie_word_embeddings);
  EXPECT_EQ(qwen.rope_for(kFullAttention), (RopeParams{.theta = 1e6}));
  EXPECT_EQ(qwen.stop_token_ids(), std::vector<int64_t>{2});

  const auto gemma = load_model_config(kFixtures / "gemma3_text-bf16");
  EXPECT_EQ(gemma.hidden_act, "gelu_pytorch_tanh");
  EXPECT_EQ(gemma.query_pre_attn_scalar, 24.0);
  EXPECT_EQ(gemma.sliding_window, 8);
  EXPECT_TRUE(gemma.tie_word_embeddings);
  EXPECT_EQ(gemma.layer_types[5], "full_attention");
  EXPECT_EQ(gemma.layer_types[6], "sliding_attention");
  EXPECT_EQ(gemma.rope_for(kFullAttention), (RopeParams{.rope_type = "linear", .theta = 1e6, .factor = 8.0}));
  EXPECT_EQ(gemma.rope_for(kSlidingAttention), (RopeParams{.theta = 1e4}));
  EXPECT_EQ(gemma.pad_token_id, 0);
}

const std::string kLlamaBase = R"("model_type":"llama","hidden_size":2048,"intermediate_size":8192,
  "num_hidden_layers":16,"num_attention_heads":32,"num_key_value_heads":8,"vocab_size":128256,
  "rms_norm_eps":1e-05,"max_position_embeddings":131072,"tie_word_embeddings":true)";

TEST(ConfigLlama, Llama3ScalingBothFormsAndLegacyTypeKey) {
  const auto v4 = parse("{" + kLlamaBase + R"(,"rope_theta":500000.0,"torch_dtype":"bfloat16",
      "rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
                      "original_max_position_embeddings":8192,"rope_type":"llama3"}})");
  const auto v5 = parse("{" + kLlamaBase + R"(,"dtype":"bfloat16",
      "rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,"factor":32.0,"low_freq_factor":1.0,
                         "high_freq_factor":4.0,"original_max_position_embeddings":8192}})");
  const auto legacy = parse("{" + kLlamaBase + R"(,"rope_theta":500000,"torch_dtype":"bfloat16",
      "rope_scaling":{"type":"llama3","factor":32,"original_max_position_embeddings":8192}})");
  expect_same(v4, v5);
  expect_same(v4, legacy);
  EXPECT_EQ(v4.head_dim, 64);  // hidden / heads
  EXPECT_EQ(v4.rope_for(kFullAttention).factor, 32.0);
  EXPECT_EQ(v4.rope_for(kSlidingAttention), v4.rope_for(kFullAttention));
  EXPECT_FALSE(v4.sliding_window);
}

TEST(ConfigLlama, FamilyDefaults) {
  const auto c = parse(R"({"model_type":"llama","hidden_size":64,"intermediate_size":128,
      "num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100})");
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.hidden_act, "silu");
  EXPECT_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_EQ(c.rope_for(kFullAttention), (RopeParams{.theta = 10000.0}));
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_id, std::vector<int64_t>{2});
  EXPECT_FALSE(c.query_pre_attn_scalar);
  EXPECT_FALSE(c.quantization);
  EXPECT_FALSE(c.quant_for("model.layers.0.mlp.up_proj"));
}

const std::string kQwenBase = R"("model_type":"qwen3","hidden_size":1024,"intermediate_size":3072,
  "num_hidden_layers":4,"num_attention_heads":16,"num_key_value_heads":8,"vocab_size":151936,
  "tie_word_embeddings":true,"eos_token_id":151645)";

TEST(ConfigQwen3, FormsAgreeAndSlidingWindowNeedsTheFlag) {
  const auto v4 = parse("{" + kQwenBase + R"(,"rope_theta":1000000,"rope_scaling":null,"sliding_window":4096,
      "use_sliding_window":false})");
  const auto v5 = parse("{" + kQwenBase + R"(,"rope_parameters":{"rope_type":"default","rope_theta":1000000.0},
      "sliding_window":null,"layer_types":["full_attention","full_attention","full_attention","full_attention"]})");
  expect_same(v4, v5);
  EXPECT_EQ(v4.head_dim, 128);  // Qwen3's explicit default, not hidden/heads
  EXPECT_FALSE(v4.sliding_window);
  EXPECT_EQ(v4.max_position_embeddings, 32768);

  const auto sw = parse("{" + kQwenBase + R"(,"use_sliding_window":true,"max_window_layers":2})");
  EXPECT_EQ(sw.sliding_window, 4096);
  EXPECT_EQ(sw.layer_types, (std::vector<std::string>{"full_attention", "full_attention", "sliding_attention",
                                                      "sliding_attention"}));
}

const std::string kGemmaText = R"("hidden_size":1152,"intermediate_size":6912,"num_hidden_layers":26,
  "num_attention_heads":4,"num_key_value_heads":1,"head_dim":256,"vocab_size":262144,"sliding_window":512,
  "max_position_embeddings":32768,"query_pre_attn_scalar":256,"eos_token_id":[1,106])";

TEST(ConfigGemma3, DerivedLayerTypesAndBothRopeForms) {
  const auto v4 = parse(R"({"model_type":"gemma3_text",)" + kGemmaText +
                        R"(,"rope_theta":1000000.0,"rope_local_base_freq":10000.0,"rope_scaling":null,
                            "sliding_window_pattern":6})");
  std::vector<std::string> types;
  for (int i = 0; i < 26; ++i) types.push_back((i + 1) % 6 == 0 ? "full_attention" : "sliding_attention");
  EXPECT_EQ(v4.layer_types, types);
  EXPECT_EQ(v4.rope_for(kFullAttention), (RopeParams{.theta = 1e6}));
  EXPECT_EQ(v4.rope_for(kSlidingAttention), (RopeParams{.theta = 1e4}));

  std::string listed = R"(,"layer_types":[)";
  for (size_t i = 0; i < types.size(); ++i) listed += (i ? ",\"" : "\"") + types[i] + "\"";
  listed += "]";
  const auto v5 = parse(R"({"model_type":"gemma3_text",)" + kGemmaText + listed +
                        R"(,"_sliding_window_pattern":6,"rope_parameters":{
        "full_attention":{"rope_type":"default","rope_theta":1000000.0},
        "sliding_attention":{"rope_type":"default","rope_theta":10000.0}}})");
  expect_same(v4, v5);
  // Defaults alone give the same RoPE; the private pattern key is honoured too.
  const auto bare = parse(R"({"model_type":"gemma3_text",)" + kGemmaText + R"(,"_sliding_window_pattern":2})");
  EXPECT_EQ(bare.rope_for(kFullAttention), v4.rope_for(kFullAttention));
  EXPECT_EQ(bare.rope_for(kSlidingAttention), v4.rope_for(kSlidingAttention));
  EXPECT_EQ(bare.layer_types[1], "full_attention");
  EXPECT_EQ(bare.layer_types[2], "sliding_attention");
  EXPECT_TRUE(bare.tie_word_embeddings);
  EXPECT_EQ(bare.hidden_act, "gelu_pytorch_tanh");
}

TEST(ConfigGemma3, NestedTextConfigOfMultimodalCheckpoint) {
  // Shaped like gemma-3-4b-it: a sparse text_config that relies on Gemma3TextConfig defaults.
  const auto c = parse(R"({"architectures":["Gemma3ForConditionalGeneration"],"model_type":"gemma3",
      "eos_token_id":[1,106],"torch_dtype":"bfloat16",
      "quantization":{"group_size":64,"bits":4},
      "text_config":{"hidden_size":2560,"intermediate_size":10240,"model_type":"gemma3_text",
                     "num_hidden_layers":34,"rope_scaling":{"factor":8.0,"rope_type":"linear"},
                     "sliding_window":1024},
      "vision_config":{"hidden_size":1152,"model_type":"siglip_vision_model"}})");
  EXPECT_EQ(c.model_type, "gemma3_text");
  EXPECT_EQ(c.architectures, std::vector<std::string>{"Gemma3ForConditionalGeneration"});
  EXPECT_EQ(c.hidden_size, 2560);
  EXPECT_EQ(c.vocab_size, 262208);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 256);
  EXPECT_EQ(c.query_pre_attn_scalar, 256.0);
  EXPECT_EQ(c.sliding_window, 1024);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.rope_for(kFullAttention), (RopeParams{.rope_type = "linear", .theta = 1e6, .factor = 8.0}));
  EXPECT_EQ(c.rope_for(kSlidingAttention), (RopeParams{.theta = 1e4}));
  EXPECT_EQ(c.layer_types[5], "full_attention");
  EXPECT_EQ(c.quant_for("model.language_model.layers.0.mlp.up_proj"), (QuantSpec{.group_size = 64, .bits = 4}));
  expect_contains(parse_err(R"({"model_type":"gemma3","hidden_size":4})"), {"needs a 'text_config' object"});
}

TEST(ConfigQuantization, MlxBaseAndOverrides) {
  const auto c = parse("{" + kLlamaBase + R"(,"quantization":{"group_size":32,"bits":4,
      "model.layers.3.mlp.down_proj":{"group_size":64,"bits":6,"mode":"affine"},
      "lm_head":{"bits":8},"model.embed_tokens":false},
      "quantization_config":{"group_size":32,"bits":4}})");
  ASSERT_TRUE(c.quantization);
  EXPECT_EQ(c.quant_for("model.layers.0.mlp.down_proj"), (QuantSpec{.group_size = 32, .bits = 4}));
  EXPECT_EQ(c.quant_for("model.layers.3.mlp.down_proj"), (QuantSpec{.group_size = 64, .bits = 6}));
  EXPECT_EQ(c.quant_for("lm_head"), (QuantSpec{.group_size = 32, .bits = 8}));  // unset fields from the base
  EXPECT_FALSE(c.quant_for("model.embed_tokens"));
  // quantization_config without quant_method is the MLX form too; mode defaults to affine.
  const auto d = parse("{" + kLlamaBase + R"(,"quantization_config":{"group_size":64,"bits":8,"mode":"affine"}})");
  EXPECT_EQ(d.quant_for("x"), (QuantSpec{.group_size = 64, .bits = 8, .mode = "affine"}));
  const auto mx = parse("{" + kLlamaBase + R"(,"quantization":{"group_size":32,"bits":4,"mode":"mxfp4"}})");
  EXPECT_EQ(mx.quant_for("x")->mode, "mxfp4");
}

TEST(ConfigQuantization, Errors) {
  expect_contains(parse_err("{" + kLlamaBase + R"(,"quantization_config":{"quant_method":"awq","bits":4}})"),
                  {"[config] /m/config.json", "unsupported quantization method \"awq\""});
  expect_contains(parse_err("{" + kLlamaBase + R"(,"quantization":{"group_size":64,"bits":7}})"),
                  {"quantization.bits", "7"});
  expect_contains(parse_err("{" + kLlamaBase + R"(,"quantization":{"group_size":64,"bits":4,"mode":"q4k"}})"),
                  {"quantization.mode", "q4k"});
  expect_contains(parse_err("{" + kLlamaBase + R"(,"quantization":{"group_size":"64"}})"),
                  {"field 'quantization.group_size' must be an integer"});
}

TEST(ConfigErrors, MissingRequiredFields) {
  for (std::string field : {"hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                            "intermediate_size", "model_type"}) {
    nlohmann::json j = {{"model_type", "llama"}, {"hidden_size", 64},      {"intermediate_size", 128},
                        {"num_hidden_layers", 2},  {"num_attention_heads", 4}, {"vocab_size", 100}};
    j.erase(field);
    expect_contains(parse_err(j.dump()), {"[config] /m/config.json: missing field '" + field + "'"});
  }
  // A null counts as missing.
  expect_contains(parse_err("{" + kLlamaBase + R"(,"hidden_size":null})"), {"missing field 'hidden_size'"});
}

TEST(ConfigErrors, WrongTypes) {
  struct Case {
    std::string extra, expect;
  };
  const std::vector<Case> cases = {
      {R"("num_hidden_layers":"16")", "field 'num_hidden_layers' must be an integer, got string"},
      {R"("num_hidden_layers":16.5)", "field 'num_hidden_layers' must be an integer"},
      {R"("rms_norm_eps":"1e-5")", "field 'rms_norm_eps' must be a number"},
      {R"("tie_word_embeddings":1)", "field 'tie_word_embeddings' must be true or false"},
      {R"("eos_token_id":["a"])", "field 'eos_token_id' must be an integer"},
      {R"("architectures":"LlamaForCausalLM")", "field 'architectures' must be a list of strings"},
      {R"("rope_scaling":"llama3")", "field 'rope_scaling' must be an object"},
      {R"("rope_scaling":{"rope_type":"linear","factor":"2"})", "field 'rope_scaling.factor' must be a number"},
      {R"("hidden_size":0)", "field 'hidden_size' must be positive"},
      {R"("num_key_value_heads":3)", "num_key_value_heads (3) must divide num_attention_heads (32)"},
      {R"("layer_types":["full_attention"])", "'layer_types' has 1 entries but num_hidden_layers is 16"},
      {R"("rope_scaling":{"rope_type":"yarn","factor":4})", "'rope_scaling.rope_type' is 'yarn'"},
      {R"("rope_scaling":{"rope_type":"linear"})", "missing field 'rope_scaling.factor'"},
  };
  for (const auto& c : cases) {
    // Later keys win in nlohmann, so appending overrides the base value.
    expect_contains(parse_err("{" + kLlamaBase + "," + c.extra + "}"), {"[config] /m/config.json: ", c.expect});
  }
  // Integral floats are accepted where an integer is expected.
  EXPECT_EQ(parse("{" + kLlamaBase + R"(,"max_position_embeddings":131072.0})").max_position_embeddings, 131072);
}

TEST(ConfigErrors, MalformedJsonGivesPosition) {
  const auto msg = parse_err("{\n  \"model_type\": \"llama\",\n  \"hidden_size\": ,\n}");
  expect_contains(msg, {"[config] /m/config.json: malformed JSON", "line 3", "byte"});
  expect_contains(parse_err("[1, 2]"), {"expected a JSON object"});
  expect_contains(parse_err(R"({"hidden_size": 1e999})"), {"[config] /m/config.json: malformed JSON", "overflow"});
}

TEST(ConfigFiles, LoadWithGenerationConfig) {
  TempDir dir;
  expect_contains(error_of([&] { load_model_config(dir.path()); }), {"[config]", "config.json", "not found"});
  write_file(dir / "config.json", "{" + kLlamaBase + R"(,"eos_token_id":128001})");
  auto c = load_model_config(dir.path());
  EXPECT_FALSE(c.generation);
  EXPECT_EQ(c.stop_token_ids(), std::vector<int64_t>{128001});
  write_file(dir / "generation_config.json", R"({"bos_token_id":128000,"eos_token_id":[128001,128008,128009],
      "do_sample":true,"temperature":0.6,"top_p":0.9,"top_k":50,"repetition_penalty":1.1,"max_new_tokens":256})");
  c = load_model_config(dir.path());
  ASSERT_TRUE(c.generation);
  const auto& g = *c.generation;
  EXPECT_EQ(g.bos_token_id, 128000);
  EXPECT_FALSE(g.pad_token_id);
  EXPECT_EQ(c.stop_token_ids(), (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_EQ(g.do_sample, true);
  EXPECT_EQ(g.temperature, 0.6);
  EXPECT_EQ(g.top_p, 0.9);
  EXPECT_EQ(g.top_k, 50);
  EXPECT_EQ(g.repetition_penalty, 1.1);
  EXPECT_EQ(g.max_new_tokens, 256);
  write_file(dir / "generation_config.json", R"({"temperature":"hot"})");
  expect_contains(error_of([&] { load_model_config(dir.path()); }),
                  {"[config]", "generation_config.json", "field 'temperature' must be a number"});
}

}  // namespace
}  // namespace lmx::io
