// Placeholder registration until the tokenizer commands exist.
#include "commands.h"

namespace lmx::cli {
void add_tokenize_commands(CLI::App&) {}
}  // namespace lmx::cli
