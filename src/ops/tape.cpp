#include "ops/tape.h"

#include <utility>

namespace lmx::detail {
namespace {
thread_local Recorder* t_recorder = nullptr;
}

Recorder* recorder() { return t_recorder; }

Recorder* set_recorder(Recorder* r) { return std::exchange(t_recorder, r); }

bool any_tracked(std::initializer_list<const Array*> arrays) {
  const Recorder* r = t_recorder;
  if (!r) return false;
  for (const Array* a : arrays)
    if (a && a->valid() && r->tracks(*a)) return true;
  return false;
}

void OpRecord::operator()(Step step, std::vector<Array> inputs, const Array& output, int code,
                          std::vector<int64_t> args) const {
  if (!rec_) return;
  bool any = false;
  for (const Array& a : inputs) any = any || (a.valid() && rec_->tracks(a));
  if (!any) return;
  rec_->add({step, code, std::move(inputs), output, std::move(args)});
}

}  // namespace lmx::detail
