// MLX affine-quantized matrices: argument checks, dispatch, and the fallbacks (a
// dequantized copy) that define what the kernels compute.
#include <algorithm>

#include "ops/fast.h"
#include "ops/op_util.h"

namespace lmx::fast {

void check_quantized(const QuantizedMatrix& w, const char* op, const std::string& what) {
  LMX_CHECK(w.packed.valid() && w.scales.valid() && w.biases.valid(), op, what,
            ": a quantized matrix needs its packed codes, scales and biases");
  constexpr int kBits[] = {2, 3, 4, 5, 6, 8};
  LMX_CHECK(std::find(std::begin(kBits), std::end(kBits), w.bits) != std::end(kBits), op, what, ": ", w.bits,
            "-bit codes are not an MLX affine width (2, 3, 4, 5, 6 or 8)");
  LMX_CHECK(w.group_size == 32 || w.group_size == 64 || w.group_size == 128, op, what, ": group size ",
            w.group_size, " is not 32, 64 or 128");
  LMX_CHECK(w.packed.dtype() == Dtype::u32 && w.packed.ndim() == 2, op, what, ": the packed codes must be a 2-D ",
            "uint32 array, got ", shape_str(w.packed.shape()), " ", dtype_name(w.packed.dtype()));
  LMX_CHECK(is_float(w.scales.dtype()) && w.biases.dtype() == w.scales.dtype(), op, what,
            ": scales and biases must be floats of one dtype, got ", dtype_name(w.scales.dtype()), " and ",
            dtype_name(w.biases.dtype()));
  // 32 codes fill `bits` words whatever the width, so a row of K codes is K·bits/32 words.
  const int64_t n = w.packed.shape(0), words = w.packed.shape(1);
  LMX_CHECK(words * 32 % w.bits == 0 && (words * 32 / w.bits) % w.group_size == 0, op, what, ": ", words,
            " words a row do not hold whole groups of ", w.group_size, " ", w.bits, "-bit codes");
  const Shape groups{n, words * 32 / w.bits / w.group_size};
  LMX_CHECK(w.scales.shape() == groups && w.biases.shape() == groups, op, what, ": scales ",
            shape_str(w.scales.shape()), " and biases ", shape_str(w.biases.shape()), " must be ",
            shape_str(groups), " for codes ", shape_str(w.packed.shape()), " at ", w.bits, " bits, groups of ",
            w.group_size);
  detail::check_same_device(w.packed, w.scales, op);
  detail::check_same_device(w.packed, w.biases, op);
}

namespace {

QuantizedMatrix contiguous_on(const QuantizedMatrix& w, Device d) {
  QuantizedMatrix c = w;
  c.packed = contiguous(to_device(w.packed, d));
  c.scales = contiguous(to_device(w.scales, d));
  c.biases = contiguous(to_device(w.biases, d));
  return c;
}

}  // namespace

Array dequantize(const QuantizedMatrix& w, Dtype dtype) {
  check_quantized(w, "dequantize", "w");
  LMX_CHECK(is_float(dtype), "dequantize", "the output dtype must be a float, got ", dtype_name(dtype));
  const Device d = w.packed.device();
  Array out({w.rows(), w.cols()}, dtype, d);
  if (w.rows() == 0 || w.cols() == 0) return out;
  if (detail::kernels_for(d).dequantize(contiguous_on(w, d), out)) return out;
  // A device without the kernel: unpack on the CPU (a load-time path, not a per-step one),
  // with the declined output freed first, so that the device never holds two copies.
  out = Array();
  Array host({w.rows(), w.cols()}, dtype, Device::cpu());
  LMX_CHECK(detail::kernels_for(Device::cpu()).dequantize(contiguous_on(w, Device::cpu()), host), "dequantize",
            "the CPU backend has no dequantize kernel");
  return to_device(host, d);
}

Array quantized_matmul(const Array& x, const QuantizedMatrix& w) {
  detail::check_valid(x, "quantized_matmul", "x");
  detail::check_float(x, "quantized_matmul");
  check_quantized(w, "quantized_matmul", "w");
  detail::check_same_device(x, w.packed, "quantized_matmul");
  LMX_CHECK(x.ndim() >= 1 && x.shape(-1) == w.cols(), "quantized_matmul", "x ", shape_str(x.shape()),
            " times a quantized [", w.rows(), ", ", w.cols(), "] weight: the last axis of x must be ", w.cols());
  Shape shape = x.shape();  // [..., N]
  shape.back() = w.rows();
  // One step for the tape whichever path runs: its gradient needs the codes, not a
  // dequantized copy kept until the backward pass.
  const detail::OpRecord record;
  const Array rows = contiguous(reshape(x, {-1, w.cols()}));  // [R, K]
  Array result;
  if (rows.size() == 0 || w.rows() == 0) {
    result = full(shape, 0.0, x.dtype(), x.device());
  } else {
    Array out({rows.shape(0), w.rows()}, x.dtype(), x.device());
    const bool done = detail::kern(x).quantized_matmul(rows, contiguous_on(w, x.device()), out);
    result = done ? reshape(out, shape) : reference::quantized_matmul(x, w);
  }
  record(detail::Step::quantized_matmul, {x, w.packed, w.scales, w.biases}, result, 0, {w.bits, w.group_size});
  return result;
}

namespace reference {

Array quantized_matmul(const Array& x, const QuantizedMatrix& w) {
  // In f32 with the weight dequantized exactly, then rounded once to x's dtype.
  const Array y = matmul(astype(x, Dtype::f32), swapaxes(dequantize(w, Dtype::f32), 0, 1));
  return astype(y, x.dtype());
}

}  // namespace reference
}  // namespace lmx::fast
