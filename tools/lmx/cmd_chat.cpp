// `lmx chat MODEL`: an interactive conversation with streaming replies.
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <iostream>

#include "cli_util.h"
#include "commands.h"
#include "core/error.h"

namespace lmx::cli {
namespace {

std::atomic<bool> g_generating{false};
std::atomic<bool> g_interrupted{false};

// Ctrl-C while a reply streams stops that reply; Ctrl-C at the prompt (or a second one
// during a reply) leaves the program.
void on_sigint(int) {
  if (!g_generating.load() || g_interrupted.exchange(true)) {
    const char msg[] = "\n";
    (void)!write(STDOUT_FILENO, msg, 1);
    _exit(130);
  }
}

void run_chat(const ModelArgs& args, const GenerateArgs& gen, std::string system) {
  const GenerateOptions opts = gen.options();  // its errors before the model loads
  auto model = args.load();
  std::vector<Message> history;
  auto reset = [&] {
    history.clear();
    if (!system.empty()) history.push_back({"system", system});
  };
  reset();
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigaction(SIGINT, &sa, nullptr);
  std::printf("lmx chat: %s (%s on %s). /reset clears the history, /system TEXT sets the system prompt, "
              "/quit or Ctrl-D leaves; Ctrl-C stops a reply.\n",
              model->info().model_type.c_str(), model->info().dtype.c_str(), model->info().device.c_str());
  std::string line;
  for (;;) {
    std::printf("> ");
    std::fflush(stdout);
    if (!std::getline(std::cin, line)) break;
    if (line.empty()) continue;
    if (line == "/quit" || line == "/exit") break;
    if (line == "/reset") {
      reset();
      std::printf("(history cleared)\n");
      continue;
    }
    if (line.rfind("/system", 0) == 0) {
      system = line.size() > 8 ? line.substr(8) : "";
      reset();
      std::printf("(system prompt set; history cleared)\n");
      continue;
    }
    warn_if_not_utf8(line, "this message");
    history.push_back({"user", line});
    std::string reply;
    g_interrupted = false;
    g_generating = true;
    try {
      for (const Token& t : model->chat(history, opts)) {
        reply += t.text;
        std::fputs(t.text.c_str(), stdout);
        std::fflush(stdout);
        if (g_interrupted) break;
      }
    } catch (const Error& e) {
      std::fprintf(stderr, "\nerror: %s\n", e.what());
    }
    g_generating = false;
    std::printf("\n");
    if (model->err()) std::fprintf(stderr, "(%s)\n", model->err_message().c_str());
    print_metrics(model->metrics(), stderr);
    history.push_back({"assistant", reply});
  }
}

}  // namespace

void add_chat_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("chat", "Talk to a model interactively, with its own chat template");
  auto model = std::make_shared<ModelArgs>();
  auto gen = std::make_shared<GenerateArgs>();
  auto system = std::make_shared<std::string>();
  model->add(cmd);
  gen->add(cmd, /*chat=*/true);
  cmd->add_option("--system", *system, "System prompt");
  cmd->footer("Example:\n  lmx chat ~/models/Qwen3-0.6B --temperature 0.7 --set enable_thinking=false\n"
              "  lmx chat tests/fixtures/models/qwen3-f32   (a tiny random test model: it babbles)");
  cmd->callback([=] { run_chat(*model, *gen, *system); });
}

}  // namespace lmx::cli
