// Each subcommand of the lmx CLI lives in its own cmd_*.cpp and adds itself to the app here.
#pragma once

#include <CLI/CLI.hpp>

namespace lmx::cli {

// Each function registers one subcommand (its flags and its callback) on `app`.
void add_selfcheck_command(CLI::App& app);
void add_tokenize_commands(CLI::App& app);   // tokenize, detokenize, template
void add_model_commands(CLI::App& app);      // logits, generate
void add_random_model_command(CLI::App& app);
void add_chat_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_tool_commands(CLI::App& app);        // classify, discover, info
void add_lora_commands(CLI::App& app);        // lora, fuse
void add_serve_command(CLI::App& app);

}  // namespace lmx::cli
