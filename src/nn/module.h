// Module: anything that owns named parameters. One visitor over the parameters
// serves loading, saving, LoRA and the optimizer alike.
#pragma once

#include <functional>
#include <string>

#include "core/array.h"
#include "ops/fast.h"

namespace lmx::nn {

// Called once per parameter with its full checkpoint name (e.g.
// "model.layers.0.self_attn.q_proj.weight"), the Array slot that holds it, and the
// shape that the config implies for it. Weight matrices that a checkpoint may store
// MLX-quantized (Linear and Embedding weights, spec §2) also pass `quant`, the slot for
// that form, and nullptr for every other parameter: a loader fills one slot or the other.
using ParamVisitor =
    std::function<void(const std::string& name, Array& param, const Shape& shape, fast::QuantizedMatrix* quant)>;

class Module {
 public:
  virtual ~Module() = default;
  // `prefix` is this module's own path; parameters are named prefix + "." + local name.
  virtual void visit(const std::string& prefix, const ParamVisitor& fn) = 0;
};

inline std::string join_name(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

}  // namespace lmx::nn
