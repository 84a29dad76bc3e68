// An environment variable set (or unset) for a scope, then put back as it was: tests switch
// lmx's LMX_* settings without leaking them into the tests after them, or losing a value
// set outside the test binary.
#pragma once

#include <cstdlib>
#include <optional>
#include <string>

namespace lmx::test {

class ScopedEnv {
 public:
  // value null: unset for the scope.
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* was = std::getenv(name)) was_ = was;
    if (value)
      setenv(name, value, 1);
    else
      unsetenv(name);
  }
  ~ScopedEnv() {
    if (was_)
      setenv(name_.c_str(), was_->c_str(), 1);
    else
      unsetenv(name_.c_str());
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
  std::optional<std::string> was_;
};

}  // namespace lmx::test
