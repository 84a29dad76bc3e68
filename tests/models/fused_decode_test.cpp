// The fused decode step (ops/fused_decoder.h) against the plain ops on the same device:
// fed the same tokens after the same prefill, its logits at each of 64 decode positions
// stay within bf16 tolerance (relative L2 2e-2) of forward(), and its argmax is the argmax
// of those logits. The models are random and shaped to reach the awkward paths: GQA,
// head_dim 128 and 256 apart from hidden/heads, q/k norms, a rotating sliding-window
// cache that wraps many times, logit softcapping, widths that are not multiples of 256.
// Batches of sequences (FusedBatchTest) are checked the same way, row by row.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>

#include "core/error.h"
#include "io/config.h"
#include "models/registry.h"
#include "ops/kernels.h"
#include "runtime/generator.h"

#if LMX_HAVE_CUDA
#include "backend/cuda/fused_kernels.h"
#endif

namespace lmx {
namespace {

constexpr const char* kLlama = R"({"model_type": "llama", "vocab_size": 1000, "hidden_size": 256,
 "intermediate_size": 520, "num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 2,
 "head_dim": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "tie_word_embeddings": true,
 "rope_theta": 500000.0, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
 "original_max_position_embeddings": 64, "rope_type": "llama3"}, "torch_dtype": "bfloat16"})";
// Wider than the persistent step's inputs held in registers (2,048 values): its QKV and
// gate/up inputs take the staged form there. Its weights are narrower by sqrt(256 / 2,112)
// (kLlamaWideSpread), as trained models scale theirs with the width: at ±0.05 its
// activations grow large enough that bf16 rounding alone passes the tolerance, on either
// path.
constexpr const char* kLlamaWide = R"({"model_type": "llama", "vocab_size": 1000, "hidden_size": 2112,
 "intermediate_size": 520, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
 "head_dim": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "tie_word_embeddings": true,
 "rope_theta": 500000.0, "torch_dtype": "bfloat16"})";
constexpr float kLlamaWideSpread = 0.0174f;
// Llama-3.1-8B's attention in small: 4 query heads of 128 per kv head, so that the last
// block of each kv head merges 512 outputs, two a thread (count_and_merge), in the
// persistent step as in the kernel per phase.
constexpr const char* kLlamaWideHeads = R"({"model_type": "llama", "vocab_size": 1000, "hidden_size": 256,
 "intermediate_size": 520, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
 "head_dim": 128, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "tie_word_embeddings": true,
 "rope_theta": 500000.0, "torch_dtype": "bfloat16"})";
// A vocabulary so small that the LM head's GEMV takes fewer blocks than the persistent
// step has (one per SM): each block still hands in an argmax partial.
constexpr const char* kLlamaSmallVocab = R"({"model_type": "llama", "vocab_size": 96, "hidden_size": 256,
 "intermediate_size": 520, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
 "head_dim": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "tie_word_embeddings": true,
 "rope_theta": 500000.0, "torch_dtype": "bfloat16"})";
constexpr const char* kQwen3 = R"({"model_type": "qwen3", "vocab_size": 1203, "hidden_size": 264,
 "intermediate_size": 640, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
 "head_dim": 128, "max_position_embeddings": 4096, "rms_norm_eps": 1e-06, "tie_word_embeddings": false,
 "rope_theta": 1000000, "torch_dtype": "bfloat16"})";
// MLPs wide enough that the persistent step's fused down projection reads several
// 8-column units a block (persistent_fuse_down): on 132 SMs 8 (1,024 units) and 3 (288).
// Qwen3's 264 rows take a whole box of 256 and then 8 rows of the next. Weights narrowed
// by sqrt(520 / 8,192) and sqrt(640 / 2,304), as for kLlamaWide.
constexpr const char* kLlamaWideMlp = R"({"model_type": "llama", "vocab_size": 1000, "hidden_size": 256,
 "intermediate_size": 8192, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
 "head_dim": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "tie_word_embeddings": true,
 "rope_theta": 500000.0, "torch_dtype": "bfloat16"})";
constexpr const char* kQwen3WideMlp = R"({"model_type": "qwen3", "vocab_size": 1203, "hidden_size": 264,
 "intermediate_size": 2304, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
 "head_dim": 128, "max_position_embeddings": 4096, "rms_norm_eps": 1e-06, "tie_word_embeddings": false,
 "rope_theta": 1000000, "torch_dtype": "bfloat16"})";
constexpr const char* kGemma3 = R"({"model_type": "gemma3_text", "vocab_size": 2048, "hidden_size": 1152,
 "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 1,
 "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 4096,
 "rms_norm_eps": 1e-06, "tie_word_embeddings": true, "rope_theta": 1000000, "rope_local_base_freq": 10000,
 "query_pre_attn_scalar": 256, "sliding_window": 16, "sliding_window_pattern": 4,
 "final_logit_softcapping": 30.0, "torch_dtype": "bfloat16"})";

// A bf16 model on `device` with random weights of a trained model's rough magnitudes:
// uniform in ±`spread` (norm weights ±0.1 around their centre).
std::unique_ptr<models::CausalLM> random_model(const char* config_json, Device device, float spread = 0.05f) {
  const io::ModelConfig c = io::parse_model_config(config_json, "test config");
  auto model = std::make_unique<models::CausalLM>(models::build_spec(c, "test config"));
  uint64_t seed = 1;
  model->visit("", [&](const std::string& name, Array& w, const Shape& shape) {
    const bool norm = name.ends_with("norm.weight");
    const float centre = norm && c.model_type != "gemma3_text" ? 1.0f : 0.0f, half = norm ? 0.1f : spread;
    w = to_device(random_uniform(shape, seed++, centre - half, centre + half, Dtype::bf16), device);
  });
  return model;
}

double relative_l2(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) num += std::pow(got[i] - want[i], 2), den += std::pow(want[i], 2);
  return std::sqrt(num / den);
}

bool have_cuda(int index = 0) {
  try {
    detail::kernels_for(Device::cuda(index));
    return true;
  } catch (const Error&) {
    return false;
  }
}

struct FusedCase {
  const char* name;
  const char* config;
  bool rotate;      // rotating caches on sliding-window layers
  bool persistent;  // the one-kernel step, or a kernel per phase (LMX_FUSED_PERSISTENT=0)
  float spread = 0.05f;  // random_model's
};

// Chooses the fused step's way of running for the decoders made while it lives.
class PathChoice {
 public:
  explicit PathChoice(bool persistent) { setenv("LMX_FUSED_PERSISTENT", persistent ? "1" : "0", 1); }
  ~PathChoice() { unsetenv("LMX_FUSED_PERSISTENT"); }
  PathChoice(const PathChoice&) = delete;
  PathChoice& operator=(const PathChoice&) = delete;
};

class FusedDecodeTest : public ::testing::TestWithParam<FusedCase> {};

// Fed the same tokens, the fused step's logits at each of 64 decode positions are within
// bf16 tolerance of the plain path's. The fused step's cache starts with `capacity` slots
// (the plain one with 8; both grow as needed).
void expect_logits_match_plain(const FusedCase& c, int64_t capacity, Device gpu = Device::cuda(0)) {
  const PathChoice path(c.persistent);
  const auto model = random_model(c.config, gpu, c.spread);
  const auto fused = model->fused_decoder();
  ASSERT_NE(fused, nullptr) << "CUDA has a fused path for bf16 " << c.name;

  const int64_t prompt_len = 20, steps = 64, vocab = model->spec().vocab_size;
  const std::vector<int32_t> ids = to_vector<int32_t>(
      astype(random_uniform({prompt_len + steps}, 7, 0, float(vocab) - 1, Dtype::f32), Dtype::i32));
  // The same prefill through the plain ops fills both caches.
  KVCache plain(*model, c.rotate, 8), fast(*model, c.rotate, capacity);
  const Array prompt = to_device(from_vector(std::vector<int32_t>(ids.begin(), ids.begin() + prompt_len),
                                             {1, prompt_len}), gpu);
  (void)model->forward(prompt, plain.layers());
  (void)model->forward(prompt, fast.layers());

  double worst = 0;
  for (int64_t t = 0; t < steps; ++t) {
    const int32_t tok = ids[size_t(prompt_len + t)];
    const std::vector<float> want =
        to_floats(model->forward(to_device(from_vector(std::vector<int32_t>{tok}, {1, 1}), gpu), plain.layers()));
    fused->set_input(tok, prompt_len + t);
    fused->step(fast.fused_views());
    fast.commit_one();
    const std::vector<float> got = to_floats(fused->logits());
    ASSERT_EQ(got.size(), want.size());
    if (t == 0) {
      EXPECT_STREQ(fused->path(), c.persistent ? "persistent" : "graph");
    }
    const double err = relative_l2(got, want);
    worst = std::max(worst, err);
    EXPECT_LE(err, 2e-2) << c.name << " decode position " << prompt_len + t;
    const int32_t argmax = int32_t(std::max_element(got.begin(), got.end()) - got.begin());
    EXPECT_EQ(fused->tokens(1)[0], argmax) << "the fused argmax is the argmax of the fused logits";
  }
  EXPECT_EQ(fast.length(), plain.length());
  std::printf("[ info ] %s: worst relative L2 over %lld positions %.2e\n", c.name, (long long)steps, worst);
}

TEST_P(FusedDecodeTest, LogitsMatchThePlainPathFor64Positions) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  expect_logits_match_plain(GetParam(), 8);
}

// A process that decodes on one GPU and then on another: the kernels' shared-memory
// opt-ins, the persistent step's occupancy and the memory are each device's own, so the
// second device's fused steps (both ways of running) match its plain path as the first's do.
TEST(FusedDecodeTwoDevices, EachDevicesFusedStepMatchesItsPlainPath) {
  if (!have_cuda(1)) GTEST_SKIP() << "fewer than two CUDA devices visible";
  for (const bool persistent : {true, false})
    for (const FusedCase& c : {FusedCase{"llama", kLlama, false, persistent},
                               FusedCase{"gemma3", kGemma3, true, persistent}})
      for (const int d : {0, 1}) {
        SCOPED_TRACE(detail::cat(c.name, persistent ? " persistent" : " graph", " on cuda:", d));
        expect_logits_match_plain(c, 8, Device::cuda(d));
      }
}

// Greedy steps replayed back to back (the argmax fed straight back on the device) give
// the tokens that one step at a time with set_input gives.
TEST_P(FusedDecodeTest, ChainedGreedyStepsEqualSingleSteps) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  const Device gpu = Device::cuda(0);
  const PathChoice path(GetParam().persistent);
  const auto model = random_model(GetParam().config, gpu, GetParam().spread);
  const std::vector<int32_t> prompt{3, 14, 15, 92, 65, 35, 89, 79};
  auto run = [&](bool chained) {
    const auto fused = model->fused_decoder();
    KVCache cache(*model, GetParam().rotate, 64);
    const int64_t n = int64_t(prompt.size()) - 1;  // the last prompt token is the first step's input
    (void)model->forward(to_device(from_vector(std::vector<int32_t>(prompt.begin(), prompt.end() - 1), {1, n}), gpu),
                         cache.layers());
    std::vector<int32_t> out;
    int32_t tok = prompt.back();
    for (int i = 0; i < 40; ++i) {
      if (!chained || i == 0) fused->set_input(tok, n + i);
      fused->step(cache.fused_views());
      cache.commit_one();
      if (!chained) out.push_back(tok = fused->tokens(1)[0]);
    }
    return chained ? fused->tokens(40) : out;
  };
  EXPECT_EQ(run(true), run(false));
}

// Draws after a logit bias and penalties, the token counts kept on the device (set_edits
// once, then each draw counting the previous one) and each draw fed straight back, are the
// draws that the host's own edits make from the same logits (Sampler::edits over the
// history, fast::edit_logits, then the same draw): sampled with top-p, and greedy.
TEST_P(FusedDecodeTest, ChainedEditedDrawsEqualTheHostsDraws) {
  if (!have_cuda())
    GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  const Device gpu = Device::cuda(0);
  const PathChoice path(GetParam().persistent);
  const auto model = random_model(GetParam().config, gpu, GetParam().spread);
  const std::vector<int32_t> prompt{3, 14, 15, 92, 65, 35, 89, 79};
  for (const float temperature : {0.0f, 1.0f}) {
    SamplingOptions so;
    so.temperature = temperature, so.top_p = 0.9f, so.seed = 9;
    so.repetition_penalty = 1.3f, so.presence_penalty = 0.2f, so.frequency_penalty = 0.1f;
    so.logit_bias = {{5, 1.5f}, {14, -2.0f}, {5, 0.25f}};
    Sampler sampler(so);
    const std::optional<fast::SampleFilter> filter = sampler.filter();
    const auto fused = model->fused_decoder();
    KVCache cache(*model, GetParam().rotate, 64);
    const int64_t n =
        int64_t(prompt.size()) - 1;  // the last prompt token is the first step's input
    (void)model->forward(
        to_device(from_vector(std::vector<int32_t>(prompt.begin(), prompt.end() - 1), {1, n}), gpu),
        cache.layers());
    std::vector<int32_t> history = prompt;
    for (int i = 0; i < 40; ++i) {
      std::vector<fast::LogitEdit> e;
      sampler.edits(history, fused->logits().size(), e);
      const int64_t starts[] = {0, int64_t(e.size())};
      if (i == 0) {
        fused->set_input(history.back(), n);
        fused->set_edits(starts, e, sampler.penalties());
      }
      fused->step(cache.fused_views());
      cache.commit_one();
      const Array logits = copy(reshape(fused->logits(), {1, -1}));
      const uint64_t word = filter ? sampler.take_word() : 0;
      fused->draw(filter, {&word, filter ? 1u : 0u});
      const int32_t got = fused->tokens(1)[0];
      const Array x = fast::edit_logits(logits, starts, e, sampler.penalties());
      const int32_t want = to_vector<int32_t>(filter ? fast::sample_tokens(x, {&word, 1}, *filter)
                                                     : argmax(x, -1))[0];
      ASSERT_EQ(got, want) << "temperature " << temperature << ", step " << i;
      history.push_back(got);
    }
  }
}

// The generator's greedy path queues step n+1 before it reads token n back. Its tokens
// must be those of the fused decoder driven one step at a time, and its cache must hold
// a prefix of the sequence afterwards (here: every token, the last one's keys included).
TEST_P(FusedDecodeTest, PipelinedGeneratorEqualsStepByStepDecoding) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  const Device gpu = Device::cuda(0);
  const PathChoice path(GetParam().persistent);
  const auto model = random_model(GetParam().config, gpu, GetParam().spread);
  const std::vector<int32_t> prompt{3, 14, 15, 92, 65, 35, 89, 79, 32, 38};
  const int n = 30;
  KVCache cache(*model, GetParam().rotate, 8);
  GenerationLimits limits;
  limits.max_tokens = n;
  limits.ignore_eos = true;
  TokenGenerator gen(*model, prompt, SamplingOptions{}, limits, cache);
  std::vector<int32_t> got;
  while (auto t = gen.next()) got.push_back(*t);
  ASSERT_EQ(int(got.size()), n);
  EXPECT_LE(cache.length(), int64_t(prompt.size()) + n);

  // The same tokens one step at a time: the prefill as the generator runs it (the LM head
  // on the last position only), its argmax, then single fused steps.
  KVCache ref(*model, GetParam().rotate, 8);
  const int64_t l = int64_t(prompt.size());
  const Array h = model->hidden_states(to_device(from_vector(prompt, {1, l}), gpu), ref.layers());
  const std::vector<float> logits = to_floats(model->logits(slice_axis(h, 1, l - 1, l)));  // [V]
  std::vector<int32_t> want{int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin())};
  const auto fused = model->fused_decoder();
  while (int(want.size()) < n) {
    fused->set_input(want.back(), ref.length());
    fused->step(ref.fused_views());
    ref.commit_one();
    want.push_back(fused->tokens(1)[0]);
  }
  EXPECT_EQ(got, want);
}

INSTANTIATE_TEST_SUITE_P(
    Families, FusedDecodeTest,
    ::testing::Values(FusedCase{"llama", kLlama, false, true},
                      FusedCase{"qwen3", kQwen3, false, true},
                      FusedCase{"llama_wide", kLlamaWide, false, true, kLlamaWideSpread},
                      FusedCase{"llama_wide_per_phase", kLlamaWide, false, false, kLlamaWideSpread},
                      FusedCase{"llama_wide_heads", kLlamaWideHeads, false, true},
                      FusedCase{"llama_wide_heads_per_phase", kLlamaWideHeads, false, false},
                      FusedCase{"llama_small_vocab", kLlamaSmallVocab, false, true},
                      FusedCase{"llama_wide_mlp", kLlamaWideMlp, false, true, 0.0126f},
                      FusedCase{"qwen3_wide_mlp", kQwen3WideMlp, false, true, 0.0264f},
                      FusedCase{"gemma3_rotating", kGemma3, true, true},
                      FusedCase{"gemma3_contiguous", kGemma3, false, true},
                      FusedCase{"llama_per_phase", kLlama, false, false},
                      FusedCase{"qwen3_per_phase", kQwen3, false, false},
                      FusedCase{"gemma3_rotating_per_phase", kGemma3, true, false}),
    [](const auto& info) { return std::string(info.param.name); });

// A cache with more 32-key chunks than the grid has blocks (Llama's 2 kv heads x 128
// chunks of 4,096 slots): the persistent step lengthens its chunks so that its attention
// runs at most a task per block (persistent_attention_split; 64 keys on a 132-SM GPU).
// Gemma 3's one kv head takes 32-key chunks and the merge in the O projection's input.
TEST(FusedDecodeLongCache, PersistentLogitsMatchThePlainPath) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  expect_logits_match_plain(FusedCase{"llama_long_cache", kLlama, false, true}, 4096);
  expect_logits_match_plain(FusedCase{"llama_wide_heads_long_cache", kLlamaWideHeads, false, true},
                            4096);
  expect_logits_match_plain(FusedCase{"gemma3_long_cache", kGemma3, false, true}, 4096);
}

// One sequence runs the persistent step unless LMX_FUSED_PERSISTENT=0 turns it off.
TEST(FusedDecodeDefault, PersistentUnlessTurnedOff) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  const Device gpu = Device::cuda(0);
  const auto model = random_model(kLlama, gpu);
  auto path = [&] {
    const auto fused = model->fused_decoder();
    KVCache cache(*model, false, 16);
    (void)model->forward(to_device(from_vector(std::vector<int32_t>{3, 14, 15}, {1, 3}), gpu), cache.layers());
    fused->set_input(92, 3);
    fused->step(cache.fused_views());
    return std::string(fused->path());
  };
  unsetenv("LMX_FUSED_PERSISTENT");
  EXPECT_EQ(path(), "persistent");
  const PathChoice off(false);
  EXPECT_EQ(path(), "graph");
}

// ---- batches: several sequences stepped together, each with its own left padding ----

// Widths that are multiples of 32 (the batched GEMV's chunk) but not of 256, so that the
// column loop's tails run: Llama's MLP has 17 chunks, Qwen3's hidden size 9.
constexpr const char* kLlamaBatch = R"({"model_type": "llama", "vocab_size": 1000, "hidden_size": 256,
 "intermediate_size": 544, "num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 2,
 "head_dim": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "tie_word_embeddings": true,
 "rope_theta": 500000.0, "torch_dtype": "bfloat16"})";
constexpr const char* kQwen3Batch = R"({"model_type": "qwen3", "vocab_size": 1203, "hidden_size": 288,
 "intermediate_size": 640, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
 "head_dim": 128, "max_position_embeddings": 4096, "rms_norm_eps": 1e-06, "tie_word_embeddings": false,
 "rope_theta": 1000000, "torch_dtype": "bfloat16"})";

struct BatchCase {
  const char* name;
  const char* config;
  int rows;
  int64_t slots = 8;  // the caches' first size (they grow); a long one takes longer attention chunks
};

class FusedBatchTest : public ::testing::TestWithParam<BatchCase> {};

// The batch's prompts are left-padded to one length, as batch_generate pads them: the plain
// path masks the padding (key_valid) and starts each row's positions after it, the fused
// step is told each row's padding. Fed the same tokens, each row's logits stay within bf16
// tolerance of forward()'s for 40 positions (past Gemma 3's 16-key window), and each
// row's argmax is that of its fused logits.
TEST_P(FusedBatchTest, EachRowsLogitsMatchThePlainPath) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  const Device gpu = Device::cuda(0);
  const auto model = random_model(GetParam().config, gpu);
  const int64_t rows = GetParam().rows, steps = 40, vocab = model->spec().vocab_size;
  const auto fused = model->fused_decoder(int(rows));
  ASSERT_NE(fused, nullptr) << "CUDA steps " << rows << " sequences of bf16 " << GetParam().name;
  ASSERT_EQ(fused->rows(), rows);

  std::vector<int64_t> pads;  // 0, 5, 10, 4, ...; a lone sequence 4 (the single-sequence step)
  for (int64_t r = 0; r < rows; ++r) pads.push_back(rows == 1 ? 4 : (r * 5) % 11);
  const int64_t l = 12;  // the padded prompt length
  const std::vector<int32_t> ids = to_vector<int32_t>(
      astype(random_uniform({rows * (l + steps)}, 11, 0, float(vocab) - 1, Dtype::f32), Dtype::i32));
  std::vector<uint8_t> valid;
  std::vector<int32_t> first;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t s = 0; s < l; ++s) valid.push_back(s >= pads[size_t(r)]);
    first.push_back(int32_t(-pads[size_t(r)]));
  }
  auto batch = [&](int64_t slots, const std::vector<int32_t>& pos) {
    return nn::SequenceBatch{to_device(from_vector(pos, {rows}), gpu),
                             to_device(astype(from_vector(valid, {rows, slots}), Dtype::boolean), gpu)};
  };
  // The same prefill through the plain ops fills both caches (padding slots included:
  // their keys are never read).
  KVCache plain(model->num_layers(), GetParam().slots), fast(model->num_layers(), GetParam().slots);
  const Array prompt =
      to_device(from_vector(std::vector<int32_t>(ids.begin(), ids.begin() + rows * l), {rows, l}), gpu);
  const nn::SequenceBatch pre = batch(l, first);
  (void)model->forward(prompt, plain.layers(), &pre);
  (void)model->forward(prompt, fast.layers(), &pre);

  double worst = 0;
  for (int64_t t = 0; t < steps; ++t) {
    const int64_t slot = l + t;
    std::vector<int32_t> toks(ids.begin() + rows * (l + t), ids.begin() + rows * (l + t + 1)), pos;
    std::vector<uint8_t> grown;
    for (int64_t r = 0; r < rows; ++r) {
      grown.insert(grown.end(), valid.begin() + r * slot, valid.begin() + (r + 1) * slot);
      grown.push_back(1);
      pos.push_back(int32_t(slot - pads[size_t(r)]));
    }
    valid.swap(grown);
    const nn::SequenceBatch step = batch(slot + 1, pos);
    const std::vector<float> want =
        to_floats(model->forward(to_device(from_vector(toks, {rows, 1}), gpu), plain.layers(), &step));
    fused->set_inputs(toks, std::vector<int64_t>(size_t(rows), slot), pads);
    fused->step(fast.fused_views());
    fast.commit_one();
    const std::vector<float> got = to_floats(fused->logits());
    ASSERT_EQ(got.size(), want.size());
    const std::vector<int32_t> argmax = fused->tokens(1);
    ASSERT_EQ(int64_t(argmax.size()), rows);
    for (int64_t r = 0; r < rows; ++r) {
      const std::vector<float> g(got.begin() + r * vocab, got.begin() + (r + 1) * vocab),
          w(want.begin() + r * vocab, want.begin() + (r + 1) * vocab);
      const double err = relative_l2(g, w);
      worst = std::max(worst, err);
      EXPECT_LE(err, 2e-2) << GetParam().name << " row " << r << " slot " << slot;
      EXPECT_EQ(argmax[size_t(r)], int32_t(std::max_element(g.begin(), g.end()) - g.begin())) << "row " << r;
    }
  }
  EXPECT_EQ(fast.length(), plain.length());
  std::printf("[ info ] %s, %lld rows: worst relative L2 over %lld positions %.2e\n", GetParam().name,
              (long long)rows, (long long)steps, worst);
}

// Greedy steps chained on the device give, row by row, the tokens of single steps fed back
// from the host; the pipelined reads (queue_token, wait_tokens) return them in order.
TEST_P(FusedBatchTest, ChainedStepsEqualSingleStepsAndPipelinedReads) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  const Device gpu = Device::cuda(0);
  const auto model = random_model(GetParam().config, gpu);
  const int64_t rows = GetParam().rows, n = 7;
  std::vector<int32_t> prompt;
  for (int64_t i = 0; i < rows * n; ++i) prompt.push_back(int32_t((i * 37 + 5) % 997));
  auto run = [&](int mode) {  // 0: chained, read at the end; 1: single steps; 2: chained, pipelined reads
    const auto fused = model->fused_decoder(int(rows));
    KVCache cache(model->num_layers(), 64);
    (void)model->forward(to_device(from_vector(prompt, {rows, n}), gpu), cache.layers());
    std::vector<int32_t> tok(size_t(rows), 3), out;
    for (int i = 0; i < 24; ++i) {
      if (mode == 1 || i == 0) fused->set_inputs(tok, std::vector<int64_t>(size_t(rows), n + i), {});
      fused->step(cache.fused_views());
      cache.commit_one();
      if (mode == 1) {
        tok = fused->tokens(1);
        out.insert(out.end(), tok.begin(), tok.end());
      }
      if (mode == 2) {
        fused->queue_token();
        if (i > 0) {
          const std::vector<int32_t> t = fused->wait_tokens();
          out.insert(out.end(), t.begin(), t.end());
        }
      }
    }
    if (mode == 2) {
      const std::vector<int32_t> t = fused->wait_tokens();
      out.insert(out.end(), t.begin(), t.end());
    }
    return mode == 0 ? fused->tokens(24) : out;
  };
  const std::vector<int32_t> single = run(1);
  ASSERT_EQ(int64_t(single.size()), 24 * rows);
  EXPECT_EQ(run(0), single);
  EXPECT_EQ(run(2), single);
}

INSTANTIATE_TEST_SUITE_P(Families, FusedBatchTest,
                         ::testing::Values(BatchCase{"llama", kLlamaBatch, 1}, BatchCase{"llama", kLlamaBatch, 3},
                                           BatchCase{"llama", kLlamaBatch, 8}, BatchCase{"gemma3", kGemma3, 1},
                                           BatchCase{"qwen3", kQwen3Batch, 2}, BatchCase{"qwen3", kQwen3Batch, 5},
                                           BatchCase{"gemma3", kGemma3, 4}, BatchCase{"gemma3", kGemma3, 8},
                                           // 1,024 slots: 64-key chunks for 8 rows of 2 kv heads,
                                           // 48 for 5 (fit_attention_split, on 132 SMs)
                                           BatchCase{"llama_long_cache", kLlamaBatch, 8, 1024},
                                           BatchCase{"qwen3_long_cache", kQwen3Batch, 5, 1024}),
                         [](const auto& info) {
                           return std::string(info.param.name) + "_" + std::to_string(info.param.rows) + "_rows";
                         });

// What the batched step cannot take, CUDA declines (the caller keeps to the plain ops):
// more than 8 sequences, or widths that are not multiples of 32.
TEST(FusedBatch, DeclinesWhatItCannotStep) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  const Device gpu = Device::cuda(0);
  EXPECT_EQ(random_model(kLlamaBatch, gpu)->fused_decoder(9), nullptr);
  EXPECT_EQ(random_model(kLlama, gpu)->fused_decoder(2), nullptr);  // intermediate_size 520
  EXPECT_NE(random_model(kLlama, gpu)->fused_decoder(1), nullptr);
  EXPECT_EQ(random_model(kLlamaBatch, Device::cpu())->fused_decoder(4), nullptr);
}

#if LMX_HAVE_CUDA
// The persistent step's plan check (host code: runs without a GPU). It accepts a Llama-
// 3.2-1B-shaped layer within the shared memory an SM has, and refuses what its ring of
// 32 KiB slots and 16-byte copies cannot carry, saying why.
namespace persistent {

using cuda::fused::bf16;
using cuda::fused::Epilogue;
using cuda::fused::StepPhase;

const bf16* fake_weights(uintptr_t at) { return reinterpret_cast<const bf16*>(at); }

StepPhase gemv(int k, int rows, Epilogue e = Epilogue::plain, uintptr_t at = 0x10000) {
  StepPhase p;
  p.in.k = k;
  p.out.w[0] = fake_weights(at);
  p.out.rows[0] = rows;
  p.out.epilogue = e;
  if (e == Epilogue::glu_silu) p.out.w[1] = fake_weights(at + 0x100000);
  return p;
}

StepPhase attention_phase(int heads = 32, int kv_heads = 8, int head_dim = 64) {
  StepPhase p;
  p.kind = StepPhase::Kind::attention;
  p.attn.n_heads = heads, p.attn.n_kv_heads = kv_heads, p.attn.head_dim = head_dim, p.attn.chunk = 32;
  return p;
}

std::string refusal(const std::vector<StepPhase>& plan) {
  unsigned vector = 0;
  int slots = 0;
  std::string why;
  EXPECT_EQ(cuda::fused::persistent_smem_bytes(plan, 0, &vector, &slots, &why), 0u);
  return why;
}

TEST(PersistentPlan, FitsALlamaLayerAndRefusesWhatItCannotCarry) {
  const StepPhase attention = attention_phase();
  std::vector<StepPhase> llama{gemv(2048, 3072), attention, gemv(2048, 2048), gemv(2048, 8192, Epilogue::glu_silu),
                               gemv(8192, 2048), gemv(2048, 128256, Epilogue::logits)};
  llama[0].in.norm = fake_weights(0x20000);  // a norm, so the QKV input is formed (in registers: 2,048 values)
  unsigned vector = 0;
  int slots = 0;
  std::string why;
  const size_t smem = cuda::fused::persistent_smem_bytes(llama, 600, &vector, &slots, &why);
  EXPECT_GT(smem, 0u) << why;
  EXPECT_LE(smem, size_t(227) << 10);
  EXPECT_GE(vector, 8192u * 2) << "the down projection's input, straight to bf16";
  EXPECT_LT(vector, 2048u * (2 * 4 + 2)) << "the QKV input is not staged in shared memory";
  EXPECT_EQ(slots, 5) << "the most 32 KiB slots the ring takes, and they fit beside the vector";
  EXPECT_EQ(smem, size_t(slots) * (32 << 10) + vector + llama.size() * 80 + 2 * sizeof(StepPhase) +
                      600 * 4)
      << "the ring, the vector, each phase's 80-byte geometry, two phases' parameters and 600 "
         "4-byte stages";
  // Past 2,048 values a formed input is staged: x and its norm weights in f32, then bf16.
  std::vector<StepPhase> wider{gemv(4096, 64)};
  wider[0].in.norm = fake_weights(0x20000);
  EXPECT_GT(cuda::fused::persistent_smem_bytes(wider, 0, &vector, &slots, &why), 0u) << why;
  EXPECT_GE(vector, 4096u * (2 * 4 + 2));

  EXPECT_NE(refusal({gemv(2048, 3072), attention}).find("output projection"), std::string::npos);
  EXPECT_NE(refusal({attention, gemv(1024, 2048)}).find("output projection"), std::string::npos);
  EXPECT_NE(refusal({gemv(2052, 64)}).find("multiple of 8"), std::string::npos);
  EXPECT_NE(refusal({gemv(16392, 64)}).find("longer than a slot"), std::string::npos);       // 32.8 KB rows
  EXPECT_NE(refusal({gemv(8200, 64, Epilogue::glu_silu)}).find("longer"), std::string::npos);  // paired: 2 rows
  EXPECT_NE(refusal({gemv(2048, 64, Epilogue::plain, 0x10008)}).find("unaligned"), std::string::npos);
  EXPECT_NE(refusal({gemv(2048, 1 << 22)}).find("too many rows"), std::string::npos);
  // Long input vectors leave too little shared memory beside the ring: here four staged
  // f32 arrays and the bf16 copy of 16,384 values, 288 KiB.
  StepPhase wide = gemv(16384, 64);
  wide.in.norm = fake_weights(0x20000), wide.in.add_norm = fake_weights(0x30000);
  wide.in.add = reinterpret_cast<const float*>(uintptr_t(0x40000));
  EXPECT_NE(refusal({wide}).find("shared memory"), std::string::npos);
}

// A larger model's list of stages must not cost the ring its slots: Llama-3.1-8B's shapes
// (32 layers, 4,096 wide, MLP 14,336, whose down is too wide to fuse) list 3,668 stages a
// block on 132 blocks, which at 8 bytes a stage left 3 slots.
TEST(PersistentPlan, ListsALlama8BsStagesAndKeepsFourSlots) {
  const StepPhase attention = attention_phase(32, 8, 128);
  std::vector<StepPhase> plan;
  for (int layer = 0; layer < 32; ++layer) {
    StepPhase qkv = gemv(4096, 4096), glu = gemv(4096, 14336, Epilogue::glu_silu);
    qkv.in.norm = glu.in.norm =
        fake_weights(0x20000);  // with the residual add: staged inputs, 56 KiB
    qkv.in.add = glu.in.add = reinterpret_cast<const float*>(uintptr_t(0x40000));
    qkv.out.w[1] = fake_weights(0x200000), qkv.out.rows[1] = 1024;
    qkv.out.w[2] = fake_weights(0x300000), qkv.out.rows[2] = 1024;
    for (const StepPhase& p : {qkv, attention, gemv(4096, 4096), glu, gemv(14336, 4096)})
      plan.push_back(p);
  }
  plan.push_back(gemv(4096, 128256, Epilogue::logits));
  int per_block = 0;
  const std::vector<cuda::fused::PlannedStage> all =
      cuda::fused::persistent_stage_lists(plan, 132, &per_block);
  EXPECT_GE(per_block, 3668 + int(plan.size()) + 1)
      << "every stage, every phase's end and the entry past it";
  EXPECT_LE(per_block, 3668 + int(plan.size()) + 4);
  unsigned vector = 0;
  int slots = 0;
  std::string why;
  EXPECT_GT(cuda::fused::persistent_smem_bytes(plan, per_block, &vector, &slots, &why), 0u) << why;
  EXPECT_EQ(slots, 4);
}

// Every block's list of stages: in the plan's order, each a run of whole rows that fits a
// slot, and over all blocks every row of every matrix exactly once (a fused down's boxes:
// every box of rows, in each block that has gate/up rows).
TEST(PersistentPlan, ListsEachBlocksStagesSoThatTheGridCoversEveryRowOnce) {
  const StepPhase attention = attention_phase();
  StepPhase qkv = gemv(2048, 2048);
  qkv.out.w[1] = fake_weights(0x200000), qkv.out.rows[1] = 512;
  qkv.out.w[2] = fake_weights(0x300000), qkv.out.rows[2] = 512;
  StepPhase glu = gemv(2048, 8192, Epilogue::glu_silu);
  glu.down_map = reinterpret_cast<const void*>(uintptr_t(0x70000));
  glu.down_rows = 2048, glu.down_units = 8, glu.down_box_rows = 256;
  const std::vector<StepPhase> plan{qkv, attention, gemv(2048, 2048), glu, gemv(2048, 128256, Epilogue::logits)};
  constexpr int kBlocks = 132;
  int per_block = 0;
  const std::vector<cuda::fused::PlannedStage> all = cuda::fused::persistent_stage_lists(plan, kBlocks, &per_block);
  ASSERT_EQ(all.size(), size_t(kBlocks) * size_t(per_block));
  EXPECT_EQ(per_block % 4, 0) << "copied 16 bytes at a time";
  // covered[phase][segment]: how often each row was taken
  std::vector<std::vector<std::vector<int>>> covered(plan.size(), std::vector<std::vector<int>>(3));
  for (size_t i = 0; i < plan.size(); ++i)
    for (int seg = 0; seg < 3; ++seg) covered[i][size_t(seg)].assign(size_t(plan[i].out.rows[seg]), 0);
  covered[3][1].assign(2048, 0);  // the fused down's rows
  int blocks_with_glu_rows = 0;
  for (int b = 0; b < kBlocks; ++b) {
    int phase = 0, n_stages = 0,
        i = 0;  // the list is read as the workers read it: a phase's stages, its end
    bool glu_rows = false, ended = false;
    for (; i < per_block && !ended; ++i) {
      const cuda::fused::PlannedStage st = all[size_t(b) * size_t(per_block) + size_t(i)];
      const int seg = st.seg(), n = st.n();
      if (n == 0) {
        EXPECT_EQ(st.packed, 0u) << "block " << b << ": an end is all zero";
        ended = ++phase == int(plan.size());
        continue;
      }
      ++n_stages;
      EXPECT_NE(phase, 1) << "the attention has no weights";
      const bool pair = phase == 3 && seg == 0, down = phase == 3 && seg == 1;
      const int64_t row_bytes = down ? 8 * 8 * 2 : int64_t(plan[size_t(phase)].in.k) * 2 * (pair ? 2 : 1);
      EXPECT_LE(n * row_bytes, 32 << 10) << "block " << b << ": a stage fits a slot";
      if (pair) glu_rows = true;
      std::vector<int>& rows = covered[size_t(phase)][size_t(seg)];
      ASSERT_LE(size_t(st.row()) + size_t(n), rows.size()) << "block " << b << ", phase " << phase;
      for (int r = st.row(); r < st.row() + n; ++r) ++rows[size_t(r)];
      if (down) {
        EXPECT_EQ(st.row() % 256, 0) << "a down stage is a whole box of rows";
      }
    }
    EXPECT_LT(i, per_block) << "block " << b
                            << ": the entry past the last end, which the workers read, is in";
    EXPECT_TRUE(ended) << "block " << b << "'s list ends";
    EXPECT_GT(n_stages, 0);
    blocks_with_glu_rows += glu_rows;
  }
  for (size_t i = 0; i < plan.size(); ++i)
    for (int seg = 0; seg < 3; ++seg) {
      const int want = i == 3 && seg == 1 ? blocks_with_glu_rows : 1;
      const std::vector<int>& rows = covered[i][size_t(seg)];
      for (size_t r = 0; r < rows.size(); ++r)
        ASSERT_EQ(rows[r], want) << "phase " << i << ", segment " << seg << ", row " << r;
    }
  EXPECT_EQ(blocks_with_glu_rows, kBlocks) << "1,024 units of 8 rows over 132 blocks: 7 or 8 each";
}

// Each down projection joins the gate/up phase before it where a block's share of its
// columns fits a box of at most 8 units of 8 (odd, or 8, for conflict-free reads); the
// phase before zeroes its output, and what the fuse cannot carry keeps its own phase.
TEST(PersistentPlan, FusesTheDownProjectionIntoTheGateUpPhase) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: tensor maps are encoded by the driver";
  float* const act = reinterpret_cast<float*>(uintptr_t(0x50000));
  float* const out = reinterpret_cast<float*>(uintptr_t(0x60000));
  const void* const maps = reinterpret_cast<const void*>(uintptr_t(0x70000));
  auto layer = [&](int hidden, int inter) {
    std::vector<StepPhase> p{gemv(hidden, hidden), gemv(hidden, inter, Epilogue::glu_silu), gemv(inter, hidden),
                             gemv(hidden, 1000, Epilogue::logits)};
    p[1].out.y = act, p[2].in.x = act, p[2].out.y = out, p[3].in.add = out;
    return p;
  };
  auto fuse = [&](std::vector<StepPhase>& p, int blocks = 132) {
    std::vector<const char*> names{"o", "glu", "down", "head"};
    const size_t maps_made = cuda::fused::persistent_fuse_down(p, names, blocks, maps).size();
    EXPECT_EQ(names.size(), p.size());
    if (maps_made == 1) {
      EXPECT_STREQ(names[1], "glu+down");
    }
    return maps_made;
  };
  struct Case {
    int hidden, inter, units, box_rows;
  };
  for (const Case c : {Case{2048, 8192, 8, 256}, Case{1024, 3072, 3, 256}, Case{1152, 6912, 7, 256},
                       Case{64, 520, 1, 64}}) {
    std::vector<StepPhase> p = layer(c.hidden, c.inter);
    ASSERT_EQ(fuse(p), 1u) << c.inter;
    ASSERT_EQ(p.size(), 3u) << "the down phase is gone";
    EXPECT_EQ(p[1].down_map, maps);
    EXPECT_EQ(p[1].down_y, out);
    EXPECT_EQ(p[1].down_rows, c.hidden);
    EXPECT_EQ(p[1].down_units, c.units) << c.inter;
    EXPECT_EQ(p[1].down_box_rows, c.box_rows) << c.inter;
    EXPECT_EQ(p[0].zero, out) << "the phase before zeroes the sums";
    EXPECT_EQ(p[0].zero_n, c.hidden);
    unsigned vector = 0;
    int slots = 0;
    std::string why;
    EXPECT_GT(cuda::fused::persistent_smem_bytes(p, 0, &vector, &slots, &why), 0u) << why;
  }
  std::vector<StepPhase> p = layer(2048, 16384);  // 16 units a block on 132 SMs
  EXPECT_EQ(fuse(p), 0u);
  p = layer(2048, 8192);
  EXPECT_EQ(fuse(p, 64), 0u) << "16 units a block on 64";
  p = layer(2048, 8192);
  p[2].in.add = out;  // a down input that is not the gate/up's output alone
  EXPECT_EQ(fuse(p), 0u);
  p = layer(2048, 8192);
  p[0].in.add = out;  // the phase that would zero the sums reads them
  EXPECT_EQ(fuse(p), 0u);
  p = layer(2048, 8196);  // not whole units of 8
  EXPECT_EQ(fuse(p), 0u);
  setenv("LMX_FUSED_DOWN", "0", 1);
  p = layer(2048, 8192);
  EXPECT_EQ(fuse(p), 0u) << "LMX_FUSED_DOWN=0 turns it off";
  unsetenv("LMX_FUSED_DOWN");
}

// A long cache's attention gets longer chunks, so that the persistent kernel's blocks
// have at most a task each, within a task's shared-memory scratch.
TEST(PersistentPlan, AttentionChunksGrowToFitTheGrid) {
  cuda::fused::AttentionStep a;
  a.n_heads = 32, a.n_kv_heads = 8, a.head_dim = 64;  // Llama-3.2-1B
  auto split = [&](int slots) {
    a.slots = slots;
    cuda::fused::attention_split(a.slots, a.n_kv_heads, a.chunk, a.splits);
    cuda::fused::persistent_attention_split(a, 132);
    return std::pair(a.chunk, a.splits);
  };
  EXPECT_EQ(split(384), std::pair(32, 12)) << "short caches keep the default chunk";
  EXPECT_EQ(split(2304), std::pair(144, 16)) << "8 kv heads x 16 chunks: one task per block of 132";
  // Longer, the chunk stops where a task's scratch would pass 48 KiB: (544 + 68 c) floats.
  EXPECT_EQ(split(32768), std::pair(160, 205));
}

// A batch's attention (the kernel per phase) aims at about two blocks an SM in all: 8
// sequences of Qwen3's 8 kv heads and 384 slots take 96-key chunks (4 a kv head, 256 blocks
// on 132 SMs), 4 sequences 48; Gemma 3's one kv head keeps its 16-key chunks, and a long
// cache stops where a block's scratch would pass 64 KiB.
TEST(PersistentPlan, BatchedAttentionChunksAimAtTwoBlocksAnSm) {
  cuda::fused::AttentionStep a;
  auto split = [&](int heads, int kv_heads, int head_dim, int slots, int rows) {
    a.n_heads = heads, a.n_kv_heads = kv_heads, a.head_dim = head_dim, a.slots = slots;
    cuda::fused::attention_split(a.slots, a.n_kv_heads, a.chunk, a.splits);
    cuda::fused::fit_attention_split(a, 2 * 132 / rows, 64 << 10);
    return std::pair(a.chunk, a.splits);
  };
  EXPECT_EQ(split(16, 8, 128, 384, 8), std::pair(96, 4));
  EXPECT_EQ(split(16, 8, 128, 384, 4), std::pair(48, 8));
  EXPECT_EQ(split(16, 8, 128, 384, 2), std::pair(32, 12)) << "never shorter than the default";
  EXPECT_EQ(split(4, 1, 256, 384, 8), std::pair(16, 24));
  // Qwen3 at 4,096 slots: (832 + 130 c) floats of scratch stop at 112 keys.
  EXPECT_EQ(split(16, 8, 128, 4096, 8), std::pair(112, 37));
}

// A count of the attention's finished outputs in place of the grid barrier after it
// (persistent_attention_handoff): taken for Llama-3.2-1B's shapes, a barrier fewer a layer;
// declined with no attention, where an attention comes right before the last phase (whose
// grid barrier the reset of the count needs), and under LMX_FUSED_HANDOFF=0.
TEST(PersistentPlan, HandsTheAttentionsOutputsOnThroughACount) {
  std::vector<StepPhase> llama;
  for (int layer = 0; layer < 2; ++layer)
    for (const StepPhase& p : {gemv(2048, 3072), attention_phase(), gemv(2048, 2048),
                               gemv(2048, 8192, Epilogue::glu_silu), gemv(8192, 2048)})
      llama.push_back(p);
  llama.push_back(gemv(2048, 128256, Epilogue::logits));
  unsetenv("LMX_FUSED_HANDOFF");
  EXPECT_TRUE(cuda::fused::persistent_attention_handoff(llama));
  EXPECT_EQ(cuda::fused::persistent_barriers(llama, true), int(llama.size()) - 2);
  EXPECT_EQ(cuda::fused::persistent_barriers(llama, false), int(llama.size()));
  EXPECT_FALSE(cuda::fused::persistent_attention_handoff({gemv(2048, 2048), gemv(2048, 1000, Epilogue::logits)}));
  EXPECT_FALSE(cuda::fused::persistent_attention_handoff(
      {gemv(2048, 3072), attention_phase(), gemv(2048, 1000, Epilogue::logits)}));
  setenv("LMX_FUSED_HANDOFF", "0", 1);
  EXPECT_FALSE(cuda::fused::persistent_attention_handoff(llama));
  unsetenv("LMX_FUSED_HANDOFF");
}

}  // namespace persistent
#endif

// Where the device has no fused path (the CPU), the model says so and the generator
// keeps to the plain ops.
TEST(FusedDecode, CpuHasNoFusedPath) {
  const auto model = random_model(kLlama, Device::cpu());
  EXPECT_EQ(model->fused_decoder(), nullptr);
}

}  // namespace
}  // namespace lmx
