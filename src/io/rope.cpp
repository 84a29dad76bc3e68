// RoPE inverse frequencies (spec §1.4), replicating HF's float32 tensor arithmetic.
#include <cmath>
#include <numbers>

#include "core/error.h"
#include "io/config.h"

namespace lmx::io {

std::vector<float> rope_inv_freq(const RopeParams& p, int64_t head_dim) {
  LMX_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope", "head_dim must be a positive even number, got ", head_dim);
  // HF: 1 / (base ** (arange(0, d, 2).float() / d)). The python-float base becomes a
  // float32 scalar, so every step below is a float32 operation.
  const float base = float(p.theta);
  const float d = float(head_dim);
  std::vector<float> inv(size_t(head_dim / 2));
  for (size_t i = 0; i < inv.size(); ++i) inv[i] = 1.0f / std::pow(base, float(2 * i) / d);

  if (p.rope_type == "default") return inv;
  const float factor = float(p.factor);
  if (p.rope_type == "linear") {
    for (float& x : inv) x /= factor;
    return inv;
  }
  LMX_CHECK(p.rope_type == "llama3", "rope", "unsupported rope_type '", p.rope_type,
            "' (supported: default, linear, llama3)");
  // Wavelength thresholds are python doubles compared against a float32 tensor, so
  // they are rounded to float32; `a / tensor` is reciprocal(tensor) * a in torch.
  const double l0 = double(p.original_max_position_embeddings);
  const float low_wl = float(l0 / p.low_freq_factor);
  const float high_wl = float(l0 / p.high_freq_factor);
  const float two_pi = float(2.0 * std::numbers::pi);
  const float lo = float(p.low_freq_factor);
  const float band = float(p.high_freq_factor - p.low_freq_factor);
  for (float& x : inv) {
    const float wavelen = (1.0f / x) * two_pi;
    const float scaled = wavelen > low_wl ? x / factor : x;
    const float smooth = ((1.0f / wavelen) * float(l0) - lo) / band;
    const float smoothed = (1.0f - smooth) * scaled / factor + smooth * scaled;
    const bool medium = !(wavelen < high_wl) && !(wavelen > low_wl);  // inclusive band, as HF
    x = medium ? smoothed : scaled;
  }
  return inv;
}

}  // namespace lmx::io
