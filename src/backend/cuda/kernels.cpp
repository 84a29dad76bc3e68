// The CUDA backend behind the Kernels interface: one CudaKernels per visible device.
#include <memory>
#include <mutex>
#include <vector>

#include "backend/cuda/cuda_ops.h"
#include "core/error.h"

namespace lmx::cuda {
namespace {

// Arrays may be created on cuda before any op asks for kernels, so the allocator is
// registered when the library loads. That makes no CUDA call: a machine without a GPU
// only learns of it when it allocates.
const bool kAllocatorRegistered = [] {
  register_cuda_allocator();
  return true;
}();

class CudaKernels final : public detail::Kernels {
 public:
  explicit CudaKernels(int device) : device_(device) {}

  double utilization() override { return nvml_utilization(device_); }
  bool clock_and_power(double& mhz, double& watts) override { return nvml_clock_and_power(device_, mhz, watts); }

  void upload(const void* host, const Array& dst) override {
    const Context& c = ctx();
    // From pageable memory this returns once the bytes are staged: the caller may free `host`.
    check(cudaMemcpyAsync(dst.raw(), host, dst.nbytes(), cudaMemcpyHostToDevice, c.stream),
          "cudaMemcpyAsync");
  }
  void download(const Array& src, void* host) override {
    const Context& c = ctx();
    check(cudaMemcpyAsync(host, src.raw(), src.nbytes(), cudaMemcpyDeviceToHost, c.stream),
          "cudaMemcpyAsync");
    cuda::synchronize(c);
  }
  void synchronize() override { cuda::synchronize(ctx()); }
  void start_timer() override {
    const Context& c = ctx();
    if (!timer_[0])
      for (cudaEvent_t& e : timer_) check(cudaEventCreate(&e), "cudaEventCreate");
    check(cudaEventRecord(timer_[0], c.stream), "cudaEventRecord");
  }
  double stop_timer() override {
    LMX_CHECK(timer_[0], "timer", "stop_timer() without start_timer() on cuda:", device_);
    const Context& c = ctx();
    check(cudaEventRecord(timer_[1], c.stream), "cudaEventRecord");
    check(cudaEventSynchronize(timer_[1]), "cudaEventSynchronize");
    raise_fault(c);
    float ms = 0;
    check(cudaEventElapsedTime(&ms, timer_[0], timer_[1]), "cudaEventElapsedTime");
    return double(ms) / 1e3;
  }
  void fill(const Array& out, double v) override { cuda::fill(ctx(), out, v); }
  void arange(const Array& out, double start, double step) override {
    cuda::arange(ctx(), out, start, step);
  }
  void random(const Array& out, uint64_t seed, detail::RandomKind kind, float a, float b) override {
    cuda::random(ctx(), out, seed, kind, a, b);
  }
  bool dropout(const Array& x, float p, uint64_t seed, const Array& out) override {
    return cuda::dropout(ctx(), x, p, seed, out);
  }
  void copy(const Array& src, const Array& dst) override { cuda::copy(ctx(), src, dst); }
  void unary(UnaryOp op, const Array& in, const Array& out) override {
    cuda::unary(ctx(), op, in, out);
  }
  void binary(BinaryOp op, const Array& a, const Array& b, const Array& out) override {
    cuda::binary(ctx(), op, a, b, out);
  }
  void where(const Array& c, const Array& a, const Array& b, const Array& out) override {
    cuda::where(ctx(), c, a, b, out);
  }
  void matmul(const Array& a, const Array& b, const Array& out) override {
    cuda::matmul(ctx(), a, b, out);
  }
  void reduce(detail::ReduceOp op, const Array& in, const Array& out) override {
    cuda::reduce(ctx(), op, in, out);
  }
  void argmax(const Array& in, const Array& out) override { cuda::argmax(ctx(), in, out); }
  void softmax(const Array& in, const Array& out) override { cuda::softmax(ctx(), in, out); }
  void take(const Array& src, const Array& idx, const Array& out) override {
    cuda::take(ctx(), src, idx, out);
  }
  void take_along(const Array& src, const Array& idx, const Array& out) override {
    cuda::take_along(ctx(), src, idx, out);
  }
  void sort(const Array& in, bool desc, int k, const Array& values, const Array& indices) override {
    cuda::sort(ctx(), in, desc, k, values, indices);
  }
  void categorical(const Array& logits, uint64_t seed, const Array& out) override {
    cuda::categorical(ctx(), logits, seed, out);
  }
  void edit_logits(const Array& x, const Array& starts, const Array& edits,
                   const fast::Penalties& p) override {
    cuda::edit_logits(ctx(), x, starts, edits, p);
  }
  void sample_tokens(const Array& logits, std::span<const uint64_t> words,
                     const fast::SampleFilter& f, const Array& out) override {
    cuda::sample_tokens(ctx(), logits, words, f, {out.data<int32_t>(), 1});
  }
  void rms_norm(const Array& x, const Array& w, float eps, fast::RmsNormStyle style,
                const Array& out) override {
    cuda::rms_norm(ctx(), x, w, eps, style, out);
  }
  void layer_norm(const Array& x, const Array& w, const Array* bias, float eps,
                  const Array& out) override {
    cuda::layer_norm(ctx(), x, w, bias, eps, out);
  }
  bool adamw(const Array& g, const Array& master, const Array& m, const Array& v, const Array& param,
             const AdamWFactors& f) override {
    cuda::adamw(ctx(), g, master, m, v, param, f);
    return true;
  }
  void glu(fast::GluActivation act, const Array& gate, const Array& up, const Array& out) override {
    cuda::glu(ctx(), act, gate, up, out);
  }
  Array gated_projection(fast::GluActivation act, const Array& x, const Array& w_gate, const Array& w_up) override {
    return cuda::gated_projection(ctx(), act, x, w_gate, w_up);
  }
  std::pair<Array, Array> linear_pair(const Array& x, const Array& w0, const Array& w1) override {
    return cuda::matmul_pair(ctx(), x, w0, w1);  // decode steps and short prompts only
  }
  void rope(const Array& x, const Array& inv_freq, const Array& offsets,
            const Array& out) override {
    cuda::rope(ctx(), x, inv_freq, offsets, out);
  }
  bool rope_heads(const Array& x, const Array& inv_freq, const Array& offsets, const Array* norm_w, float eps,
                  fast::RmsNormStyle style, const Array& out) override {
    return cuda::rope_heads(ctx(), x, inv_freq, offsets, norm_w, eps, style, out);
  }
  bool rope_to_cache(const Array& q, const Array& k, const Array& v, const Array& inv_freq, const Array& offsets,
                     const Array* q_norm, const Array* k_norm, float eps, fast::RmsNormStyle style,
                     const Array& q_out, const Array& k_out, const Array& v_out) override {
    return cuda::rope_to_cache(ctx(), q, k, v, inv_freq, offsets, q_norm, k_norm, eps, style, q_out, k_out, v_out);
  }
  bool self_attention(const Array& q, const Array& k, const Array& v, const Array& inv_freq, const Array& offsets,
                      const Array* q_norm, const Array* k_norm, float eps, fast::RmsNormStyle style, float scale,
                      int64_t window, const Array& out) override {
    return cuda::self_attention(ctx(), q, k, v, inv_freq, offsets, q_norm, k_norm, eps, style, scale, window, out);
  }
  bool add_rms_norm(const Array& x, const Array& y, const Array* y_w, const Array& w, float eps,
                    fast::RmsNormStyle style, const Array& sum, const Array& normed) override {
    return cuda::add_rms_norm(ctx(), x, y, y_w, w, eps, style, sum, normed);
  }
  bool cross_entropy_rows(const Array& logits, const Array& targets, const Array& loss) override {
    cuda::cross_entropy_rows(ctx(), logits, targets, loss);
    return true;
  }
  bool cross_entropy_rows_grad(const Array& logits, const Array& targets, const Array& g,
                               const Array& d_logits) override {
    cuda::cross_entropy_rows_grad(ctx(), logits, targets, g, d_logits);
    return true;
  }
  bool glu_grad(fast::GluActivation act, const Array& gate, const Array& up, const Array& d, const Array& d_gate,
                const Array& d_up) override {
    cuda::glu_grad(ctx(), act, gate, up, d, d_gate, d_up);
    return true;
  }
  bool rms_norm_grad(const Array& x, const Array& w, const Array& g, float eps, fast::RmsNormStyle style,
                     const Array& dx) override {
    cuda::rms_norm_grad(ctx(), x, w, g, eps, style, dx);
    return true;
  }
  bool eager_attention(const Array& q, const Array& k, const Array& v, float scale, bool causal, int64_t window,
                       const Array& q_offsets, const Array* key_valid, const Array& out) override {
    return cuda::eager_attention(ctx(), q, k, v, scale, causal, window, q_offsets, key_valid, out);
  }
  bool eager_attention_grad(const Array& q, const Array& k, const Array& v, const Array& g, float scale, bool causal,
                            int64_t window, const Array& q_offsets, const Array* key_valid, const Array& dq,
                            const Array& dk, const Array& dv) override {
    return cuda::eager_attention_grad(ctx(), q, k, v, g, scale, causal, window, q_offsets, key_valid, dq, dk, dv);
  }
  void attention(const Array& q, const Array& k, const Array& v, float scale, bool causal,
                 int64_t window, const Array& q_offsets, const Array* key_valid,
                 const Array& out) override {
    cuda::attention(ctx(), q, k, v, scale, causal, window, q_offsets, key_valid, out);
  }
  bool has_fused_decoder(Dtype t) const override { return t == Dtype::bf16; }
  std::unique_ptr<fast::FusedDecoder> fused_decoder(const fast::FusedDecoderWeights& w, int rows) override {
    return make_fused_decoder(device_, w, rows);
  }

 private:
  // Makes the device current for this thread: outputs and scratch are allocated there.
  const Context& ctx() const { return context(device_); }
  int device_;
  cudaEvent_t timer_[2] = {nullptr, nullptr};  // start_timer, stop_timer; kept for the process
};

}  // namespace
}  // namespace lmx::cuda

namespace lmx::detail {

bool cuda_built() { return true; }
int cuda_device_count() { return cuda::device_count(); }

// nullptr when there is no such device (kernels_for says how many there are); throws, with
// CUDA's reason, when the device is visible but cannot be used.
Kernels* cuda_kernels(int device_index) {
  static std::mutex mu;
  static std::vector<std::unique_ptr<cuda::CudaKernels>>
      kernels;  // one per device, made on first use
  const int count = cuda::device_count();
  if (device_index < 0 || device_index >= count) return nullptr;
  std::lock_guard lock(mu);
  if (kernels.empty()) kernels.resize(size_t(count));
  auto& k = kernels[size_t(device_index)];
  if (!k) {
    try {
      cuda::context(device_index);  // fails here, not in the first op, when the device is unusable
    } catch (const Error& e) {
      fail("device", "cuda:", device_index, " is visible but cannot be used: ", e.what());
    }
    k = std::make_unique<cuda::CudaKernels>(device_index);
  }
  return k.get();
}

}  // namespace lmx::detail
