// Stop strings over streamed text: text that might still grow into a stop string is
// held back, never emitted and then retracted.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace lmx {

class StopStringMatcher {
 public:
  explicit StopStringMatcher(std::vector<std::string> stops);
  struct Result {
    std::string emit;  // text that is now safe to show
    bool stopped = false;  // a stop string was found; `emit` ends just before it
  };
  Result push(std::string_view text);
  std::string flush();  // what is held back, at the end of generation
  bool active() const { return !stops_.empty(); }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
};

}  // namespace lmx
