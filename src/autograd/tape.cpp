// The tape: the steps that depend on the parameters, in the order they ran, and the
// backward pass over them.
//
// A value is known by its view: (storage id, offset, shape, strides, dtype). Two arrays with
// the same view hold the same values, since ops never write into their inputs, and a storage's
// id is never reused, so a value's name stays its own after its memory is freed. That lets the
// tape keep only what the gradient rules read (vjp_reads): a step keeps each other input and
// its output as a stand-in of the same shape and dtype over one element, and its name. A
// step whose output is a view the tape knows already (contiguous() of a contiguous array, an
// identity transpose) is that value: it is not recorded again.
#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <tuple>
#include <utility>

#include "autograd/autograd.h"
#include "autograd/vjp.h"
#include "core/error.h"

namespace lmx::autograd {
namespace {

struct Key {
  uint64_t storage;
  int64_t offset;
  Shape shape;
  Strides strides;
  Dtype dtype;
  bool operator<(const Key& o) const {
    return std::tie(storage, offset, shape, strides, dtype) <
           std::tie(o.storage, o.offset, o.shape, o.strides, o.dtype);
  }
};
Key key_of(const Array& a) { return {a.storage()->id, a.offset(), a.shape(), a.strides(), a.dtype()}; }

// Installs a recorder for a scope, and puts back the one before it (also on an exception).
class Recording {
 public:
  explicit Recording(detail::Recorder* r) : before_(detail::set_recorder(r)) {}
  ~Recording() { detail::set_recorder(before_); }
  Recording(const Recording&) = delete;
  Recording& operator=(const Recording&) = delete;

 private:
  detail::Recorder* before_;
};

class Tape : public detail::Recorder {
 public:
  // The parameters: the values gradients are taken with respect to.
  void watch(const Array& a) {
    LMX_CHECK(a.valid() && is_float(a.dtype()), "value_and_grad",
              "parameters must be floating-point arrays, got ",
              a.valid() ? dtype_name(a.dtype()) : "an empty array");
    known_.insert(key_of(a));
    leaves_.push_back(a);
  }
  const std::vector<Array>& leaves() const { return leaves_; }

  bool tracks(const Array& a) const override { return known_.count(key_of(a)) > 0; }

  void add(detail::StepRecord step) override {
    Node node = named(step.inputs, step.output);
    if (!known_.insert(node.out).second) return;  // a value known already
    // What the rule does not read is let go: a sum's addends, a frozen projection's input
    // (its rule reads the weight), a copy's source. What it reads stays with this step.
    for (size_t i = 0; i < step.inputs.size(); ++i)
      if (step.inputs[i].valid() && !vjp_reads(step, i, node.need)) step.inputs[i] = shape_only(step.inputs[i]);
    if (!vjp_reads_output(step)) step.output = shape_only(step.output);
    node.step = std::move(step);
    steps_.push_back(std::move(node));
  }

  // A checkpointed block: run again from its inputs (kept, since the replay reads them) in
  // the backward pass (checkpoint()).
  void add_replay(std::vector<Array> inputs, const Array& output, Function fn) {
    Node node = named(inputs, output);
    known_.insert(node.out);
    node.replay = std::move(fn);
    node.step = {detail::Step::copy, 0, std::move(inputs), shape_only(output), {}};
    steps_.push_back(std::move(node));
  }

  // d output / d each of `wrt`, given seed = d loss / d output; an empty array for one the
  // output does not depend on. Steps are let go as they are passed, and each gradient once
  // its value's last use (in the reverse order) is behind.
  std::vector<Array> backward(const Array& output, const Array& seed, std::span<const Array> wrt) {
    const Recording off(nullptr);  // nothing the backward pass computes is recorded
    std::map<Key, Array> grads;
    if (tracks(output)) grads[key_of(output)] = seed;
    std::set<Key> wanted;
    for (const Array& a : wrt) wanted.insert(key_of(a));
    for (size_t i = steps_.size(); i-- > 0;) {
      Node node = std::move(steps_[i]);
      steps_.pop_back();
      const auto it = grads.find(node.out);
      if (it == grads.end()) continue;
      const Array g = it->second;
      if (!wanted.count(it->first)) grads.erase(it);
      if (node.replay) {
        replay(node, g, grads);
        continue;
      }
      const std::vector<Array> in_grads = vjp(node.step, g, node.need);
      for (size_t j = 0; j < node.step.inputs.size(); ++j)
        if (node.need[j]) accumulate(grads, node.in[j], node.step.inputs[j], in_grads[j]);
    }
    std::vector<Array> out;
    for (const Array& a : wrt) {
      const auto it = grads.find(key_of(a));
      out.push_back(it == grads.end() ? Array() : contiguous(it->second));
    }
    return out;
  }

 private:
  struct Node {
    Key out;                 // the output's name
    std::vector<Key> in;     // each tracked input's name
    std::vector<bool> need;  // which inputs are tracked
    detail::StepRecord step;  // the arrays the rule reads; stand-ins for the rest
    Function replay;          // set for a checkpointed block
  };

  // A node that names a step's output and its tracked inputs, and says which inputs those are.
  Node named(const std::vector<Array>& inputs, const Array& output) const {
    Node node;
    node.out = key_of(output);
    for (const Array& a : inputs) {
      const bool tracked = a.valid() && tracks(a);
      node.need.push_back(tracked);
      node.in.push_back(tracked ? key_of(a) : Key{});
    }
    return node;
  }

  // a's shape and dtype over one element: a view with zero strides, never read.
  Array shape_only(const Array& a) {
    auto it = std::find_if(units_.begin(), units_.end(), [&](const Array& u) {
      return u.dtype() == a.dtype() && u.device() == a.device();
    });
    if (it == units_.end()) it = units_.insert(units_.end(), Array(Shape{}, a.dtype(), a.device()));
    const Recording off(nullptr);
    return broadcast_to(*it, a.shape());
  }

  // g joins the gradient of the value named `key`, of input's shape and dtype.
  static void accumulate(std::map<Key, Array>& grads, const Key& key, const Array& input, const Array& g) {
    if (!g.valid()) return;
    LMX_CHECK(g.shape() == input.shape() && g.dtype() == input.dtype(), "value_and_grad",
              "a gradient rule returned ", shape_str(g.shape()), " ", dtype_name(g.dtype()),
              " for an input ", shape_str(input.shape()), " ", dtype_name(input.dtype()));
    auto [it, fresh] = grads.try_emplace(key, g);
    if (!fresh) it->second = lmx::add(it->second, g);
  }

  // The block run again under a tape of its own, which watches its inputs and every
  // parameter; their gradients join this pass's.
  void replay(const Node& node, const Array& g, std::map<Key, Array>& grads) const {
    Tape inner;
    std::vector<Array> wrt;  // each value once: an input may be a parameter itself
    auto want = [&](const Array& a) {
      if (!inner.tracks(a)) inner.watch(a), wrt.push_back(a);
    };
    for (const Array& a : node.step.inputs)
      if (tracks(a)) want(a);
    for (const Array& p : leaves_) want(p);
    Array out;
    {
      const Recording on(&inner);
      out = node.replay(node.step.inputs);
    }
    LMX_CHECK(out.shape() == node.step.output.shape() && out.dtype() == node.step.output.dtype(),
              "checkpoint", "the block returned ", shape_str(out.shape()), " ",
              dtype_name(out.dtype()), " when run again, ", shape_str(node.step.output.shape()),
              " ", dtype_name(node.step.output.dtype()), " the first time");
    // Only what the block reached joins: a replayed layer touches a few of the model's
    // parameters, and adding zeros for the rest cost a launch each on a GPU.
    const std::vector<Array> got = inner.backward(out, g, wrt);
    for (size_t j = 0; j < wrt.size(); ++j) accumulate(grads, key_of(wrt[j]), wrt[j], got[j]);
  }

  std::set<Key> known_;
  std::vector<Array> units_;  // one element per dtype and device, for shape_only
  std::vector<Array> leaves_;
  std::vector<Node> steps_;
};

}  // namespace

ValueAndGrad value_and_grad(const std::function<Array()>& fn, std::span<const Array> params) {
  Tape tape;
  for (const Array& p : params) tape.watch(p);
  Array value;
  {
    const Recording on(&tape);
    value = fn();
  }
  LMX_CHECK(value.valid() && value.size() == 1 && is_float(value.dtype()), "value_and_grad",
            "the function must return one floating-point element (a loss), got ",
            value.valid() ? shape_str(value.shape()) + " " + std::string(dtype_name(value.dtype()))
                          : std::string("nothing"));
  const Array seed = ones(value.shape(), value.dtype(), value.device());
  std::vector<Array> grads = tape.backward(value, seed, params);
  for (size_t i = 0; i < grads.size(); ++i)  // a parameter the loss does not reach: zeros
    if (!grads[i].valid()) grads[i] = zeros(params[i].shape(), params[i].dtype(), params[i].device());
  return {value, std::move(grads)};
}

Array checkpoint(const Function& fn, const std::vector<Array>& inputs) {
  auto* tape = dynamic_cast<Tape*>(detail::recorder());
  if (!tape) return fn(inputs);
  // Run under a tape of its own that is dropped at once: the block computes exactly what
  // its run again will (the fast:: ops choose by what is tracked), and nothing of it stays.
  Array out;
  {
    Tape scratch;
    for (const Array& a : inputs)
      if (tape->tracks(a)) scratch.watch(a);
    for (const Array& p : tape->leaves()) scratch.watch(p);
    const Recording on(&scratch);
    out = fn(inputs);
  }
  if (!tape->tracks(out))
    tape->add_replay(inputs, out, fn);  // (a block that returns an input is that input)
  return out;
}

Array stop_gradient(const Array& x) {
  const Recording off(nullptr);
  return copy(x);
}

}  // namespace lmx::autograd
