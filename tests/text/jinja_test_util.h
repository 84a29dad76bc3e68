// Helpers shared by the Jinja engine tests.
#pragma once

#include <string>

#include "core/error.h"
#include "text/jinja/jinja.h"

namespace lmx::jinja::testing {

inline std::string render(const std::string& source, const char* context = "{}") {
  return Template(source).render(nlohmann::ordered_json::parse(context));
}

// True when rendering `source` throws lmx::Error.
inline bool throws(const std::string& source, const char* context = "{}") {
  try {
    render(source, context);
  } catch (const Error&) {
    return true;
  }
  return false;
}

}  // namespace lmx::jinja::testing
