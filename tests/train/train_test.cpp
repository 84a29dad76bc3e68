// Losses and the optimizer against float64, and a fixture model learning a sequence.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <fstream>

#include "autograd/autograd.h"
#include "cuda_available.h"
#include "core/error.h"
#include "models/loader.h"
#include "runtime/fixture_copy.h"
#include "runtime/text_model.h"
#include "text/tokenizer.h"
#include "train/dataset.h"
#include "train/loss.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace lmx::train {
namespace {

TEST(CrossEntropyTest, ValueAndGradientMatchFloat64AndIgnoredPositionsAreLeftOut) {
  const int64_t rows = 6, v = 7;
  const Array logits = random_uniform({2, 3, v}, 11, -3, 3);
  std::vector<float> host = to_floats(logits);
  const std::vector<int32_t> t{3, kIgnoreIndex, 0, 6, kIgnoreIndex, 2};
  // An ignored position's logits may be anything, NaN included (padding): it must not reach the
  // loss.
  host[size_t(1 * v + 2)] = NAN;
  const Array x = from_floats(host, {2, 3, v});
  const auto [value, grads] = autograd::value_and_grad(
      [&] {
        return cross_entropy(x, from_vector(t, {2, 3}));
      },
      std::vector{x});
  // float64: mean over the 4 counted rows of logsumexp - the target's logit; d/dx = (softmax -
  // onehot) / 4.
  double loss = 0;
  std::vector<double> want(host.size(), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    if (t[size_t(r)] == kIgnoreIndex) continue;
    double m = -INFINITY, s = 0;
    for (int64_t j = 0; j < v; ++j) m = std::max(m, double(host[size_t(r * v + j)]));
    for (int64_t j = 0; j < v; ++j) s += std::exp(host[size_t(r * v + j)] - m);
    loss += (m + std::log(s) - host[size_t(r * v + t[size_t(r)])]) / 4;
    for (int64_t j = 0; j < v; ++j)
      want[size_t(r * v + j)] =
          (std::exp(host[size_t(r * v + j)] - m) / s - (j == t[size_t(r)])) / 4;
  }
  EXPECT_NEAR(item(value), loss, 1e-6 * loss);
  const std::vector<float> got = to_floats(grads[0]);
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-7) << i;
}

TEST(CrossEntropyTest, RefusesTargetsOutsideTheVocabularyAndAllIgnored) {
  const Array x = zeros({2, 4});
  EXPECT_THROW(cross_entropy(x, from_vector(std::vector<int32_t>{1, 4}, {2})), Error);
  EXPECT_THROW(cross_entropy(x, from_vector(std::vector<int32_t>{kIgnoreIndex, kIgnoreIndex}, {2})),
               Error);
  EXPECT_THROW(cross_entropy(x, from_vector(std::vector<int32_t>{1}, {1})), Error);
}

// PyTorch's AdamW, in float64.
struct AdamRef {
  std::vector<double> p, m, v;
  void step(const std::vector<double>& g, const AdamWOptions& o, int t) {
    for (size_t i = 0; i < p.size(); ++i) {
      p[i] -= double(o.lr) * o.weight_decay * p[i];
      m[i] = o.beta1 * m[i] + (1 - double(o.beta1)) * g[i];
      v[i] = o.beta2 * v[i] + (1 - double(o.beta2)) * g[i] * g[i];
      const double mh = m[i] / (1 - std::pow(double(o.beta1), t)),
                   vh = v[i] / (1 - std::pow(double(o.beta2), t));
      p[i] -= o.lr * mh / (std::sqrt(vh) + o.eps);
    }
  }
};

TEST(AdamWTest, StepsMatchFloat64AndLowPrecisionKeepsAnF32Master) {
  const AdamWOptions o{1e-2f, 0.9f, 0.99f, 1e-8f, 0.1f};
  const Array p32 = copy(random_uniform({5, 3}, 1, -1, 1));
  const Array p16 = copy(astype(p32, Dtype::bf16));
  const std::vector<float> start = to_floats(p32), start16 = to_floats(p16);
  AdamRef ref{
      {start.begin(), start.end()}, std::vector<double>(15, 0.0), std::vector<double>(15, 0.0)};
  AdamRef ref16{
      {start16.begin(), start16.end()}, std::vector<double>(15, 0.0), std::vector<double>(15, 0.0)};
  AdamW a({p32}, o), b({p16}, o);
  for (int t = 1; t <= 6; ++t) {
    const Array g = random_uniform({5, 3}, 100 + t, -2, 2);
    const std::vector<float> gf = to_floats(g);
    const std::vector<double> gd(gf.begin(), gf.end());
    a.step(std::vector{g});
    b.step(std::vector{astype(g, Dtype::bf16)});
    ref.step(gd, o, t);
    const std::vector<float> g16 = to_floats(astype(g, Dtype::bf16));
    ref16.step(std::vector<double>(g16.begin(), g16.end()), o, t);
  }
  const std::vector<float> got = to_floats(p32), got16 = to_floats(p16);
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], ref.p[i], 1e-6) << i;
    // The bf16 parameter is the f32 master rounded once: within half a unit of bf16 of float64.
    EXPECT_NEAR(got16[i], ref16.p[i], std::ldexp(std::abs(ref16.p[i]), -8) + 1e-6) << i;
  }
  EXPECT_EQ(a.steps(), 6);
}

// CUDA's fused step (Kernels::adamw) is the composition's f32 operations in their order:
// the same parameters, to the bit, as the CPU's composition after several steps, for f32 and
// bf16 parameters and bf16 gradients, with weight decay.
TEST(AdamWTest, TheFusedCudaStepIsTheCompositionToTheBit) {
  if (!test::have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused step is CUDA's";
  const AdamWOptions o{3e-2f, 0.9f, 0.95f, 1e-6f, 0.05f};
  for (Dtype t : {Dtype::f32, Dtype::bf16}) {
    const Array start = astype(random_uniform({37, 5}, 3, -1, 1), t);
    const Array cpu = copy(start), gpu = to_device(start, Device::cuda());
    AdamW a({cpu}, o), b({gpu}, o);
    for (int step = 1; step <= 5; ++step) {
      const Array g = astype(random_uniform({37, 5}, 50 + step, -3, 3), step % 2 ? Dtype::bf16 : Dtype::f32);
      a.step(std::vector{g}, 1e-2f * float(step));
      b.step(std::vector{to_device(g, Device::cuda())}, 1e-2f * float(step));
    }
    EXPECT_EQ(to_floats(cpu), to_floats(to_device(gpu, Device::cpu()))) << dtype_name(t);
  }
}

TEST(AdamWTest, RefusesReadOnlyParametersAndMismatchedGradients) {
  float data[4] = {1, 2, 3, 4};
  const Array borrowed = Array::borrow(data, {4}, Dtype::f32, std::make_shared<int>(0));
  EXPECT_THROW(AdamW({borrowed}), Error);
  AdamW a({zeros({4})});
  EXPECT_THROW(a.step(std::vector{zeros({3})}), Error);
  EXPECT_THROW(a.step(std::vector<Array>{}), Error);
}

// The Qwen3 fixture learns one sequence by heart: its loss falls to a small part of where
// it began in 40 steps of AdamW on every weight.
TEST(TrainingTest, AFixtureModelLearnsASequence) {
  const auto model =
      models::load_causal_lm(std::filesystem::path(LMX_FIXTURES_DIR) / "models" / "qwen3-f32");
  std::vector<Array> params;
  model->visit("", [&](const std::string&, Array& p, const Shape&, fast::QuantizedMatrix*) {
    if (p.valid()) params.push_back(p = copy(p));
  });
  const std::vector<int32_t> tokens{5, 17, 300, 42, 9, 255, 1, 77, 128, 3, 400, 64};
  const int64_t l = int64_t(tokens.size()) - 1;
  const Array ids = from_vector(std::vector<int32_t>(tokens.begin(), tokens.end() - 1), {1, l});
  const Array targets = from_vector(std::vector<int32_t>(tokens.begin() + 1, tokens.end()), {1, l});
  AdamW opt(params, {3e-3f, 0.9f, 0.999f, 1e-8f, 0.0f});
  float first = 0, last = 0;
  for (int step = 0; step < 40; ++step) {
    const auto [loss, grads] = autograd::value_and_grad(
        [&] { return cross_entropy(model->forward(ids), targets); }, params);
    opt.step(grads);
    (step == 0 ? first : last) = item(loss);
  }
  EXPECT_GT(first, 5.0f) << "a random model starts near log(512) = 6.2";
  EXPECT_LT(last, 0.1f * first) << "from " << first;
}

const std::filesystem::path kQwen =
    std::filesystem::path(LMX_FIXTURES_DIR) / "models" / "qwen3-f32";

std::filesystem::path write_lines(const std::string& name, const std::vector<std::string>& lines) {
  const auto p = std::filesystem::temp_directory_path() /
                 ("lmx-data-" + name + "-" + std::to_string(::getpid()) + ".jsonl");
  std::ofstream f(p);
  for (const std::string& l : lines) f << l << "\n";
  return p;
}

// Each form's tokens are the tokenizer's (and the chat template's), and with mask_prompt
// the targets start at the last message.
TEST(DatasetTest, EachFormTokenizesAsTheModelWouldAndMasksThePrompt) {
  const Tokenizer tok = Tokenizer::from_dir(kQwen);
  const auto path = write_lines(
      "forms",
      {R"({"text": "hello world"})", "",
       R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})",
       R"({"prompt": "2+2?", "completion": "4"})"});
  const Dataset plain = read_jsonl(path, tok, {false, 2048}, kQwen.string());
  const Dataset masked = read_jsonl(path, tok, {true, 2048}, kQwen.string());
  ASSERT_EQ(plain.examples.size(), 3u);
  EXPECT_EQ(plain.examples[0].tokens, tok.encode("hello world", true));
  const std::string chat = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n";
  EXPECT_EQ(plain.examples[1].tokens, tok.encode(chat, false));
  EXPECT_EQ(plain.examples[1].first_target, 1);
  EXPECT_EQ(
      masked.examples[1].first_target,
      int32_t(tok.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", false).size()));
  EXPECT_EQ(
      masked.examples[2].tokens,
      tok.encode("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n", false));
  EXPECT_EQ(masked.examples[0].first_target, 1) << "text lines have no prompt";
  // A batch: right padding, targets shifted by one, context and padding ignored.
  const Batch b = make_batch({&masked.examples[0], &masked.examples[1]});
  const auto& t0 = masked.examples[0].tokens;
  const auto& t1 = masked.examples[1].tokens;
  EXPECT_EQ(b.length, int64_t(std::max(t0.size(), t1.size())) - 1);
  EXPECT_EQ(b.ids[0], t0[0]);
  EXPECT_EQ(b.targets[0], t0[1]);
  EXPECT_EQ(b.targets[size_t(t0.size() - 1)], kIgnoreIndex) << "padding";
  const int64_t first = masked.examples[1].first_target;
  EXPECT_EQ(b.targets[size_t(b.length + first - 2)], kIgnoreIndex) << "the prompt";
  EXPECT_EQ(b.targets[size_t(b.length + first - 1)], t1[size_t(first)]);
  EXPECT_EQ(b.counted, int64_t(t0.size() - 1) + int64_t(t1.size()) - first);
  std::filesystem::remove(path);
}

TEST(DatasetTest, BadLinesNameTheFileAndLine) {
  const Tokenizer tok = Tokenizer::from_dir(kQwen);
  auto expect_error = [&](const std::vector<std::string>& lines, const std::string& needle) {
    const auto path = write_lines("bad", lines);
    try {
      read_jsonl(path, tok, {true, 2048}, kQwen.string());
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    std::filesystem::remove(path);
  };
  expect_error({R"({"text": "ok"})", R"({"txt": "no"})"}, ".jsonl:2: expected {\"text\": ...}");
  expect_error({"{not json"}, ".jsonl:1");
  expect_error({R"({"messages": [{"role": "user"}]})"}, "\"content\" must be a string");
  expect_error({R"({"text": ""})"}, "leave nothing to learn");
  expect_error({}, "holds no examples");
}

// Chat lines with tools and calls, as OpenAI's fine-tuning data holds them, render as the
// library renders the same conversation, the tools' keys in the order written.
TEST(DatasetTest, ChatLinesWithToolsRenderAsTheLibrarysChat) {
  const test::FixtureCopy copy("qwen3-f32", "data_tools");
  copy.set_json("tokenizer_config.json", nlohmann::json::json_pointer("/chat_template"),
                test::kHermesToolTemplate);
  const Tokenizer tok = Tokenizer::from_dir(copy.dir());
  const std::string tools =
      R"([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", )"
      R"("properties": {"unit": {"enum": ["C", "F"]}, "city": {"type": "string"}}}}}])";
  const std::string line =
      R"({"messages": [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "", "tool_calls": )"
      R"([{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"unit": "C", )"
      R"("city": "Paris"}}}]}, {"role": "tool", "tool_call_id": "call_1", "content": "21"}, )"
      R"({"role": "assistant", "content": "21 C."}], "tools": )" + tools + "}";
  const auto path = write_lines("tools", {line});
  const Dataset d = read_jsonl(path, tok, {true, 2048}, copy.dir().string());
  std::filesystem::remove(path);
  ASSERT_EQ(d.examples.size(), 1u);

  std::vector<Message> chat{{"user", "Weather?"}, {"assistant", ""}, {"tool", "21"}, {"assistant", "21 C."}};
  chat[1].tool_calls.push_back({"call_1", "get_weather", R"({"unit": "C", "city": "Paris"})"});
  chat[2].tool_call_id = "call_1";
  GenerateOptions o;
  o.tools = tools;
  o.add_generation_prompt = false;
  const std::string text = runtime::render_chat(tok, chat, o, "fixture");
  const std::string listed = R"("properties": {"unit": {"enum": ["C", "F"]}, "city": {"type": "string"}})";
  EXPECT_NE(text.find(listed), std::string::npos) << text;
  EXPECT_NE(text.find(R"({"name": "get_weather", "arguments": {"unit": "C", "city": "Paris"}})"), std::string::npos)
      << text;
  EXPECT_EQ(d.examples[0].tokens, tok.encode(text, false));
  // Masked: the last answer alone is learned, after the tools, the call and its result.
  o.add_generation_prompt = true;
  chat.pop_back();
  EXPECT_EQ(d.examples[0].first_target,
            int32_t(tok.encode(runtime::render_chat(tok, chat, o, "fixture"), false).size()));

  auto expect_error = [&](const std::string& bad, const std::string& needle) {
    const auto p = write_lines("bad_tools", {bad});
    try {
      read_jsonl(p, tok, {true, 2048}, copy.dir().string());
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    std::filesystem::remove(p);
  };
  expect_error(R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], )"
               R"("tools": {"type": "function"}})",
               "\"tools\" must be a list");
  expect_error(R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": 3}]})",
               "\"tool_calls\" must be a list");
  expect_error(R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant"}]})",
               "\"content\" must be a string");
}

TEST(TrainerTest, AdaptersLearnAndAreWritten) {
  const auto model = models::load_causal_lm(kQwen);
  const Tokenizer tok = Tokenizer::from_dir(kQwen);
  std::vector<std::string> lines;
  for (int i = 0; i < 6; ++i)
    lines.push_back(R"({"text": "The answer number )" + std::to_string(i) +
                    R"( is always forty two."})");
  const auto path = write_lines("train", lines);
  const Dataset data = read_jsonl(path, tok, {}, kQwen.string());
  const models::LoraConfig lora{4, 8};
  models::attach_lora(*model, lora, 1);
  TrainOptions o;
  o.iters = 40;
  o.batch_size = 3;
  o.learning_rate = 1e-2f;
  o.report_every = 20;
  o.warmup = 5;
  o.cosine = true;
  o.adapter_path =
      std::filesystem::temp_directory_path() / ("lmx-trainer-" + std::to_string(::getpid()));
  const double before = evaluate(*model, data, 4);
  std::vector<TrainReport> reports;
  train_lora(*model, lora, data, &data, o, [&](const TrainReport& r) { reports.push_back(r); });
  ASSERT_EQ(reports.size(), 2u);
  EXPECT_EQ(reports[1].step, 40);
  EXPECT_LT(reports[1].valid_loss, 0.5 * before) << "from " << before;
  EXPECT_NEAR(reports[1].valid_loss, evaluate(*model, data, 2), 1e-5)
      << "the report's validation is evaluate()'s";
  // Its first batches only: the same as scoring those examples alone.
  Dataset first = data;
  first.examples.resize(std::min<size_t>(data.examples.size(), 4));
  int64_t counted = 0, counted_first = 0;
  EXPECT_EQ(evaluate(*model, data, 2, &counted, 2), evaluate(*model, first, 2, &counted_first));
  EXPECT_EQ(counted, counted_first);
  EXPECT_GT(counted, 0);
  EXPECT_TRUE(std::filesystem::exists(o.adapter_path / "adapter_model.safetensors"));
  // The schedule: a linear warm-up, then a cosine to a tenth at the last step.
  EXPECT_DOUBLE_EQ(learning_rate_at(o, 1), 1e-2f / 5.0);
  EXPECT_NEAR(learning_rate_at(o, 40), 1e-3, 1e-9);
  std::filesystem::remove_all(o.adapter_path);
  std::filesystem::remove(path);
}

// Two micro-batches of one example a step give the step of one batch of two, where the
// examples have as many targets each (the mean of the means is the mean). Adam's epsilon is
// set far above the gradients' size, so that the step follows their scale: a sum of the two
// micro-batches' gradients in place of their mean would step twice as far.
TEST(TrainerTest, AccumulatedMicroBatchesStepAsOneBatch) {
  const Tokenizer tok = Tokenizer::from_dir(kQwen);
  const auto path =
      write_lines("accum", {R"({"text": "one two three four five six"})", R"({"text": "six five four three two one"})"});
  const Dataset data = read_jsonl(path, tok, {}, kQwen.string());
  ASSERT_EQ(data.examples[0].tokens.size(), data.examples[1].tokens.size());
  auto after = [&](int batch, int accumulation) {
    const auto model = models::load_causal_lm(kQwen);
    const models::LoraConfig lora{4, 8};
    models::attach_lora(*model, lora, 1);
    for (const auto& [name, a] : models::lora_parameters(*model))  // B too, so that A's gradient is not zero
      if (name.ends_with("lora_B.weight")) *a = random_uniform(a->shape(), 9, -0.05f, 0.05f);
    TrainOptions o;
    o.iters = 1;
    o.batch_size = batch;
    o.grad_accumulation = accumulation;
    o.learning_rate = 1.0f;
    o.adam_epsilon = 10.0f;
    o.adapter_path = std::filesystem::temp_directory_path() / ("lmx-accum-" + std::to_string(::getpid()));
    train_lora(*model, lora, data, nullptr, o, [](const TrainReport&) {});
    std::filesystem::remove_all(o.adapter_path);
    return evaluate(*model, data, 2);
  };
  const double one = after(2, 1), two = after(1, 2);
  EXPECT_NEAR(two, one, 1e-6 * one);
  EXPECT_NE(one, after(1, 1)) << "a step over one example differs";
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace lmx::train
