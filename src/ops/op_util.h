// Helpers shared by the op implementations (not part of the public API).
#pragma once

#include <string>

#include "core/error.h"
#include "ops/kernels.h"
#include "ops/tape.h"

namespace lmx::detail {

inline Kernels& kern(const Array& a) { return kernels_for(a.device()); }

inline void check_valid(const Array& a, const char* op, const char* what = "input") {
  LMX_CHECK(a.valid(), op, what, " is an empty array");
}
inline void check_same_device(const Array& a, const Array& b, const char* op) {
  LMX_CHECK(a.device() == b.device(), op, "arrays are on different devices (", a.device().str(), " and ",
            b.device().str(), "); move one with to_device");
}
inline void check_float(const Array& a, const char* op) {
  LMX_CHECK(is_float(a.dtype()), op, "expects a floating-point array, got ", dtype_name(a.dtype()));
}
inline void check_index_dtype(const Array& a, const char* op) {
  LMX_CHECK(a.dtype() == Dtype::i32 || a.dtype() == Dtype::u32, op, "indices must be int32 or uint32, got ",
            dtype_name(a.dtype()));
}

// A rank-0 array of `value`, shared: the same (value, dtype, device) gives the same array,
// made once, where scalar() launches a fill each time (a training step's gradient rules
// asked for some 4,800 of them). Arrays are immutable, so sharing is safe; the cache keeps
// a bounded number, which live until the process ends. Never pass one to assign().
Array constant(double value, Dtype dtype, Device device);

// The dtype both operands of a binary op are computed in (NumPy-like, simplified):
// floats win over integers, two different 16-bit floats meet in f32, integers widen.
Dtype promote(Dtype a, Dtype b);

}  // namespace lmx::detail
