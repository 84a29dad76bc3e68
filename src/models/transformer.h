// The decoder-only transformer shared by every family. A family's file turns its
// config.json into a DecoderSpec; this file owns the forward pass that all of them run.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "nn/layers.h"
#include "ops/fused_decoder.h"

namespace lmx::models {

struct DecoderSpec {
  std::string model_type;
  int64_t vocab_size = 0, hidden_size = 0, intermediate_size = 0;
  int64_t max_position_embeddings = 0;
  std::vector<int32_t> eos_token_ids;  // generation_config.json, else config.json
  float rms_norm_eps = 1e-6f;
  fast::RmsNormStyle norm_style = fast::RmsNormStyle::llama;
  // Gemma 3: extra norms after attention and around the MLP ("sandwich" norms).
  bool sandwich_norms = false;
  nn::Activation activation = nn::Activation::silu;
  bool mlp_bias = false;
  bool tie_word_embeddings = false;
  // Gemma 3 multiplies embeddings by sqrt(hidden), rounded to the activation dtype.
  bool scale_embeddings = false;
  float final_logit_softcapping = 0;  // 0 = none
  std::vector<nn::AttentionSpec> layers;  // one per decoder layer
};

class DecoderLayer : public nn::Module {
 public:
  DecoderLayer(const DecoderSpec& spec, const nn::AttentionSpec& attn);
  // x [B, L, H] and x_normed = input_layernorm(x) -> the layer's output [B, L, H] and
  // that output under `next` (the next layer's input norm, or the final norm). Each
  // residual add runs fused with the norm that reads its result. With `at` ([R] int32
  // indices into the B*L positions) only those positions leave the layer: [R, H] each.
  fast::AddNorm forward(const Array& x, const Array& x_normed, const nn::RMSNorm& next, nn::LayerCache* cache,
                        const nn::SequenceBatch* batch, const Array& at = {}, nn::RowValues* rows = nullptr) const;
  void visit(const std::string& prefix, const nn::ParamVisitor& fn) override;

  nn::Attention self_attn;
  nn::MLP mlp;
  nn::RMSNorm input_layernorm, post_attention_layernorm;
  std::optional<nn::RMSNorm> pre_feedforward_layernorm, post_feedforward_layernorm;  // Gemma only

 private:
  bool sandwich_;
};

// A causal language model: embeddings, decoder layers, final norm and LM head.
// Weights are read-only after loading; forward() may run concurrently with distinct caches.
class CausalLM : public nn::Module {
 public:
  explicit CausalLM(DecoderSpec spec);
  // ids [B, L] int32 -> logits [B, L, V] in the weights' dtype. With caches (one per
  // layer), the new tokens continue the cached sequence; without, they start at 0.
  // `batch` describes left padding when rows have different lengths.
  Array forward(const Array& ids, std::span<nn::LayerCache* const> caches = {},
                const nn::SequenceBatch* batch = nullptr) const;
  // The final hidden states [B, L, H] (after the last norm), for heads computed elsewhere.
  // With `at` ([R] int32 indices into the B*L positions, e.g. each row's last token) only
  // those positions are returned, [R, H], and the last layer projects and runs its MLP on
  // them alone: for 32-token prompts that is 1/32 of its work after attention. The indices
  // are range-checked by the last layer's two gathers (`take`); on CUDA the check runs on
  // the device and a bad index is raised at the next wait for it (reading any result).
  Array hidden_states(const Array& ids, std::span<nn::LayerCache* const> caches = {},
                      const nn::SequenceBatch* batch = nullptr, const Array& at = {}) const;
  // The final hidden states at each row's last position, [B, H]: hidden_states with `at`
  // set to those positions (with one position per row there is nothing to select).
  Array last_hidden_states(const Array& ids, std::span<nn::LayerCache* const> caches = {},
                           const nn::SequenceBatch* batch = nullptr) const;
  // h [..., H] -> logits [..., V], softcapping included.
  Array logits(const Array& h) const;
  void visit(const std::string& prefix, const nn::ParamVisitor& fn) override;
  // The device's fused decode step over these weights for one sequence, or for a batch
  // of `rows` that share one cache, or nullptr where the backend has none for
  // them (then forward() is the way). One per sequence or batch: it holds their scratch
  // buffers. A decoder handed back by recycle_fused_decoder is given out again before a
  // new one is made. LMX_FUSED=0 turns the fused path off.
  std::unique_ptr<fast::FusedDecoder> fused_decoder(int rows = 1) const;
  // Keeps a decoder that its caller is done with (after FusedDecoder::reset) for the next
  // fused_decoder(rows): one per batch size at most. A decoder costs a few milliseconds to
  // set up (its buffers, its plan, the CUDA LM head's filtered copy), which every
  // generation would otherwise pay again. visit() and set_deterministic() drop the kept
  // ones, since they are built from the weights and that setting. LMX_FUSED_REUSE=0
  // keeps none.
  void recycle_fused_decoder(std::unique_ptr<fast::FusedDecoder> decoder) const noexcept;
  // Lets the kept decoders go now, e.g. before a long prompt's prefill, whose activations
  // need the memory more than the next generation needs the few milliseconds.
  void drop_fused_decoders() const { decoders_->drop(); }
  // Stores each layer's q, k and v weights side by side in one allocation ([q; k; v] rows,
  // each matrix a view of it) on a GPU, so that the wide batched decode step runs the three
  // products as one GEMM: each GEMM there costs a fixed 3.6-4.5 µs however few bytes it
  // reads (bench/NOTES.md p41). Every other path reads the same matrices. The loader calls
  // it; weights on the CPU, or of different dtypes or widths, stay as they are.
  void pack_attention_inputs();
  // Whether fused_decoder's steps must give the same bits on every run
  // (fast::FusedDecoderWeights::deterministic; ModelLoadOptions::deterministic).
  void set_deterministic(bool on);
  const DecoderSpec& spec() const { return spec_; }
  int num_layers() const { return int(layers_.size()); }
  Dtype dtype() const { return embed_tokens_.dtype(); }
  Device device() const { return embed_tokens_.device(); }
  // Whether any weight matrix is MLX-quantized (kept packed: the CPU's plain path).
  bool quantized() const;
  // Calls fn(name, layer) for every projection of every decoder layer, named as its weight
  // is without ".weight" ("model.layers.0.self_attn.q_proj"): where adapters attach. The
  // kept fused decoders are dropped first, as fn may change the layers.
  void for_each_linear(const std::function<void(const std::string& name, nn::Linear& layer)>& fn);
  // Whether any projection carries an adapter (then decoding runs unfused).
  bool has_adapters() const;
  // Each decoder layer run under autograd::checkpoint while a gradient tape records, so that
  // training keeps one layer's activations at a time rather than every layer's.
  void set_gradient_checkpointing(bool on) { checkpoint_layers_ = on; }

 private:
  DecoderSpec spec_;
  nn::Embedding embed_tokens_;                 // [V, H]
  std::vector<std::unique_ptr<DecoderLayer>> layers_;
  nn::RMSNorm norm_;                           // [H]
  std::optional<nn::Linear> lm_head_;          // [V, H]; absent when tied
  bool deterministic_ = false;
  bool checkpoint_layers_ = false;
  // recycle_fused_decoder's decoders, by batch size: the model is shared between threads.
  // An allocation that would fail on their device lets them go first (on_memory_pressure),
  // through a handle that shares the pool, so that it may outlive the model while it runs.
  struct DecoderPool {
    std::mutex mutex;
    std::vector<std::unique_ptr<fast::FusedDecoder>> idle;
    Device device = Device::cpu();  // the model's, where the idle decoders hold memory
    void drop(std::optional<Device> on = std::nullopt);  // all, or only if they are on `on`
  };
  std::shared_ptr<DecoderPool> decoders_ = std::make_shared<DecoderPool>();
  std::shared_ptr<const Reclaim> reclaim_decoders_;
};

}  // namespace lmx::models
