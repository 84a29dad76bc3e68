// The fused decode step: one new token of a decoder-only transformer for a single
// sequence, run the way a backend runs it fastest. On CUDA that is five fused kernels
// per layer (norm+QKV, RoPE+attention, O projection, norm+gate/up+activation, down
// projection), captured once in a CUDA graph and replayed for every token, with the LM
// head and its argmax fused at the end.
//
// The model layer describes its weights here (models::CausalLM::fused_decoder); the
// runtime binds the KV cache and drives the steps. Backends without a fused path return
// no decoder, and the caller keeps to the plain ops.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "ops/fast.h"

namespace lmx::fast {

struct FusedLayerWeights {
  Array q, k, v, o;     // [Hq*D, H], [Hkv*D, H], [Hkv*D, H], [H, Hq*D]
  Array gate, up, down;  // [I, H], [I, H], [H, I]
  Array input_norm, post_attention_norm;              // [H]
  Array pre_feedforward_norm, post_feedforward_norm;  // [H]; only with sandwich norms
  Array q_norm, k_norm;                               // [D]; only with q/k norms
  Array inv_freq;                                     // [D/2] f32, on the weights' device
  int64_t n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int64_t window = 0;  // > 0: sliding-window layer
  float scale = 0;     // multiplies q·kᵀ
};

struct FusedDecoderWeights {
  Array embed;       // [V, H]
  Array final_norm;  // [H]
  Array lm_head;     // [V, H]; the embedding itself when tied
  std::vector<FusedLayerWeights> layers;
  float eps = 1e-6f;
  RmsNormStyle norm_style = RmsNormStyle::llama;
  bool gelu = false;      // GELU (tanh) gating instead of SiLU
  bool sandwich = false;  // Gemma 3: norms after attention and around the MLP
  float embed_scale = 0;  // > 0: embeddings are multiplied by it
  float softcap = 0;      // > 0: logits = softcap * tanh(logits / softcap)
  // The same bits on every run: no step adds into a sum in an order that varies with the
  // timing of the device's blocks (on CUDA, the persistent step keeps each down projection
  // a phase of its own rather than folding it into gate/up with f32 atomics).
  bool deterministic = false;
};

// One layer's KV cache as the step sees it: k and v [rows, Hkv, slots, D], the token at
// position p in slot p % slots (a contiguous cache has slots > every position; a rotating
// one holds the last `slots` positions).
struct FusedCacheView {
  Array k, v;
};

// A decoder steps `rows` sequences at once (a batch, all in one cache array per layer),
// or one.
class FusedDecoder {
 public:
  virtual ~FusedDecoder() = default;
  virtual int rows() const = 0;
  // Sets the next step's input token of each sequence and the cache slot it goes to.
  // pads (empty: none) gives each sequence's left padding: its first pads[r] slots hold
  // no tokens and are never attended to, and its RoPE positions are slots minus pads[r].
  virtual void set_inputs(std::span<const int32_t> tokens, std::span<const int64_t> slots,
                          std::span<const int64_t> pads) = 0;
  void set_input(int32_t token, int64_t pos) { set_inputs({&token, 1}, {&pos, 1}, {}); }
  // Enqueues one step: stores the input tokens' keys and values in `caches` (one per
  // layer), computes the logits, and makes each sequence's argmax its next input, at the
  // next slot. Steps can thus follow one another without the host (greedy decoding) or
  // after set_inputs.
  virtual void step(std::span<const FusedCacheView> caches) = 0;
  // The last step's logits [rows, V] f32, on the device (valid until the next step).
  virtual const Array& logits() const = 0;
  // Which logits the steps from now on must leave exact: 0, every one (until set); 1, only
  // the argmax (greedy decoding, with no draw), and neither logits() nor draw() may follow
  // such a step; n > 1, the n largest (a draw whose top-k keeps at most n tokens, after no
  // edits), and others only below them: logits() may not follow, nor a draw that would keep
  // more. A backend may then find them without every product (on CUDA, the persistent
  // step's filtered LM head, head_filter.cuh), or ignore this.
  virtual void set_logits_needed(int) {}
  // Draws the last step's tokens from its logits (fast::sample_tokens's draw, with
  // words[r] the random word of sequence r; without a filter, the argmax) in place of the
  // step's argmax: the next step's inputs, and what queue_token and tokens read. The
  // logits take the edits of set_edits first, if any. A sampled step's draw so stays on
  // the device, as greedy decoding's argmax does.
  virtual void draw(const std::optional<fast::SampleFilter>& filter,
                    std::span<const uint64_t> words) = 0;
  // The edits the draws make from now on (fast::edit_logits's: a logit bias and the
  // penalties), with the counts of each sequence's tokens kept on the device: `edits`, as
  // Sampler::edits gives them for the history so far (sequence r's in [starts[r],
  // starts[r + 1])), set them, and every draw after the first adds the previous one.
  // Empty starts: no edits. set_inputs clears them (the counts would lack its tokens).
  virtual void set_edits(std::span<const int64_t> starts, std::span<const fast::LogitEdit> edits,
                         const fast::Penalties& penalties) = 0;
  // The argmax of the last `n` steps since set_inputs, oldest step first, each step's
  // `rows` tokens together; synchronises.
  virtual std::vector<int32_t> tokens(int n) = 0;
  // Pipelined reads: queue_token() queues a copy of the last step's argmaxes to the host,
  // and wait_tokens() returns the oldest queued ones (one per sequence), waiting only for
  // their own step. A caller can so queue step n+1 before it reads step n's tokens, and
  // the device never waits for the host.
  virtual void queue_token() = 0;
  virtual std::vector<int32_t> wait_tokens() = 0;
  int32_t wait_token() { return wait_tokens()[0]; }
  // How the backend runs the steps, for reports: on CUDA "persistent" (one kernel per
  // step) or "graph" (a kernel per phase, replayed as a CUDA graph); "" before any step.
  virtual const char* path() const = 0;
  // Makes the decoder ready for another caller (models::CausalLM::recycle_fused_decoder):
  // tokens queued and never read are dropped, and the next step needs set_inputs first.
  // What it keeps is for speed alone: its buffers, and its plan while the caches are the
  // same arrays.
  virtual void reset() {}
};

}  // namespace lmx::fast
