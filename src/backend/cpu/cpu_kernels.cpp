// The CPU backend behind the Kernels interface.
#include <cstring>

#include "backend/cpu/cpu_ops.h"

namespace lmx::cpu {
namespace {

class CpuKernels final : public detail::Kernels {
 public:
  void upload(const void* host, const Array& dst) override { std::memcpy(dst.raw(), host, dst.nbytes()); }
  void download(const Array& src, void* host) override { std::memcpy(host, src.raw(), src.nbytes()); }
  void synchronize() override {}
  void fill(const Array& out, double v) override { cpu::fill(out, v); }
  void arange(const Array& out, double start, double step) override { cpu::arange(out, start, step); }
  void random(const Array& out, uint64_t seed, detail::RandomKind kind, float a, float b) override {
    cpu::random(out, seed, kind, a, b);
  }
  bool dropout(const Array& x, float p, uint64_t seed, const Array& out) override {
    return cpu::dropout(x, p, seed, out);
  }
  void copy(const Array& src, const Array& dst) override { cpu::copy(src, dst); }
  void unary(UnaryOp op, const Array& in, const Array& out) override { cpu::unary(op, in, out); }
  void binary(BinaryOp op, const Array& a, const Array& b, const Array& out) override {
    cpu::binary(op, a, b, out);
  }
  void where(const Array& c, const Array& a, const Array& b, const Array& out) override {
    cpu::where(c, a, b, out);
  }
  void matmul(const Array& a, const Array& b, const Array& out) override { cpu::matmul(a, b, out); }
  void reduce(detail::ReduceOp op, const Array& in, const Array& out) override { cpu::reduce(op, in, out); }
  void argmax(const Array& in, const Array& out) override { cpu::argmax(in, out); }
  void softmax(const Array& in, const Array& out) override { cpu::softmax(in, out); }
  bool cross_entropy_rows(const Array& logits, const Array& targets, const Array& loss) override {
    return cpu::cross_entropy_rows(logits, targets, loss);
  }
  bool cross_entropy_rows_grad(const Array& logits, const Array& targets, const Array& g, const Array& d) override {
    return cpu::cross_entropy_rows_grad(logits, targets, g, d);
  }
  void take(const Array& src, const Array& idx, const Array& out) override { cpu::take(src, idx, out); }
  void take_along(const Array& src, const Array& idx, const Array& out) override {
    cpu::take_along(src, idx, out);
  }
  void sort(const Array& in, bool desc, int k, const Array& values, const Array& indices) override {
    cpu::sort(in, desc, k, values, indices);
  }
  void categorical(const Array& logits, uint64_t seed, const Array& out) override {
    cpu::categorical(logits, seed, out);
  }
  void edit_logits(const Array& x, const Array& starts, const Array& edits,
                   const fast::Penalties& p) override {
    cpu::edit_logits(x, starts, edits, p);
  }
  void sample_tokens(const Array& logits, std::span<const uint64_t> words,
                     const fast::SampleFilter& f, const Array& out) override {
    cpu::sample_tokens(logits, words, f, out);
  }
  void rms_norm(const Array& x, const Array& w, float eps, fast::RmsNormStyle style, const Array& out) override {
    cpu::rms_norm(x, w, eps, style, out);
  }
  void layer_norm(const Array& x, const Array& w, const Array* bias, float eps, const Array& out) override {
    cpu::layer_norm(x, w, bias, eps, out);
  }
  void glu(fast::GluActivation act, const Array& gate, const Array& up, const Array& out) override {
    cpu::glu(act, gate, up, out);
  }
  void rope(const Array& x, const Array& inv_freq, const Array& offsets, const Array& out) override {
    cpu::rope(x, inv_freq, offsets, out);
  }
  bool rope_heads(const Array& x, const Array& inv_freq, const Array& offsets, const Array* norm_w, float eps,
                  fast::RmsNormStyle style, const Array& out) override {
    return cpu::rope_heads(x, inv_freq, offsets, norm_w, eps, style, out);
  }
  bool add_rms_norm(const Array& x, const Array& y, const Array* y_w, const Array& w, float eps,
                    fast::RmsNormStyle style, const Array& sum, const Array& normed) override {
    return cpu::add_rms_norm(x, y, y_w, w, eps, style, sum, normed);
  }
  void attention(const Array& q, const Array& k, const Array& v, float scale, bool causal, int64_t window,
                 const Array& q_offsets, const Array* key_valid, const Array& out) override {
    cpu::attention(q, k, v, scale, causal, window, q_offsets, key_valid, out);
  }
  bool dequantize(const fast::QuantizedMatrix& w, const Array& out) override {
    cpu::dequantize(w, out);
    return true;
  }
  bool quantized_matmul(const Array& x, const fast::QuantizedMatrix& w, const Array& out) override {
    return cpu::quantized_matmul(x, w, out);
  }
};

}  // namespace
}  // namespace lmx::cpu

namespace lmx::detail {
Kernels& cpu_kernels() {
  static cpu::CpuKernels k;
  return k;
}
}  // namespace lmx::detail
