// MLX affine-quantized matrices: argument checks, dispatch, and the fallbacks (a
// dequantized copy) that define what the kernels compute.
#include <algorithm>
#include <cmath>
#include <span>

#include "ops/fast.h"
#include "ops/op_util.h"

namespace lmx::fast {
namespace {

// The affine layouts MLX writes and reads.
bool affine_bits(int bits) { return bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8; }
bool affine_group(int group_size) { return group_size == 32 || group_size == 64 || group_size == 128; }

}  // namespace

void check_quantized(const QuantizedMatrix& w, const char* op, const std::string& what) {
  LMX_CHECK(w.packed.valid() && w.scales.valid() && w.biases.valid(), op, what,
            ": a quantized matrix needs its packed codes, scales and biases");
  LMX_CHECK(affine_bits(w.bits), op, what, ": ", w.bits, "-bit codes are not an MLX affine width (2, 3, 4, 5, 6 or 8)");
  LMX_CHECK(affine_group(w.group_size), op, what, ": group size ",
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

namespace {

// v rounded to float, then to `dtype`: the value a stored scale or bias holds.
double stored_as(double v, Dtype dtype) {
  const float f = float(v);
  switch (dtype) {
    case Dtype::bf16: return to_f32(from_f32<bf16_t>(f));
    case Dtype::f16: return to_f32(from_f32<f16_t>(f));
    default: return f;
  }
}

// One group of weights -> its stored (scale, bias) and its codes, in double as the rule is
// written; the codes are fitted to the stored scale and bias, which are what a reader uses.
std::pair<double, double> quantize_group(std::span<const float> group, int bits, Dtype dtype, uint32_t* codes) {
  const double levels = double((1 << bits) - 1);
  const auto [lo_at, hi_at] = std::minmax_element(group.begin(), group.end());
  const double lo = *lo_at, hi = *hi_at;
  // The end of larger magnitude becomes the bias, exactly a code away from 0: the step is
  // negative when it is the top end, so that codes still count up from the bias.
  const bool low_end = std::abs(lo) > std::abs(hi);
  double scale = std::max((hi - lo) / levels, 1e-7);
  if (!low_end) scale = -scale;
  const double edge = low_end ? lo : hi;
  const double q0 = std::floor(edge / scale + 0.5);
  if (q0 != 0) scale = edge / q0;
  const double s = stored_as(scale, dtype), b = stored_as(q0 == 0 ? 0.0 : edge, dtype);
  for (size_t i = 0; i < group.size(); ++i)
    codes[i] = s == 0 ? 0 : uint32_t(std::clamp(std::floor((double(group[i]) - b) / s + 0.5), 0.0, levels));
  return {s, b};
}

}  // namespace

QuantizedMatrix quantize(const Array& w, int bits, int group_size, Dtype dtype) {
  detail::check_valid(w, "quantize", "w");
  detail::check_float(w, "quantize");
  LMX_CHECK(w.ndim() == 2, "quantize", "w must be a matrix [N, K], got ", shape_str(w.shape()));
  LMX_CHECK(is_float(dtype), "quantize", "scales and biases must be a float dtype, got ", dtype_name(dtype));
  QuantizedMatrix q;
  q.bits = bits, q.group_size = group_size;
  const int64_t n = w.shape(0), k = w.shape(1);
  LMX_CHECK(affine_bits(bits) && affine_group(group_size), "quantize", bits, "-bit codes in groups of ", group_size,
            ": MLX's affine widths are 2, 3, 4, 5, 6 and 8 bits, its group sizes 32, 64 and 128");
  LMX_CHECK(k % group_size == 0, "quantize", "w ", shape_str(w.shape()), ": its ", k,
            " columns are not whole groups of ", group_size, " (MLX keeps such a layer unquantized)");
  const std::vector<float> v = to_floats(w);  // [N, K] on the host
  for (size_t i = 0; i < v.size(); ++i)
    LMX_CHECK(std::isfinite(v[i]), "quantize", "w holds ", v[i], " at [", int64_t(i) / k, ", ", int64_t(i) % k,
              "]: only finite weights can be quantized");
  const int64_t groups = k / group_size, words = k * bits / 32;
  std::vector<uint32_t> packed(size_t(n * words), 0), codes(static_cast<size_t>(k));
  std::vector<float> scales(size_t(n * groups)), biases(size_t(n * groups));
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      const std::span<const float> group(v.data() + r * k + g * group_size, size_t(group_size));
      const auto [s, b] = quantize_group(group, bits, dtype, codes.data() + g * group_size);
      scales[size_t(r * groups + g)] = float(s), biases[size_t(r * groups + g)] = float(b);
    }
    // The row's codes as one bitstream, LSB first: code c in bits [c·bits, c·bits + bits),
    // straddling two words where a width does not divide 32.
    uint32_t* row = packed.data() + r * words;
    for (int64_t c = 0; c < k; ++c) {
      const int64_t bit = c * bits, word = bit / 32, shift = bit % 32;
      row[word] |= codes[size_t(c)] << shift;
      if (shift + bits > 32) row[word + 1] |= codes[size_t(c)] >> (32 - shift);
    }
  }
  q.packed = to_device(from_vector(packed, {n, words}), w.device());
  q.scales = to_device(from_floats(scales, {n, groups}, dtype), w.device());
  q.biases = to_device(from_floats(biases, {n, groups}, dtype), w.device());
  return q;
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
