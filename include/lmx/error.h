// The exceptions lmx throws. Messages start with "[op]" or "[file]" and say what to do.
#pragma once

#include <stdexcept>

namespace lmx {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// An allocation would pass the memory limit, or the device is full. Nothing was
// changed, so callers may free memory and retry.
class OutOfMemory : public Error {
 public:
  using Error::Error;
};

}  // namespace lmx
