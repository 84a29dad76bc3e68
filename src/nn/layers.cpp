#include "nn/layers.h"

#include "core/error.h"
#include "core/random.h"

namespace lmx::nn {
namespace {

thread_local std::optional<uint64_t> dropout_seed;

// x [..., in] dropped out (fast::dropout) with the adapter's own mask for the scope's seed;
// where no DropoutScope lives, x itself.
Array dropped(const Array& x, const LoRA& l) {
  const std::optional<uint64_t> seed = DropoutScope::seed();
  return l.dropout <= 0 || !seed ? x : fast::dropout(x, l.dropout, counter_bits(*seed, l.stream));
}

}  // namespace

DropoutScope::DropoutScope(uint64_t seed) : outer_(dropout_seed) { dropout_seed = seed; }
DropoutScope::~DropoutScope() { dropout_seed = outer_; }
std::optional<uint64_t> DropoutScope::seed() { return dropout_seed; }

Array Linear::forward(const Array& x) const {
  // x·Wᵀ through a transposed view: the weight is never copied.
  Array y = is_quantized() ? fast::quantized_matmul(x, quantized) : matmul(x, swapaxes(weight, 0, 1));
  if (bias) y = add(y, *bias);
  if (lora) {  // [..., r] then [..., out], scaled in the adapter's dtype and added, as PEFT does
    const Array low = matmul(matmul(dropped(x, *lora), swapaxes(lora->a, 0, 1)), swapaxes(lora->b, 0, 1));
    y = add(y, multiply(low, scalar(lora->scale, low.dtype(), low.device())));
  }
  return y;
}

void Linear::fuse_lora(bool dequantize) {
  if (!lora) return;
  // W [out, in] in f32: a quantized weight as its codes give it (scale · q + bias, exactly).
  const Array w = is_quantized() ? fast::dequantize(quantized, Dtype::f32) : astype(weight, Dtype::f32);
  const Array delta = matmul(astype(lora->b, Dtype::f32), astype(lora->a, Dtype::f32));  // [out, in]
  const Array fused = add(w, multiply(delta, scalar(lora->scale, Dtype::f32, delta.device())));
  if (!is_quantized()) {
    weight = astype(fused, weight.dtype());
  } else if (dequantize) {
    weight = astype(fused, quantized.scales.dtype());
    quantized = {};
  } else {  // the same width and groups, codes fitted to the fused values
    quantized = fast::quantize(fused, quantized.bits, quantized.group_size, quantized.scales.dtype());
  }
  lora.reset();
}

void Linear::visit(const std::string& prefix, const ParamVisitor& fn) {
  fn(join_name(prefix, "weight"), weight, {out_, in_}, &quantized);  // the loader fills one of the two
  if (has_bias_) {
    if (!bias) bias.emplace();
    fn(join_name(prefix, "bias"), *bias, {out_}, nullptr);
  }
}

Array Embedding::forward(const Array& ids) const {
  if (!is_quantized()) return embedding(weight, ids);
  // Only the rows looked up are dequantized: [n] ids -> [n, dim] in the scales' dtype.
  const Array flat = reshape(ids, {-1});
  fast::QuantizedMatrix rows = quantized;
  rows.packed = take(quantized.packed, flat, 0);
  rows.scales = take(quantized.scales, flat, 0);
  rows.biases = take(quantized.biases, flat, 0);
  Shape shape = ids.shape();
  shape.push_back(dim_);
  return reshape(fast::dequantize(rows, quantized.scales.dtype()), shape);
}

Array Embedding::as_linear(const Array& x) const {
  return is_quantized() ? fast::quantized_matmul(x, quantized) : matmul(x, swapaxes(weight, 0, 1));
}

void Embedding::visit(const std::string& prefix, const ParamVisitor& fn) {
  fn(join_name(prefix, "weight"), weight, {vocab_, dim_}, &quantized);
}

void RMSNorm::visit(const std::string& prefix, const ParamVisitor& fn) {
  fn(join_name(prefix, "weight"), weight, {dim_}, nullptr);
}

MLP::MLP(int64_t hidden, int64_t intermediate, Activation act, bool bias)
    : gate_proj(hidden, intermediate, bias),
      up_proj(hidden, intermediate, bias),
      down_proj(intermediate, hidden, bias),
      act_(act) {}

Array MLP::forward(const Array& x) const {
  const fast::GluActivation act = act_ == Activation::silu ? fast::GluActivation::silu : fast::GluActivation::gelu_tanh;
  // [B, L, I]: one GEMM with the activation in its epilogue where the backend has one.
  const bool separate =
      gate_proj.bias || gate_proj.is_quantized() || up_proj.is_quantized() || gate_proj.lora || up_proj.lora;
  const Array h = separate ? fast::glu(gate_proj.forward(x), up_proj.forward(x), act)
                           : fast::gated_projection(x, gate_proj.weight, up_proj.weight, act);
  return down_proj.forward(h);
}

void MLP::visit(const std::string& prefix, const ParamVisitor& fn) {
  gate_proj.visit(join_name(prefix, "gate_proj"), fn);
  up_proj.visit(join_name(prefix, "up_proj"), fn);
  down_proj.visit(join_name(prefix, "down_proj"), fn);
}

Attention::Attention(const AttentionSpec& s)
    : q_proj(s.hidden, s.n_heads * s.head_dim, s.bias),
      k_proj(s.hidden, s.n_kv_heads * s.head_dim, s.bias),
      v_proj(s.hidden, s.n_kv_heads * s.head_dim, s.bias),
      o_proj(s.n_heads * s.head_dim, s.hidden, s.bias),
      spec_(s) {
  LMX_CHECK(s.n_kv_heads > 0 && s.n_heads % s.n_kv_heads == 0, "attention", "num_attention_heads ", s.n_heads,
            " is not a multiple of num_key_value_heads ", s.n_kv_heads);
  LMX_CHECK(int64_t(s.inv_freq.size()) * 2 == s.head_dim, "attention", "RoPE frequencies for head_dim ",
            s.head_dim, " expected ", s.head_dim / 2, ", got ", s.inv_freq.size());
  if (s.qk_norm) {
    q_norm.emplace(s.head_dim, s.norm_eps, s.norm_style);
    k_norm.emplace(s.head_dim, s.norm_eps, s.norm_style);
  }
  inv_freq_ = from_vector(s.inv_freq, {int64_t(s.inv_freq.size())});
}

Array RowValues::of(int64_t value) {
  for (const auto& [v, a] : made_)
    if (v == value) return a;
  made_.emplace_back(value, full({rows_}, double(value), Dtype::i32, device_));
  return made_.back().second;
}

Array Attention::forward(const Array& x, LayerCache* cache, const SequenceBatch* batch, const Array& at,
                         RowValues* rows) const {
  const int64_t b = x.shape(0), l = x.shape(1), hd = spec_.head_dim;
  LMX_CHECK(!rows || rows->rows() == b, "attention", "per-row values for ", rows ? rows->rows() : 0,
            " rows, but x has ", b);
  // o [B*L, heads*hd] -> the projected rows that are read: all, or those at `at`.
  auto project = [&](const Array& o) { return o_proj.forward(at.valid() ? take(o, at, 0) : o); };
  // [B, L, heads, hd]
  const Array q_tok = reshape(q_proj.forward(x), {b, l, spec_.n_heads, hd});
  // k and v: one launch for both where the backend pairs them (decode steps).
  const bool separate = k_proj.bias || k_proj.is_quantized() || v_proj.is_quantized() || k_proj.lora || v_proj.lora;
  const auto [k_rows, v_rows] = separate ? std::pair{k_proj.forward(x), v_proj.forward(x)}
                                         : fast::linear_pair(x, k_proj.weight, v_proj.weight);
  const Array k_tok = reshape(k_rows, {b, l, spec_.n_kv_heads, hd});
  const Array v_tok = reshape(v_rows, {b, l, spec_.n_kv_heads, hd});
  const Array freqs = inv_freq(x.device());
  auto per_row = [&](int64_t v) { return rows ? rows->of(v) : full({b}, double(v), Dtype::i32, x.device()); };
  // RoPE positions continue from what the cache holds (minus each row's padding).
  const Array pos = batch ? batch->positions : per_row(cache ? cache->next_position() : 0);
  const std::optional<fast::HeadNorm> qn = q_norm ? std::optional(q_norm->per_head()) : std::nullopt;
  const std::optional<fast::HeadNorm> kn = k_norm ? std::optional(k_norm->per_head()) : std::nullopt;
  if (!cache && !batch) {  // a whole sequence (classification, scoring): nothing kept for later tokens
    fast::SelfAttention sa{freqs, pos, qn ? &*qn : nullptr, kn ? &*kn : nullptr, spec_.scale, spec_.window};
    const Array o = fast::self_attention(q_tok, k_tok, v_tok, sa);  // [B, L, H, hd]
    const Array out = project(reshape(o, {b * l, spec_.n_heads * hd}));
    return at.valid() ? out : reshape(out, {b, l, -1});
  }
  // q [B, heads, L, hd]: normed per head (Qwen3), rotated and transposed in one pass; k too.
  // Where the cache has room in place, k and v go straight into it in the same launch.
  Array q;
  LayerCache::View kv;
  const fast::CacheSlots slots =
      cache ? cache->slots({b, spec_.n_kv_heads, l, hd}, k_tok.dtype(), k_tok.device()) : fast::CacheSlots{};
  if (slots.k.valid()) {
    q = fast::rope_to_cache(q_tok, k_tok, v_tok, freqs, pos, qn ? &*qn : nullptr, kn ? &*kn : nullptr, slots);
    kv = cache->stored(l);
  } else {
    q = fast::rope_heads(q_tok, freqs, pos, qn ? &*qn : nullptr);
    const Array k = fast::rope_heads(k_tok, freqs, pos, kn ? &*kn : nullptr);
    const Array vt = contiguous(swapaxes(v_tok, 1, 2));
    kv = cache ? cache->update(k, vt) : LayerCache::View{k, vt, 0};
  }
  fast::AttentionMask mask;
  mask.causal = !kv.all_visible;
  mask.window = kv.all_visible ? 0 : spec_.window;
  mask.q_offsets = per_row(kv.q_offset);
  if (batch) mask.key_valid = batch->key_valid;
  const Array o = fast::scaled_dot_product_attention(q, kv.k, kv.v, spec_.scale, mask);  // [B, H, L, hd]
  const Array out = project(reshape(swapaxes(o, 1, 2), {b * l, spec_.n_heads * hd}));
  return at.valid() ? out : reshape(out, {b, l, -1});
}

Array Attention::inv_freq(Device d) const {
  if (d == inv_freq_.device()) return inv_freq_;
  std::lock_guard lock(inv_freq_mu_);  // forward() may run on several threads
  if (!inv_freq_on_device_.valid() || inv_freq_on_device_.device() != d) inv_freq_on_device_ = to_device(inv_freq_, d);
  return inv_freq_on_device_;
}

void Attention::visit(const std::string& prefix, const ParamVisitor& fn) {
  q_proj.visit(join_name(prefix, "q_proj"), fn);
  k_proj.visit(join_name(prefix, "k_proj"), fn);
  v_proj.visit(join_name(prefix, "v_proj"), fn);
  o_proj.visit(join_name(prefix, "o_proj"), fn);
  if (q_norm) {
    q_norm->visit(join_name(prefix, "q_norm"), fn);
    k_norm->visit(join_name(prefix, "k_norm"), fn);
  }
}

}  // namespace lmx::nn
