// Creation ops, host transfer and memory statistics.
#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

#include "ops/op_util.h"

namespace lmx {
using detail::kern;

Array full(const Shape& shape, double value, Dtype dtype, Device device) {
  Array out(shape, dtype, device);
  kern(out).fill(out, value);
  return out;
}
Array zeros(const Shape& shape, Dtype dtype, Device device) { return full(shape, 0, dtype, device); }
Array ones(const Shape& shape, Dtype dtype, Device device) { return full(shape, 1, dtype, device); }
Array scalar(double value, Dtype dtype, Device device) { return full({}, value, dtype, device); }

Array detail::constant(double value, Dtype dtype, Device device) {
  struct Entry {
    uint64_t bits;  // the value's bits: -0.0 and 0.0 differ, a NaN matches itself
    Dtype dtype;
    Device device;
    Array array;
  };
  constexpr size_t kMost = 256;
  static std::mutex mu;
  static auto* cache = new std::vector<Entry>;  // never freed: no device frees after the backends' teardown
  uint64_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  const std::lock_guard lock(mu);
  for (const Entry& e : *cache)
    if (e.bits == bits && e.dtype == dtype && e.device == device) return e.array;
  Array a = scalar(value, dtype, device);
  if (cache->size() < kMost) cache->push_back({bits, dtype, device, a});
  return a;
}

Array arange(double start, double stop, double step, Dtype dtype, Device device) {
  LMX_CHECK(step != 0, "arange", "step must not be zero");
  const double n = std::ceil((stop - start) / step);
  Array out({int64_t(std::max(0.0, n))}, dtype, device);
  kern(out).arange(out, start, step);
  return out;
}

Array from_host(const void* data, const Shape& shape, Dtype dtype, Device device) {
  Array out(shape, dtype, device);
  LMX_CHECK(data != nullptr || out.size() == 0, "from_host", "null data pointer");
  if (out.size()) kern(out).upload(data, out);
  return out;
}

Array from_floats(const std::vector<float>& v, const Shape& shape, Dtype dtype, Device device) {
  LMX_CHECK(int64_t(v.size()) == numel(shape), "from_floats", v.size(), " values for shape ", shape_str(shape));
  return astype(from_host(v.data(), shape, Dtype::f32, device), dtype);
}

Array random_uniform(const Shape& shape, uint64_t seed, float low, float high, Dtype dtype, Device device) {
  LMX_CHECK(is_float(dtype), "random_uniform", "dtype must be floating-point, got ", dtype_name(dtype));
  LMX_CHECK(low <= high, "random_uniform", "low ", low, " is above high ", high);
  Array out(shape, dtype, device);
  kern(out).random(out, seed, detail::RandomKind::uniform, low, high);
  return out;
}

Array random_normal(const Shape& shape, uint64_t seed, float mean, float stddev, Dtype dtype, Device device) {
  LMX_CHECK(is_float(dtype), "random_normal", "dtype must be floating-point, got ", dtype_name(dtype));
  LMX_CHECK(stddev >= 0, "random_normal", "stddev must be >= 0, got ", stddev);
  Array out(shape, dtype, device);
  kern(out).random(out, seed, detail::RandomKind::normal, mean, stddev);
  return out;
}

Array copy(const Array& a) {
  detail::check_valid(a, "copy");
  const detail::OpRecord record;
  Array out(a.shape(), a.dtype(), a.device());
  kern(a).copy(a, out);
  if (is_float(a.dtype())) record(detail::Step::copy, {a}, out);
  return out;
}

Array contiguous(const Array& a) {
  detail::check_valid(a, "contiguous");
  return a.is_contiguous() ? a : copy(a);
}

Array to_device(const Array& a, Device device) {
  detail::check_valid(a, "to_device");
  if (a.device() == device) return a;
  const Array src = contiguous(a);
  std::vector<std::byte> host(src.nbytes());
  kern(src).download(src, host.data());
  return from_host(host.data(), src.shape(), src.dtype(), device);
}

template <class T>
std::vector<T> to_vector(const Array& a) {
  detail::check_valid(a, "to_vector");
  LMX_CHECK(a.dtype() == dtype_of<T>(), "to_vector", "element type does not match the array's ",
            dtype_name(a.dtype()));
  const Array src = contiguous(a);
  std::vector<T> out(size_t(src.size()));
  if (!out.empty()) kern(src).download(src, out.data());
  return out;
}
template std::vector<float> to_vector(const Array&);
template std::vector<f16_t> to_vector(const Array&);
template std::vector<bf16_t> to_vector(const Array&);
template std::vector<int32_t> to_vector(const Array&);
template std::vector<uint32_t> to_vector(const Array&);
template std::vector<uint8_t> to_vector(const Array&);
template std::vector<int8_t> to_vector(const Array&);

std::vector<float> to_floats(const Array& a) { return to_vector<float>(astype(a, Dtype::f32)); }

float item(const Array& a) {
  LMX_CHECK(a.size() == 1, "item", "expects one element, got shape ", shape_str(a.shape()));
  return to_floats(a)[0];
}

MemoryStats memory_stats(Device device) { return allocator_for(device).stats(); }

}  // namespace lmx
