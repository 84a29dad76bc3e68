// Layout ops: reshape, transpose, squeeze/expand, broadcast, slicing and concatenation.
// All of them return views when the strides allow; none of them changes values.
#include <algorithm>
#include <numeric>

#include "ops/op_util.h"

namespace lmx {

Array reshape(const Array& a, Shape shape) {
  detail::check_valid(a, "reshape");
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      LMX_CHECK(infer < 0, "reshape", "only one dimension may be -1 in ", shape_str(shape));
      infer = int(i);
    } else {
      LMX_CHECK(shape[i] >= 0, "reshape", "invalid dimension in ", shape_str(shape));
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    LMX_CHECK(known > 0 && a.size() % known == 0, "reshape", "cannot reshape ", shape_str(a.shape()), " into ",
              shape_str(shape));
    shape[infer] = a.size() / known;
  }
  LMX_CHECK(numel(shape) == a.size(), "reshape", "cannot reshape ", shape_str(a.shape()), " (", a.size(),
            " elements) into ", shape_str(shape));
  const detail::OpRecord record;
  const Array src = contiguous(a);
  Strides st = row_major_strides(shape);
  const Array out = src.view(std::move(shape), std::move(st), src.offset());
  record(detail::Step::reshape, {a}, out);
  return out;
}

Array flatten(const Array& a) { return reshape(a, {-1}); }

Array transpose(const Array& a, std::vector<int> perm) {
  detail::check_valid(a, "transpose");
  const int n = a.ndim();
  if (perm.empty()) {
    perm.resize(n);
    std::iota(perm.rbegin(), perm.rend(), 0);
  }
  LMX_CHECK(int(perm.size()) == n, "transpose", "permutation has ", perm.size(), " axes for an array of rank ", n);
  std::vector<bool> seen(n, false);
  Shape shape(n);
  Strides st(n);
  std::vector<int64_t> axes(n);
  for (int i = 0; i < n; ++i) {
    const int p = normalize_axis(perm[i], n, "transpose");
    LMX_CHECK(!seen[p], "transpose", "axis ", p, " appears twice in the permutation");
    seen[p] = true;
    axes[i] = p;
    shape[i] = a.shape()[p];
    st[i] = a.strides()[p];
  }
  const Array out = a.view(std::move(shape), std::move(st), a.offset());
  if (detail::recorder()) detail::OpRecord()(detail::Step::transpose, {a}, out, 0, std::move(axes));
  return out;
}

Array swapaxes(const Array& a, int axis1, int axis2) {
  detail::check_valid(a, "swapaxes");
  std::vector<int> perm(a.ndim());
  std::iota(perm.begin(), perm.end(), 0);
  std::swap(perm[normalize_axis(axis1, a.ndim(), "swapaxes")], perm[normalize_axis(axis2, a.ndim(), "swapaxes")]);
  return transpose(a, perm);
}

Array squeeze(const Array& a, std::vector<int> axes) {
  detail::check_valid(a, "squeeze");
  std::vector<bool> drop(a.ndim(), false);
  if (axes.empty()) {
    for (int i = 0; i < a.ndim(); ++i) drop[i] = a.shape()[i] == 1;
  }
  for (int ax : axes) {
    const int i = normalize_axis(ax, a.ndim(), "squeeze");
    LMX_CHECK(a.shape()[i] == 1, "squeeze", "axis ", ax, " has size ", a.shape()[i], ", not 1");
    drop[i] = true;
  }
  Shape shape;
  Strides st;
  for (int i = 0; i < a.ndim(); ++i) {
    if (drop[i]) continue;
    shape.push_back(a.shape()[i]);
    st.push_back(a.strides()[i]);
  }
  const Array out = a.view(std::move(shape), std::move(st), a.offset());
  if (detail::recorder()) detail::OpRecord()(detail::Step::reshape, {a}, out);
  return out;
}

Array expand_dims(const Array& a, int axis) {
  detail::check_valid(a, "expand_dims");
  const int i = normalize_axis(axis, a.ndim() + 1, "expand_dims");
  Shape shape = a.shape();
  Strides st = a.strides();
  shape.insert(shape.begin() + i, 1);
  st.insert(st.begin() + i, 0);
  const Array out = a.view(std::move(shape), std::move(st), a.offset());
  if (detail::recorder()) detail::OpRecord()(detail::Step::reshape, {a}, out);
  return out;
}

Array broadcast_to(const Array& a, const Shape& shape) {
  detail::check_valid(a, "broadcast_to");
  if (a.shape() == shape) return a;
  LMX_CHECK(shape.size() >= a.shape().size(), "broadcast_to", "cannot broadcast ", shape_str(a.shape()), " to ",
            shape_str(shape));
  const size_t lead = shape.size() - a.shape().size();
  Strides st(shape.size(), 0);
  for (size_t i = 0; i < a.shape().size(); ++i) {
    const int64_t d = a.shape()[i];
    LMX_CHECK(d == shape[lead + i] || d == 1, "broadcast_to", "cannot broadcast ", shape_str(a.shape()), " to ",
              shape_str(shape));
    st[lead + i] = d == 1 ? 0 : a.strides()[i];
  }
  const Array out = a.view(shape, std::move(st), a.offset());
  if (detail::recorder()) detail::OpRecord()(detail::Step::broadcast_to, {a}, out);
  return out;
}

namespace {
// A slice's bounds as the tape keeps them: {n, start[n], stop[n], step[n]} (steps of 1 filled in).
std::vector<int64_t> slice_args(const std::vector<int64_t>& start, const std::vector<int64_t>& stop,
                                const std::vector<int64_t>& step) {
  std::vector<int64_t> args{int64_t(start.size())};
  args.insert(args.end(), start.begin(), start.end());
  args.insert(args.end(), stop.begin(), stop.end());
  for (size_t i = 0; i < start.size(); ++i) args.push_back(step.empty() ? 1 : step[i]);
  return args;
}
}  // namespace

Array slice(const Array& a, std::vector<int64_t> start, std::vector<int64_t> stop, std::vector<int64_t> step) {
  detail::check_valid(a, "slice");
  const int n = a.ndim();
  LMX_CHECK(int(start.size()) <= n && start.size() == stop.size(), "slice", "got ", start.size(), " starts and ",
            stop.size(), " stops for an array of rank ", n);
  LMX_CHECK(step.empty() || step.size() == start.size(), "slice", "steps must match starts");
  Shape shape = a.shape();
  Strides st = a.strides();
  int64_t offset = a.offset();
  for (size_t i = 0; i < start.size(); ++i) {
    const int64_t dim = a.shape()[i];
    const int64_t s = step.empty() ? 1 : step[i];
    LMX_CHECK(s != 0, "slice", "step must not be zero");
    // Python semantics: negative indices count from the end, then clamp to the range.
    auto clamp = [&](int64_t v, bool is_stop) {
      if (v < 0) v += dim;
      const int64_t lo = s > 0 ? 0 : -1, hi = s > 0 ? dim : dim - 1;
      (void)is_stop;
      return std::clamp(v, lo, hi);
    };
    const int64_t b = clamp(start[i], false), e = clamp(stop[i], true);
    const int64_t len = s > 0 ? std::max<int64_t>(0, (e - b + s - 1) / s) : std::max<int64_t>(0, (b - e - s - 1) / -s);
    shape[i] = len;
    if (len > 0) offset += b * a.strides()[i];
    st[i] = a.strides()[i] * s;
  }
  const Array out = a.view(std::move(shape), std::move(st), offset);
  if (detail::any_tracked({&a})) detail::OpRecord()(detail::Step::slice, {a}, out, 0, slice_args(start, stop, step));
  return out;
}

Array slice_axis(const Array& a, int axis, int64_t start, int64_t stop) {
  detail::check_valid(a, "slice_axis");
  const int ax = normalize_axis(axis, a.ndim(), "slice_axis");
  std::vector<int64_t> b(ax + 1, 0), e(ax + 1);
  for (int i = 0; i <= ax; ++i) e[i] = a.shape()[i];
  b[ax] = start;
  e[ax] = stop;
  return slice(a, b, e);
}

void assign(const Array& dst, const Array& src) {
  detail::check_valid(dst, "assign", "destination");
  detail::check_valid(src, "assign", "source");
  detail::check_same_device(dst, src, "assign");
  LMX_CHECK(!dst.storage()->keep, "assign", "destination borrows read-only memory (e.g. mapped weights)");
  // A write into a buffer hides where its values came from: no gradient could follow them.
  LMX_CHECK(!detail::any_tracked({&src}), "assign", "the value written depends on what a gradient tape tracks, and a ",
            "gradient cannot flow through a buffer written in place (a KV cache); run the forward pass without caches");
  detail::kern(dst).copy(broadcast_to(src, broadcast_shapes(src.shape(), dst.shape(), "assign")), dst);
}

Array slice_update(const Array& a, const Array& update, std::vector<int64_t> start, std::vector<int64_t> stop,
                   std::vector<int64_t> step) {
  const detail::OpRecord record;
  std::vector<int64_t> args = slice_args(start, stop, step);
  Array out = copy(a);
  const Array target = slice(out, std::move(start), std::move(stop), std::move(step));
  LMX_CHECK(broadcast_shapes(update.shape(), target.shape(), "slice_update") == target.shape(), "slice_update",
            "update of shape ", shape_str(update.shape()), " does not fit the slice ", shape_str(target.shape()));
  assign(target, update);
  if (is_float(out.dtype())) record(detail::Step::slice_update, {a, update}, out, 0, std::move(args));
  return out;
}

Array concatenate(const std::vector<Array>& arrays, int axis) {
  LMX_CHECK(!arrays.empty(), "concatenate", "needs at least one array");
  const Array& first = arrays[0];
  detail::check_valid(first, "concatenate");
  const int ax = normalize_axis(axis, first.ndim(), "concatenate");
  Shape shape = first.shape();
  shape[ax] = 0;
  Dtype t = first.dtype();
  for (const Array& x : arrays) {
    detail::check_valid(x, "concatenate");
    detail::check_same_device(first, x, "concatenate");
    LMX_CHECK(x.ndim() == first.ndim(), "concatenate", "arrays have different ranks: ", shape_str(first.shape()),
              " and ", shape_str(x.shape()));
    for (int i = 0; i < x.ndim(); ++i)
      LMX_CHECK(i == ax || x.shape()[i] == first.shape()[i], "concatenate", "shapes ", shape_str(first.shape()),
                " and ", shape_str(x.shape()), " differ outside axis ", ax);
    shape[ax] += x.shape()[ax];
    t = detail::promote(t, x.dtype());
  }
  const detail::OpRecord record;
  Array out(shape, t, first.device());
  int64_t at = 0;
  for (const Array& x : arrays) {
    const int64_t len = x.shape()[ax];
    if (len) detail::kern(out).copy(x, slice_axis(out, ax, at, at + len));
    at += len;
  }
  if (is_float(t)) record(detail::Step::concatenate, arrays, out, 0, {ax});
  return out;
}

}  // namespace lmx
