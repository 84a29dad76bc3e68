// Fused ops. Each has a fallback composed of plain ops (namespace fast::reference),
// which the tests compare against at awkward sizes.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>

#include "ops/ops.h"

namespace lmx::fast {

enum class RmsNormStyle {
  // Llama/Qwen3: y = cast(x * rsqrt(mean(x^2) + eps)) * w, two roundings in low precision.
  llama,
  // Gemma: the whole norm in f32, y = cast(x * rsqrt(mean(x^2) + eps) * (1 + w)).
  gemma,
};

// x [..., D], weight [D] -> [..., D] in x's dtype.
Array rms_norm(const Array& x, const Array& weight, float eps, RmsNormStyle style = RmsNormStyle::llama);
// x [..., D], weight and bias [D] (bias optional) -> [..., D]; statistics in f32.
Array layer_norm(const Array& x, const Array& weight, const std::optional<Array>& bias, float eps);

// Rotate-half ("NeoX") RoPE as HF applies it.
// x [B, H, L, D]; inv_freq [D/2] f32; offsets [B] int32: position of x[b, :, 0].
// cos/sin are computed in f32 and cast to x's dtype before the rotation, as HF does.
Array rope(const Array& x, const Array& inv_freq, const Array& offsets);

// A per-head RMSNorm applied before RoPE (Qwen3's q_norm and k_norm).
struct HeadNorm {
  Array weight;  // [D]
  float eps = 1e-6f;
  RmsNormStyle style = RmsNormStyle::llama;
};

// RoPE on projections still in token order, writing the head-major layout attention
// reads: x [B, L, H, D] -> [B, H, L, D]. With `norm`, each head is RMS-normalised first.
// Equals rope(swapaxes(norm ? rms_norm(x) : x, 1, 2)) with the same roundings, in one
// pass over x where the composition takes up to four (norm, transpose copy, rotation).
Array rope_heads(const Array& x, const Array& inv_freq, const Array& offsets, const HeadNorm* norm = nullptr);

// Where a step's new keys and values go: [B, Hkv, L, D] views with a contiguous last
// axis, usually slices of a KV cache's buffers (nn::LayerCache::slots).
struct CacheSlots {
  Array k, v;
};

// A step's attention inputs with a KV cache: q [B, L, Hq, D] rotated (after its optional
// per-head norm) into a new [B, Hq, L, D] array, which is returned; k [B, L, Hkv, D]
// rotated and v [B, L, Hkv, D] copied straight into `slots`. It equals
//   assign(slots.k, rope_heads(k, inv_freq, offsets, k_norm));
//   assign(slots.v, swapaxes(v, 1, 2));
//   return rope_heads(q, inv_freq, offsets, q_norm);
// with the same roundings, in one launch where that takes four: a decode step of many
// sequences is paced by its launches more than by these bytes. q_norm and k_norm are
// both given or neither.
Array rope_to_cache(const Array& q, const Array& k, const Array& v, const Array& inv_freq, const Array& offsets,
                    const HeadNorm* q_norm, const HeadNorm* k_norm, const CacheSlots& slots);

// The residual add and the RMSNorm that follows it, in one pass:
//   sum    = x + (y_weight ? rms_norm(y, *y_weight) : y)   (rounded to the dtype)
//   normed = rms_norm(sum, weight)
// x, y [..., D] of one shape and dtype; weight, y_weight [D]. Gemma's sandwich norms
// pass y_weight (the sub-block's post-norm); both norms share eps and style.
struct AddNorm {
  Array sum, normed;
};
AddNorm add_rms_norm(const Array& x, const Array& y, const Array& weight, float eps, RmsNormStyle style,
                     const Array* y_weight = nullptr);

enum class GluActivation { silu, gelu_tanh };

// Gated MLP activation, act(gate) * up, as HF computes it in the activation dtype:
// act(gate) rounded to the dtype, then the product rounded. gate and up [..., I], same
// shape and dtype. One pass instead of two: the MLP's largest element-wise tensors.
Array glu(const Array& gate, const Array& up, GluActivation act);

// Dropout as torch.nn.Dropout computes it in training: each element of x zeroed with
// probability p and the rest multiplied by 1 / (1 - p) in f32, rounded once to x's dtype.
// The mask is counter-based (random_uniform(x.shape(), seed) >= p), the same on every device.
// Under a tape, one step that keeps no mask: its rule draws the mask again from the seed.
Array dropout(const Array& x, float p, uint64_t seed);

// The gated MLP's first half: glu(x·w_gateᵀ, x·w_upᵀ, act) for x [..., K] and the
// Linear-layout weights w_gate, w_up [N, K] -> [..., N]. A backend may run it as one GEMM
// with the activation in its epilogue, which never writes the two [..., N] products (same
// roundings; the activation's own f32 error may move a rare output by one unit).
Array gated_projection(const Array& x, const Array& w_gate, const Array& w_up, GluActivation act);

// Two projections of one input through Linear-layout weights alike (an attention's k and
// v): x [..., K], w0 and w1 [N, K] -> {x·w0ᵀ, x·w1ᵀ}, each [..., N]. A backend may run
// both GEMMs in one launch where they are small (decode steps, each paced by its latency
// more than by its weights); each product is a matmul's, summed in f32, rounded once.
std::pair<Array, Array> linear_pair(const Array& x, const Array& w0, const Array& w1);

// An MLX affine-quantized matrix (spec §2), the layout mlx-lm writes: each row's codes
// packed LSB first into u32 words (code c of a row in bits [c·bits, c·bits + bits) of the
// row's bitstream), and a scale and an offset for each group of `group_size` consecutive
// columns: w[n, k] = scales[n, k / group_size] · q[n, k] + biases[n, k / group_size].
struct QuantizedMatrix {
  Array packed;  // [N, K · bits / 32] u32
  Array scales;  // [N, K / group_size] float
  Array biases;  // [N, K / group_size], the scales' dtype
  int bits = 4;
  int group_size = 64;
  int64_t rows() const { return packed.shape(0); }              // N
  int64_t cols() const { return packed.shape(1) * 32 / bits; }  // K
};
// Checks that w's arrays agree with each other and with bits and group_size (bits in
// {2, 3, 4, 5, 6, 8}, group_size in {32, 64, 128}); throws "[op] ..." naming `what`.
void check_quantized(const QuantizedMatrix& w, const char* op, const std::string& what);
// w -> [N, K] in `dtype` (float): each element scale · q + bias in f32, rounded once.
Array dequantize(const QuantizedMatrix& w, Dtype dtype);
// w [N, K] float -> MLX affine codes of `bits` in groups of `group_size`, with scales and
// biases in `dtype`, on w's device (computed on the host: a conversion step, not a per-token
// one). Each group's rule is MLX's: a step of (max - min) / (2^bits - 1), signed so that the
// end of larger magnitude is a code exactly and is the group's bias; then the scale and bias
// are rounded to `dtype`, and each code is round-half-up((w - bias) / scale) clipped to the
// range, fitted to the stored values. Non-finite weights are refused.
QuantizedMatrix quantize(const Array& w, int bits, int group_size, Dtype dtype);
// x [..., K] · dequantize(w)ᵀ -> [..., N] in x's dtype, summed in f32 and rounded once
// (a quantized Linear). The kernel reads the packed codes, not a dequantized copy: for
// one row (a decode step) it is a quarter of a bf16 weight's bytes at 4 bits.
Array quantized_matmul(const Array& x, const QuantizedMatrix& w);

struct AttentionMask {
  bool causal = true;
  int64_t window = 0;  // > 0: key j is visible to query i only if j > i - window
  // Position of query row 0 within the key sequence for causal/window masks; usually
  // Lk - Lq (keys = cache + new tokens). One value per batch row, or empty for Lk - Lq.
  std::optional<Array> q_offsets;  // [B] int32
  std::optional<Array> key_valid;  // [B, Lk] bool: false masks a padded key
};

// Each row's cross-entropy against its target: logits [R, V] float, targets [R] int32 in
// [0, V) (not checked: a training loss validates its targets once) -> [R] f32,
// log Σ_j exp(x_rj) − x_r,t_r. One kernel where the backend has it; under a tape one step
// whose rule makes the softmax again (g_r · (softmax − onehot), zero where g_r is zero).
Array cross_entropy_rows(const Array& logits, const Array& targets);

// q [B, Hq, Lq, D], k and v [B, Hkv, Lk, D] with Hq % Hkv == 0 (GQA: query head h uses
// kv head h / (Hq/Hkv)). Scores q·kᵀ·scale plus mask, softmax in f32, cast to q's dtype
// before multiplying by v (HF eager). Rows whose every key is masked give zeros.
Array scaled_dot_product_attention(const Array& q, const Array& k, const Array& v, float scale,
                                   const AttentionMask& mask = {});

// Causal self-attention of a whole sequence with no cache, straight from the projections
// in token order: q [B, L, Hq, D], k and v [B, L, Hkv, D] -> [B, L, Hq, D], ready for the
// output projection. It equals
//   swapaxes(scaled_dot_product_attention(rope_heads(q, inv_freq, offsets, q_norm),
//                                         rope_heads(k, inv_freq, offsets, k_norm),
//                                         swapaxes(v, 1, 2), scale, {causal, window}), 1, 2)
// with the same roundings. For short sequences (classification, scoring) a backend may
// run it as one kernel in place of the rotations, transposes, GEMMs and softmax.
struct SelfAttention {
  Array inv_freq;  // [D/2] f32
  Array offsets;   // [B] int32: RoPE position of token 0 of each row
  const HeadNorm* q_norm = nullptr;  // both norms or neither (Qwen3, Gemma 3)
  const HeadNorm* k_norm = nullptr;
  float scale = 0;
  int64_t window = 0;  // > 0: key j is visible to query i only if j > i - window
};
Array self_attention(const Array& q, const Array& k, const Array& v, const SelfAttention& a);

// Sampling without the processors that need the history (penalties, logit bias): HF's
// temperature, then top-k, top-p and min-p, and one draw a row that inverts the CDF in id
// order at u = (bits >> 11) · 2⁻⁵³. That is runtime::Sampler's draw for the same options
// and random word, computed where the logits are, so that a GPU hands back ids rather
// than logits. It has no fallback of plain ops; the CPU kernel is the reference.
struct SampleFilter {
  float temperature = 1;  // > 0
  int top_k = 0;          // 0 = off
  float top_p = 1;        // in (0, 1]; 1 = off
  float min_p = 0;        // in [0, 1]; 0 = off
};
// logits [R, V] float; bits: one random word a row -> [R] int32 on the logits' device.
// NaN is never drawn; a row with no token left to draw (every logit NaN or -inf) gives -1.
Array sample_tokens(const Array& logits, std::span<const uint64_t> bits,
                    const SampleFilter& filter);
// An lmx::Error naming `where` unless every id is a token of a vocabulary of `vocab`: a
// chosen id of -1 (argmax's or sample_tokens's where no token can be chosen), or one out of
// range from a fused decode step, means the logits were NaN, and the caller stops there.
void check_chosen(std::span<const int32_t> ids, int64_t vocab, const char* where);

// The processors that need the history, where the logits are: HF's logit bias, then its
// repetition penalty and the presence and frequency penalties (runtime/sampler.h). Row r's
// edits are entries [starts[r], starts[r + 1]) of `edits`, sorted by id; the entries of
// one id apply in order: each adds its bias, then a count > 0 (the token's count in the
// row's history) applies x = x < 0 ? x · repetition : x / repetition and
// x -= presence + frequency · count. Several entries of one id: a bias listed more than
// once, added as the host adds it, one after another.
struct LogitEdit {
  int32_t id = 0;
  int32_t count = 0;  // the same on every entry of an id
  float bias = 0;
  bool has_bias = false;
};
struct Penalties {
  float repetition = 1, presence = 0, frequency = 0;
};
// logits [R, V] float -> [R, V] f32: a copy with the edits made.
Array edit_logits(const Array& logits, std::span<const int64_t> starts,
                  std::span<const LogitEdit> edits, const Penalties& penalties);
// The edits of `rows` rows over V tokens as the kernels take them, checked as
// edit_logits checks them: starts [rows + 1] and entries [E, 4] int32 (id, count, the
// bias's bits, has_bias), on `device`.
struct PackedEdits {
  Array starts, entries;  // entries is not valid() where there are none
};
PackedEdits pack_edits(int64_t rows, int64_t v, std::span<const int64_t> starts,
                       std::span<const LogitEdit> edits, const Penalties& penalties, Device device);

namespace reference {
Array quantized_matmul(const Array& x, const QuantizedMatrix& w);
Array self_attention(const Array& q, const Array& k, const Array& v, const SelfAttention& a);
Array glu(const Array& gate, const Array& up, GluActivation act);
Array gated_projection(const Array& x, const Array& w_gate, const Array& w_up, GluActivation act);
std::pair<Array, Array> linear_pair(const Array& x, const Array& w0, const Array& w1);
Array rms_norm(const Array& x, const Array& weight, float eps, RmsNormStyle style);
Array layer_norm(const Array& x, const Array& weight, const std::optional<Array>& bias, float eps);
Array rope(const Array& x, const Array& inv_freq, const Array& offsets);
Array rope_heads(const Array& x, const Array& inv_freq, const Array& offsets, const HeadNorm* norm = nullptr);
Array rope_to_cache(const Array& q, const Array& k, const Array& v, const Array& inv_freq, const Array& offsets,
                    const HeadNorm* q_norm, const HeadNorm* k_norm, const CacheSlots& slots);
AddNorm add_rms_norm(const Array& x, const Array& y, const Array& weight, float eps, RmsNormStyle style,
                     const Array* y_weight = nullptr);
Array scaled_dot_product_attention(const Array& q, const Array& k, const Array& v, float scale,
                                   const AttentionMask& mask);
}  // namespace reference

}  // namespace lmx::fast
