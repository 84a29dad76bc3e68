// The lmx command-line tool: `lmx <command> --help` explains each command with examples.
#include <cstdio>
#include <exception>

#include "commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"lmx: run Hugging Face language models (Llama 3, Qwen3, Gemma 3) on CPUs and NVIDIA GPUs"};
  app.set_version_flag("--version", std::string("lmx ") + LMX_VERSION);
  app.require_subcommand(0, 1);
  lmx::cli::add_selfcheck_command(app);
  lmx::cli::add_tokenize_commands(app);
  lmx::cli::add_model_commands(app);
  lmx::cli::add_random_model_command(app);
  lmx::cli::add_chat_command(app);
  lmx::cli::add_bench_command(app);
  lmx::cli::add_tool_commands(app);
  lmx::cli::add_lora_commands(app);
  lmx::cli::add_serve_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const lmx::Error& e) {
    std::fprintf(stderr, "lmx: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lmx: internal error: %s\n", e.what());
    return 2;
  }
  if (argc == 1) std::fputs(app.help().c_str(), stdout);
  return 0;
}
