// lmx::Error and the always-on LMX_CHECK used throughout the library.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

#include "lmx/error.h"

namespace lmx {

namespace detail {
template <class... Args>
std::string cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
}  // namespace detail

// Throws lmx::Error with "[where] " followed by the concatenated parts.
template <class... Args>
[[noreturn]] void fail(std::string_view where, Args&&... parts) {
  throw Error(detail::cat("[", where, "] ", std::forward<Args>(parts)...));
}

}  // namespace lmx

// Always on, also in release builds: a wrong shape must never become a wrong answer.
// Usage: LMX_CHECK(a.ndim() == 2, "matmul", "expected a matrix, got rank ", a.ndim());
#define LMX_CHECK(cond, where, ...)                  \
  do {                                               \
    if (!(cond)) ::lmx::fail((where), __VA_ARGS__);  \
  } while (0)
