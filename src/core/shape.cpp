#include "core/shape.h"

#include "core/device.h"
#include "core/error.h"

namespace lmx {

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Strides row_major_strides(const Shape& s) {
  Strides st(s.size());
  int64_t acc = 1;
  for (size_t i = s.size(); i-- > 0;) {
    st[i] = acc;
    acc *= s[i];
  }
  return st;
}

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int normalize_axis(int axis, int ndim, const char* where) {
  const int a = axis < 0 ? axis + ndim : axis;
  LMX_CHECK(a >= 0 && a < ndim, where, "axis ", axis, " is out of range for an array of rank ", ndim);
  return a;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* where) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    LMX_CHECK(da == db || da == 1 || db == 1, where, "shapes ", shape_str(a), " and ", shape_str(b),
              " cannot be broadcast together");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

Device Device::parse(std::string_view s) {
  if (s == "cpu") return cpu();
  if (s == "cuda") return cuda(0);
  if (s.starts_with("cuda:") && s.size() > 5) {
    int idx = 0;
    for (char c : s.substr(5)) {
      LMX_CHECK(c >= '0' && c <= '9', "device", "bad device '", s, "': use cpu, cuda or cuda:N");
      idx = idx * 10 + (c - '0');
    }
    return cuda(idx);
  }
  fail("device", "unknown device '", s, "': use cpu, cuda or cuda:N");
}

std::string Device::str() const {
  return type == Type::cpu ? "cpu" : "cuda:" + std::to_string(index);
}

}  // namespace lmx
