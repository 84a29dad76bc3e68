// The fused decoders a model keeps between generations (CausalLM::recycle_fused_decoder),
// checked on the CPU with a stand-in decoder: which one is given out again, how many are
// kept, and that their memory goes when the weights change or an allocation needs it.
#include <gtest/gtest.h>

#include <memory>

#include "core/allocator.h"
#include "core/array.h"
#include "io/config.h"
#include "models/registry.h"
#include "ops/ops.h"
#include "runtime/generator.h"
#include "runtime/kv_cache.h"

namespace lmx {
namespace {

constexpr const char* kTiny = R"({"model_type": "llama", "vocab_size": 64, "hidden_size": 32,
 "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
 "head_dim": 16, "max_position_embeddings": 128, "rms_norm_eps": 1e-05, "tie_word_embeddings": true,
 "rope_theta": 10000.0, "torch_dtype": "float32"})";

std::unique_ptr<models::CausalLM> tiny_model() {
  const io::ModelConfig c = io::parse_model_config(kTiny, "test config");
  return std::make_unique<models::CausalLM>(models::build_spec(c, "test config"));
}

// A decoder that only holds `bytes` of CPU memory, says when it is reset and destroyed,
// and whose every step's token is 3.
class HeldDecoder final : public fast::FusedDecoder {
 public:
  HeldDecoder(int rows, size_t bytes, int* resets, int* destroyed)
      : rows_(rows), held_({int64_t(bytes)}, Dtype::u8), resets_(resets), destroyed_(destroyed) {}
  ~HeldDecoder() override { ++*destroyed_; }
  int rows() const override { return rows_; }
  void set_inputs(std::span<const int32_t>, std::span<const int64_t>, std::span<const int64_t>) override {}
  void step(std::span<const fast::FusedCacheView>) override {}
  const Array& logits() const override { return held_; }
  void draw(const std::optional<fast::SampleFilter>&, std::span<const uint64_t>) override {}
  void set_edits(std::span<const int64_t>, std::span<const fast::LogitEdit>, const fast::Penalties&) override {}
  std::vector<int32_t> tokens(int) override { return {}; }
  void queue_token() override {}
  std::vector<int32_t> wait_tokens() override { return {3}; }
  const char* path() const override { return "held"; }
  void reset() override { ++*resets_; }

 private:
  int rows_;
  Array held_;
  int *resets_, *destroyed_;
};

TEST(DecoderPool, GivesTheKeptDecoderOutAgainOnePerBatchSize) {
  const auto model = tiny_model();
  int resets = 0, destroyed = 0;
  auto one = std::make_unique<HeldDecoder>(1, 1024, &resets, &destroyed);
  const fast::FusedDecoder* kept = one.get();
  model->recycle_fused_decoder(std::move(one));
  EXPECT_EQ(resets, 1) << "reset on the way in";
  model->recycle_fused_decoder(std::make_unique<HeldDecoder>(1, 1024, &resets, &destroyed));
  EXPECT_EQ(destroyed, 1) << "a second decoder of one row is not kept";
  model->recycle_fused_decoder(std::make_unique<HeldDecoder>(4, 1024, &resets, &destroyed));
  EXPECT_EQ(model->fused_decoder(1).get(), kept);  // (destroyed here)
  EXPECT_EQ(model->fused_decoder(4)->rows(), 4);
  EXPECT_EQ(model->fused_decoder(1), nullptr) << "none kept, and the CPU has no fused step";
  EXPECT_EQ(destroyed, 3);
}

TEST(DecoderPool, KeptDecodersGoWithTheWeightsAndUnderMemoryPressure) {
  const auto model = tiny_model();
  int resets = 0, destroyed = 0;
  model->recycle_fused_decoder(std::make_unique<HeldDecoder>(1, 1024, &resets, &destroyed));
  model->visit("", [](const std::string&, Array&, const Shape&, fast::QuantizedMatrix*) {});
  EXPECT_EQ(destroyed, 1) << "visit may change the weights a decoder was built from";
  model->recycle_fused_decoder(std::make_unique<HeldDecoder>(1, 1024, &resets, &destroyed));
  model->set_deterministic(true);
  EXPECT_EQ(destroyed, 2) << "a deterministic model's decoders are built otherwise";

  // 8 MiB kept; a limit 4 MiB above what is in use: the next 8 MiB fit only once it goes.
  model->recycle_fused_decoder(std::make_unique<HeldDecoder>(1, 8 << 20, &resets, &destroyed));
  release_kept_memory(Device::cuda(0));
  EXPECT_EQ(destroyed, 2) << "a shortage on another device leaves the model's decoders";
  Allocator& a = allocator_for(Device::cpu());
  a.set_memory_limit(a.stats().active + (4u << 20));
  EXPECT_NO_THROW(Array({8 << 20}, Dtype::u8));
  a.set_memory_limit(0);
  EXPECT_EQ(destroyed, 3);
}

// A generation takes its decoder once the prompt is prefilled, and a prompt of more than a
// quarter of a prefill pass lets the kept ones go first: their memory is the activations' then.
TEST(DecoderPool, AGenerationTakesItsDecoderAfterThePrefillAndALongPromptLetsItGo) {
  const auto model = tiny_model();
  uint64_t seed = 1;
  model->visit("", [&](const std::string&, Array& w, const Shape& shape, fast::QuantizedMatrix*) {
    w = random_uniform(shape, seed++, -0.1f, 0.1f, Dtype::f32);
  });
  int resets = 0, destroyed = 0;
  GenerationLimits limits;
  limits.max_tokens = 3, limits.ignore_eos = true, limits.prefill_tokens = 16;
  // -> the decoders destroyed by the first token, and how the decode steps ran
  auto generate = [&](int prompt_len) {
    KVCache cache(model->num_layers());
    TokenGenerator g(*model, std::vector<int32_t>(size_t(prompt_len), 7), SamplingOptions{}, limits, cache);
    EXPECT_TRUE(g.next().has_value());  // the prompt's prefill and the first token
    const int destroyed_by_then = destroyed;
    while (g.next()) {
    }
    return std::pair(destroyed_by_then, g.decode_path());
  };
  model->recycle_fused_decoder(std::make_unique<HeldDecoder>(1, 1024, &resets, &destroyed));
  {
    KVCache cache(model->num_layers());
    const TokenGenerator g(*model, {7, 7}, SamplingOptions{}, limits, cache);
    auto kept = model->fused_decoder(1);
    EXPECT_NE(kept, nullptr) << "a generator made, not yet prefilled, has not taken it";
    model->recycle_fused_decoder(std::move(kept));
  }
  EXPECT_EQ(generate(4), std::pair(0, std::string("fused-held"))) << "a quarter of a pass takes the kept decoder";
  EXPECT_EQ(resets, 3) << "handed back after the generation";
  EXPECT_EQ(generate(5), std::pair(1, std::string("plain")))
      << "a token more lets it go before the prefill (and the CPU has no fused step)";
}

}  // namespace
}  // namespace lmx
