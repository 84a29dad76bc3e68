// Generates from many prompts in one batch and reports the throughput: the batch API in
// about 40 lines.
//   batch_generate /models/Qwen3-0.6B 64          # 64 prompts, 64 new tokens each
//   batch_generate /models/Qwen3-0.6B 64 256 0.7     # 256 tokens each, sampled at 0.7
//   batch_generate /models/Qwen3-0.6B 64 256 0.7 20  # ... from the 20 most likely
#include <lmx/lmx.h>

#include <chrono>
#include <iostream>
#include <string>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: batch_generate MODEL_DIR PROMPTS [MAX_TOKENS [TEMPERATURE [TOP_K]]]\n";
    return 2;
  }
  try {
    std::unique_ptr<lmx::TextModel> model = lmx::load_model(argv[1]);  // CUDA when a GPU is visible
    std::vector<std::string> prompts;
    for (int i = 0; i < std::stoi(argv[2]); ++i)
      prompts.push_back("Story " + std::to_string(i) + ": once upon a time, in a city by the sea,");
    lmx::GenerateOptions opts;
    opts.max_tokens = argc > 3 ? std::stoi(argv[3]) : 64;
    opts.temperature = argc > 4 ? std::stof(argv[4]) : 0;  // 0: greedy
    opts.top_k = argc > 5 ? std::stoi(argv[5]) : 0;        // 0: every token
    opts.seed = 42;                                        // row r samples with seed 42 + r
    opts.ignore_eos = true;  // every row runs to max_tokens, so the figure counts them all
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<lmx::BatchResult> out = model->batch_generate(prompts, opts);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    size_t tokens = 0;
    for (const lmx::BatchResult& r : out) tokens += r.ids.size();
    std::cout << "row 0: " << out[0].text << "\n";
    std::cerr << out.size() << " rows, " << tokens << " tokens in " << s
              << " s (prefill included): " << double(tokens) / s << " tok/s, decoded by the "
              << model->metrics().decode_path << " path\n";
  } catch (const std::exception& e) {  // bad model folder, missing tokenizer, long prompt, ...
    std::cerr << e.what() << "\n";
    return 1;
  }
}
