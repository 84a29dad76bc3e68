// Placeholder registration until the model commands exist.
#include "commands.h"

namespace lmx::cli {
void add_model_commands(CLI::App&) {}
}  // namespace lmx::cli
