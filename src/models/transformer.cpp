#include "models/transformer.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <utility>

#include "autograd/autograd.h"
#include "core/allocator.h"
#include "core/error.h"
#include "ops/kernels.h"
#include "ops/ops.h"
#include "ops/tape.h"

namespace lmx::models {

DecoderLayer::DecoderLayer(const DecoderSpec& spec, const nn::AttentionSpec& attn)
    : self_attn(attn),
      mlp(spec.hidden_size, spec.intermediate_size, spec.activation, spec.mlp_bias),
      input_layernorm(spec.hidden_size, spec.rms_norm_eps, spec.norm_style),
      post_attention_layernorm(spec.hidden_size, spec.rms_norm_eps, spec.norm_style),
      sandwich_(spec.sandwich_norms) {
  if (sandwich_) {
    pre_feedforward_layernorm.emplace(spec.hidden_size, spec.rms_norm_eps, spec.norm_style);
    post_feedforward_layernorm.emplace(spec.hidden_size, spec.rms_norm_eps, spec.norm_style);
  }
}

fast::AddNorm DecoderLayer::forward(const Array& x, const Array& x_normed, const nn::RMSNorm& next,
                                    nn::LayerCache* cache, const nn::SequenceBatch* batch, const Array& at,
                                    nn::RowValues* rows) const {
  const Array a = self_attn.forward(x_normed, cache, batch, at, rows);  // [B, L, H], or [R, H] with `at`
  // Every step below is row by row, so the residual rows that are not read can go too.
  const Array x_rows = at.valid() ? take(reshape(x, {-1, x.shape(-1)}), at, 0) : x;
  if (sandwich_) {
    // Gemma: each sub-block's output is normalised before the residual add.
    const fast::AddNorm h = pre_feedforward_layernorm->after_add(x_rows, a, &post_attention_layernorm);
    return next.after_add(h.sum, mlp.forward(h.normed), &*post_feedforward_layernorm);
  }
  // Llama/Qwen: pre-norm residual blocks.
  const fast::AddNorm h = post_attention_layernorm.after_add(x_rows, a);
  return next.after_add(h.sum, mlp.forward(h.normed));
}

void DecoderLayer::visit(const std::string& prefix, const nn::ParamVisitor& fn) {
  self_attn.visit(nn::join_name(prefix, "self_attn"), fn);
  mlp.visit(nn::join_name(prefix, "mlp"), fn);
  input_layernorm.visit(nn::join_name(prefix, "input_layernorm"), fn);
  post_attention_layernorm.visit(nn::join_name(prefix, "post_attention_layernorm"), fn);
  if (sandwich_) {
    pre_feedforward_layernorm->visit(nn::join_name(prefix, "pre_feedforward_layernorm"), fn);
    post_feedforward_layernorm->visit(nn::join_name(prefix, "post_feedforward_layernorm"), fn);
  }
}

namespace {

void check_ids(const Array& ids) {
  LMX_CHECK(ids.valid() && ids.ndim() == 2 && (ids.dtype() == Dtype::i32 || ids.dtype() == Dtype::u32), "forward",
            "token ids must be an int32 array of shape [batch, length]");
}

}  // namespace

CausalLM::CausalLM(DecoderSpec spec)
    : spec_(std::move(spec)),
      embed_tokens_(spec_.vocab_size, spec_.hidden_size),
      norm_(spec_.hidden_size, spec_.rms_norm_eps, spec_.norm_style) {
  for (const nn::AttentionSpec& a : spec_.layers) layers_.push_back(std::make_unique<DecoderLayer>(spec_, a));
  if (!spec_.tie_word_embeddings) lm_head_.emplace(spec_.hidden_size, spec_.vocab_size, false);
  reclaim_decoders_ = on_memory_pressure([pool = std::weak_ptr<DecoderPool>(decoders_)](Device d) {
    if (const auto p = pool.lock()) p->drop(d);
  });
}

Array CausalLM::hidden_states(const Array& ids, std::span<nn::LayerCache* const> caches,
                               const nn::SequenceBatch* batch, const Array& at) const {
  check_ids(ids);
  LMX_CHECK(caches.empty() || int(caches.size()) == num_layers(), "forward", "got ", caches.size(),
            " layer caches for ", num_layers(), " layers");
  Array h = embed_tokens_.forward(ids);  // [B, L, H]
  if (spec_.scale_embeddings)
    h = multiply(h, scalar(std::sqrt(double(spec_.hidden_size)), h.dtype(), h.device()));
  if (at.valid())
    LMX_CHECK(at.ndim() == 1 && (at.dtype() == Dtype::i32 || at.dtype() == Dtype::u32), "forward",
              "the positions to keep must be a 1-D int32 array of indices into batch * length, got ",
              shape_str(at.shape()), " ", dtype_name(at.dtype()));
  if (layers_.empty()) return norm_.forward(at.valid() ? take(reshape(h, {-1, h.shape(-1)}), at, 0) : h);
  if (checkpoint_layers_ && detail::recorder() && caches.empty() && !batch) {
    // Training: each layer a checkpointed block from its input to its output. A block
    // applies its own input norm (the plain path gets it fused into the add before), so
    // that only each layer's input stays for the backward pass.
    Array x = h;
    for (size_t i = 0; i < layers_.size(); ++i) {
      const bool last = i + 1 == layers_.size();
      auto block = [this, i, last, at](const std::vector<Array>& in) {
        const DecoderLayer& layer = *layers_[i];
        const nn::RMSNorm& next = last ? norm_ : layers_[i + 1]->input_layernorm;
        const Array normed = layer.input_layernorm.forward(in[0]);
        return layer.forward(in[0], normed, next, nullptr, nullptr, last ? at : Array{}).sum;
      };
      x = autograd::checkpoint(block, {x});
    }
    return norm_.forward(x);
  }
  fast::AddNorm s{h, layers_[0]->input_layernorm.forward(h)};
  nn::RowValues rows(h.shape(0), h.device());  // positions and offsets, made once for all layers
  for (size_t i = 0; i < layers_.size(); ++i) {
    const bool last = i + 1 == layers_.size();
    const nn::RMSNorm& next = last ? norm_ : layers_[i + 1]->input_layernorm;
    s = layers_[i]->forward(s.sum, s.normed, next, caches.empty() ? nullptr : caches[i], batch, last ? at : Array{},
                            &rows);
  }
  return s.normed;
}

Array CausalLM::last_hidden_states(const Array& ids, std::span<nn::LayerCache* const> caches,
                                    const nn::SequenceBatch* batch) const {
  check_ids(ids);
  const int64_t rows = ids.shape(0), length = ids.shape(1);
  if (length == 1) return reshape(hidden_states(ids, caches, batch), {rows, -1});
  std::vector<int32_t> at(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) at[size_t(r)] = int32_t((r + 1) * length - 1);
  return hidden_states(ids, caches, batch, to_device(from_vector(at, {rows}), ids.device()));
}

Array CausalLM::logits(const Array& h) const {
  Array out = lm_head_ ? lm_head_->forward(h) : embed_tokens_.as_linear(h);
  if (spec_.final_logit_softcapping > 0) {
    const Array c = scalar(spec_.final_logit_softcapping, out.dtype(), out.device());
    out = multiply(tanh(divide(out, c)), c);
  }
  return out;
}

Array CausalLM::forward(const Array& ids, std::span<nn::LayerCache* const> caches,
                       const nn::SequenceBatch* batch) const {
  return logits(hidden_states(ids, caches, batch));
}

namespace {
bool reuse_decoders() {
  const char* v = std::getenv("LMX_FUSED_REUSE");
  return !v || std::string(v) != "0";
}
}  // namespace

std::unique_ptr<fast::FusedDecoder> CausalLM::fused_decoder(int rows) const {
  if (const char* v = std::getenv("LMX_FUSED"); v && std::string(v) == "0") return nullptr;
  if (reuse_decoders()) {
    std::lock_guard lock(decoders_->mutex);
    std::vector<std::unique_ptr<fast::FusedDecoder>>& idle = decoders_->idle;
    for (auto it = idle.begin(); it != idle.end(); ++it)
      if ((*it)->rows() == rows) {
        std::unique_ptr<fast::FusedDecoder> d = std::move(*it);
        idle.erase(it);
        return d;
      }
  }
  detail::Kernels& kernels = detail::kernels_for(device());
  // before anything is allocated; adapters are outside the fused kernels' weights
  if (!kernels.has_fused_decoder(dtype()) || quantized() || has_adapters()) return nullptr;
  fast::FusedDecoderWeights w;
  w.embed = embed_tokens_.weight;
  w.lm_head = lm_head_ ? lm_head_->weight : embed_tokens_.weight;
  w.final_norm = norm_.weight;
  w.eps = spec_.rms_norm_eps;
  w.norm_style = spec_.norm_style;
  w.gelu = spec_.activation == nn::Activation::gelu_tanh;
  w.sandwich = spec_.sandwich_norms;
  w.softcap = spec_.final_logit_softcapping;
  w.deterministic = deterministic_;
  // The embedding scale is rounded to the weights' dtype first, as the plain path does.
  if (spec_.scale_embeddings) w.embed_scale = to_floats(scalar(std::sqrt(double(spec_.hidden_size)), dtype()))[0];
  for (const auto& layer : layers_) {
    const nn::Attention& a = layer->self_attn;
    const nn::AttentionSpec& s = a.spec();
    // The fused kernels have no bias terms; such models decode through forward().
    if (a.q_proj.bias || a.k_proj.bias || a.v_proj.bias || a.o_proj.bias || spec_.mlp_bias) return nullptr;
    fast::FusedLayerWeights l;
    l.q = a.q_proj.weight, l.k = a.k_proj.weight, l.v = a.v_proj.weight, l.o = a.o_proj.weight;
    l.gate = layer->mlp.gate_proj.weight, l.up = layer->mlp.up_proj.weight, l.down = layer->mlp.down_proj.weight;
    l.input_norm = layer->input_layernorm.weight;
    l.post_attention_norm = layer->post_attention_layernorm.weight;
    if (spec_.sandwich_norms) {
      l.pre_feedforward_norm = layer->pre_feedforward_layernorm->weight;
      l.post_feedforward_norm = layer->post_feedforward_layernorm->weight;
    }
    if (a.q_norm) l.q_norm = a.q_norm->weight, l.k_norm = a.k_norm->weight;
    l.inv_freq = a.inv_freq(device());
    l.n_heads = s.n_heads, l.n_kv_heads = s.n_kv_heads, l.head_dim = s.head_dim;
    l.window = s.window;
    l.scale = s.scale;
    w.layers.push_back(std::move(l));
  }
  return kernels.fused_decoder(w, rows);
}

void CausalLM::recycle_fused_decoder(std::unique_ptr<fast::FusedDecoder> decoder) const noexcept {
  if (!decoder || !reuse_decoders()) return;
  try {
    decoder->reset();
  } catch (...) {
    return;  // a decoder that cannot be reset (a device fault) is not worth keeping
  }
  std::lock_guard lock(decoders_->mutex);
  decoders_->device = device();
  std::vector<std::unique_ptr<fast::FusedDecoder>>& idle = decoders_->idle;
  const bool have = std::any_of(idle.begin(), idle.end(), [&](const auto& d) { return d->rows() == decoder->rows(); });
  if (!have) idle.push_back(std::move(decoder));
}

void CausalLM::DecoderPool::drop(std::optional<Device> on) {
  std::vector<std::unique_ptr<fast::FusedDecoder>> gone;
  {
    std::lock_guard lock(mutex);
    if (!on || *on == device) gone.swap(idle);
  }
}  // destroyed outside the lock: a decoder's destructor waits for its device

void CausalLM::set_deterministic(bool on) {
  deterministic_ = on;
  drop_fused_decoders();
}

void CausalLM::pack_attention_inputs() {
  Device device = Device::cpu();
  for (auto& l : layers_) {
    nn::Attention& a = l->self_attn;
    Array& q = a.q_proj.weight;
    Array& k = a.k_proj.weight;
    Array& v = a.v_proj.weight;
    if (!q.valid() || !k.valid() || !v.valid() || q.device() == Device::cpu()) continue;
    if (k.device() != q.device() || v.device() != q.device() || k.dtype() != q.dtype() || v.dtype() != q.dtype())
      continue;
    if (q.ndim() != 2 || k.ndim() != 2 || v.ndim() != 2 || k.shape(1) != q.shape(1) || v.shape(1) != q.shape(1))
      continue;
    // Each view keeps a fresh allocation's 256-byte alignment, which TMA descriptors and
    // cuBLAS's kernel choice count on.
    if (q.nbytes() % 256 != 0 || k.nbytes() % 256 != 0) continue;
    const auto* at_q = static_cast<const std::byte*>(q.raw());
    if (k.raw() == at_q + q.nbytes() && v.raw() == at_q + q.nbytes() + k.nbytes()) continue;  // packed already
    const int64_t in = q.shape(1), nq = q.shape(0), nk = k.shape(0), nv = v.shape(0);
    Array packed;  // [nq + nk + nv, in]
    try {
      packed = concatenate({q, k, v}, 0);
    } catch (const OutOfMemory&) {
      break;  // a layer's copy did not fit beside the weights: the rest stay apart, as they work
    }
    const int64_t at = packed.offset();
    q = packed.view({nq, in}, {in, 1}, at);
    k = packed.view({nk, in}, {in, 1}, at + nq * in);
    v = packed.view({nv, in}, {in, 1}, at + (nq + nk) * in);
    device = q.device();
  }
  if (device == Device::cpu()) return;  // nothing moved
  drop_fused_decoders();  // built from the old addresses
  // The separate matrices' blocks go back to the device, not to the cache: no later
  // request of this model has their sizes.
  allocator_for(device).clear_cache();
}

namespace {

// fn(name, projection) for a decoder layer's seven projections, named as their weights are
// without ".weight" (DecoderLayer is `const` or not, and so are the projections handed out).
template <class Layer, class Fn>
void each_projection(Layer& l, Fn&& fn) {
  auto& a = l.self_attn;
  auto& m = l.mlp;
  fn("self_attn.q_proj", a.q_proj), fn("self_attn.k_proj", a.k_proj), fn("self_attn.v_proj", a.v_proj);
  fn("self_attn.o_proj", a.o_proj), fn("mlp.gate_proj", m.gate_proj), fn("mlp.up_proj", m.up_proj);
  fn("mlp.down_proj", m.down_proj);
}

}  // namespace

bool CausalLM::quantized() const {
  bool any = embed_tokens_.is_quantized() || (lm_head_ && lm_head_->is_quantized());
  for (const auto& l : layers_)
    each_projection(std::as_const(*l), [&](const char*, const nn::Linear& p) { any = any || p.is_quantized(); });
  return any;
}

void CausalLM::for_each_linear(const std::function<void(const std::string&, nn::Linear&)>& fn) {
  drop_fused_decoders();
  for (size_t i = 0; i < layers_.size(); ++i) {
    const std::string layer = "model.layers." + std::to_string(i) + ".";
    each_projection(*layers_[i], [&](const char* name, nn::Linear& p) { fn(layer + name, p); });
  }
}

bool CausalLM::has_adapters() const {
  bool any = false;
  for (const auto& l : layers_)
    each_projection(std::as_const(*l), [&](const char*, const nn::Linear& p) { any = any || p.lora.has_value(); });
  return any;
}

void CausalLM::visit(const std::string& prefix, const nn::ParamVisitor& fn) {
  drop_fused_decoders();  // the visitor may replace the weights they were built from
  const std::string model = nn::join_name(prefix, "model");
  embed_tokens_.visit(nn::join_name(model, "embed_tokens"), fn);
  for (size_t i = 0; i < layers_.size(); ++i)
    layers_[i]->visit(nn::join_name(model, "layers." + std::to_string(i)), fn);
  norm_.visit(nn::join_name(model, "norm"), fn);
  if (lm_head_) lm_head_->visit(nn::join_name(prefix, "lm_head"), fn);
}

}  // namespace lmx::models
