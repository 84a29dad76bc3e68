// The one dispatch point between ops and backends. Ops validate arguments, allocate
// outputs and arrange views; a backend's Kernels only computes. Every array handed to
// a kernel lives on that backend's device and has the shape documented here.
#pragma once

#include <chrono>
#include <cstdint>
#include <utility>

#include "core/array.h"
#include "ops/fast.h"
#include "ops/fused_decoder.h"
#include "ops/ops.h"

namespace lmx::detail {

enum class ReduceOp { sum, max, min, logsumexp };
enum class RandomKind { uniform, normal };

class Kernels {
 public:
  virtual ~Kernels() = default;

  // Host <-> device. `host` holds src.size() elements of src.dtype(), row-major.
  virtual void upload(const void* host, const Array& dst) = 0;       // dst contiguous
  virtual void download(const Array& src, void* host) = 0;           // src contiguous
  virtual void synchronize() = 0;
  // Timing of device work: start_timer() marks the device's queue, stop_timer() marks it
  // again, waits for that mark and returns the seconds between the two (CUDA: events on
  // the device's stream, so host-side jitter after the work is not counted). The default,
  // for devices whose work runs on the calling thread, reads the host clock around a
  // synchronise. One timer per device at a time.
  virtual void start_timer() {
    synchronize();
    timer_start_ = std::chrono::steady_clock::now();
  }
  virtual double stop_timer() {
    synchronize();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - timer_start_).count();
  }
  // Percent of time the device was busy over the driver's last sample window, or -1 where
  // that is not known (the CPU; a GPU without NVML).
  virtual double utilization() { return -1; }
  // The device's clock (MHz) and power draw (W) now, false where not known. A GPU held at
  // its power cap runs below its top clock, and its speed follows (lmx bench reports both).
  virtual bool clock_and_power(double& mhz, double& watts) {
    (void)mhz, (void)watts;
    return false;
  }

  virtual void fill(const Array& out, double value) = 0;                 // out contiguous
  virtual void arange(const Array& out, double start, double step) = 0;  // out contiguous 1-D
  virtual void random(const Array& out, uint64_t seed, RandomKind kind, float a, float b) = 0;
  // fast::dropout: x contiguous float -> out (x's shape and dtype), element i x·(1 / (1 - p)) in
  // f32 where random's uniform draw i of `seed` is >= p, else x·0, rounded once: the bits of
  // the composition, in one pass. false where the backend has no kernel (the op composes).
  virtual bool dropout(const Array& /*x*/, float /*p*/, uint64_t /*seed*/, const Array& /*out*/) { return false; }

  // dst[i] = cast(src[i]); same shape, any strides on both sides (dst may be a view).
  virtual void copy(const Array& src, const Array& dst) = 0;
  // Same shape everywhere (inputs are broadcast views); out contiguous.
  virtual void unary(UnaryOp op, const Array& in, const Array& out) = 0;
  virtual void binary(BinaryOp op, const Array& a, const Array& b, const Array& out) = 0;
  virtual void where(const Array& cond, const Array& a, const Array& b, const Array& out) = 0;

  // a [B, M, K], b [B, K, N], any strides; out [B, M, N] contiguous. Same dtype.
  virtual void matmul(const Array& a, const Array& b, const Array& out) = 0;

  // in [R, C] contiguous -> out [R] (f32 accumulate; max/min keep the dtype).
  virtual void reduce(ReduceOp op, const Array& in, const Array& out) = 0;
  virtual void argmax(const Array& in, const Array& out) = 0;   // in [R, C] -> out [R] int32
  virtual void softmax(const Array& in, const Array& out) = 0;  // [R, C] contiguous, per row

  // src [P, N, S] contiguous, idx [M] int32/uint32 -> out [P, M, S]. Checks idx < N.
  virtual void take(const Array& src, const Array& idx, const Array& out) = 0;
  // src [P, N, S], idx [P, M, S] -> out [P, M, S] with out[p,m,s] = src[p, idx[p,m,s], s].
  virtual void take_along(const Array& src, const Array& idx, const Array& out) = 0;

  // in [R, C] contiguous -> the first k of each row sorted (values [R, k], indices [R, k]
  // int32), stable. Either output may be empty (not valid()).
  virtual void sort(const Array& in, bool descending, int k, const Array& values,
                    const Array& indices) = 0;
  // logits [R, V] contiguous -> out [R] int32, one draw per row.
  virtual void categorical(const Array& logits, uint64_t seed, const Array& out) = 0;
  // fast::sample_tokens: logits [R, V] contiguous float and a random word a row -> out [R]
  // int32.
  virtual void sample_tokens(const Array& logits, std::span<const uint64_t> words,
                             const fast::SampleFilter& filter, const Array& out) = 0;

  // fast::edit_logits in place: x [R, V] f32 contiguous, starts [R + 1] i32, edits [E, 4]
  // i32 (id, count, the bias's bits, has_bias).
  virtual void edit_logits(const Array& x, const Array& starts, const Array& edits,
                           const fast::Penalties& penalties) = 0;

  // Fused ops; inputs contiguous, outputs contiguous and shaped like x / q.
  virtual void rms_norm(const Array& x, const Array& w, float eps, fast::RmsNormStyle style,
                        const Array& out) = 0;
  virtual void layer_norm(const Array& x, const Array& w, const Array* bias, float eps,
                          const Array& out) = 0;
  virtual void rope(const Array& x, const Array& inv_freq, const Array& offsets, const Array& out) = 0;
  // gate, up, out contiguous, one shape, float dtype.
  virtual void glu(fast::GluActivation act, const Array& gate, const Array& up, const Array& out) = 0;
  // q [B,Hq,Lq,D], k/v [B,Hkv,Lk,D] (any strides on the last-but-one axes), out [B,Hq,Lq,D].
  // q_offsets [B] int32 always given; key_valid [B, Lk] bool or nullptr.
  virtual void attention(const Array& q, const Array& k, const Array& v, float scale, bool causal,
                         int64_t window, const Array& q_offsets, const Array* key_valid,
                         const Array& out) = 0;

  // Optional fusions. A backend without such a kernel, or without one for these shapes,
  // returns false having done nothing, and the op composes the kernels above instead.
  // x [B, L, H, D] contiguous -> out [B, H, L, D]; norm_w [D] (per-head RMSNorm) or null.
  virtual bool rope_heads(const Array& /*x*/, const Array& /*inv_freq*/, const Array& /*offsets*/,
                          const Array* /*norm_w*/, float /*eps*/, fast::RmsNormStyle, const Array& /*out*/) {
    return false;
  }
  // fast::rope_to_cache: q [B, L, Hq, D], k and v [B, L, Hkv, D] contiguous -> q_out
  // [B, Hq, L, D] contiguous, k_out and v_out [B, Hkv, L, D] with a contiguous last axis;
  // q_norm and k_norm [D] or both null, sharing eps and style.
  virtual bool rope_to_cache(const Array& /*q*/, const Array& /*k*/, const Array& /*v*/, const Array& /*inv_freq*/,
                             const Array& /*offsets*/, const Array* /*q_norm*/, const Array* /*k_norm*/,
                             float /*eps*/, fast::RmsNormStyle, const Array& /*q_out*/, const Array& /*k_out*/,
                             const Array& /*v_out*/) {
    return false;
  }
  // fast::self_attention: q [B, L, Hq, D], k, v [B, L, Hkv, D], out [B, L, Hq, D], all
  // contiguous; q_norm and k_norm [D] or both null, sharing eps and style.
  virtual bool self_attention(const Array& /*q*/, const Array& /*k*/, const Array& /*v*/, const Array& /*inv_freq*/,
                              const Array& /*offsets*/, const Array* /*q_norm*/, const Array* /*k_norm*/,
                              float /*eps*/, fast::RmsNormStyle, float /*scale*/, int64_t /*window*/,
                              const Array& /*out*/) {
    return false;
  }
  // fast::gated_projection: x [R, K], w_gate and w_up [N, K], all contiguous and of one
  // float dtype -> out [R, N], or an empty Array (nothing allocated) where it declines.
  virtual Array gated_projection(fast::GluActivation, const Array& /*x*/, const Array& /*w_gate*/,
                                 const Array& /*w_up*/) {
    return {};
  }
  // fast::linear_pair: x [R, K], w0 and w1 [N, K], all contiguous and of one float dtype
  // -> {x·w0ᵀ, x·w1ᵀ} [R, N] each, or two empty Arrays (nothing allocated) where it declines.
  virtual std::pair<Array, Array> linear_pair(const Array& /*x*/, const Array& /*w0*/, const Array& /*w1*/) {
    return {};
  }
  // x, y, sum, normed [R, D] contiguous; w and y_w [D] (y_w may be null).
  virtual bool add_rms_norm(const Array& /*x*/, const Array& /*y*/, const Array* /*y_w*/, const Array& /*w*/,
                            float /*eps*/, fast::RmsNormStyle, const Array& /*sum*/, const Array& /*normed*/) {
    return false;
  }

  // fast::cross_entropy_rows and its gradient (ops/fused_steps.cpp): logits [R, V] and
  // d_logits contiguous, targets [R] i32 in [0, V), loss and g [R] f32. False: not here.
  virtual bool cross_entropy_rows(const Array& /*logits*/, const Array& /*targets*/, const Array& /*loss*/) {
    return false;
  }
  virtual bool cross_entropy_rows_grad(const Array& /*logits*/, const Array& /*targets*/, const Array& /*g*/,
                                       const Array& /*d_logits*/) {
    return false;
  }
  // The tracked fast::glu's gradient (autograd/vjp.cpp): d_gate and d_up from the output's
  // gradient d, all contiguous in gate's dtype. False: not here (the ops then run).
  virtual bool glu_grad(fast::GluActivation /*act*/, const Array& /*gate*/, const Array& /*up*/, const Array& /*d*/,
                        const Array& /*d_gate*/, const Array& /*d_up*/) {
    return false;
  }
  // The tracked fast::rms_norm's gradient for x (ops/fused_steps.cpp): x, g (the output's
  // gradient) and dx [R, D] contiguous in x's dtype, w [D]. False: not here (the ops then run).
  virtual bool rms_norm_grad(const Array& /*x*/, const Array& /*w*/, const Array& /*g*/, float /*eps*/,
                             fast::RmsNormStyle /*style*/, const Array& /*dx*/) {
    return false;
  }
  // The tracked fast::scaled_dot_product_attention (ops/attention_step.cpp): attention as its
  // composition rounds it (scores and probabilities in the dtype, softmax in f32), and its
  // gradient from the output's gradient g, the probabilities made again. q, g, out and dq
  // [B, Hq, Lq, D], k, v, dk and dv [B, Hkv, Lk, D], all contiguous; q_offsets [B] i32,
  // key_valid [B, Lk] bool or null. False: not here, nothing written (the ops then run).
  virtual bool eager_attention(const Array& /*q*/, const Array& /*k*/, const Array& /*v*/, float /*scale*/,
                               bool /*causal*/, int64_t /*window*/, const Array& /*q_offsets*/,
                               const Array* /*key_valid*/, const Array& /*out*/) {
    return false;
  }
  virtual bool eager_attention_grad(const Array& /*q*/, const Array& /*k*/, const Array& /*v*/, const Array& /*g*/,
                                    float /*scale*/, bool /*causal*/, int64_t /*window*/, const Array& /*q_offsets*/,
                                    const Array* /*key_valid*/, const Array& /*dq*/, const Array& /*dk*/,
                                    const Array& /*dv*/) {
    return false;
  }

  // One AdamW update of one parameter, every array contiguous and of one shape: g the
  // gradient (any float dtype), master, m and v f32, written in place, and param (the master
  // rounded to its dtype; the master itself where it is f32). The factors are those of
  // train::AdamW::step, each applied as one f32 operation in its order. False: not fused here.
  struct AdamWFactors {
    float beta1, one_minus_beta1, beta2, one_minus_beta2, decay, step_size, inv_bias2, eps;
  };
  virtual bool adamw(const Array& /*g*/, const Array& /*master*/, const Array& /*m*/, const Array& /*v*/,
                     const Array& /*param*/, const AdamWFactors& /*f*/) {
    return false;
  }
  // fast::dequantize: w's arrays contiguous on this device -> out [N, K] contiguous float.
  // false where the backend has no kernel: the op then dequantizes on the CPU.
  virtual bool dequantize(const fast::QuantizedMatrix& /*w*/, const Array& /*out*/) { return false; }
  // fast::quantized_matmul: x [R, K] contiguous float, w's arrays contiguous -> out [R, N]
  // contiguous in x's dtype. false where it declines: the op then multiplies by
  // dequantize(w) (correct, and as slow as a dequantized copy every call).
  virtual bool quantized_matmul(const Array& /*x*/, const fast::QuantizedMatrix& /*w*/, const Array& /*out*/) {
    return false;
  }

  // The backend's fused decode step for a model with these weights (ops/fused_decoder.h),
  // stepping `rows` sequences at once, or nullptr where it has none, or none for these
  // weights or that many sequences: callers then use the plain ops.
  virtual bool has_fused_decoder(Dtype) const { return false; }
  virtual std::unique_ptr<fast::FusedDecoder> fused_decoder(const fast::FusedDecoderWeights&, int /*rows*/) {
    return nullptr;
  }

 private:
  std::chrono::steady_clock::time_point timer_start_{};
};

// The kernels for a device; throws "[device] ..." when its backend is not built or
// no such device exists.
Kernels& kernels_for(Device d);

}  // namespace lmx::detail
