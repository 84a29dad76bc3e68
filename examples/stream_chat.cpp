// Streams a chat reply from a model folder: the lmx API in about 30 lines.
//   stream_chat /models/Qwen3-0.6B "Write a haiku about C++"
#include <lmx/lmx.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: stream_chat MODEL_DIR MESSAGE\n";
    return 2;
  }
  try {
    std::unique_ptr<lmx::TextModel> model = lmx::load_model(argv[1]);  // CUDA when a GPU is visible
    const std::vector<lmx::Message> messages{{"user", argv[2]}};
    lmx::GenerateOptions opts;
    opts.max_tokens = 128;
    opts.temperature = 0.7f;
    opts.seed = 42;
    for (const lmx::Token& t : model->chat(messages, opts)) std::cout << t.text << std::flush;
    std::cout << "\n";
    if (model->err()) std::cerr << "stopped early: " << model->err_message() << "\n";
    const lmx::GenerateMetrics m = model->metrics();
    std::cerr << m.generated_tokens << " tokens at " << m.decode_tok_per_s << " tok/s, first token after "
              << m.time_to_first_token_s * 1000 << " ms (" << m.finish_reason << ")\n";
  } catch (const std::exception& e) {  // bad model folder, missing tokenizer, ...
    std::cerr << e.what() << "\n";
    return 1;
  }
}
