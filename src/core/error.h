// lmx::Error and the always-on LMX_CHECK used throughout the library.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace lmx {

// Every error that crosses the API boundary. The message starts with "[op]" or
// "[file]" so that a user can tell at once which operation or input failed.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Thrown when an allocation would pass the memory limit or the device is full.
// The state of the program is unchanged, so callers may free memory and retry.
class OutOfMemory : public Error {
 public:
  using Error::Error;
};

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
