// The fused decode step (ops/fused_decoder.h) against the plain ops on the same device:
// fed the same tokens after the same prefill, its logits at each of 64 decode positions
// stay within bf16 tolerance (relative L2 2e-2) of forward(), and its argmax is the argmax
// of those logits. The models are random and shaped to reach the awkward paths: GQA,
// head_dim 128 and 256 apart from hidden/heads, q/k norms, a rotating sliding-window
// cache that wraps many times, logit softcapping, widths that are not multiples of 256.
// Batches of sequences are checked the same way, row by row, in fused_batch_test.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include "core/allocator.h"
#include "core/error.h"
#include "compare.h"
#include "cuda_available.h"
#include "scoped_env.h"
#include "fused_models.h"
#include "runtime/generator.h"

namespace lmx {
namespace {

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
// Llama-3.2-1B's attention in small (4 query heads of 64 per kv head): the persistent
// kernel's form compiled for that shape (persistent_kernel) runs it.
constexpr const char* kLlama1BHeads = R"({"model_type": "llama", "vocab_size": 1000, "hidden_size": 256,
 "intermediate_size": 520, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
 "head_dim": 64, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "tie_word_embeddings": true,
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

// The widths and heads of the next models up, in two layers with a small vocabulary (units
// of the fused down as on 132 SMs): Llama-3.2-3B (24 heads of 128, 8 kv heads, 8 units of
// down a block), Qwen3-4B (32 heads of 128, 8 kv heads; 9.2 units a block, made 11, in
// boxes of 184 rows) and Gemma-3-4B's text model (8 heads of 256, 4 kv heads, a sliding
// layer then a global one with linear RoPE scaling; 9.7 units, made 11). Every input of
// theirs is wider than the 2,048 values held in registers, so the persistent step stages
// them all, Gemma's sandwich norms included. Weights narrowed by sqrt(256 / hidden), as
// for kLlamaWide.
constexpr const char* kLlama3B = R"({"model_type": "llama", "vocab_size": 2048, "hidden_size": 3072,
 "intermediate_size": 8192, "num_hidden_layers": 2, "num_attention_heads": 24, "num_key_value_heads": 8,
 "head_dim": 128, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "tie_word_embeddings": true,
 "rope_theta": 500000.0, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
 "original_max_position_embeddings": 8192, "rope_type": "llama3"}, "torch_dtype": "bfloat16"})";
constexpr const char* kQwen3_4B = R"({"model_type": "qwen3", "vocab_size": 2048, "hidden_size": 2560,
 "intermediate_size": 9728, "num_hidden_layers": 2, "num_attention_heads": 32, "num_key_value_heads": 8,
 "head_dim": 128, "max_position_embeddings": 4096, "rms_norm_eps": 1e-06, "tie_word_embeddings": true,
 "rope_theta": 1000000, "torch_dtype": "bfloat16"})";
constexpr const char* kGemma3_4B = R"({"model_type": "gemma3_text", "vocab_size": 2048, "hidden_size": 2560,
 "intermediate_size": 10240, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4,
 "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 4096,
 "rms_norm_eps": 1e-06, "tie_word_embeddings": true, "rope_theta": 1000000, "rope_local_base_freq": 10000,
 "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "query_pre_attn_scalar": 256, "sliding_window": 16,
 "sliding_window_pattern": 2, "torch_dtype": "bfloat16"})";

// The prompt of the chained-step cases. prefill_all_but_last runs all of it but the last
// token through the plain forward into `cache` and returns that token's position: the
// first step's input.
const std::vector<int32_t> kChainPrompt{3, 14, 15, 92, 65, 35, 89, 79};
int64_t prefill_all_but_last(const models::CausalLM& model, KVCache& cache, const std::vector<int32_t>& prompt) {
  const int64_t n = int64_t(prompt.size()) - 1;
  (void)model.forward(
      to_device(from_vector(std::vector<int32_t>(prompt.begin(), prompt.end() - 1), {1, n}), model.device()),
      cache.layers());
  return n;
}

using test::have_cuda;
using test::kGemma3;
using test::kLlama;
using test::random_model;
using test::relative_l2;

struct FusedCase {
  const char* name;
  const char* config;
  bool rotate;      // rotating caches on sliding-window layers
  bool persistent;  // the one-kernel step, or a kernel per phase (LMX_FUSED_PERSISTENT=0)
  float spread = 0.05f;  // random_model's
};

// Chooses the fused step's way of running for the decoders made while it lives.
class PathChoice : test::ScopedEnv {
 public:
  explicit PathChoice(bool persistent) : ScopedEnv("LMX_FUSED_PERSISTENT", persistent ? "1" : "0") {}
};

class FusedDecodeTest : public ::testing::TestWithParam<FusedCase> {};

// Fed the same tokens, the fused step's logits at each of 64 decode positions are within
// bf16 tolerance of the plain path's. The fused step's cache starts with `capacity` slots
// (the plain one with 8; both grow as needed). Both prefill `prompt_len` tokens first.
void expect_logits_match_plain(const FusedCase& c, int64_t capacity, Device gpu = Device::cuda(0),
                               bool deterministic = false, int64_t prompt_len = 20) {
  const PathChoice path(c.persistent);
  const auto model = random_model(c.config, gpu, c.spread);
  model->set_deterministic(deterministic);
  const auto fused = model->fused_decoder();
  ASSERT_NE(fused, nullptr) << "CUDA has a fused path for bf16 " << c.name;

  const int64_t steps = 64, vocab = model->spec().vocab_size;
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
  auto run = [&](bool chained) {
    const auto fused = model->fused_decoder();
    KVCache cache(*model, GetParam().rotate, 64);
    const int64_t n = prefill_all_but_last(*model, cache, kChainPrompt);
    std::vector<int32_t> out;
    int32_t tok = kChainPrompt.back();
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
  const std::vector<int32_t>& prompt = kChainPrompt;
  for (const float temperature : {0.0f, 1.0f}) {
    SamplingOptions so;
    so.temperature = temperature, so.top_p = 0.9f, so.seed = 9;
    so.repetition_penalty = 1.3f, so.presence_penalty = 0.2f, so.frequency_penalty = 0.1f;
    so.logit_bias = {{5, 1.5f}, {14, -2.0f}, {5, 0.25f}};
    Sampler sampler(so);
    const std::optional<fast::SampleFilter> filter = sampler.filter();
    const auto fused = model->fused_decoder();
    KVCache cache(*model, GetParam().rotate, 64);
    const int64_t n = prefill_all_but_last(*model, cache, prompt);
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

// The logits of 64 fused steps over the same tokens, from a fresh decoder and cache.
std::vector<std::vector<float>> fused_logits(const models::CausalLM& model, const std::vector<int32_t>& ids,
                                             int64_t prompt_len, bool rotate) {
  const auto fused = model.fused_decoder();
  KVCache cache(model, rotate, 8);
  (void)model.forward(to_device(from_vector(std::vector<int32_t>(ids.begin(), ids.begin() + prompt_len),
                                            {1, prompt_len}),
                                model.device()),
                      cache.layers());
  std::vector<std::vector<float>> out;
  for (int64_t t = prompt_len; t < int64_t(ids.size()); ++t) {
    fused->set_input(ids[size_t(t)], t);
    fused->step(cache.fused_views());
    cache.commit_one();
    out.push_back(to_floats(fused->logits()));
  }
  return out;
}

// A deterministic model's fused step (CausalLM::set_deterministic: on CUDA, the
// persistent step without its fused down's f32 atomics) gives the same bits on every run,
// and stays within bf16 tolerance of the plain path. How many positions of the default
// step differ between two runs is printed, not checked: that is up to the blocks' timing.
TEST_P(FusedDecodeTest, DeterministicStepsRepeatToTheBit) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  const FusedCase& c = GetParam();
  expect_logits_match_plain(c, 8, Device::cuda(0), /*deterministic=*/true);
  const PathChoice path(c.persistent);
  const auto model = random_model(c.config, Device::cuda(0), c.spread);
  const int64_t prompt_len = 20, vocab = model->spec().vocab_size;
  const std::vector<int32_t> ids =
      to_vector<int32_t>(astype(random_uniform({prompt_len + 64}, 8, 0, float(vocab) - 1, Dtype::f32), Dtype::i32));
  int default_differs = 0;
  for (const bool deterministic : {true, false}) {
    model->set_deterministic(deterministic);
    const auto first = fused_logits(*model, ids, prompt_len, c.rotate);
    for (int run = 0; run < 3; ++run) {
      const auto again = fused_logits(*model, ids, prompt_len, c.rotate);
      for (size_t t = 0; t < first.size(); ++t) {
        if (deterministic)
          ASSERT_EQ(again[t], first[t]) << c.name << ": run " << run + 2 << " differs at step " << t;
        else
          default_differs += again[t] != first[t];
      }
    }
  }
  std::printf("[ info ] %s: default step, positions differing from the first run in 3 more runs of 64: %d\n",
              c.name, default_differs);
}

INSTANTIATE_TEST_SUITE_P(
    Families, FusedDecodeTest,
    ::testing::Values(FusedCase{"llama", kLlama, false, true},
                      FusedCase{"qwen3", kQwen3, false, true},
                      FusedCase{"llama_wide", kLlamaWide, false, true, kLlamaWideSpread},
                      FusedCase{"llama_wide_per_phase", kLlamaWide, false, false, kLlamaWideSpread},
                      FusedCase{"llama_wide_heads", kLlamaWideHeads, false, true},
                      FusedCase{"llama_wide_heads_per_phase", kLlamaWideHeads, false, false},
                      FusedCase{"llama_1b_heads", kLlama1BHeads, false, true},
                      FusedCase{"llama_small_vocab", kLlamaSmallVocab, false, true},
                      FusedCase{"llama_wide_mlp", kLlamaWideMlp, false, true, 0.0126f},
                      FusedCase{"qwen3_wide_mlp", kQwen3WideMlp, false, true, 0.0264f},
                      FusedCase{"gemma3_rotating", kGemma3, true, true},
                      FusedCase{"gemma3_contiguous", kGemma3, false, true},
                      FusedCase{"llama_per_phase", kLlama, false, false},
                      FusedCase{"qwen3_per_phase", kQwen3, false, false},
                      FusedCase{"gemma3_rotating_per_phase", kGemma3, true, false},
                      FusedCase{"llama_3b_shapes", kLlama3B, false, true, 0.0144f},
                      FusedCase{"qwen3_4b_shapes", kQwen3_4B, false, true, 0.0158f},
                      FusedCase{"gemma3_4b_shapes", kGemma3_4B, true, true, 0.0158f},
                      FusedCase{"gemma3_4b_shapes_per_phase", kGemma3_4B, true, false, 0.0158f}),
    [](const auto& info) { return std::string(info.param.name); });

// A cache with more 32-key chunks than the grid has blocks (Llama's 2 kv heads x 128
// chunks of 4,096 slots): the persistent step lengthens its chunks so that its attention
// runs at most a task per block (persistent_attention_split; 64 keys on a 132-SM GPU).
// Gemma 3's one kv head takes 32-key chunks and the merge in the O projection's input.
// Qwen3's 2 kv heads of 128 at 8,192 slots take 128-key chunks, whose 68 KiB of scratch
// a task cost the ring a slot (past 48 KiB), and the scores a lane a pair. At 16,384 slots
// 144-key chunks in 80 KiB would take two rounds; the scratch grows to 133 KiB (256-key
// chunks) and leaves the ring two slots.
TEST(FusedDecodeLongCache, PersistentLogitsMatchThePlainPath) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  expect_logits_match_plain(FusedCase{"llama_long_cache", kLlama, false, true}, 4096);
  expect_logits_match_plain(FusedCase{"qwen3_long_cache", kQwen3, false, true}, 8192);
  expect_logits_match_plain(FusedCase{"qwen3_wide_scratch", kQwen3, false, true}, 16384);
  expect_logits_match_plain(FusedCase{"llama_wide_heads_long_cache", kLlamaWideHeads, false, true},
                            4096);
  expect_logits_match_plain(FusedCase{"gemma3_long_cache", kGemma3, false, true}, 4096);
}

// Past 128 visible positions the 16-key chunks of these models' attention outnumber the 8
// that a trip of either merge loads: up to 17 at 200 + 64 positions, three trips, each
// rescaling what the trips before summed. Qwen3's 2 kv heads merge in the last block of
// each (count_and_merge). Gemma 3's one kv head, on its global layer (its sliding-window
// layers see 16 positions), sums its chunks against one reference by default
// (summed_chunks); with LMX_FUSED_SUMS=0 every block's O input merges them (merge_input),
// and so it does where a headroom no score can keep makes every chunk raise the sums' flag
// and add nothing to them.
TEST(FusedDecodeLongPrompt, SumsAndMergesOfSeveralTripsMatchThePlainPath) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  const Device gpu = Device::cuda(0);
  struct Setting {
    const char* name;  // null: the defaults
    const char* value;
  };
  for (const Setting& s : {Setting{nullptr, nullptr}, Setting{"LMX_FUSED_SUMS", "0"},
                           Setting{"LMX_FUSED_SUMS_HEADROOM", "-1e30"}}) {
    SCOPED_TRACE(s.name ? s.name : "the sums");
    const std::optional<test::ScopedEnv> set =
        s.name ? std::optional<test::ScopedEnv>(std::in_place, s.name, s.value) : std::nullopt;
    expect_logits_match_plain(FusedCase{"qwen3_long_prompt", kQwen3, false, true}, 8, gpu, false, 200);
    expect_logits_match_plain(FusedCase{"gemma3_long_prompt", kGemma3, false, true}, 8, gpu, false, 200);
  }
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
  {
    const test::ScopedEnv unset("LMX_FUSED_PERSISTENT", nullptr);
    EXPECT_EQ(path(), "persistent");
  }
  const PathChoice off(false);
  EXPECT_EQ(path(), "graph");
}

// ---- the LM head's filter (set_logits_needed; head_filter.cuh) ----

// `n` steps chained on the device after the same prompt, the decoder told that the
// `needed` largest logits are read (0: every one), each step's token its argmax or, with
// `filter`, a draw with its own random word (the same words every call); `filtered`:
// whether its last step then kept no logits (the filtered head ran). With draws the model
// must be deterministic (set_deterministic): else the fused down's f32 sums differ from
// run to run in the last bits, and now and then a draw with them.
std::vector<int32_t> chained_tokens(const models::CausalLM& model, int needed,
                                    const std::optional<fast::SampleFilter>& filter, int n, bool* filtered) {
  const auto fused = model.fused_decoder();
  fused->set_logits_needed(needed);
  KVCache cache(model, false, 64);
  fused->set_input(kChainPrompt.back(), prefill_all_but_last(model, cache, kChainPrompt));
  for (int i = 0; i < n; ++i) {
    fused->step(cache.fused_views());
    cache.commit_one();
    const uint64_t word = 0x9e3779b97f4a7c15ull * uint64_t(i + 1);
    if (filter) fused->draw(filter, {&word, 1});
  }
  *filtered = false;
  try {
    (void)fused->logits();
  } catch (const Error&) {
    *filtered = true;
  }
  return fused->tokens(n);
}
std::vector<int32_t> greedy_tokens(const models::CausalLM& model, bool argmax_only, int n, bool* filtered) {
  return chained_tokens(model, argmax_only ? 1 : 0, std::nullopt, n, filtered);
}

// The filtered head's tokens are the exact head's, step for step, where it runs (widths
// of whole 16-code runs up to 4,096, no softcap); elsewhere the exact head runs.
TEST(FusedHeadFilter, GreedyTokensAreTheExactHeads) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  const PathChoice path(true);
  struct Case {
    const char* name;
    const char* config;
    float spread;
    bool filters;
  };
  for (const Case& c : {Case{"llama", kLlama, 0.05f, true}, Case{"llama_1b_heads", kLlama1BHeads, 0.05f, true},
                        Case{"llama_wide (staged input)", kLlamaWide, kLlamaWideSpread, true},
                        Case{"llama_small_vocab", kLlamaSmallVocab, 0.05f, true},
                        Case{"qwen3_4b_shapes", kQwen3_4B, 0.0158f, true},
                        Case{"qwen3 (264 wide)", kQwen3, 0.05f, false},
                        Case{"gemma3 (softcap)", kGemma3, 0.05f, false}}) {
    SCOPED_TRACE(c.name);
    const auto model = random_model(c.config, Device::cuda(0), c.spread);
    bool filtered = false, exact_filtered = true;
    const std::vector<int32_t> got = greedy_tokens(*model, true, 64, &filtered);
    EXPECT_EQ(got, greedy_tokens(*model, false, 64, &exact_filtered));
    EXPECT_EQ(filtered, c.filters);
    EXPECT_FALSE(exact_filtered);
  }
}

// Rows that tie or nearly tie at the top. In kLlama's tied head, rows 10 and 500 are six
// times row 7, rows 20 and 600 minus six times it, and rows 700 and 800 copies of 10 and
// 20 with their first weight one bf16 ulp apart (lower, then higher; the other way in the
// second run): one group or the other holds most steps' maxima. The exact head takes 10
// over 500 and 20 over 600 (the lower index), and 700 or 800 over them where that ulp tips
// the product; the filter must pick the same.
TEST(FusedHeadFilter, TiesAndHairsGoAsTheExactHeadSends) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  const PathChoice path(true);
  for (const float side : {-1.0f, 1.0f}) {
    const auto model = random_model(kLlama, Device::cuda(0));
    bool edited = false;
    model->visit("", [&](const std::string& name, Array& w, const Shape& shape, fast::QuantizedMatrix*) {
      if (name != "model.embed_tokens.weight") return;
      std::vector<float> e = to_floats(w);
      const int64_t h = shape[1];
      auto row = [&](int64_t r) { return e.begin() + r * h; };
      for (int64_t i = 0; i < h; ++i) {
        const float base = row(7)[i] == 0 ? 0.01f : row(7)[i];
        row(10)[i] = row(500)[i] = row(700)[i] = 6 * base;
        row(20)[i] = row(600)[i] = row(800)[i] = -6 * base;
      }
      // 0.25 and the bf16 below (2^-10 away) or above (2^-9) it; -0.25 and the bf16 above or below it.
      row(10)[0] = row(500)[0] = 0.25f, row(700)[0] = side < 0 ? 0.25f - 0x1p-10f : 0.25f + 0x1p-9f;
      row(20)[0] = row(600)[0] = -0.25f, row(800)[0] = side < 0 ? -0.25f + 0x1p-10f : -0.25f - 0x1p-9f;
      w = to_device(astype(from_vector(e, shape), Dtype::bf16), w.device());
      edited = true;
    });
    ASSERT_TRUE(edited);
    bool filtered = false, exact_filtered = true;
    const std::vector<int32_t> got = greedy_tokens(*model, true, 64, &filtered);
    const std::vector<int32_t> want = greedy_tokens(*model, false, 64, &exact_filtered);
    EXPECT_TRUE(filtered);
    EXPECT_EQ(got, want);
    int ties = 0, hairs = 0;
    for (const int32_t t : want) {
      ties += t == 10 || t == 20;
      hairs += t == 700 || t == 800;
      EXPECT_TRUE(t != 500 && t != 600) << "a tie goes to the lower index";
    }
    std::printf("[ info ] head filter, run %d: of 64 steps, %d took a tied row and %d a row an ulp off it\n",
                side < 0 ? 1 : 2, ties, hairs);
    EXPECT_GT(ties + hairs, 0) << "the edited rows never held the maximum: the test tested nothing";
  }
}

// A vocabulary large enough that every block of the persistent step holds more rows of
// the head than a draw's top-k keeps (248 a block on 132 SMs), so that the sampled head's
// threshold (top_threshold) leaves rows out.
constexpr const char* kLlamaLargeVocab = R"({"model_type": "llama", "vocab_size": 32768, "hidden_size": 256,
 "intermediate_size": 520, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
 "head_dim": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "tie_word_embeddings": true,
 "rope_theta": 500000.0, "torch_dtype": "bfloat16"})";

// A draw whose top-k keeps at most the `top` largest logits draws the exact head's token
// where the filtered head kept only those exact (and the others below them): the same tokens
// survive, with the same logits, at every temperature, with top-p and min-p after the
// top-k, and with a top-k below the `top` planned. Where every block holds fewer rows than
// `top` (the 1,000-token vocabulary), every row is recomputed; with a softcap, the exact
// head runs.
TEST(FusedHeadFilter, TopKDrawsAreTheExactHeads) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  const PathChoice path(true);
  struct Case {
    const char* name;
    const char* config;
    int top;
    fast::SampleFilter filter;
    bool filters;
  };
  const fast::SampleFilter k20{0.6f, 20, 0.95f, 0.0f};
  for (const Case& c : {Case{"large vocab, top-k 20", kLlamaLargeVocab, 20, k20, true},
                        Case{"large vocab, top-k 2 at temperature 2", kLlamaLargeVocab, 2, {2.0f, 2, 1.0f, 0.0f}, true},
                        Case{"large vocab, top-k 64 with min-p", kLlamaLargeVocab, 64, {1.0f, 64, 1.0f, 0.05f}, true},
                        Case{"large vocab, top-k 256 planned, 100 drawn", kLlamaLargeVocab, 256,
                             {1.5f, 100, 1.0f, 0.0f}, true},
                        Case{"small vocab (every row recomputed)", kLlama, 20, k20, true},
                        Case{"gemma3 (softcap)", kGemma3, 20, k20, false}}) {
    SCOPED_TRACE(c.name);
    const auto model = random_model(c.config, Device::cuda(0));
    model->set_deterministic(true);
    bool filtered = false, exact_filtered = true;
    const std::vector<int32_t> got = chained_tokens(*model, c.top, c.filter, 64, &filtered);
    const std::vector<int32_t> want = chained_tokens(*model, 0, c.filter, 64, &exact_filtered);
    EXPECT_EQ(got, want);
    EXPECT_EQ(filtered, c.filters);
    EXPECT_FALSE(exact_filtered);
    if (!c.filters) continue;  // (Gemma 3's softcapped test model draws one token nearly always)
    std::set<int32_t> distinct(want.begin(), want.end());
    EXPECT_GT(distinct.size(), 8u) << "the draws barely varied: the test tested little";
  }
}

// After a step that kept only its 20 largest logits, a draw that would keep more, a draw
// with no top-k and a greedy draw are refused, and so is reading the logits.
TEST(FusedHeadFilter, DrawsThatNeedMoreLogitsAreRefused) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  const PathChoice path(true);
  const auto model = random_model(kLlamaLargeVocab, Device::cuda(0));
  const auto fused = model->fused_decoder();
  fused->set_logits_needed(20);
  KVCache cache(*model, false, 64);
  fused->set_input(kChainPrompt.back(), prefill_all_but_last(*model, cache, kChainPrompt));
  fused->step(cache.fused_views());
  const uint64_t word = 7;
  using Filter = std::optional<fast::SampleFilter>;
  for (const Filter& f : {Filter{{1.0f, 21, 1.0f, 0.0f}}, Filter{{1.0f, 0, 0.9f, 0.0f}}, Filter{}})
    EXPECT_THROW(fused->draw(f, {&word, f ? 1u : 0u}), Error);
  EXPECT_THROW((void)fused->logits(), Error);
  EXPECT_NO_THROW(fused->draw(fast::SampleFilter{1.0f, 20, 1.0f, 0.0f}, {&word, 1}));
  EXPECT_EQ(fused->tokens(1).size(), 1u);
}

// Greedy tokens of one generation through TokenGenerator, with a cache of `capacity` slots.
std::vector<int32_t> generate_greedy(const models::CausalLM& model, int capacity) {
  KVCache cache(model, false, capacity);
  GenerationLimits limits;
  limits.max_tokens = 40;
  limits.ignore_eos = true;
  TokenGenerator gen(model, {3, 14, 15, 92, 65, 35, 89, 79, 32, 38}, SamplingOptions{}, limits, cache);
  std::vector<int32_t> got;
  while (auto t = gen.next()) got.push_back(*t);
  return got;
}

// A model whose every logit is NaN (its final norm's weights are NaN, as from weights that
// overflowed): no decode step can choose a token, and the argmax keeps its INT_MAX start.
// That id went into the next step's embedding, an illegal address that left the device
// unusable to the process. Now the embedding reads row 0 in its place and the host refuses
// the id: the generation stops with a clear error on either fused path, and the device
// decodes the next model as before.
TEST(FusedDecode, NaNLogitsStopTheGenerationWithAClearError) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  for (const bool persistent : {true, false}) {
    SCOPED_TRACE(persistent ? "persistent step" : "kernel per phase");
    const PathChoice path(persistent);
    const auto model = random_model(kLlama, Device::cuda(0));
    ASSERT_TRUE(test::poison_final_norm(*model));
    std::string error;
    try {
      generate_greedy(*model, 64);
    } catch (const Error& e) {
      error = e.what();
    }
    EXPECT_NE(error.find("no token can be chosen: every logit is NaN"), std::string::npos) << "error: " << error;
    EXPECT_EQ(generate_greedy(*random_model(kLlama, Device::cuda(0)), 64).size(), 40u);
  }
}

// A generator hands its decoder back to the model (recycle_fused_decoder), and the next
// one decodes with it as a fresh decoder would: over the same caches, over caches of
// another length (a new plan), and after a change of weights, which drops it (its
// filtered LM head copies the old head). Deterministic steps, so that tokens compare.
TEST(FusedDecode, RecycledDecodersDecodeAsFreshOnes) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  const auto model = random_model(kLlama, Device::cuda(0));
  model->set_deterministic(true);
  const std::vector<int32_t> first = generate_greedy(*model, 8);
  ASSERT_EQ(first.size(), 40u);
  std::unique_ptr<fast::FusedDecoder> kept = model->fused_decoder();
  const fast::FusedDecoder* address = kept.get();
  model->recycle_fused_decoder(std::move(kept));
  EXPECT_EQ(model->fused_decoder().get(), address) << "the kept decoder is given out again";
  EXPECT_EQ(generate_greedy(*model, 8), first);
  EXPECT_EQ(generate_greedy(*model, 8), first);
  EXPECT_EQ(generate_greedy(*model, 300), first);
  {  // the greedy generator filtered the LM head; the next caller's steps keep every logit
    auto next = model->fused_decoder();
    EXPECT_NO_THROW((void)next->logits().size());  // as set_fused_edits asks, before a step
    KVCache cache(*model, false, 8);
    next->set_input(kChainPrompt.back(), prefill_all_but_last(*model, cache, kChainPrompt));
    next->step(cache.fused_views());
    EXPECT_NO_THROW((void)next->logits());
    model->recycle_fused_decoder(std::move(next));
  }

  // The head's sign flipped through visit: the kept decoder must go with the old weights.
  model->visit("", [](const std::string& name, Array& w, const Shape&, fast::QuantizedMatrix*) {
    if (name == "model.embed_tokens.weight") w = multiply(w, -1.0);
  });
  const std::vector<int32_t> flipped = generate_greedy(*model, 8);
  EXPECT_NE(flipped, first);
  const std::vector<int32_t> fresh = [&] {  // a decoder of its own
    const test::ScopedEnv no_reuse("LMX_FUSED_REUSE", "0");
    return generate_greedy(*model, 8);
  }();
  EXPECT_EQ(flipped, fresh);
}

// A kept decoder holds device memory only to spare work (its buffers, the filtered head's
// copy): clear_cache lets it go, and so does an allocation that would otherwise pass the
// memory limit. The next generation builds a decoder anew and decodes the same tokens.
TEST(FusedDecode, KeptDecodersGoUnderMemoryPressure) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  const auto model = random_model(kLlama, Device::cuda(0));
  model->set_deterministic(true);
  Allocator& a = allocator_for(Device::cuda(0));
  const std::vector<int32_t> first = generate_greedy(*model, 8);
  const size_t kept = a.stats().active;  // the weights and the kept decoder (the cache is freed)
  a.clear_cache();
  const size_t dropped = a.stats().active;
  ASSERT_LT(dropped, kept) << "clear_cache lets the kept decoder go";
  EXPECT_EQ(generate_greedy(*model, 8), first);

  // The decoder is kept again. A request that fits under the limit only once it is gone:
  const size_t decoder = kept - dropped, held = a.stats().active, limit = a.stats().limit;
  ASSERT_EQ(held, kept);
  a.set_memory_limit(held + decoder / 2);
  const size_t bytes = decoder * 3 / 4;
  void* p = nullptr;
  EXPECT_NO_THROW(p = a.allocate(bytes)) << "the kept decoder goes before the allocation fails";
  EXPECT_EQ(a.stats().active, dropped + Allocator::round_size(bytes));
  a.release(p, bytes);
  a.set_memory_limit(limit);
  EXPECT_EQ(generate_greedy(*model, 8), first);
}

// Where a fused down's stages take two boxes (kQwen3WideMlp: 3 units of 8 columns a block on
// 132 SMs, 264 rows: a box of 256, then 8 rows of the next), the persistent step reads them
// from a tiled copy of down that its decoder holds (persistent_tile_down); with
// LMX_FUSED_DOWN_TILES=0, from the tensor map's boxes. Both match the plain path, and the
// copy takes at least down's bytes.
TEST(FusedDecode, TwoBoxDownStagesReadTheTiledCopyOrTheBoxes) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  const FusedCase c{"qwen3_wide_mlp", kQwen3WideMlp, false, true, 0.0264f};
  Allocator& a = allocator_for(Device::cuda(0));
  const auto model = random_model(c.config, Device::cuda(0), c.spread);
  auto held = [&](bool tiles) {  // the device's active bytes while a decoder that has stepped lives
    const std::optional<test::ScopedEnv> boxes =
        tiles ? std::nullopt : std::optional<test::ScopedEnv>(std::in_place, "LMX_FUSED_DOWN_TILES", "0");
    size_t active = 0;
    {
      KVCache cache(*model, false, 8);
      const auto fused = model->fused_decoder();
      fused->set_input(kChainPrompt.back(), prefill_all_but_last(*model, cache, kChainPrompt));
      fused->step(cache.fused_views());
      EXPECT_STREQ(fused->path(), "persistent");
      (void)fused->logits();
      active = a.stats().active;
    }
    expect_logits_match_plain(c, 8);
    return active;
  };
  const size_t boxes = held(false), tiled = held(true);
  EXPECT_GE(tiled, boxes + 2 * 264 * 2304 * sizeof(uint16_t)) << "two layers' down, tiled";
}

// However far past the workers' phase the copies may run (persistent_lookahead: none, the
// default half ring, or the whole ring), the persistent step matches the plain path: the
// copying warp waits only on what the workers reach without it.
TEST(FusedDecode, CopiesPastTheWorkersPhaseChangeNoResult) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  for (const char* lookahead : {"0", "1", "6"}) {
    SCOPED_TRACE(std::string("LMX_FUSED_LOOKAHEAD=") + lookahead);
    const test::ScopedEnv set("LMX_FUSED_LOOKAHEAD", lookahead);
    for (const FusedCase& c : {FusedCase{"llama", kLlama, false, true}, FusedCase{"gemma3", kGemma3, true, true}})
      expect_logits_match_plain(c, 96);
  }
}

// Where the device has no fused path (the CPU), the model says so and the generator
// keeps to the plain ops.
TEST(FusedDecode, CpuHasNoFusedPath) {
  const auto model = random_model(kLlama, Device::cpu());
  EXPECT_EQ(model->fused_decoder(), nullptr);
}

}  // namespace
}  // namespace lmx
