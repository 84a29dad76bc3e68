// Fine-tunes LoRA adapters on a JSON Lines file, then chats with the model and its adapters.
//   lora_finetune MODEL_DIR TRAIN_JSONL [ITERS]
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <lmx/lmx.h>
#include <lmx/train.h>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL_DIR TRAIN_JSONL [ITERS]\n", argv[0]);
    return 2;
  }
  try {
    lmx::LoraOptions o;
    o.iters = argc > 3 ? std::atoi(argv[3]) : 100;
    o.learning_rate = 1e-4f;
    o.mask_prompt = true;
    o.adapter_path = "adapters";
    lmx::train_lora(argv[1], argv[2], "", o, [](const lmx::TrainProgress& p) {
      std::printf("step %d/%d: loss %.4f, %.0f tok/s\n", p.step, p.iters, p.train_loss, p.tokens_per_s);
    });
    lmx::LoadOptions load;
    load.adapter_path = "adapters";
    auto model = lmx::load_model(argv[1], load);
    std::vector<lmx::Message> chat{{"user", "Hello!"}};
    for (const lmx::Token& t : model->chat(chat)) std::cout << t.text << std::flush;
    std::cout << "\n";
    if (model->err()) std::cerr << model->err_message() << "\n";
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
