// The layers the model files are built from. They hold read-only weights; per-request
// state (KV cache, positions) is passed in, so one model serves many sequences.
// Thread-safety: forward() is const and may run concurrently on distinct caches.
#pragma once

#include <mutex>
#include <optional>
#include <vector>

#include "nn/module.h"
#include "ops/fast.h"
#include "ops/fused_decoder.h"

namespace lmx::nn {

// A low-rank adapter on a Linear (LoRA, in PEFT's layout): y = x·Wᵀ + scale·(x·Aᵀ)·Bᵀ,
// with x dropped out first while training (scale·(dropout(x)·Aᵀ)·Bᵀ, as PEFT does).
struct LoRA {
  Array a;          // [r, in]: PEFT's lora_A.weight
  Array b;          // [out, r]: lora_B.weight
  float scale = 1;  // lora_alpha / r (PEFT's scaling)
  float dropout = 0;    // lora_dropout: the probability of zeroing an input element
  uint64_t stream = 0;  // which masks this adapter draws (its module name's hash)
};

// Training-time randomness for the adapters. While a DropoutScope lives on this thread, an
// adapter with dropout p > 0 zeroes each element of its input with probability p and scales
// the rest by 1 / (1 - p), as torch.nn.Dropout does in training; with none (inference,
// validation) the input passes as is. A mask depends only on (seed, the adapter's stream, the
// input's shape), so a checkpointed layer's replay in the backward pass draws the masks of its
// first run, and a step is the same on every device.
class DropoutScope {
 public:
  explicit DropoutScope(uint64_t seed);
  ~DropoutScope();
  DropoutScope(const DropoutScope&) = delete;
  DropoutScope& operator=(const DropoutScope&) = delete;
  static std::optional<uint64_t> seed();  // the innermost live scope's, if any

 private:
  std::optional<uint64_t> outer_;
};

class Linear : public Module {
 public:
  Linear(int64_t in, int64_t out, bool bias) : in_(in), out_(out), has_bias_(bias) {}
  Array forward(const Array& x) const;  // x [..., in] -> [..., out]
  void visit(const std::string& prefix, const ParamVisitor& fn) override;
  Array weight;               // [out, in]; empty when the weight is quantized
  std::optional<Array> bias;  // [out]
  fast::QuantizedMatrix quantized;  // an MLX-quantized weight [out, in] (CPU), else empty
  bool is_quantized() const { return quantized.packed.valid(); }
  // An adapter, added to the layer's output; the weight itself stays as loaded. A layer
  // with one runs unfused (no paired or gated products over its bare weight).
  std::optional<LoRA> lora;
  // Folds the adapter into the weight, W + scale·B·A summed in f32 and rounded once to W's
  // dtype, and removes it. A quantized weight is dequantized exactly first, and the sum is
  // quantized again at the weight's own width and groups (as mlx-lm fuses), or, with
  // `dequantize`, kept as a plain weight in the scales' dtype.
  void fuse_lora(bool dequantize = false);
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }

 private:
  int64_t in_, out_;
  bool has_bias_;
};

class Embedding : public Module {
 public:
  Embedding(int64_t vocab, int64_t dim) : vocab_(vocab), dim_(dim) {}
  Array forward(const Array& ids) const;     // ids [...] int32 -> [..., dim]
  Array as_linear(const Array& x) const;     // x [..., dim] -> logits [..., vocab] (tied head)
  void visit(const std::string& prefix, const ParamVisitor& fn) override;
  Array weight;  // [vocab, dim]; empty when the table is quantized
  // An MLX-quantized table [vocab, dim] (CPU): rows are dequantized as they are looked up,
  // and a tied head multiplies by the packed codes.
  fast::QuantizedMatrix quantized;
  bool is_quantized() const { return quantized.packed.valid(); }
  Dtype dtype() const { return is_quantized() ? quantized.scales.dtype() : weight.dtype(); }
  Device device() const { return is_quantized() ? quantized.packed.device() : weight.device(); }

 private:
  int64_t vocab_, dim_;
};

class RMSNorm : public Module {
 public:
  RMSNorm(int64_t dim, float eps, fast::RmsNormStyle style) : dim_(dim), eps_(eps), style_(style) {}
  Array forward(const Array& x) const { return fast::rms_norm(x, weight, eps_, style_); }
  // This norm applied after a residual add, in one pass: {x + y, norm(x + y)}. With
  // y_norm (Gemma's sandwich norms), y is normalised by it before the add.
  fast::AddNorm after_add(const Array& x, const Array& y, const RMSNorm* y_norm = nullptr) const {
    return fast::add_rms_norm(x, y, weight, eps_, style_, y_norm ? &y_norm->weight : nullptr);
  }
  // As a per-head norm fused into RoPE (fast::rope_heads).
  fast::HeadNorm per_head() const { return {weight, eps_, style_}; }
  void visit(const std::string& prefix, const ParamVisitor& fn) override;
  Array weight;  // [dim]

 private:
  int64_t dim_;
  float eps_;
  fast::RmsNormStyle style_;
};

enum class Activation { silu, gelu_tanh };

// down(act(gate(x)) * up(x))
class MLP : public Module {
 public:
  MLP(int64_t hidden, int64_t intermediate, Activation act, bool bias);
  Array forward(const Array& x) const;  // [B, L, hidden] -> [B, L, hidden]
  void visit(const std::string& prefix, const ParamVisitor& fn) override;
  Linear gate_proj, up_proj, down_proj;

 private:
  Activation act_;
};

// One layer's slice of a KV cache: the attention appends to it and reads it back.
class LayerCache {
 public:
  virtual ~LayerCache() = default;
  // Position (in the sequence) that the next token stored will have.
  virtual int64_t next_position() const = 0;
  // Stores k, v [B, Hkv, L, D] and returns the keys and values to attend to,
  // [B, Hkv, Lk, D] each, plus where the first new token sits among those Lk keys.
  struct View {
    Array k, v;
    int64_t q_offset = 0;
    // A rotating cache returns keys out of order; they are then all visible to the
    // (single) new token and no causal or window mask applies.
    bool all_visible = false;
  };
  virtual View update(const Array& k, const Array& v) = 0;
  // For a caller that writes the next l tokens' keys and values in place (fast::rope_to_cache):
  // their slots, [B, Hkv, l, D] views of the cache for keys of `shape` [B, Hkv, l, D], room
  // made as update() makes it. Then stored(l) counts them and returns what update() would
  // have. Empty arrays where this cache cannot take them so; then call update().
  virtual fast::CacheSlots slots(const Shape& /*shape*/, Dtype, Device) { return {}; }
  virtual View stored(int64_t l) = 0;
  // For fused decode steps, which store the new token's keys and values themselves: the
  // whole buffers [B, Hkv, slots, D], with a slot free for next_position() (the token at
  // position p goes to slot p % slots). Empty arrays where the cache cannot serve so
  // (nothing stored yet). After the step, commit_one() counts the stored token.
  virtual fast::FusedCacheView fused_view() { return {}; }
  virtual void commit_one() {}
};

// Several sequences of different lengths in one batch, left-padded to a common length.
// Cache slots are shared; each row's RoPE positions start after its padding.
struct SequenceBatch {
  Array positions;  // [B] int32: RoPE position of the first new token of each row
  Array key_valid;  // [B, Lk] bool over every cache slot, new tokens included: false = padding
};

// Per-row int32 arrays that the layers of one forward pass share. In a decode step every
// layer asks for the same RoPE positions and query offsets; making each once saves a fill
// kernel per layer and array, where the plain step at large batches is paced by its
// launches. Local to one forward call (not thread-safe).
class RowValues {
 public:
  RowValues(int64_t rows, Device device) : rows_(rows), device_(device) {}
  Array of(int64_t value);  // [rows] int32, every element `value`
  int64_t rows() const { return rows_; }

 private:
  int64_t rows_;
  Device device_;
  std::vector<std::pair<int64_t, Array>> made_;
};

struct AttentionSpec {
  int64_t hidden = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  bool bias = false;
  bool qk_norm = false;  // Qwen3 and Gemma 3: RMSNorm over head_dim before RoPE
  float norm_eps = 1e-6f;
  fast::RmsNormStyle norm_style = fast::RmsNormStyle::llama;
  float scale = 0;          // multiplies q·kᵀ
  int64_t window = 0;       // > 0: sliding-window layer
  std::vector<float> inv_freq;  // [head_dim / 2] RoPE frequencies for this layer
};

class Attention : public Module {
 public:
  explicit Attention(const AttentionSpec& spec);
  // x [B, L, hidden] -> [B, L, hidden]; with a cache the new keys are appended, without
  // one the layer attends causally within x alone. With `at` ([R] int32 indices into the
  // B*L positions), only those positions go through the output projection -> [R, hidden]:
  // every key and value is still computed, but nothing is spent on outputs nobody reads.
  // `rows`, where given, makes the per-row positions and offsets (shared by the layers).
  Array forward(const Array& x, LayerCache* cache, const SequenceBatch* batch = nullptr, const Array& at = {},
                RowValues* rows = nullptr) const;
  void visit(const std::string& prefix, const ParamVisitor& fn) override;
  Linear q_proj, k_proj, v_proj, o_proj;
  std::optional<RMSNorm> q_norm, k_norm;  // [head_dim]
  const AttentionSpec& spec() const { return spec_; }
  // The RoPE frequencies [head_dim / 2] f32 on device d. The copy for the device the layer
  // last ran on is kept: made once, not uploaded (and possibly waited for) in every forward.
  Array inv_freq(Device d) const;

 private:
  AttentionSpec spec_;
  Array inv_freq_;
  mutable std::mutex inv_freq_mu_;
  mutable Array inv_freq_on_device_;
};

}  // namespace lmx::nn
