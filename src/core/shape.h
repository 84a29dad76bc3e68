// Shapes and strides (in elements, row-major) and the helpers every op needs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lmx {

using Shape = std::vector<int64_t>;
using Strides = std::vector<int64_t>;

int64_t numel(const Shape& s);
Strides row_major_strides(const Shape& s);
std::string shape_str(const Shape& s);  // "[2, 3]"
// Normalises a possibly negative axis for an array of rank `ndim`; throws "[where] axis ...".
int normalize_axis(int axis, int ndim, const char* where);
// NumPy broadcasting of two shapes; throws "[where] shapes ... cannot broadcast".
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* where);

}  // namespace lmx
