// A Jinja engine for chat templates. It renders the way HF transformers does:
// jinja2 ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with loop
// controls, no autoescape, the globals raise_exception and strftime_now, and a tojson that
// matches json.dumps(ensure_ascii=False).
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "text/jinja/value.h"

namespace lmx::jinja {

struct Stmt;

// A parsed template. Immutable after construction, so one Template may render from several
// threads at once.
class Template {
 public:
  // Parses; throws lmx::Error("[jinja] line L, column C: ...") on syntax errors.
  explicit Template(std::string source);
  ~Template();
  Template(const Template&);
  Template& operator=(const Template&);
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  // Renders with the keys of `context` (a JSON object) as variables. Throws
  // lmx::Error("[jinja] line L: ...") on runtime errors, including raise_exception(msg).
  std::string render(const nlohmann::ordered_json& context) const;
  // The same with a context that is already a dict Value.
  std::string render(const Value& context) const;

 private:
  struct Program;
  std::shared_ptr<const Program> program_;
};

}  // namespace lmx::jinja
