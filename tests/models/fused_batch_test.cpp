// The fused decode step over batches of sequences (ops/fused_decoder.h, batch_generate's
// path for batches: tensor-core GEMVs up to 8 rows, cuBLAS GEMMs and the streamed attention
// past them) against the plain ops on the same device, row by row: each row's logits within
// bf16 tolerance of forward()'s, with each row's own left padding, and chained steps equal
// to single ones.
// The single-sequence cases are fused_decode_test.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "compare.h"
#include "core/allocator.h"
#include "cuda_available.h"
#include "scoped_env.h"
#include "fused_models.h"

namespace lmx {
namespace {

using test::have_cuda;
using test::kGemma3;
using test::kLlama;
using test::random_model;
using test::relative_l2;

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

// A hidden size that is not a multiple of 32, on the wide step (past 8 sequences each
// product is a GEMM, which takes such widths; the batched GEMVs decline them).
constexpr const char* kLlamaWide1000 = R"({"model_type": "llama", "vocab_size": 1000, "hidden_size": 1000,
 "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
 "head_dim": 64, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "tie_word_embeddings": true,
 "rope_theta": 500000.0, "torch_dtype": "bfloat16"})";

// Hidden size 2,048 with random weights: bf16 activations round so much that the plain
// ops' logits stray up to 2e-2 from an f32 forward of the same weights, and the fused
// step's (which keeps f32 between more of its ops) up to 2.6e-2 from the plain ops'. Its
// check is against the f32 forward (WideModelStaysNearItsF32Forward).
constexpr const char* kLlamaWide2048 = R"({"model_type": "llama", "vocab_size": 1000, "hidden_size": 2048,
 "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 16, "num_key_value_heads": 4,
 "head_dim": 128, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "tie_word_embeddings": true,
 "rope_theta": 500000.0, "torch_dtype": "bfloat16"})";

// Eight kv heads, as Llama-3.2-1B and Qwen3-0.6B have: at 8 sequences, 64 blocks of the
// streamed attention beside the tensor-core GEMVs (stream_from).
constexpr const char* kQwen3KvHeads8 = R"({"model_type": "qwen3", "vocab_size": 1203, "hidden_size": 288,
 "intermediate_size": 640, "num_hidden_layers": 2, "num_attention_heads": 16, "num_key_value_heads": 8,
 "head_dim": 64, "max_position_embeddings": 4096, "rms_norm_eps": 1e-06, "tie_word_embeddings": false,
 "rope_theta": 1000000, "torch_dtype": "bfloat16"})";

struct BatchCase {
  const char* name;
  const char* config;
  int rows;
  int64_t slots = 8;  // the caches' first size (they grow); a long one takes longer attention chunks
  bool packed = true;  // q, k and v in one allocation, as loaded (one GEMM on the wide step)
  int64_t prompt = 12;  // the padded prompt's length
  // LMX_FUSED_WIDE_FROM while the decoder is made (0: the step's own choice), and the path
  // its steps must take (null: not checked).
  int wide_from = 0;
  const char* path = nullptr;
};

// The case's decoder, made under its LMX_FUSED_WIDE_FROM.
std::unique_ptr<fast::FusedDecoder> batch_decoder(const models::CausalLM& model, const BatchCase& c, int rows) {
  if (c.wide_from == 0) return model.fused_decoder(rows);
  const test::ScopedEnv wide("LMX_FUSED_WIDE_FROM", std::to_string(c.wide_from).c_str());
  return model.fused_decoder(rows);
}

// After a step: the path the case names, where it names one.
void expect_path(const fast::FusedDecoder& fused, const BatchCase& c) {
  if (c.path) {
    EXPECT_STREQ(fused.path(), c.path) << c.name << ", " << c.rows << " rows";
  }
}

class FusedBatchTest : public ::testing::TestWithParam<BatchCase> {};

// The batch's prompts are left-padded to one length, as batch_generate pads them: the plain
// path masks the padding (key_valid) and starts each row's positions after it, the fused
// step is told each row's padding. Fed the same tokens, each row's logits stay within bf16
// tolerance of forward()'s for 40 positions (past Gemma 3's 16-key window), and each
// row's argmax is that of its fused logits.
TEST_P(FusedBatchTest, EachRowsLogitsMatchThePlainPath) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  const Device gpu = Device::cuda(0);
  const auto model = random_model(GetParam().config, gpu, 0.05f, GetParam().packed);
  const int64_t rows = GetParam().rows, steps = 40, vocab = model->spec().vocab_size;
  const auto fused = batch_decoder(*model, GetParam(), int(rows));
  ASSERT_NE(fused, nullptr) << "CUDA steps " << rows << " sequences of bf16 " << GetParam().name;
  ASSERT_EQ(fused->rows(), rows);

  std::vector<int64_t> pads;  // 0, 5, 10, 4, ...; a lone sequence 4 (the single-sequence step)
  for (int64_t r = 0; r < rows; ++r) pads.push_back(rows == 1 ? 4 : (r * 5) % 11);
  const int64_t l = GetParam().prompt;  // the padded prompt length
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
  expect_path(*fused, GetParam());
  std::printf("[ info ] %s, %lld rows: worst relative L2 over %lld positions %.2e\n", GetParam().name,
              (long long)rows, (long long)steps, worst);
}

// Greedy steps chained on the device give, row by row, the tokens of single steps fed back
// from the host; the pipelined reads (queue_token, wait_tokens) return them in order.
TEST_P(FusedBatchTest, ChainedStepsEqualSingleStepsAndPipelinedReads) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  const Device gpu = Device::cuda(0);
  const auto model = random_model(GetParam().config, gpu, 0.05f, GetParam().packed);
  const int64_t rows = GetParam().rows, n = 7;
  std::vector<int32_t> prompt;
  for (int64_t i = 0; i < rows * n; ++i) prompt.push_back(int32_t((i * 37 + 5) % 997));
  auto run = [&](int mode) {  // 0: chained, read at the end; 1: single steps; 2: chained, pipelined reads
    const auto fused = batch_decoder(*model, GetParam(), int(rows));
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
    expect_path(*fused, GetParam());
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
                                           // Gemma 3's sandwich norms take the GEMMs from 2 rows
                                           // (wide_step); its GEMVs are kept for LMX_FUSED_WIDE_FROM
                                           BatchCase{"gemma3", kGemma3, 4, 8, true, 12, 0, "gemm-graph"},
                                           BatchCase{"gemma3_gemv", kGemma3, 4, 8, true, 12, 9, "graph"},
                                           BatchCase{"gemma3_gemv", kGemma3, 8, 8, true, 12, 9, "graph"},
                                           // 1,024 slots: 64-key chunks for 8 rows of 2 kv heads,
                                           // 48 for 5 (fit_attention_split, on 132 SMs)
                                           BatchCase{"llama_long_cache", kLlamaBatch, 8, 1024},
                                           BatchCase{"qwen3_long_cache", kQwen3Batch, 5, 1024},
                                           // 8 rows x 8 kv heads: the streamed attention, GEMVs
                                           // on tensor cores; 4 rows keep the chunks
                                           BatchCase{"qwen3_kv8", kQwen3KvHeads8, 8},
                                           BatchCase{"qwen3_kv8_long_prompt", kQwen3KvHeads8, 8, 8, true, 300},
                                           BatchCase{"qwen3_kv8", kQwen3KvHeads8, 4},
                                           // past 8 rows: each product a GEMM (launch_gemm_rows)
                                           BatchCase{"llama", kLlamaBatch, 9}, BatchCase{"qwen3", kQwen3Batch, 16},
                                           BatchCase{"qwen3_unpacked", kQwen3Batch, 16, 8, false},
                                           BatchCase{"gemma3", kGemma3, 12},
                                           BatchCase{"qwen3_long_cache", kQwen3Batch, 24, 1024},
                                           BatchCase{"gemma3_long_cache", kGemma3, 9, 1024},
                                           BatchCase{"llama_wide_1000", kLlamaWide1000, 12},
                                           // 64 sequences x kv heads and more: the streamed attention
                                           // (stream_attention.cu), 128-thread blocks past 264
                                           BatchCase{"llama", kLlama, 33},
                                           BatchCase{"qwen3_long_cache", kQwen3Batch, 32, 1024},
                                           BatchCase{"gemma3", kGemma3, 64}, BatchCase{"qwen3", kQwen3Batch, 140},
                                           // More kv heads' blocks than a wave of full ones on the H200:
                                           // the streamed attention on the tensor cores (128- and
                                           // 64-wide heads), past its ring's stages.
                                           BatchCase{"qwen3_long_prompt", kQwen3Batch, 140, 8, true, 300},
                                           BatchCase{"llama_wide_1000_long_prompt", kLlamaWide1000, 140, 8, true, 200}),
                         [](const auto& info) {
                           return std::string(info.param.name) + "_" + std::to_string(info.param.rows) + "_rows";
                         });

// Each layer's q, k and v weights: address and bytes, in that order.
std::vector<std::pair<const std::byte*, size_t>> attention_inputs(models::CausalLM& model) {
  std::vector<std::pair<const std::byte*, size_t>> qkv;
  model.visit("", [&](const std::string& name, Array& w, const Shape&, fast::QuantizedMatrix*) {
    if (name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight") || name.ends_with("v_proj.weight"))
      qkv.emplace_back(static_cast<const std::byte*>(w.raw()), w.nbytes());
  });
  return qkv;
}

// Whether every layer's k follows its q in memory, and its v its k.
bool side_by_side(const std::vector<std::pair<const std::byte*, size_t>>& qkv) {
  for (size_t i = 0; i + 2 < qkv.size(); i += 3)
    if (qkv[i + 1].first != qkv[i].first + qkv[i].second || qkv[i + 2].first != qkv[i + 1].first + qkv[i + 1].second)
      return false;
  return !qkv.empty();
}

// The plain path's logits of a fixed two-sequence prompt.
std::vector<float> plain_logits(const models::CausalLM& model, Device gpu) {
  const std::vector<int32_t> ids = {5, 17, 300, 42, 999, 7, 8, 1200};
  KVCache cache(model.num_layers());
  return to_floats(model.forward(to_device(from_vector(ids, {2, 4}), gpu), cache.layers()));
}

// The loader's packing (CausalLM::pack_attention_inputs) moves q, k and v into one
// allocation, one after the other, and changes no value: the plain path's logits keep
// their bits.
TEST(FusedBatch, PackedAttentionInputsLieSideBySideAndKeepTheBits) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the packing applies to GPU weights";
  const Device gpu = Device::cuda(0);
  const auto packed = random_model(kQwen3Batch, gpu);
  const auto apart = random_model(kQwen3Batch, gpu, 0.05f, false);
  const auto qkv = attention_inputs(*packed);
  ASSERT_EQ(qkv.size(), size_t(3 * packed->num_layers()));
  EXPECT_TRUE(side_by_side(qkv));
  EXPECT_FALSE(side_by_side(attention_inputs(*apart)));
  EXPECT_EQ(plain_logits(*packed, gpu), plain_logits(*apart, gpu));
  packed->pack_attention_inputs();  // a second call finds them packed and moves nothing
  EXPECT_EQ(attention_inputs(*packed), qkv);
}

// Where a layer's packed copy does not fit under the device's memory limit, the packing
// leaves the weights where they are and the model works as before; once it fits, it packs.
TEST(FusedBatch, PackingThatDoesNotFitLeavesTheWeightsApart) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the packing applies to GPU weights";
  const Device gpu = Device::cuda(0);
  const auto model = random_model(kQwen3Batch, gpu, 0.05f, false);
  const auto before = attention_inputs(*model);
  const std::vector<float> want = plain_logits(*model, gpu);
  Allocator& a = allocator_for(gpu);
  const size_t limit = a.stats().limit;
  a.set_memory_limit(a.stats().active + before[0].second);  // q alone fits, q, k and v do not
  EXPECT_NO_THROW(model->pack_attention_inputs());
  a.set_memory_limit(limit);
  EXPECT_EQ(attention_inputs(*model), before);
  EXPECT_EQ(plain_logits(*model, gpu), want);
  model->pack_attention_inputs();
  EXPECT_TRUE(side_by_side(attention_inputs(*model)));
  EXPECT_EQ(plain_logits(*model, gpu), want);
}

// What the batched step cannot take, CUDA declines (the caller keeps to the plain ops):
// up to 8 sequences, widths that are not multiples of 32 (past 8, each product is a GEMM,
// which takes them).
TEST(FusedBatch, DeclinesWhatItCannotStep) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  const Device gpu = Device::cuda(0);
  EXPECT_EQ(random_model(kLlama, gpu)->fused_decoder(2), nullptr);  // intermediate_size 520
  EXPECT_NE(random_model(kLlama, gpu)->fused_decoder(9), nullptr);
  EXPECT_NE(random_model(kLlama, gpu)->fused_decoder(1), nullptr);
  EXPECT_EQ(random_model(kLlamaBatch, Device::cpu())->fused_decoder(4), nullptr);
}

// Every logit NaN (the final norm's weights NaN): each batched path's argmax chooses no
// token, reading the step's tokens refuses with the clear error, and the device then steps
// a healthy model as before.
TEST(FusedBatch, NaNLogitsAreRefusedOnEveryBatchedPath) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  const Device gpu = Device::cuda(0);
  // Tensor-core GEMVs; GEMMs; GEMMs with the streamed attention (33 rows × 2 kv heads).
  for (const int rows : {3, 16, 33}) {
    for (const bool poisoned : {true, false}) {
      SCOPED_TRACE(std::to_string(rows) + (poisoned ? " rows, NaN logits" : " rows, a healthy model"));
      const auto model = random_model(kLlamaBatch, gpu);
      if (poisoned) {
        ASSERT_TRUE(test::poison_final_norm(*model));
      }
      const auto fused = model->fused_decoder(rows);
      ASSERT_NE(fused, nullptr);
      const int64_t n = 4;
      std::vector<int32_t> prompt;
      for (int64_t i = 0; i < rows * n; ++i) prompt.push_back(int32_t((i * 37 + 5) % 997));
      KVCache cache(model->num_layers(), 64);
      (void)model->forward(to_device(from_vector(prompt, {int64_t(rows), n}), gpu), cache.layers());
      fused->set_inputs(std::vector<int32_t>(size_t(rows), 3), std::vector<int64_t>(size_t(rows), n), {});
      fused->step(cache.fused_views());
      cache.commit_one();
      if (!poisoned) {
        for (const int32_t t : fused->tokens(1)) EXPECT_TRUE(t >= 0 && t < 1000) << t;
        continue;
      }
      try {
        (void)fused->tokens(1);
        ADD_FAILURE() << "tokens came back from NaN logits";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("no token can be chosen: every logit is NaN"), std::string::npos)
            << e.what();
      }
    }
  }
}

// The same random weights in f32 on the CPU are the reference: over 40 positions, the
// fused step's logits stay within 2e-2 of that forward's, one sequence (the persistent
// step) and 16 (the GEMMs) alike. (Measured on the H200: 1.3e-2 and 1.0e-2; the plain
// bf16 path 2.0e-2 and 1.9e-2, as the CPU's bf16 path.)
TEST(FusedBatch, WideModelStaysNearItsF32Forward) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused decode step runs on CUDA only";
  const Device gpu = Device::cuda(0);
  const auto reference = random_model(kLlamaWide2048, Device::cpu());
  reference->visit("", [](const std::string&, Array& w, const Shape&, fast::QuantizedMatrix*) {
    w = astype(w, Dtype::f32);
  });
  const auto model = random_model(kLlamaWide2048, gpu);
  for (const int64_t rows : {1, 16}) {
    const int64_t l = 12, steps = 40;
    std::vector<int32_t> ids;
    for (int64_t i = 0; i < rows * (l + steps); ++i) ids.push_back(int32_t((i * 37 + 5) % 997));
    KVCache ref_cache(model->num_layers(), 64), fast_cache(model->num_layers(), 64);
    const std::vector<int32_t> prompt(ids.begin(), ids.begin() + rows * l);
    (void)reference->forward(from_vector(prompt, {rows, l}), ref_cache.layers());
    (void)model->forward(to_device(from_vector(prompt, {rows, l}), gpu), fast_cache.layers());
    const auto fused = model->fused_decoder(int(rows));
    ASSERT_NE(fused, nullptr);
    double worst = 0;
    for (int64_t t = 0; t < steps; ++t) {
      const std::vector<int32_t> toks(ids.begin() + rows * (l + t), ids.begin() + rows * (l + t + 1));
      const std::vector<float> want = to_floats(reference->forward(from_vector(toks, {rows, 1}), ref_cache.layers()));
      fused->set_inputs(toks, std::vector<int64_t>(size_t(rows), l + t), {});
      fused->step(fast_cache.fused_views());
      fast_cache.commit_one();
      const std::vector<float> got = to_floats(fused->logits());
      ASSERT_EQ(got.size(), want.size());
      const double err = relative_l2(got, want);
      worst = std::max(worst, err);
      EXPECT_LE(err, 2e-2) << rows << " rows, position " << l + t;
    }
    std::printf("[ info ] hidden 2,048, %lld rows: worst relative L2 to the f32 forward over %lld positions %.2e\n",
                (long long)rows, (long long)steps, worst);
  }
}

}  // namespace
}  // namespace lmx
